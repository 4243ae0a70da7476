"""Validate + install cost per archive, beside the raw cryptographic checks it must make.

Run: .venv/bin/python bench/archive.py [--count N]

The baseline does, with ``cryptography`` directly and nothing else, the same work the agent
cannot avoid: parse the PEMs, verify the manifest signature, verify both chains to the
anchor and compare the key pair. The ratio is the agent's overhead on top (ZIP safety
checks, manifest schema, hashes, the ledger, durable writes with fsync).

A durable install cannot be faster than its fsyncs, so the run also measures the fsync
floor: the fsyncs one install makes (counted: files and directories through ``os.fsync``,
and SQLite's own syncs under strace), done on the same file system with bare system calls
(:func:`fsync_floor`: small files written and fsynced, log appends with ``fdatasync``, each
directory fsync after a change to that directory). Install is then compared with raw checks
+ that floor: the agent's own overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from agent.archive.clock import FixedClock
from agent.archive.install import install_archive
from agent.archive.make import DeviceRequest, build_archive
from agent.archive.verify import Policy, verify_archive
from agent.registry.ca import cert_to_pem, init_ca


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def raw_checks(data: bytes, anchor: x509.Certificate, at: dt.datetime) -> None:
    with zipfile.ZipFile(BytesIO(data)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    signer = x509.load_pem_x509_certificate(entries["signer.pem"])
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(entries["manifest.sig"], entries["manifest.json"], ec.ECDSA(hashes.SHA256()))
    cert, *intermediates = x509.load_pem_x509_certificates(entries["certificate.pem"])
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor]))
        .time(at)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    verifier.verify(signer, [])
    verifier.verify(cert, intermediates)
    private = serialization.load_pem_private_key(entries["private.key"], None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert private.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


@contextlib.contextmanager
def counting_fsyncs() -> Iterator[dict[str, int]]:
    """Count ``os.fsync`` calls on files and on directories while the block runs."""
    counts = {"file": 0, "dir": 0}
    real = os.fsync

    def counted(fd: Any) -> None:
        counts["dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"] += 1
        real(fd)

    os.fsync = counted
    try:
        yield counts
    finally:
        os.fsync = real


_CHILD = """
import datetime as dt, sys
from pathlib import Path
from agent.archive.clock import FixedClock
from agent.archive.install import install_archive
from agent.archive.verify import Policy, load_trust_anchors, verify_archive
archive, anchor, state, now = sys.argv[1:]
policy = Policy(load_trust_anchors(Path(anchor)))
verified = verify_archive(Path(archive), policy, FixedClock(dt.datetime.fromisoformat(now)))
install_archive(verified, Path(state))
"""


def traced_syncs(archive: Path, anchor: Path, state: Path, now: dt.datetime) -> int | None:
    """fsync + fdatasync calls of one install in a child under strace (None: no strace)."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    copy = state.with_name(state.name + "-traced")
    shutil.copytree(state, copy, symlinks=True)
    log = state.with_name("strace.log")
    subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(log),
            sys.executable,
            "-c",
            _CHILD,
            str(archive),
            str(anchor),
            str(copy),
            now.isoformat(),
        ],
        check=True,
        capture_output=True,
    )
    return sum(1 for entry in log.read_text().splitlines() if "sync(" in entry)


def fsync_floor(directory: Path, files: int, sqlite_syncs: int, dirs: int) -> float:
    """Seconds for the durable writes of one install done with bare system calls.

    In a fresh directory: ``files`` small files written and fsynced, ``sqlite_syncs``
    appends to one log file each followed by ``fdatasync`` (a WAL commit), and ``dirs``
    directory fsyncs, each after a rename in that directory (an install fsyncs a directory
    because it changed it; an unchanged directory's fsync costs nothing and would make the
    floor too low). Setting up and removing the directory are not timed.
    """
    work = directory / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        start = time.perf_counter()
        for i in range(files):
            fd = os.open(work / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"x" * 1024)
                os.fsync(fd)
            finally:
                os.close(fd)
        log = os.open(work / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(sqlite_syncs):
                os.write(log, b"w" * 4096)
                os.fdatasync(log)
        finally:
            os.close(log)
        dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(dirs):
                (work / ("log" if i == 0 else f"r{i - 1}")).rename(work / f"r{i}")
                os.fsync(dfd)
        finally:
            os.close(dfd)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(work)


def main() -> None:  # noqa: PLR0915 - one linear measurement script
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = FixedClock(now + dt.timedelta(seconds=10))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca", now=now)
        policy = Policy(trust_anchors=(ca.root_cert,))
        archives: list[tuple[Path, bytes]] = []
        for i in range(args.count):
            built = build_archive(ca.factory(), DeviceRequest(name=f"bench-{i}", not_before=now))
            path = root / built.filename
            path.write_bytes(built.data)
            archives.append((path, built.data))

        # How many fsyncs does one durable install make? (SQLite: +1 WAL fsync per commit.)
        probe_state = root / "probe-state"
        install_archive(verify_archive(archives[0][0], policy, clock), probe_state)
        probe = build_archive(ca.factory(), DeviceRequest(name="bench-probe", not_before=now))
        probe_path = root / probe.filename
        probe_path.write_bytes(probe.data)
        probe_verified = verify_archive(probe_path, policy, clock)
        anchor = root / "anchor.pem"
        anchor.write_bytes(cert_to_pem(ca.root_cert))
        traced = traced_syncs(probe_path, anchor, probe_state, clock.now())
        with counting_fsyncs() as counts:
            install_archive(probe_verified, probe_state)
        # SQLite syncs with fdatasync, unseen by os.fsync: strace counts them when present.
        sqlite_syncs = traced - counts["file"] - counts["dir"] if traced is not None else 1

        state = root / "state"
        floor_ms: list[float] = []
        validate_ms: list[float] = []
        total_ms: list[float] = []
        raw_ms: list[float] = []
        for path, data in archives:
            start = time.perf_counter()
            raw_checks(data, ca.root_cert, clock.now())
            raw_ms.append((time.perf_counter() - start) * 1000)

            start = time.perf_counter()
            verified = verify_archive(path, policy, clock)
            mid = time.perf_counter()
            install_archive(verified, state)
            end = time.perf_counter()
            validate_ms.append((mid - start) * 1000)
            total_ms.append((end - start) * 1000)
            floor = fsync_floor(root / "floor", counts["file"], sqlite_syncs, counts["dir"])
            floor_ms.append(floor * 1000)

    def line(label: str, values: list[float]) -> str:
        return (
            f"{label:<34} p50 {percentile(values, 0.5):7.2f} ms   "
            f"p95 {percentile(values, 0.95):7.2f} ms   mean {statistics.fmean(values):7.2f} ms"
        )

    print(f"archives: {args.count} (EC P-256 claim keys and signer)")
    print(
        f"fsyncs per install: {counts['file']} files + {counts['dir']} directories + "
        f"{sqlite_syncs} by SQLite ({'counted with strace' if traced is not None else 'assumed'})"
    )
    print(line("baseline: raw cryptography checks", raw_ms))
    print(line("baseline: fsync floor of an install", floor_ms))
    print(line("agent: validate", validate_ms))
    print(line("agent: validate + install", total_ms))
    base = percentile(raw_ms, 0.5)
    print(f"ratio validate / baseline (p50):           {percentile(validate_ms, 0.5) / base:5.2f}x")
    print(f"ratio validate + install / baseline (p50): {percentile(total_ms, 0.5) / base:5.2f}x")
    floor = base + percentile(floor_ms, 0.5)
    print(
        "ratio validate + install / (raw checks + fsync floor) (p50): "
        f"{percentile(total_ms, 0.5) / floor:5.2f}x (target <= 1.2x)"
    )
    target = 20.0
    verdict = "meets" if percentile(total_ms, 0.5) <= target else "MISSES"
    print(f"target: validate + install p50 <= {target:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
