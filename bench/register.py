"""RegisterThing throughput: lines/s through a realistic template, against a baseline.

Baseline: ``json.loads`` of each line plus one SQLite insert per line, committed every
1,000 lines on the same store settings (WAL, synchronous=FULL). The registry runs the same
lines through ``Registry.register_batch`` (1,000 per transaction): parameter checks,
template evaluation, override checks against existing things, thing and policy writes.
A second run signs a CSR per line (key generation excluded) to show what signing costs.

Run: ``.venv/bin/python bench/register.py [lines]``.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.registry.ca import generate_key, init_ca, signature_hash
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import parse_template
from agent.store import Store

BATCH = 1000

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "ThingName": {"Type": "String"},
        "SerialNumber": {"Type": "String"},
        "Location": {"Type": "String", "Default": "WA"},
        "Model": {"Type": "String", "Default": "hub-a,rev2"},
    },
    "Mappings": {"Sites": {"WA": {"Group": "west"}, "NY": {"Group": "east"}}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["-", ["edge", {"Ref": "ThingName"}]]},
                "AttributePayload": {
                    "serial": {"Ref": "SerialNumber"},
                    "model": {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "Model"}]}]},
                    "site": {"Fn::Sub": "site-${Location}"},
                },
                "ThingTypeName": "edge-hub",
                "ThingGroups": [
                    "fleet",
                    {"Fn::FindInMap": ["Sites", {"Ref": "Location"}, "Group"]},
                ],
            },
            "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "MERGE"},
        },
        "policy": {
            "Type": "AWS::IoT::Policy",
            "Properties": {
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*"}],
                }
            },
        },
    },
}


def make_csr(common_name: str) -> str:
    key = generate_key("ec-p256")
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    return builder.sign(key, signature_hash(key)).public_bytes(Encoding.PEM).decode("ascii")


def lines(count: int) -> list[str]:
    return [
        json.dumps({"ThingName": f"t{i:07d}", "SerialNumber": f"SN{i}", "Location": "WA"})
        for i in range(count)
    ]


def baseline(path: Path, data: list[str]) -> float:
    with Store(path) as store:
        store.migrate("baseline", ["CREATE TABLE t (name TEXT PRIMARY KEY, body TEXT)"])
        start = time.perf_counter()
        for first in range(0, len(data), BATCH):
            with store.transaction() as db:
                for line in data[first : first + BATCH]:
                    row = json.loads(line)
                    db.execute("INSERT INTO t VALUES (?, ?)", (row["ThingName"], line))
        return time.perf_counter() - start


def registry_run(path: Path, data: list[str], template: Any, registry_ca: Any) -> float:
    with SqliteRegistryStorage.open(path) as storage:
        registry = Registry(storage, registry_ca, region="eu-west-1", account="111122223333")
        start = time.perf_counter()
        for first in range(0, len(data), BATCH):
            outcomes = registry.register_batch(
                template, (json.loads(line) for line in data[first : first + BATCH])
            )
            failures = [o for o in outcomes if isinstance(o, Exception)]
            if failures:
                raise SystemExit(f"unexpected failure: {failures[0]}")
        return time.perf_counter() - start


def evaluation_only(data: list[str]) -> tuple[float, float]:
    """Seconds to evaluate every line with one parsed template, and to parse per line."""
    template = parse_template(TEMPLATE)
    start = time.perf_counter()
    for line in data:
        template.evaluate(template.resolve_parameters(json.loads(line)))
    once = time.perf_counter() - start
    body = json.dumps(TEMPLATE)
    sample = data[: max(len(data) // 10, 1)]
    start = time.perf_counter()
    for line in sample:
        fresh = parse_template(body)
        fresh.evaluate(fresh.resolve_parameters(json.loads(line)))
    every = (time.perf_counter() - start) * len(data) / len(sample)
    return once, every


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = lines(count)
    template = parse_template(TEMPLATE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        base = baseline(root / "baseline.db", data)
        reg = registry_run(root / "registry.db", data, template, ca.registry())
        again = registry_run(root / "registry.db", data, template, ca.registry())

        csr_count = max(count // 50, 200)
        csr_template = json.loads(json.dumps(TEMPLATE))
        csr_template["Parameters"]["CSR"] = {"Type": "String"}
        csr_template["Resources"]["certificate"] = {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}},
        }
        csr = make_csr("bench-device")
        csr_data = [
            json.dumps({"ThingName": f"c{i:07d}", "SerialNumber": str(i), "CSR": csr})
            for i in range(csr_count)
        ]
        signed = registry_run(root / "csr.db", csr_data, parse_template(csr_template), ca)

    once, every = evaluation_only(data)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lines: {count:,}; batch: {BATCH} lines per transaction")
    print(f"baseline json.loads + 1 insert/line : {count / base:>10,.0f} lines/s")
    print(f"register_batch, new things          : {count / reg:>10,.0f} lines/s")
    print(f"register_batch, existing things     : {count / again:>10,.0f} lines/s")
    print(f"register_batch + CSR signing ({csr_count:,}) : {csr_count / signed:>10,.0f} lines/s")
    print(f"registry time / baseline time (new) : {reg / base:>10.1f}x")
    print(f"evaluate only, template parsed once : {count / once:>10,.0f} lines/s")
    print(f"evaluate only, parsed on every line : {count / every:>10,.0f} lines/s")
    print(f"peak RSS (whole run, data in memory): {rss_mb:>10.1f} MB")


if __name__ == "__main__":
    main()
