"""The group committer alone: blocking and called-back writes, failures isolated."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.registry.group_commit import GroupCommitter, LoopCommitter
from agent.registry.storage import PolicyRecord, SqliteRegistryStorage, SqliteRegistryTransaction
from agent.store import Store


def _count(path: Path) -> int:
    with Store(path) as store:
        return int(store.db.execute("SELECT count(*) FROM registry_policies").fetchone()[0])


def _policy(name: str) -> Callable[[SqliteRegistryTransaction], str]:
    def write(tx: SqliteRegistryTransaction) -> str:
        tx.put_policy(PolicyRecord(name=name, document="{}"))
        return name

    return write


def _failing(tx: SqliteRegistryTransaction) -> None:
    _policy("half-written")(tx)
    raise ValueError("refused")


def test_a_write_alone_that_fails_writes_nothing_and_gets_its_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    SqliteRegistryStorage.open(path).close()
    committer = GroupCommitter(path)
    try:
        with pytest.raises(ValueError, match="refused"):
            committer.run(_failing)
        assert _count(path) == 0
        assert committer.run(_policy("p1")) == "p1"
        assert _count(path) == 1
    finally:
        committer.close()


def test_submitted_writes_are_called_back_once_durable(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    SqliteRegistryStorage.open(path).close()
    committer = GroupCommitter(path)
    outcomes: dict[str, tuple[object, BaseException | None]] = {}
    every = threading.Event()
    names = [f"p{i}" for i in range(20)] + ["bad"]

    def on_done(name: str) -> Callable[[object, BaseException | None], None]:
        def done(result: object, error: BaseException | None) -> None:
            outcomes[name] = (result, error)
            if len(outcomes) == len(names):
                every.set()

        return done

    try:
        for name in names:
            write: Callable[[SqliteRegistryTransaction], object] = (
                _failing if name == "bad" else _policy(name)
            )
            committer.submit(write, on_done(name))
        assert every.wait(10)
    finally:
        committer.close()
    assert all(outcomes[n] == (n, None) for n in names[:-1])
    result, error = outcomes["bad"]
    assert result is None
    assert isinstance(error, ValueError)
    assert _count(path) == 20  # the failing write undid only itself


def _record(
    outcomes: list[tuple[str, object, BaseException | None]], name: str
) -> Callable[[object, BaseException | None], None]:
    def done(result: object, error: BaseException | None) -> None:
        outcomes.append((name, result, error))

    return done


def test_the_loop_committer_commits_one_iterations_writes_after_it(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    SqliteRegistryStorage.open(path).close()
    outcomes: list[tuple[str, object, BaseException | None]] = []

    async def main() -> None:
        committer = LoopCommitter(path, asyncio.get_running_loop())
        try:
            for name in ("a", "bad", "b"):
                write: Callable[[SqliteRegistryTransaction], object] = (
                    _failing if name == "bad" else _policy(name)
                )
                committer.submit(write, _record(outcomes, name))
            assert outcomes == []  # nothing runs within the iteration that submitted
            assert _count(path) == 0
            await asyncio.sleep(0)
            assert [n for n, _, _ in outcomes] == ["a", "bad", "b"]
            assert _count(path) == 2  # durable when called back; the failure undid itself
            committer.submit(_policy("c"), _record(outcomes, "c"))
        finally:
            committer.close()  # commits what is still queued

    asyncio.run(main())
    assert outcomes[0] == ("a", "a", None)
    assert outcomes[2] == ("b", "b", None)
    assert isinstance(outcomes[1][2], ValueError)
    assert outcomes[3] == ("c", "c", None)
    assert _count(path) == 3
