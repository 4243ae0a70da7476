"""Generated valid codes through the whole scan path: no secret in answers, events (MQTT
bodies and the queued changes included) or logs."""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commissioning.notify import FanOutNotifier, JournalNotifier, RecordingNotifier
from agent.commissioning.qr import parse
from agent.commissioning.qr.zigbee import crc16_x25
from agent.commissioning.reporting import scan_body
from agent.commissioning.scanner import ScanHandler
from agent.commissioning.things import ManagedThings
from agent.store import Store

HEX = "0123456789ABCDEF"


@st.composite
def zigbee_codes(draw: st.DrawFn) -> str:
    ieee = draw(st.text(HEX, min_size=16, max_size=16))
    body = draw(st.binary(min_size=16, max_size=16))
    code = (body + crc16_x25(body).to_bytes(2, "little")).hex().upper()
    return draw(st.sampled_from([f"Z:{ieee}$I:{code}", f"{ieee}|{code}", f"|{ieee}|{code}|"]))


@st.composite
def zwave_codes(draw: st.DrawFn) -> str:
    keys = draw(st.sampled_from(["001", "003", "007", "135"]))
    dsk = "".join(f"{draw(st.integers(0, 65535)):05d}" for _ in range(8))
    tail = keys + dsk + "0010" + "0435301537" + "0220" + "65520000010000300578"
    checksum = int.from_bytes(hashlib.sha1(tail.encode()).digest()[:2], "big")  # noqa: S324
    return f"9001{checksum:05d}{tail}"


PASSWORDS = st.text(
    "abcdefghijklmnopqrstuvwxyz0123456789!#$%&()*+-=?@^_`{|}~/ ", min_size=8, max_size=30
)
# "#!" makes each generated password distinctive (it cannot occur in a log line by chance).
WIFI = st.builds(lambda p: f"WIFI:S:uplink;T:WPA;P:#!{p.strip()}#;;", PASSWORDS)
CODES = st.one_of(zigbee_codes(), zwave_codes(), WIFI)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(code=CODES)
def test_scan_path_keeps_secrets(code: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    payload = parse(code)
    secrets = [s for s in payload.secret_values() if len(s) >= 8]
    if payload.format.startswith("zwave"):
        secrets = [payload.fields["dsk"]]  # the whole DSK; its PIN block is checked below
    recorder = RecordingNotifier()
    notifier = FanOutNotifier(JournalNotifier(), recorder)
    with tempfile.TemporaryDirectory() as tmp:
        things = ManagedThings(
            Store(Path(tmp) / "s.db"), region="us-east-1", account="1", notifier=notifier
        )
        event = ScanHandler(things, notifier).handle("test", code)
        assert event.accepted, event
        described = str(things.describe(event.thing_id or ""))
        queued = str(things.pending_changes())  # what goes to MQTT
    mqtt = str([scan_body(e) for e in recorder.scans] + [e.body() for e in recorder.things])
    shown = caplog.text + str([e.to_dict() for e in recorder.scans + recorder.things])
    shown += queued + mqtt
    for secret in secrets:
        assert secret not in shown
        assert secret not in described
    assert re.findall(r"dsk=(.{5})", shown) in ([], ["*****"] * len(re.findall("dsk=", shown)))
