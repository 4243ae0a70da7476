"""``edge-agent template ...`` and ``edge-agent bulk ...``.

Templates: ``create``, ``validate``, ``list``, ``describe``, ``update``, ``versions`` (list,
create, describe, set-default, delete) and ``delete``. Bulk registration: ``start`` (runs the
task in the foreground), ``resume``, ``describe``, ``list``, ``cancel``, ``reports``. On a
terminal ``bulk start|resume`` draws a progress bar on stderr; otherwise they write one JSON
progress line per second on stderr. The final result is always JSON on stdout.
"""

# ruff: noqa: PLC0415 - subcommands import their modules lazily (fast start)

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import EXIT_OK, EXIT_RUNTIME, InvalidRequestError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.registry.bulk import BulkTasks
    from agent.registry.templates_store import TemplateStore
    from agent.store import Store


def register(sub: Any) -> None:
    """Add the ``template`` and ``bulk`` commands."""
    _register_template(sub)
    _register_bulk(sub)


# --- shared ------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> AgentConfig:
    from agent.config import load_config

    return load_config(args.config)


def _open_store(config: AgentConfig) -> Store:
    from agent.registry.wiring import open_registry_store

    return open_registry_store(config)


def _templates(config: AgentConfig, store: Store) -> TemplateStore:
    from agent.registry.wiring import template_store

    return template_store(config, store)


def _bulk(config: AgentConfig, store: Store) -> BulkTasks:
    from agent.registry.wiring import bulk_tasks

    return bulk_tasks(config, store)


def _print_templates(args: argparse.Namespace, call: Callable[[TemplateStore], Any]) -> int:
    """Open the template store, print what ``call`` returns as JSON."""
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        print_json(call(_templates(config, store)))
    return EXIT_OK


def _print_tasks(args: argparse.Namespace, call: Callable[[BulkTasks], Any]) -> int:
    """Open the bulk tasks, print what ``call`` returns as JSON."""
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        print_json(call(_bulk(config, store)))
    return EXIT_OK


def _read_text(path: Path, what: str) -> str:
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            f"cannot read the {what} file {path}: {exc}", reason="INPUT_FILE_UNREADABLE"
        ) from exc


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read_text(path, what))
    except ValueError as exc:
        raise InvalidRequestError(
            f"the {what} file {path} is not valid JSON: {exc}", reason="REQUEST_NOT_JSON"
        ) from exc


# --- template ------------------------------------------------------------------------------


def _register_template(sub: Any) -> None:
    tpl = sub.add_parser("template", help="provisioning templates and their versions")
    tsub = tpl.add_subparsers(dest="template_command", required=True, metavar="COMMAND")

    for name, handler, text in (
        ("create", _template_create, "create a provisioning template (version 1, the default)"),
        ("validate", _template_validate, "check a CreateProvisioningTemplate request only"),
    ):
        p = tsub.add_parser(name, help=text)
        p.add_argument("--request", type=Path, help="the whole request as JSON ('-': stdin)")
        p.add_argument("--name", help="templateName")
        p.add_argument("--body", type=Path, help="file holding templateBody ('-': stdin)")
        p.add_argument("--role-arn", help="provisioningRoleArn")
        p.add_argument("--description")
        p.add_argument("--type", choices=("FLEET_PROVISIONING", "JITP"))
        p.add_argument("--enabled", action="store_true", default=None)
        p.add_argument("--hook-target-arn", help="preProvisioningHook.targetArn")
        p.add_argument("--hook-payload-version", help="preProvisioningHook.payloadVersion")
        p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
        p.set_defaults(handler=handler)

    _register_template_reads(tsub)
    _register_versions(tsub)


def _register_template_reads(tsub: Any) -> None:
    p = tsub.add_parser("list", help="list templates")
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.set_defaults(handler=_template_list)

    p = tsub.add_parser("describe", help="describe a template (or one version)")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="describe this version instead")
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.set_defaults(handler=_template_describe)

    p = tsub.add_parser("update", help="change description, enabled, role, hook")
    p.add_argument("name")
    p.add_argument("--request", type=Path, required=True, help="UpdateProvisioningTemplate JSON")
    p.set_defaults(handler=_template_update)

    p = tsub.add_parser("delete", help="delete a template and all its versions")
    p.add_argument("name")
    p.set_defaults(handler=_template_delete)


def _register_versions(tsub: Any) -> None:
    ver = tsub.add_parser("versions", help="template versions: list|create|describe|...")
    vsub = ver.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    p = vsub.add_parser("list", help="list a template's versions")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.set_defaults(handler=_versions_list)
    p = vsub.add_parser("create", help="add a version")
    p.add_argument("name")
    p.add_argument("--body", type=Path, required=True, help="file holding templateBody")
    p.add_argument("--set-default", action="store_true", help="make it the default version")
    p.set_defaults(handler=_versions_create)
    p = vsub.add_parser("describe", help="describe one version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.set_defaults(handler=_versions_describe)
    p = vsub.add_parser("set-default", help="make a version the default")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(handler=_versions_set_default)
    p = vsub.add_parser("delete", help="delete a version (never the default one)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(handler=_versions_delete)


def _create_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.request is not None:
        loaded = _read_json(args.request, "request")
        if not isinstance(loaded, dict):
            raise InvalidRequestError("the request must be a JSON object", reason="WRONG_TYPE")
        request.update(loaded)
    if args.body is not None:
        request["templateBody"] = _read_text(args.body, "template body")
    simple = {
        "templateName": args.name,
        "provisioningRoleArn": args.role_arn,
        "description": args.description,
        "type": args.type,
        "enabled": args.enabled,
    }
    request.update({k: v for k, v in simple.items() if v is not None})
    if args.hook_target_arn is not None or args.hook_payload_version is not None:
        hook = {"targetArn": args.hook_target_arn, "payloadVersion": args.hook_payload_version}
        request["preProvisioningHook"] = {k: v for k, v in hook.items() if v is not None}
    if args.tag:
        tags = []
        for item in args.tag:
            key, sep, value = item.partition("=")
            tags.append({"Key": key, "Value": value} if sep else {"Key": key})
        request["tags"] = tags
    return request


def _template_create(args: argparse.Namespace) -> int:
    return _print_templates(args, lambda templates: templates.create(_create_request(args)))


def _template_validate(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        checked = _templates(config, store).validate_create(_create_request(args))
    print_json({"valid": True, "templateName": checked["templateName"], "type": checked["type"]})
    return EXIT_OK


def _template_list(args: argparse.Namespace) -> int:
    return _print_templates(args, lambda templates: templates.list())


def _template_describe(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        templates = _templates(config, store)
        if args.version is None:
            print_json(templates.describe(args.name))
        else:
            print_json(templates.describe_version(args.name, args.version))
    return EXIT_OK


def _template_update(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    request = _read_json(args.request, "request")
    if not isinstance(request, dict):
        raise InvalidRequestError("the request must be a JSON object", reason="WRONG_TYPE")
    with _open_store(config) as store:
        templates = _templates(config, store)
        templates.update(args.name, request)
        print_json(templates.describe(args.name))
    return EXIT_OK


def _template_delete(args: argparse.Namespace) -> int:
    return _print_templates(args, lambda templates: templates.delete(args.name))


def _versions_list(args: argparse.Namespace) -> int:
    return _print_templates(args, lambda templates: templates.list_versions(args.name))


def _versions_create(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    body = _read_text(args.body, "template body")
    with _open_store(config) as store:
        templates = _templates(config, store)
        print_json(templates.create_version(args.name, body, set_as_default=args.set_default))
    return EXIT_OK


def _versions_describe(args: argparse.Namespace) -> int:
    return _print_templates(
        args, lambda templates: templates.describe_version(args.name, args.version)
    )


def _versions_set_default(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        templates = _templates(config, store)
        templates.set_default_version(args.name, args.version)
        print_json(templates.describe_version(args.name, args.version))
    return EXIT_OK


def _versions_delete(args: argparse.Namespace) -> int:
    return _print_templates(
        args, lambda templates: templates.delete_version(args.name, args.version)
    )


# --- bulk --------------------------------------------------------------------------------


def _register_bulk(sub: Any) -> None:
    bulk = sub.add_parser("bulk", help="bulk thing registration (StartThingRegistrationTask)")
    bsub = bulk.add_subparsers(dest="bulk_command", required=True, metavar="COMMAND")

    p = bsub.add_parser("start", help="start a registration task and run it in the foreground")
    p.add_argument("--request", type=Path, help="StartThingRegistrationTask JSON ('-': stdin)")
    p.add_argument("--bucket", help="inputFileBucket: a directory of the configured bulk_root")
    p.add_argument("--key", help="inputFileKey: the input file's path inside the bucket")
    p.add_argument("--role-arn", help="roleArn")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--template-body", type=Path, help="file holding templateBody")
    body.add_argument("--template", help="use the default version of this stored template")
    p.add_argument(
        "--detach", action="store_true", help="only create the task; run it with 'bulk resume'"
    )
    p.set_defaults(handler=_bulk_start)

    p = bsub.add_parser("resume", help="run (or continue after a crash) an unfinished task")
    p.add_argument("task_id", metavar="TASK")
    p.set_defaults(handler=_bulk_resume)

    p = bsub.add_parser("describe", help="a task's status, counts and progress")
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.set_defaults(handler=_bulk_describe)

    p = bsub.add_parser("list", help="task ids, newest first")
    p.add_argument(
        "--status", choices=("InProgress", "Completed", "Failed", "Cancelled", "Cancelling")
    )
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.set_defaults(handler=_bulk_list)

    p = bsub.add_parser("cancel", help="stop a task (StopThingRegistrationTask)")
    p.add_argument("task_id", metavar="TASK")
    p.set_defaults(handler=_bulk_cancel)

    p = bsub.add_parser("reports", help="print a task's RESULTS or ERRORS report (JSON lines)")
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("--type", dest="report_type", choices=("RESULTS", "ERRORS"), required=True)
    p.add_argument("--links", action="store_true", help="print {resourceLinks, reportType} instead")
    p.set_defaults(handler=_bulk_reports)


def _start_request(args: argparse.Namespace, config: AgentConfig, store: Store) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.request is not None:
        loaded = _read_json(args.request, "request")
        if not isinstance(loaded, dict):
            raise InvalidRequestError("the request must be a JSON object", reason="WRONG_TYPE")
        request.update(loaded)
    simple = {"inputFileBucket": args.bucket, "inputFileKey": args.key, "roleArn": args.role_arn}
    request.update({k: v for k, v in simple.items() if v is not None})
    if args.template_body is not None:
        request["templateBody"] = _read_text(args.template_body, "template body")
    elif args.template is not None:
        request["templateBody"] = _templates(config, store).describe(args.template)["templateBody"]
    return request


class _Progress:
    """Progress on stderr: a bar on a terminal, a JSON line per second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.first_lines: int | None = None

    def __call__(self, described: dict[str, Any]) -> None:
        now = time.monotonic()
        lines = int(described["successCount"]) + int(described["failureCount"])
        if self.first_lines is None:
            self.first_lines = lines
        finished = described["status"] != "InProgress"
        if not finished and now - self.last < (0.1 if self.tty else 1.0) and self.last:
            return
        self.last = now
        rate = (lines - self.first_lines) / max(now - self.started, 1e-6)
        if self.tty:
            pct = int(described["percentageProgress"])
            bar = "#" * (pct * 30 // 100)
            sys.stderr.write(
                f"\r[{bar:<30}] {pct:3d}%  {described['successCount']} ok  "
                f"{described['failureCount']} failed  {rate:,.0f} lines/s  "
            )
            if finished:
                sys.stderr.write("\n")
        else:
            keys = ("taskId", "status", "percentageProgress", "successCount", "failureCount")
            line = {k: described[k] for k in keys}
            line["linesPerSecond"] = round(rate)
            sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()


def _run_task(tasks: BulkTasks, task_id: str) -> int:
    from agent.cli import print_json

    progress = _Progress()
    progress(tasks.describe(task_id))
    described = tasks.run(task_id, progress=progress)
    print_json(described)
    return EXIT_RUNTIME if described["status"] == "Failed" else EXIT_OK


def _bulk_start(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        tasks = _bulk(config, store)
        task_id = tasks.start(_start_request(args, config, store))["taskId"]
        if args.detach:
            print_json({"taskId": task_id})
            return EXIT_OK
        return _run_task(tasks, task_id)


def _bulk_resume(args: argparse.Namespace) -> int:
    config = _config(args)
    with _open_store(config) as store:
        return _run_task(_bulk(config, store), args.task_id)


def _bulk_describe(args: argparse.Namespace) -> int:
    return _print_tasks(args, lambda tasks: tasks.describe(args.task_id))


def _bulk_list(args: argparse.Namespace) -> int:
    return _print_tasks(args, lambda tasks: tasks.list_tasks(args.status))


def _bulk_cancel(args: argparse.Namespace) -> int:
    return _print_tasks(args, lambda tasks: tasks.cancel(args.task_id))


def _bulk_reports(args: argparse.Namespace) -> int:
    from agent.cli import print_json

    config = _config(args)
    with _open_store(config) as store:
        tasks = _bulk(config, store)
        if args.links:
            print_json(tasks.list_reports(args.task_id, args.report_type))
            return EXIT_OK
        out = sys.stdout.buffer
        for line in tasks.read_report(args.task_id, args.report_type):
            out.write(line)
        out.flush()
    return EXIT_OK
