"""The registry's operations on the local API: the seeds' paths, bodies and status codes.

=========================================  =========================================
``POST /provisioning-templates``           CreateProvisioningTemplate
``GET  /provisioning-templates``           ListProvisioningTemplates (``maxResults``,
                                           ``nextToken``)
``GET  /provisioning-templates/{name}``    DescribeProvisioningTemplate
``POST /things``                           RegisterThing ``{templateBody, parameters}``
``POST /thing-registration-tasks``         StartThingRegistrationTask
``GET  /thing-registration-tasks``         ListThingRegistrationTasks (``status``)
``GET  /thing-registration-tasks/{id}``    DescribeThingRegistrationTask
``PUT  /thing-registration-tasks/{id}/cancel``   StopThingRegistrationTask
``GET  /thing-registration-tasks/{id}/reports``  ListThingRegistrationTaskReports
                                           (``reportType``)
=========================================  =========================================

Every handler runs on the objects ``edge-agent template|bulk|register-thing`` use
(:mod:`agent.registry.wiring`): the template store, the registry and the bulk tasks do all
the checking, and their errors reach the caller in the shared error shape with their seed
status codes. Nothing blocking runs on the event loop. Requests run one at a time on the
API's request thread, on one connection to the registry's database (reopened after a
configuration reload, which also re-reads the CA). A started task runs on the bulk thread,
with its own connection, one task after the other; ``GET /thing-registration-tasks/{id}``
shows its progress as ``edge-agent bulk describe`` does. On shutdown a running task stops
after its current batch (committed) and stays ``InProgress``; the next start resumes every
unfinished task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from agent.api import json_response, read_json
from agent.config import AgentConfig
from agent.errors import AgentError, FieldProblem, InvalidRequestError, StateError
from agent.registry import fieldcheck as fc
from agent.registry.bulk import BulkTasks, TaskBusyError
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.templates_store import TemplateStore
from agent.registry.wiring import bulk_tasks, open_registry_store, template_store
from agent.store import Store

_log = logging.getLogger(__name__)

T = TypeVar("T")

TASK_STATUSES = ("InProgress", "Completed", "Failed", "Cancelled", "Cancelling")
UNFINISHED = frozenset({"InProgress", "Cancelling"})


class _Paused(Exception):  # noqa: N818 - not an error: the run stops for shutdown
    """Raised between two batches of a task when the service stops."""


@dataclass
class _Session:
    """The request thread's objects on one connection to the registry database."""

    config: AgentConfig
    store: Store
    templates: TemplateStore
    tasks: BulkTasks
    _registry: Registry | None = field(default=None, init=False)

    @classmethod
    def open(cls, config: AgentConfig) -> _Session:
        store = open_registry_store(config)
        try:
            return cls(config, store, template_store(config, store), bulk_tasks(config, store))
        except BaseException:
            store.close()
            raise

    def registry(self) -> Registry:
        """The registry, its device issuer loaded on first use (kept once there is one)."""
        if self._registry is not None:
            return self._registry
        storage = SqliteRegistryStorage(self.store)
        registry = Registry.from_config(self.config.registry, storage=storage)
        if registry.ca is not None:  # a CA made after the start is found at the next call
            self._registry = registry
        return registry

    def close(self) -> None:
        self.store.close()


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one of ``allowed``."""
    problems = [
        FieldProblem(key, "is not a parameter of this request")
        for key in sorted(set(request.query) - set(allowed))
    ]
    problems += [
        FieldProblem(key, "is given more than once")
        for key in allowed
        if len(request.query.getall(key, [])) > 1
    ]
    if problems:
        raise InvalidRequestError(
            f"the query is not valid: {problems[0].path} {problems[0].message}",
            reason=fc.UNKNOWN,
            fields=problems,
        )
    return {key: request.query[key] for key in allowed if key in request.query}


def _max_results(query: Mapping[str, str]) -> int | None:
    text = query.get("maxResults")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise InvalidRequestError(
            "maxResults must be an integer",
            reason=fc.WRONG_TYPE,
            fields=[FieldProblem("maxResults", "must be an integer")],
        )
    return int(text)


def check_register_request(body: Any) -> tuple[str, Any]:
    """The shape of a RegisterThing request: ``templateBody`` (a string), ``parameters``.

    The template (its size too) and the parameter map are checked by
    :meth:`Registry.register_thing`, the one place that owns their rules.

    Raises:
        InvalidRequestError: not an object, an unknown field, ``templateBody`` missing or not
            a string.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError(
            "the RegisterThing request must be a JSON object", reason=fc.WRONG_TYPE
        )
    problems: list[fc.Problem] = []
    fc.check_unknown(body, ("templateBody", "parameters"), problems)
    template_body = fc.check_string(body, "templateBody", problems, required=True)
    fc.raise_problems(problems, "RegisterThing")
    assert template_body is not None  # noqa: S101 - raise_problems raised otherwise
    return template_body, body.get("parameters")


class RegistryApi:
    """The registry routes of the local API and the background runs of bulk tasks.

    Args:
        config: returns the running configuration (the daemon's, which a reload replaces).
    """

    def __init__(self, config: Callable[[], AgentConfig]) -> None:
        self._config = config
        self._requests = concurrent.futures.ThreadPoolExecutor(1, "registry-api")
        self._bulk = concurrent.futures.ThreadPoolExecutor(1, "registry-bulk")
        self._session: _Session | None = None  # used on the request thread only
        self._stopping = threading.Event()
        self._closed = False

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount on the local API."""
        tasks = "/thing-registration-tasks"
        return [
            web.post("/provisioning-templates", self._create_template),
            web.get("/provisioning-templates", self._list_templates),
            web.get("/provisioning-templates/{name}", self._describe_template),
            web.post("/things", self._register_thing),
            web.post(tasks, self._start_task),
            web.get(tasks, self._list_tasks),
            web.get(tasks + "/{id}", self._describe_task),
            web.put(tasks + "/{id}/cancel", self._cancel_task),
            web.get(tasks + "/{id}/reports", self._list_reports),
        ]

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Resume the unfinished tasks in the registry's database; return their ids.

        A database that cannot be opened is logged, not raised: the appliance's service
        keeps running, and each request reports the problem itself.
        """
        try:
            ids: list[str] = await self._call(_unfinished_tasks)
        except AgentError as exc:
            _log.error("registry API: cannot look for unfinished tasks: %s", exc.message)
            return []
        for task_id in ids:
            _log.info("bulk task %s was not finished; resuming it", task_id)
            self._schedule(task_id)
        return ids

    async def close(self) -> None:
        """Stop: a running task ends its current batch, queued ones stay for the next start."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, functools.partial(self._bulk.shutdown, wait=True, cancel_futures=True)
        )
        await loop.run_in_executor(self._requests, self._close_session)
        await loop.run_in_executor(None, functools.partial(self._requests.shutdown, wait=True))

    # --- the request thread --------------------------------------------------------------

    def _current(self) -> _Session:
        config = self._config()
        if self._session is not None and self._session.config is not config:
            _log.info("registry API: the configuration was reloaded; reopening the registry")
            self._close_session()
        if self._session is None:
            self._session = _Session.open(config)
        return self._session

    def _close_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    async def _call(self, work: Callable[[_Session], T]) -> T:
        """Run ``work`` on the request thread with the current session."""
        if self._closed:
            raise StateError("the registry API is stopping", reason="AGENT_STOPPING")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._requests, lambda: work(self._current()))

    # --- templates -----------------------------------------------------------------------

    async def _create_template(self, request: web.Request) -> web.Response:
        _query(request, ())
        body = await read_json(request)
        return json_response(await self._call(lambda s: s.templates.create(body)))

    async def _list_templates(self, request: web.Request) -> web.Response:
        query = _query(request, ("maxResults", "nextToken"))
        limit = _max_results(query)
        token = query.get("nextToken")
        return json_response(
            await self._call(lambda s: s.templates.list(max_results=limit, next_token=token))
        )

    async def _describe_template(self, request: web.Request) -> web.Response:
        _query(request, ())
        name = request.match_info["name"]
        return json_response(await self._call(lambda s: s.templates.describe(name)))

    # --- RegisterThing -------------------------------------------------------------------

    async def _register_thing(self, request: web.Request) -> web.Response:
        _query(request, ())
        template_body, parameters = check_register_request(await read_json(request))

        def register(session: _Session) -> dict[str, Any]:
            return session.registry().register_thing(template_body, parameters).to_dict()

        return json_response(await self._call(register))

    # --- bulk tasks ----------------------------------------------------------------------

    async def _start_task(self, request: web.Request) -> web.Response:
        _query(request, ())
        body = await read_json(request)
        started = await self._call(lambda s: s.tasks.start(body))
        self._schedule(started["taskId"])
        return json_response(started)

    async def _list_tasks(self, request: web.Request) -> web.Response:
        query = _query(request, ("status",))
        problems: list[fc.Problem] = []
        status = fc.check_enum(query, "status", TASK_STATUSES, problems)
        fc.raise_problems(problems, "ListThingRegistrationTasks")
        return json_response(await self._call(lambda s: s.tasks.list_tasks(status)))

    async def _describe_task(self, request: web.Request) -> web.Response:
        _query(request, ())
        task_id = request.match_info["id"]
        return json_response(await self._call(lambda s: s.tasks.describe(task_id)))

    async def _cancel_task(self, request: web.Request) -> web.Response:
        _query(request, ())
        task_id = request.match_info["id"]
        return json_response(await self._call(lambda s: s.tasks.cancel(task_id)))

    async def _list_reports(self, request: web.Request) -> web.Response:
        query = _query(request, ("reportType",))
        task_id = request.match_info["id"]
        kind = query.get("reportType", "")
        return json_response(await self._call(lambda s: s.tasks.list_reports(task_id, kind)))

    # --- the bulk thread -----------------------------------------------------------------

    def _schedule(self, task_id: str) -> None:
        try:
            self._bulk.submit(self._run_task, task_id)
        except RuntimeError:  # shut down between the request and here: resumed at next start
            _log.info("bulk task %s will run at the next start", task_id)

    def _check_stop(self, described: dict[str, Any]) -> None:
        if self._stopping.is_set() and described["status"] in UNFINISHED:
            raise _Paused

    def _run_task(self, task_id: str) -> None:
        if self._stopping.is_set():
            return
        config = self._config()
        try:
            with open_registry_store(config) as store:
                described = bulk_tasks(config, store).run(task_id, progress=self._check_stop)
        except _Paused:
            _log.info("bulk task %s paused for shutdown; it resumes at the next start", task_id)
        except TaskBusyError:
            _log.info("bulk task %s is being run by another process", task_id)
        except AgentError as exc:
            _log.error("bulk task %s stopped: %s", task_id, exc.message)
        except Exception:  # noqa: BLE001 - the top of a background run: log it
            _log.exception("bulk task %s failed unexpectedly", task_id)
        else:
            _log.info(
                "bulk task %s %s: %d registered, %d failed",
                task_id,
                described["status"],
                described["successCount"],
                described["failureCount"],
            )


def _unfinished_tasks(session: _Session) -> list[str]:
    """Ids of the tasks still to run, oldest first."""
    ids = [
        task_id
        for status in sorted(UNFINISHED)
        for task_id in session.tasks.list_tasks(status)["taskIds"]
    ]
    order = {task_id: i for i, task_id in enumerate(session.tasks.list_tasks()["taskIds"])}
    return sorted(ids, key=lambda task_id: -order[task_id])
