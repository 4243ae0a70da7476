"""The keepalive task's schedule: awake only when a PINGREQ or its timeout is due."""

from __future__ import annotations

from types import SimpleNamespace

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.quiet import FALLBACK, SLACK, misc_delay


def _client(keepalive: float, out: float, received: float, ping: float = 0) -> SimpleNamespace:
    return SimpleNamespace(
        _keepalive=keepalive, _last_msg_out=out, _last_bytes_received=received, _ping_t=ping
    )


def test_sleeps_until_a_ping_is_due() -> None:
    assert misc_delay(_client(60, out=100, received=110), now=100) == 60 + SLACK
    # traffic in and out moves the due time later
    assert misc_delay(_client(60, out=150, received=140), now=150) == 50 + SLACK


def test_a_ping_waiting_for_its_answer_wakes_at_its_timeout() -> None:
    assert misc_delay(_client(60, out=200, received=200, ping=190), now=200) == 50 + SLACK


def test_an_overdue_step_runs_at_once() -> None:
    assert misc_delay(_client(60, out=0, received=0), now=100) == SLACK


def test_no_keepalive_nothing_is_due_and_unknown_clients_fall_back() -> None:
    assert misc_delay(_client(0, out=0, received=0), now=100) >= 3600
    assert misc_delay(SimpleNamespace(), now=1) == FALLBACK


def test_the_paho_in_use_has_the_timestamps_the_schedule_reads() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client._keepalive = 30
    now = paho.time_func()
    delay = misc_delay(client, now)
    assert delay != FALLBACK
    assert 0 < delay <= 30 + SLACK
