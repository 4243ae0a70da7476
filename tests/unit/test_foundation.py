"""Errors, configuration, the state store and durable writes."""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config, parse_config
from agent.errors import (
    AgentError,
    ArchiveReusedError,
    ConfigError,
    CorruptStateError,
    FieldProblem,
    ValidationError,
    error_from_dict,
)
from agent.fsutil import atomic_write
from agent.store import Store


def test_error_wire_shape_and_round_trip() -> None:
    error = ValidationError("bad", reason="CERTIFICATE_EXPIRED", fields=[FieldProblem("a.b", "no")])
    wire = error.to_dict()
    assert wire == {
        "error": {
            "code": "ValidationException",
            "statusCode": 400,
            "reason": "CERTIFICATE_EXPIRED",
            "message": "bad",
            "fields": [{"path": "a.b", "message": "no"}],
        }
    }
    back = error_from_dict(wire)
    assert isinstance(back, ValidationError)
    assert (back.reason, back.message, back.fields) == (error.reason, "bad", error.fields)
    conflict = error_from_dict(ArchiveReusedError("used").to_dict())
    assert conflict.code == "ConflictException"
    assert conflict.status_code == 409


def test_reason_must_be_upper_snake() -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        ValidationError("x", reason="not-upper")


def test_every_error_class_is_registered_with_a_code() -> None:
    for name, cls in AgentError.registry.items():
        assert name.endswith("Error")
        assert cls.code.endswith("Exception")
        assert 400 <= cls.status_code <= 599


def test_default_config_is_complete() -> None:
    config = parse_config("")
    assert config == AgentConfig()
    assert config.archive.max_lifetime_seconds == 300


def test_config_values_and_paths() -> None:
    config = parse_config(
        """
        [agent]
        state_dir = "/tmp/x"
        log_level = "debug"
        [archive]
        clock_skew_seconds = 5
        build_time_floor = "2027-01-01T00:00:00+01:00"
        [network]
        backend = "netlink"
        probe_timeout_seconds = 2
        """
    )
    assert config.agent.state_dir == Path("/tmp/x")
    assert config.archive.clock_skew_seconds == 5
    assert config.archive.build_time_floor == dt.datetime(2026, 12, 31, 23, tzinfo=dt.UTC)
    assert config.network.probe_timeout_seconds == 2.0


def test_config_reports_every_problem_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            """
            surprise = 1
            [agent]
            log_level = "loud"
            state_dir = 7
            [archive]
            max_lifetime_seconds = 0
            require_synchronized_clock = "yes"
            build_time_floor = "yesterday"
            [ntp]
            sync_timeout_seconds = true
            """
        )
    paths = [f.path for f in caught.value.fields]
    assert paths == [
        "surprise",
        "agent.state_dir",
        "agent.log_level",
        "archive.max_lifetime_seconds",
        "archive.build_time_floor",
        "archive.require_synchronized_clock",
        "ntp.sync_timeout_seconds",
    ]
    assert caught.value.exit_code == 2


def test_config_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[archive\n")
    assert caught.value.reason == "CONFIG_SYNTAX"
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert caught.value.reason == "CONFIG_UNREADABLE"


def test_store_migrations_are_versioned_per_component(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    v1 = ["CREATE TABLE a (x INTEGER);"]
    v2 = [*v1, "ALTER TABLE a ADD COLUMN y TEXT;\nCREATE INDEX a_y ON a(y);"]
    with Store(path) as store:
        assert store.migrate("one", v1) == 1
        assert store.migrate("two", ["CREATE TABLE b (z TEXT);"]) == 1
        with store.transaction() as db:
            db.execute("INSERT INTO a(x) VALUES (1)")
    with Store(path) as store:
        assert store.version("one") == 1
        assert store.migrate("one", v2) == 2
        assert [tuple(r) for r in store.db.execute("SELECT x, y FROM a")] == [(1, None)]
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    with Store(tmp_path / "agent.db") as store:
        store.migrate("one", ["CREATE TABLE a (x);", "CREATE TABLE b (x);"])
    with Store(tmp_path / "agent.db") as store, pytest.raises(CorruptStateError) as caught:
        store.migrate("one", ["CREATE TABLE a (x);"])
    assert caught.value.reason == "STATE_TOO_NEW"


def test_failed_migration_leaves_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "agent.db") as store:
        with pytest.raises(sqlite3.OperationalError):
            store.migrate("one", ["CREATE TABLE a (x);\nCREATE TABLE a (x);"])
        assert store.version("one") == 0
        assert store.db.execute("SELECT name FROM sqlite_master WHERE name='a'").fetchone() is None


def test_store_rejects_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptStateError):
        Store(path)


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write(target, b"new secret")
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_atomic_write_failure_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "key.pem"
    with pytest.raises(FileNotFoundError):
        atomic_write(target, b"x")
    (tmp_path / "dir.pem").mkdir()
    (tmp_path / "dir.pem" / "f").write_bytes(b"keep")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "dir.pem", b"x")  # cannot replace a non-empty directory
    assert (tmp_path / "dir.pem" / "f").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.pem"]
