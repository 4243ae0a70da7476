"""Validate + install cost per archive, beside the raw cryptographic checks it must make.

Run: .venv/bin/python bench/archive.py [--count N]

The baseline does, with ``cryptography`` directly and nothing else, the same work the agent
cannot avoid: parse the PEMs, verify the manifest signature, verify both chains to the
anchor and compare the key pair. The ratio is the agent's overhead on top (ZIP safety
checks, manifest schema, hashes, the ledger, durable writes with fsync).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from agent.archive.clock import FixedClock
from agent.archive.install import install_archive
from agent.archive.make import DeviceRequest, build_archive
from agent.archive.verify import Policy, verify_archive
from agent.registry.ca import init_ca


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


def main() -> None:
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

        state = root / "state"
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

    def line(label: str, values: list[float]) -> str:
        return (
            f"{label:<34} p50 {percentile(values, 0.5):7.2f} ms   "
            f"p95 {percentile(values, 0.95):7.2f} ms   mean {statistics.fmean(values):7.2f} ms"
        )

    print(f"archives: {args.count} (EC P-256 claim keys and signer)")
    print(line("baseline: raw cryptography checks", raw_ms))
    print(line("agent: validate", validate_ms))
    print(line("agent: validate + install", total_ms))
    base = percentile(raw_ms, 0.5)
    print(f"ratio validate / baseline (p50):           {percentile(validate_ms, 0.5) / base:5.2f}x")
    print(f"ratio validate + install / baseline (p50): {percentile(total_ms, 0.5) / base:5.2f}x")
    target = 20.0
    verdict = "meets" if percentile(total_ms, 0.5) <= target else "MISSES"
    print(f"target: validate + install p50 <= {target:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
