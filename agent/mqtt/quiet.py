"""aiomqtt's client without its once-a-second wake-up.

aiomqtt 2.x drives paho's ``loop_misc`` (keepalive pings and their timeout) from a task
that sleeps one second between calls, so an idle appliance wakes up sixty times a minute
for a keepalive that is due once a minute. :class:`QuietClient` sleeps instead until the
next moment ``loop_misc`` can have something to do: a PINGREQ due ``keepalive`` seconds
after the last packet out or the last bytes in, or the end of the wait for a PINGRESP.
Those times only move later as traffic flows, so waking at a computed time is never late
(at worst early, and then it computes again).

The schedule reads three of paho's private timestamps; where they are missing (another
paho) it falls back to aiomqtt's own one-second cadence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

#: Seconds added to a computed due time (a timer may fire a hair early).
SLACK = 0.05
#: The cadence without paho's timestamps (aiomqtt's own).
FALLBACK = 1.0


def misc_delay(client: Any, now: float) -> float:
    """Seconds until ``client.loop_misc()`` next has work (keepalive ping or its timeout)."""
    keepalive = float(getattr(client, "_keepalive", 0) or 0)
    try:
        last_out = float(client._last_msg_out)  # noqa: SLF001 - see the module docstring
        last_in = float(client._last_bytes_received)  # noqa: SLF001
        ping = float(client._ping_t)  # noqa: SLF001
    except (AttributeError, TypeError, ValueError):
        return FALLBACK
    if keepalive <= 0:
        return 3600.0  # no keepalive: nothing is ever due (a disconnect is seen on the socket)
    due = min(last_out, last_in) + keepalive
    if ping > 0:
        due = min(due, ping + keepalive)
    return max(due - now, 0.0) + SLACK


class QuietClient(aiomqtt.Client):
    """``aiomqtt.Client`` whose keepalive task wakes only when a keepalive step is due."""

    async def _misc_loop(self) -> None:
        client = self._client
        while client.loop_misc() == paho.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - a timer to the due time
            await asyncio.sleep(misc_delay(client, paho.time_func()))
