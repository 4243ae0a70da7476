"""Background tasks a long-running service starts and owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class BackgroundTasks:
    """A service's tasks: each kept until it ends, a failure logged, all cancelled at the end.

    Args:
        log: where a task that ended with an exception is reported.
    """

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start ``coro`` as the task ``name`` on the running loop."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._log.error("%s stopped: %s: %s", task.get_name(), type(exc).__name__, exc)

    async def cancel(self, name: str | None = None) -> None:
        """Cancel the tasks called ``name`` (all when None) and wait until they have ended."""
        tasks = [t for t in self._tasks if name is None or t.get_name() == name]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
