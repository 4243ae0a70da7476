"""Bulk registration throughput and peak memory against baselines measured in the same run.

Runs each measurement in its own child process (so peak RSS is that child's ``ru_maxrss``
from ``wait4``) on the same newline-delimited JSON file:

* ``bulk``: a full StartThingRegistrationTask run (streaming, batches, durable reports,
  RegisterThing through a realistic template into the SQLite registry);
* ``registry``: the same RegisterThing calls on pre-read lines, in batches of 1,000 in one
  transaction each, with no task machinery (what the registry itself costs);
* ``baseline``: ``json.loads`` + one SQLite insert per line, committed every 1,000 lines
  on the same store settings (WAL, synchronous=FULL);
* ``machinery``: the bulk task with a registrar that does nothing (what streaming, batching,
  reports and progress cost per line).

Usage: ``.venv/bin/python bench/bulk.py [--lines 100000] [--template thing|csr]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROLE = "arn:aws:iam::123456789012:role/Provisioning"
BATCH = 1000

THING_TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Site": {"Type": "String", "Default": "lab"},
        "Model": {"Type": "String"},
    },
    "Mappings": {"Sites": {"lab": {"Group": "lab-devices"}, "plant": {"Group": "plant-devices"}}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {
                    "serial": {"Ref": "SerialNumber"},
                    "site": {"Ref": "Site"},
                    "model": {"Ref": "Model"},
                },
                "ThingGroups": [{"Fn::FindInMap": ["Sites", {"Ref": "Site"}, "Group"]}],
            },
            "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING"},
        }
    },
    "DeviceConfiguration": {"site": {"Ref": "Site"}},
}

CSR_TEMPLATE: dict[str, Any] = {
    **THING_TEMPLATE,
    "Parameters": {**THING_TEMPLATE["Parameters"], "CSR": {"Type": "String"}},
    "Resources": {
        **THING_TEMPLATE["Resources"],
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
        },
    },
}


def _csr() -> str:
    from cryptography import x509  # noqa: PLC0415 - only for the CSR template
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-bench")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def write_input(path: Path, lines: int, template: str) -> None:
    csr = _csr() if template == "csr" else None
    with path.open("w", encoding="utf-8") as out:
        for n in range(lines):
            params = {"SerialNumber": f"{n:08d}", "Site": "plant" if n % 2 else "lab"}
            params["Model"] = "EA-100"
            if csr is not None:
                params["CSR"] = csr
            out.write(json.dumps(params) + "\n")


# --- children --------------------------------------------------------------------------


def _run_task(tasks: Any, template: dict[str, Any]) -> float:
    request = {
        "inputFileBucket": "factory",
        "inputFileKey": "devices.jsonl",
        "roleArn": ROLE,
        "templateBody": json.dumps(template),
    }
    started = time.perf_counter()
    task_id = tasks.start(request)["taskId"]
    described = tasks.run(task_id)
    elapsed = time.perf_counter() - started
    if described["status"] != "Completed" or described["failureCount"]:
        raise SystemExit(f"bulk run did not complete cleanly: {described}")
    return elapsed


def child_machinery(work: Path, template: dict[str, Any]) -> float:
    from agent.registry.bulk import BulkTasks  # noqa: PLC0415 - child only
    from agent.store import Store  # noqa: PLC0415

    response = {"certificatePem": "", "resourceArns": {"thing": "arn:aws:iot:r:1:thing/x"}}
    tasks = BulkTasks(
        Store(work / "machinery.db"),
        bulk_root=work / "root",
        reports_dir=work / "machinery-reports",
        registrar_factory=lambda _body: lambda _db, _params: response,
        line_savepoints=False,
    )
    return _run_task(tasks, template)


def child_bulk(work: Path, template: dict[str, Any]) -> float:
    from agent.registry.bulk import BulkTasks  # noqa: PLC0415 - child only
    from agent.registry.ca import init_ca, load_device_issuer  # noqa: PLC0415
    from agent.registry.register import Registry  # noqa: PLC0415
    from agent.registry.storage import SqliteRegistryStorage  # noqa: PLC0415
    from agent.registry.wiring import registrar_factory  # noqa: PLC0415
    from agent.store import Store  # noqa: PLC0415

    if not (work / "ca" / "ca.pem").exists():
        init_ca(work / "ca")
    store = Store(work / "bulk.db")
    registry = Registry(
        SqliteRegistryStorage(store),
        load_device_issuer(work / "ca"),
        region="eu-west-1",
        account="1",
    )
    tasks = BulkTasks(
        store,
        bulk_root=work / "root",
        reports_dir=work / "reports",
        registrar_factory=registrar_factory(registry),
        line_savepoints=False,  # as the CLI runs it
    )
    return _run_task(tasks, template)


def child_registry(work: Path, template: dict[str, Any]) -> float:
    from agent.registry.ca import load_device_issuer  # noqa: PLC0415 - child only
    from agent.registry.register import Registry  # noqa: PLC0415
    from agent.registry.storage import SqliteRegistryStorage  # noqa: PLC0415
    from agent.registry.template import parse_template  # noqa: PLC0415
    from agent.store import Store  # noqa: PLC0415

    storage = SqliteRegistryStorage(Store(work / "registry.db"))
    registry = Registry(storage, load_device_issuer(work / "ca"), region="eu-west-1", account="1")
    parsed = parse_template(json.dumps(template))
    started = time.perf_counter()
    with (work / "root" / "factory" / "devices.jsonl").open("rb") as source:
        done = False
        while not done:
            with storage.transaction() as tx:
                for _ in range(BATCH):
                    line = source.readline()
                    if not line:
                        done = True
                        break
                    registry.register_thing(parsed, json.loads(line), transaction=tx)
    return time.perf_counter() - started


def child_baseline(work: Path) -> float:
    from agent.store import Store  # noqa: PLC0415 - child only

    store = Store(work / "baseline.db")
    store.migrate("bench", ["CREATE TABLE lines (n INTEGER PRIMARY KEY, body TEXT NOT NULL);"])
    started = time.perf_counter()
    with (work / "root" / "factory" / "devices.jsonl").open("rb") as source:
        number = 0
        done = False
        while not done:
            with store.transaction() as db:
                for _ in range(BATCH):
                    line = source.readline()
                    if not line:
                        done = True
                        break
                    number += 1
                    params = json.loads(line)
                    db.execute(
                        "INSERT INTO lines(n, body) VALUES (?, ?)",
                        (number, params["SerialNumber"]),
                    )
    return time.perf_counter() - started


# --- parent ----------------------------------------------------------------------------


def measure(kind: str, work: Path, template: str) -> tuple[float, int]:
    """Run one child; return (seconds, peak RSS in KiB)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, "--work", str(work), "--template", template],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the {kind} child failed with exit code {proc.returncode}")
    return float(json.loads(output)["seconds"]), int(usage.ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--template", choices=("thing", "csr"), default="thing")
    parser.add_argument("--child", choices=("bulk", "registry", "baseline", "machinery"))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    template = CSR_TEMPLATE if args.template == "csr" else THING_TEMPLATE
    if args.child is not None:
        if args.child == "bulk":
            seconds = child_bulk(args.work, template)
        elif args.child == "registry":
            seconds = child_registry(args.work, template)
        elif args.child == "machinery":
            seconds = child_machinery(args.work, template)
        else:
            seconds = child_baseline(args.work)
        print(json.dumps({"seconds": seconds}))
        return

    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        work = Path(tmp)
        (work / "root" / "factory").mkdir(parents=True)
        path = work / "root" / "factory" / "devices.jsonl"
        write_input(path, args.lines, args.template)
        size = path.stat().st_size
        print(
            f"input: {args.lines:,} lines, {size / 1e6:.1f} MB, template '{args.template}', "
            f"{os.cpu_count()} CPUs"
        )
        results = {}
        for kind in ("baseline", "machinery", "bulk", "registry"):
            seconds, rss = measure(kind, work, args.template)
            results[kind] = (args.lines / seconds, rss)
            print(
                f"{kind:>9}: {seconds:7.2f} s  {args.lines / seconds:10,.0f} lines/s  "
                f"peak RSS {rss / 1024:6.1f} MiB"
            )
        bulk_rate, bulk_rss = results["bulk"]
        print(f"bulk / baseline throughput ratio: {bulk_rate / results['baseline'][0]:.3f}")
        print(f"bulk / registry-only throughput ratio: {bulk_rate / results['registry'][0]:.3f}")
        machinery_us = 1e6 / results["machinery"][0]
        print(f"task machinery alone: {machinery_us:.1f} us/line")
        print(f"bulk peak RSS / baseline peak RSS: {bulk_rss / results['baseline'][1]:.2f}")


if __name__ == "__main__":
    main()
