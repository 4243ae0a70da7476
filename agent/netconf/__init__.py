"""Ethernet0/Ethernet1 and NTP: validated plans applied with verified rollback.

The interfaces are :class:`~agent.netconf.base.NetworkBackend` and
:class:`~agent.netconf.base.TimeBackend`; the adapters sit beside them (``netlink``,
``networkd``, ``dryrun``, ``timesync``). :mod:`agent.netconf.rollback` holds the trial logic,
:mod:`agent.netconf.factory` builds backends from the configuration.
"""

from agent.netconf.base import (
    Change,
    NetworkApplyError,
    NetworkBackend,
    TimeBackend,
    TimeStatus,
    TimeSyncError,
)
from agent.netconf.plan import (
    NetworkConfigurationError,
    NetworkPlan,
    NtpServer,
    PortPlan,
    build_plan,
    plan_from_json,
)

__all__ = [
    "Change",
    "NetworkApplyError",
    "NetworkBackend",
    "NetworkConfigurationError",
    "NetworkPlan",
    "NtpServer",
    "PortPlan",
    "TimeBackend",
    "TimeStatus",
    "TimeSyncError",
    "build_plan",
    "plan_from_json",
]
