"""A service's background tasks: kept, failures logged, cancelled by name or all."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.tasks import BackgroundTasks


def test_failure_logged_and_cancel_by_name_then_all(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test-tasks")

    async def scenario() -> tuple[bool, bool, bool]:
        tasks = BackgroundTasks(log)

        async def fails() -> None:
            raise RuntimeError("radio gone")

        scanner = tasks.spawn(asyncio.sleep(60), "scanner")
        other = tasks.spawn(asyncio.sleep(60), "reporter")
        tasks.spawn(fails(), "broken")
        await asyncio.sleep(0.01)
        await tasks.cancel("scanner")
        first = (scanner.cancelled(), other.done())
        await tasks.cancel()
        return first[0], first[1], other.cancelled()

    with caplog.at_level(logging.ERROR, "test-tasks"):
        scanner_cancelled, other_done_early, other_cancelled = asyncio.run(scenario())
    assert scanner_cancelled
    assert not other_done_early
    assert other_cancelled
    assert [r.getMessage() for r in caplog.records] == ["broken stopped: RuntimeError: radio gone"]
