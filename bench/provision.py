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
- start → READY beside ``python -m agent --help`` (interpreter and CLI start-up);
- idle figures beside a bare interpreter that imports nothing and sleeps.

Idle, after the rounds, with the daemon that ran them (started with ``WATCHDOG_USEC`` and a
``NOTIFY_SOCKET`` this script reads, so the watchdog timer runs): ``VmRSS`` and ``RssAnon``
from ``/proc/<pid>/status`` (target RSS ≤ 60 MB), CPU ticks (``utime + stime`` of
``/proc/<pid>/stat``) over ``--idle`` seconds (default 60), and wake-ups: voluntary plus
non-voluntary context switches summed over the process's threads
(``/proc/<pid>/task/*/status``) over the same seconds, beside the ``WATCHDOG=1`` pings
received (target: no wake-ups beyond the watchdog's).

    .venv/bin/python bench/provision.py [--rounds 20] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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


WATCHDOG_USEC = 10_000_000  # a ping every 5 s


class Pings:
    """The daemon's sd_notify socket: counts ``WATCHDOG=1`` (a thread drains it)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.watchdog = 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.watchdog += data.count(b"WATCHDOG=1")

    def close(self) -> None:
        self.sock.close()


def _status_fields(path: Path, *names: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in names:
            out[key] = int(value.split()[0])
    return out


def _wakeups(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            fields = _status_fields(
                task / "status", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"
            )
            total += sum(fields.values())
    return total


def _ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


@dataclass
class Idle:
    """Memory and wake-ups of one process over an idle window."""

    rss_kib: int
    anon_kib: int
    ticks: int
    wakeups: int
    threads: int
    pings: int = 0


def _idle(pid: int, seconds: float, pings: Pings | None = None) -> Idle:
    memory = _status_fields(Path(f"/proc/{pid}/status"), "VmRSS", "RssAnon", "Threads")
    ticks, wakeups = _ticks(pid), _wakeups(pid)
    first = pings.watchdog if pings else 0
    time.sleep(seconds)
    return Idle(
        rss_kib=memory["VmRSS"],
        anon_kib=memory["RssAnon"],
        ticks=_ticks(pid) - ticks,
        wakeups=_wakeups(pid) - wakeups,
        threads=memory["Threads"],
        pings=(pings.watchdog - first) if pings else 0,
    )


def _bare_idle(seconds: float) -> Idle:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        time.sleep(0.5)
        return _idle(bare.pid, seconds)
    finally:
        bare.kill()
        bare.wait()


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
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds measured")
    args = parser.parse_args()
    pings: Pings | None = None
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
            appliance.stop()
            pings = Pings(work / "watchdog.sock")
            appliance.environment = {
                "NOTIFY_SOCKET": str(work / "watchdog.sock"),
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
            }
            appliance.start()
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
            appliance.wait_idle()
            assert appliance.process is not None
            time.sleep(2)  # the last run's write-back and link settle
            idle = _idle(appliance.process.pid, args.idle, pings)
            bare = _bare_idle(args.idle)
            appliance.stop()
            base = [_baseline(fleet, work, n) for n in range(args.rounds)]
        finally:
            appliance.stop()
            fleet.stop()
            if pings is not None:
                pings.close()
    _print_latency(
        args.rounds, totals=totals, probes=probes, ntp=ntp, fleet_step=fleet_step, base=base
    )
    print(_row("start -> READY=1", ready))
    print(_row("baseline: python -m agent --help", cli))
    ready_ratio = statistics.median(ready) / statistics.median(cli)
    print(f"  ratio (READY / CLI start, p50): {ready_ratio:.2f}x (target READY <= 1.5 s)")
    _print_idle(idle, bare, args.rounds, args.idle)


def _print_latency(
    rounds: int,
    *,
    totals: list[float],
    probes: list[float],
    ntp: list[float],
    fleet_step: list[float],
    base: list[float],
) -> None:
    overhead = [t - p - w for t, p, w in zip(totals, probes, ntp, strict=True)]
    print(f"edge-agent run, {rounds} rounds (dry-run network, registry serve, mosquitto)")
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


def _print_idle(idle: Idle, bare: Idle, rounds: int, seconds: float) -> None:
    expected = seconds / (WATCHDOG_USEC / 2 / 1e6)
    print(f"idle after {rounds} runs, {seconds:.0f} s (WATCHDOG_USEC={WATCHDOG_USEC})")
    print(
        f"  VmRSS {idle.rss_kib / 1024:6.1f} MB, RssAnon {idle.anon_kib / 1024:6.1f} MB, "
        f"{idle.threads} threads (target RSS <= 60 MB: "
        f"{'met' if idle.rss_kib <= 60 * 1024 else 'MISSED'})"
    )
    print(
        f"  baseline bare interpreter: VmRSS {bare.rss_kib / 1024:6.1f} MB, "
        f"RssAnon {bare.anon_kib / 1024:6.1f} MB; ratio {idle.rss_kib / bare.rss_kib:.2f}x"
    )
    print(
        f"  CPU {idle.ticks} ticks ({idle.ticks / os.sysconf('SC_CLK_TCK'):.2f} s) "
        f"over {seconds:.0f} s; bare interpreter {bare.ticks} ticks"
    )
    print(
        f"  wake-ups (context switches, all threads) {idle.wakeups}; watchdog pings "
        f"{idle.pings} (expected {expected:.0f}); bare interpreter {bare.wakeups}; "
        f"wake-ups per ping {idle.wakeups / max(idle.pings, 1):.2f} (target: ~1, nothing "
        "beyond the watchdog)"
    )


if __name__ == "__main__":
    main()
