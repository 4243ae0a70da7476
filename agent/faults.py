"""Crash points: a test facility that kills the process at a named step boundary.

The product code passes through :func:`crash_point` at each boundary of a provisioning run
(see :data:`POINTS`). When the environment variable ``EDGE_AGENT_CRASH_AT`` names the point,
the process sends itself ``SIGKILL`` there: no ``finally``, no ``atexit``, no flush, exactly
what a power cut or ``kill -9`` leaves behind. Otherwise a crash point costs one dictionary
lookup. The variable is read once, at import; the recovery tests start the daemon with it,
then again without it, and check what the restart made of the state.

Documented in docs/operations.md ("Crash points"). Not for production use: an appliance
whose service environment names a point dies at every run.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "EDGE_AGENT_CRASH_AT"

#: Every crash point, in the order a run passes them, with what has happened by then.
POINTS: dict[str, str] = {
    "validate.done": "the archive verified and noted; nothing installed",
    "install.staged": "the credential set written under sets/, not in force",
    "install.activated": "the new set in force, the ledger transaction not committed",
    "install.recorded": "the set in force and recorded in the ledger",
    "network.applied": "the trial configuration applied, not probed nor committed",
    "network.committed": "the network committed, the run not yet past its network step",
    "time-check.done": "the claim window checked, the fleet step not started",
    "fleet.certificate": "CreateCertificateFromCsr answered and recorded",
    "fleet.registering": "RegisterThing published, its answer not received",
    "fleet.registered": "RegisterThing answered and recorded, the permanent set not written",
    "fleet.switched": "the permanent set in force, the exchange not yet recorded as installed",
    "fleet.installed": "the permanent set in force and recorded",
    "report.outcome": "the run finished its steps, its outcome not yet recorded",
}

_log = logging.getLogger(__name__)
_armed: dict[str, bool] = {}


def _arm(value: str | None) -> None:
    _armed.clear()
    if not value:
        return
    if value not in POINTS:
        _log.error("%s=%s names no crash point; known: %s", ENV, value, ", ".join(POINTS))
        return
    _armed[value] = True
    _log.warning("crash point %s armed: the process will kill itself there", value)


def crash_point(name: str) -> None:
    """``SIGKILL`` this process when ``EDGE_AGENT_CRASH_AT`` names ``name``."""
    if _armed.get(name):
        _log.critical("crash point %s reached: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


_arm(os.environ.get(ENV))
