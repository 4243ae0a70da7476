"""The network and time backend interfaces and the values they exchange.

A backend turns a :class:`~agent.netconf.plan.NetworkPlan` into system state. The rollback
logic in :mod:`agent.netconf.rollback` only talks to these protocols:

1. ``snapshot`` records what the backend would touch (files, live addresses and routes) as
   JSON-ready data, which goes into the durable trial marker;
2. ``apply`` puts the plan in force as a trial;
3. ``commit`` makes the trial permanent, or ``revert`` restores a snapshot exactly, going on
   past a failing step and returning the list of failures.

``changes`` says, without touching anything, what ``apply`` would change.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agent.errors import ApplyError
from agent.netconf.plan import NetworkPlan, NtpServer

_log = logging.getLogger(__name__)

Snapshot = dict[str, Any]
Action = Literal["add", "remove", "write", "delete", "run", "keep"]


class NetworkApplyError(ApplyError):
    """A network or time setting could not be applied (the previous state is restored)."""

    default_reason = "NETWORK_APPLY_FAILED"


class TimeSyncError(ApplyError):
    """The time backend could not be configured or queried."""

    default_reason = "TIME_SYNC_FAILED"


@dataclass(frozen=True, slots=True)
class Change:
    """One thing ``apply`` would change: ``target`` (an interface or a file), what, detail."""

    target: str
    action: Action
    detail: str

    def to_json(self) -> dict[str, str]:
        """JSON form."""
        return {"target": self.target, "action": self.action, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class TimeStatus:
    """What the time daemon says: whether the clock is synchronised, and to what."""

    synchronized: bool
    server_name: str = ""
    server_address: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Whether the trial works; if not, a stable reason and a sentence."""

    ok: bool
    reason: str = ""
    message: str = ""
    checks: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "ok": self.ok,
            "reason": self.reason or None,
            "message": self.message,
            "checks": list(self.checks),
        }


Prober = Callable[[NetworkPlan, float, "tuple[str, int] | None"], ProbeResult]


@runtime_checkable
class NetworkBackend(Protocol):
    """Puts a plan's ports into force."""

    #: The config name (``netlink``, ``networkd``, ``dry-run``).
    name: str
    #: False when nothing real changes (no probe makes sense).
    live: bool

    def changes(self, plan: NetworkPlan) -> list[Change]:
        """What :meth:`apply` would change, touching nothing."""
        ...

    def snapshot(self, plan: NetworkPlan) -> Snapshot:
        """Record everything :meth:`apply` may change for these ports."""
        ...

    def apply(self, plan: NetworkPlan) -> None:
        """Put ``plan`` into force as a trial."""
        ...

    def commit(self, plan: NetworkPlan) -> None:
        """Make the trial permanent."""
        ...

    def revert(self, snapshot: Snapshot) -> list[str]:
        """Restore exactly what ``snapshot`` recorded.

        Every step is attempted even when an earlier one fails; the failed steps are
        returned (empty: the revert is complete).
        """
        ...

    def reapply(self, plan: NetworkPlan) -> None:
        """Put a committed plan back in force at start-up (no-op where the OS persists it)."""
        ...


@runtime_checkable
class TimeBackend(Protocol):
    """Hands NTP servers to the time daemon and reports synchronisation."""

    name: str

    def changes(self, servers: Sequence[NtpServer]) -> list[Change]:
        """What :meth:`apply` would change, touching nothing."""
        ...

    def snapshot(self) -> Snapshot:
        """Record the files :meth:`apply` may change."""
        ...

    def apply(self, servers: Sequence[NtpServer]) -> None:
        """Configure the servers and make the daemon use them."""
        ...

    def revert(self, snapshot: Snapshot) -> None:
        """Restore the files and make the daemon use them again."""
        ...

    def status(self) -> TimeStatus:
        """Whether the clock is synchronised now, and to which server."""
        ...


def run_command(
    argv: Sequence[str], *, what: str, timeout: float = 30.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a system tool with a bounded time; failures become :class:`NetworkApplyError`."""
    _log.debug("running %s", " ".join(argv))
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise NetworkApplyError(
            f"cannot {what}: {argv[0]} is not installed", reason="COMMAND_NOT_FOUND"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise NetworkApplyError(
            f"cannot {what}: {argv[0]} did not finish within {timeout:g} s",
            reason="COMMAND_TIMEOUT",
        ) from exc
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise NetworkApplyError(
            f"cannot {what}: {argv[0]} exited with {result.returncode}: {tail[0]}",
            reason="COMMAND_FAILED",
        )
    return result


def expand(argv: Sequence[str], **values: str) -> list[str]:
    """Replace ``{ifname}``-style placeholders in each argument."""
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)  # noqa: PLW2901 - a plain substitution
        out.append(arg)
    return out
