"""Stick inserted → SUCCEEDED reported, and start → READY, for ``edge-agent run``.

Real processes: the daemon (directory stick source, dry-run network backend), ``registry
serve`` as the provisioning endpoint and mosquitto as the operational broker, with a
subscriber. One round: a FAT image with a new archive is renamed into the watched
directory; the clock stops when the subscriber receives the run's ``RUN_OUTCOME``
SUCCEEDED. The seconds the run spent in its network step (the probe; none with dry-run) and
its time-check step (the NTP wait) come from ``result.json`` and are shown apart.

Baselines measured in the same run:

- the bare work: ``archive validate + install`` and the fleet exchange called in-process on
  a fresh state directory against the same endpoint (no daemon, stick, network or report);
- start → READY beside ``python -m agent --help`` (interpreter and CLI start-up).

    .venv/bin/python bench/provision.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.archive.clock import SystemClock
from agent.archive.install import provision_from_file
from agent.archive.verify import Policy, load_trust_anchors
from agent.config import ArchiveSection
from agent.mqtt.fleet import FleetOptions, provision
from tests.helpers.appliance import Appliance, Fleet, read_stick, stick_image

REPO = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(label: str, values: list[float]) -> str:
    p50, p95 = _pct(values, 0.5) * 1000, _pct(values, 0.95) * 1000
    return f"  {label:<38} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms"


def _start_to_ready(appliance: Appliance, directory: Path) -> float:
    path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        started = time.monotonic()
        appliance.start()
        sock.settimeout(20)
        while b"READY=1" not in sock.recv(4096):
            pass
        return time.monotonic() - started
    finally:
        del os.environ["NOTIFY_SOCKET"]
        sock.close()


def _cli_start() -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "agent", "--help"], cwd=REPO, check=True, capture_output=True
    )
    return time.monotonic() - started


def _round(
    appliance: Appliance, fleet: Fleet, work: Path, n: int
) -> tuple[float, dict[str, float]]:
    device, data = fleet.archive()
    image = stick_image(work / f"stick-{n}.img", {f"certificates-omni_{device}.zip": data})
    before = appliance.run_ids()
    started = time.monotonic()
    target = appliance.insert(image)
    run_id = appliance.wait_run(after=before, final=False)["Id"]
    while True:
        events = [e for e in fleet.events(run_id) if e["type"] == "RUN_OUTCOME"]
        if events:
            break
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    if events[0]["body"]["status"] != "SUCCEEDED":
        raise SystemExit(f"round {n}: {events[0]}")
    deadline = time.monotonic() + 10
    while (raw := read_stick(target)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    timings: dict[str, float] = json.loads(raw or b"{}").get("timings", {})
    target.unlink()
    return elapsed, timings


def _baseline(fleet: Fleet, work: Path, n: int) -> float:
    device, data = fleet.archive()
    path = work / f"certificates-omni_{device}.zip"
    path.write_bytes(data)
    policy = Policy(trust_anchors=load_trust_anchors(fleet.trust_anchor))
    clock = SystemClock(ArchiveSection().build_time_floor, require_sync=False)
    state = work / f"baseline-{n}"
    started = time.monotonic()
    provision_from_file(path, policy, clock, state)
    asyncio.run(provision(state, FleetOptions(step_timeout=10)))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        work = Path(tmp)
        fleet = Fleet(work / "fleet")
        (work / "fleet").mkdir()
        fleet.start()
        appliance = Appliance(work / "appliance", fleet)
        appliance.directory.mkdir()
        try:
            ready: list[float] = []
            for _ in range(5):
                appliance.stop()
                (work / "notify.sock").unlink(missing_ok=True)
                ready.append(_start_to_ready(appliance, work))
            cli = [_cli_start() for _ in range(5)]
            totals: list[float] = []
            probes: list[float] = []
            ntp: list[float] = []
            fleet_step: list[float] = []
            for n in range(args.rounds):
                elapsed, timings = _round(appliance, fleet, work, n)
                totals.append(elapsed)
                probes.append(timings.get("network", 0.0))
                ntp.append(timings.get("time-check", 0.0))
                fleet_step.append(timings.get("fleet", 0.0))
            appliance.stop()
            base = [_baseline(fleet, work, n) for n in range(args.rounds)]
        finally:
            appliance.stop()
            fleet.stop()
    overhead = [t - p - w for t, p, w in zip(totals, probes, ntp, strict=True)]
    print(f"edge-agent run, {args.rounds} rounds (dry-run network, registry serve, mosquitto)")
    print(_row("insertion -> SUCCEEDED received", totals))
    print(_row("  of which network (dry-run: no probe)", probes))
    print(_row("  of which time-check (NTP wait)", ntp))
    print(_row("  of which fleet step", fleet_step))
    print(_row("  agent time without probe/NTP", overhead))
    print(_row("baseline: validate+install+fleet", base))
    ratio = statistics.median(overhead) / statistics.median(base)
    print(
        f"  ratio (agent without waits / baseline, p50): {ratio:.2f}x; "
        f"overhead p50 {(statistics.median(overhead) - statistics.median(base)) * 1000:.0f} ms "
        "(target <= 1 s)"
    )
    print(_row("start -> READY=1", ready))
    print(_row("baseline: python -m agent --help", cli))
    ready_ratio = statistics.median(ready) / statistics.median(cli)
    print(f"  ratio (READY / CLI start, p50): {ready_ratio:.2f}x (target READY <= 1.5 s)")


if __name__ == "__main__":
    main()
