"""The local API's registry routes: what HTTP on the Unix socket adds, against direct calls.

All in one process, measured in the same run on fresh databases with the same settings:

* ``RegisterThing``: ``POST /things`` with a CSR template (a CSR signed per call, one
  transaction per call), one request after the other, against the same calls made directly
  on :class:`~agent.registry.register.Registry` (the baseline);
* ``DescribeProvisioningTemplate``: ``GET /provisioning-templates/<name>`` against
  ``TemplateStore.describe``;
* the loop's responsiveness while a bulk task runs on the bulk thread: the latency of
  ``GET /thing-registration-tasks/<id>`` during the run against the same request idle.

Run: ``.venv/bin/python bench/local_api.py [calls]``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.api import LocalApi
from agent.config import AgentConfig, parse_config
from agent.registry.api import RegistryApi
from agent.registry.ca import generate_key, init_ca, signature_hash
from agent.registry.demo import EXAMPLE_TEMPLATE
from agent.registry.register import Registry
from agent.registry.wiring import open_registry_store, template_store

ROLE = "arn:aws:iam::123456789012:role/Provisioning"
POLICY = '{"Version": "2012-10-17", "Statement": []}'
CSR_TEMPLATE: dict[str, Any] = {
    "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}},
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": POLICY}},
    },
}
THING_TEMPLATE: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["bulk-", {"Ref": "SerialNumber"}]]}},
        }
    },
}


def make_csr(name: str) -> str:
    key = generate_key("ec-p256")
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    return csr.sign(key, signature_hash(key)).public_bytes(Encoding.PEM).decode("ascii")


def config(root: Path, name: str) -> AgentConfig:
    (root / name / "bulk" / "factory").mkdir(parents=True, exist_ok=True)
    return parse_config(
        f"""
[agent]
state_dir = "{root / name}"
runtime_dir = "{root / name}"
[api]
socket = "{root / name / "api.sock"}"
registry = true
[registry]
database = "{root / name / "registry.db"}"
ca_dir = "{root / "ca"}"
bulk_root = "{root / name / "bulk"}"
"""
    )


def direct(cfg: AgentConfig, csrs: list[str], describes: int) -> tuple[float, float]:
    """Seconds per RegisterThing and per describe, called directly."""
    with open_registry_store(cfg) as store:
        templates = template_store(cfg, store)
        templates.create(
            {
                "templateName": "fleet",
                "templateBody": json.dumps(EXAMPLE_TEMPLATE),
                "provisioningRoleArn": ROLE,
            }
        )
        registry = Registry.from_config(cfg.registry)
        body = json.dumps(CSR_TEMPLATE)
        start = time.perf_counter()
        for i, csr in enumerate(csrs):
            registry.register_thing(body, {"ThingName": f"d{i:06d}", "CSR": csr})
        register = (time.perf_counter() - start) / len(csrs)
        registry.storage.close()
        start = time.perf_counter()
        for _ in range(describes):
            templates.describe("fleet")
        describe = (time.perf_counter() - start) / describes
    return register, describe


async def timed(calls: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


async def over_api(cfg: AgentConfig, csrs: list[str], describes: int) -> dict[str, Any]:
    local = LocalApi(cfg.api.socket_path(cfg.agent))
    registry_api = RegistryApi(lambda: cfg)
    local.add_routes(registry_api.routes())
    await local.start()
    connector = aiohttp.UnixConnector(path=str(cfg.api.socket_path(cfg.agent)))
    try:
        async with aiohttp.ClientSession(connector=connector) as http:

            async def call(method: str, path: str, body: Any = None) -> Any:
                data = None if body is None else json.dumps(body)
                async with http.request(method, f"http://localhost{path}", data=data) as r:
                    answer = await r.json()
                    if r.status != 200:
                        raise RuntimeError(answer)
                    return answer

            await call(
                "POST",
                "/provisioning-templates",
                {
                    "templateName": "fleet",
                    "templateBody": json.dumps(EXAMPLE_TEMPLATE),
                    "provisioningRoleArn": ROLE,
                },
            )
            body = json.dumps(CSR_TEMPLATE)
            names = iter(range(len(csrs)))
            pending = iter(csrs)
            register = await timed(
                len(csrs),
                lambda: call(
                    "POST",
                    "/things",
                    {
                        "templateBody": body,
                        "parameters": {"ThingName": f"d{next(names):06d}", "CSR": next(pending)},
                    },
                ),
            )
            describe = await timed(describes, lambda: call("GET", "/provisioning-templates/fleet"))
            key = cfg.registry.bulk_root / "factory" / "devices.jsonl"
            key.write_text(
                "".join(json.dumps({"SerialNumber": str(i)}) + "\n" for i in range(100_000)),
                encoding="utf-8",
            )
            started = await call(
                "POST",
                "/thing-registration-tasks",
                {
                    "inputFileBucket": "factory",
                    "inputFileKey": "devices.jsonl",
                    "roleArn": ROLE,
                    "templateBody": json.dumps(THING_TEMPLATE),
                },
            )
            path = f"/thing-registration-tasks/{started['taskId']}"
            busy: list[float] = []
            while True:
                t0 = time.perf_counter()
                described = await call("GET", path)
                busy.append(time.perf_counter() - t0)
                if described["status"] != "InProgress":
                    break
                await asyncio.sleep(0.02)
            idle = await timed(max(len(busy), 50), lambda: call("GET", path))
            return {
                "register": register,
                "describe": describe,
                "busy": busy,
                "idle": idle,
                "bulk": described,
            }
    finally:
        await local.stop()
        await registry_api.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    csrs = [make_csr(f"d{i:06d}") for i in range(calls * 2)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        init_ca(root / "ca")
        base_register, base_describe = direct(config(root, "direct"), csrs[:calls], calls * 3)
        api = asyncio.run(over_api(config(root, "api"), csrs[calls:], calls * 3))
    register = statistics.mean(api["register"])
    describe = statistics.mean(api["describe"])
    idle = statistics.median(api["idle"])
    busy = statistics.median(api["busy"])
    print(f"calls: {calls} RegisterThing (CSR signed), {calls * 3} describes")
    print(f"RegisterThing direct (baseline)     : {ms(base_register)}")
    print(f"POST /things                        : {ms(register)}  p95 {ms(p95(api['register']))}")
    print(f"  ratio API / direct                : {register / base_register:8.2f}x")
    print(f"describe template direct (baseline) : {ms(base_describe)}")
    print(f"GET /provisioning-templates/<name>  : {ms(describe)}")
    print(f"  ratio API / direct                : {describe / base_describe:8.2f}x")
    bulk = api["bulk"]
    print(f"bulk task in the background         : {bulk['status']}, {bulk['successCount']:,} lines")
    print(f"GET task idle, median (baseline)    : {ms(idle)}")
    print(f"GET task while it runs, median      : {ms(busy)}  p95 {ms(p95(api['busy']))}")
    print(f"  ratio busy / idle                 : {busy / idle:8.2f}x")


if __name__ == "__main__":
    main()
