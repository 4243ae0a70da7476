"""``edge-agent demo``: the main job on embedded defaults, each step shown as it happens.

Everything happens under one work directory (a new temporary one unless ``--out`` is
given) and on 127.0.0.1, and everything the demo starts it stops: a PKI, the operational
mosquitto, ``edge-agent registry serve`` as the fleet-provisioning endpoint, a subscriber
on the appliance's events, and the appliance's provisioning side exactly as ``edge-agent
run`` runs it (directory stick source). Run as root, the network is applied for real with
the netlink backend inside a private network namespace (:mod:`agent.demo_netns`: eth0 and
eth1 with gateways on a peer namespace; the demo, its broker and its endpoint live in it);
otherwise (or with ``--dry-run``) with the dry-run backend under a private root, and the
demo says which.
A FAT image holding the archive is dropped into the watched directory: that is the stick
insertion. The run validates, installs, applies the network, checks the claim window and
provisions over MQTT; the SUCCEEDED event is received and ``result.json`` is read back from
the image. Then the same archive on a second stick is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.errors import EXIT_OK

DEMO_NETWORK: dict[str, Any] = {
    "Ethernet0": {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": "198.18.10.20",
            "Mask": "255.255.255.0",
            "DefaultGateway": "198.18.10.1",
            "Dns": ["198.18.10.53"],
        },
    },
    "Ethernet1": {"ConnectionType": "DHCP"},
    "Ntp": {"NtpServers": ["0.pool.ntp.org", "198.18.10.123"]},
}
#: In the namespace Ethernet1 is static too (no DHCP server there), on its own gateway.
NAMESPACE_NETWORK: dict[str, Any] = {
    **DEMO_NETWORK,
    "Ethernet1": {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": "198.18.11.20",
            "Mask": "255.255.255.0",
            "DefaultGateway": "198.18.11.1",
            "Dns": ["198.18.11.53"],
        },
    },
}
REGION = "eu-central-1"
ACCOUNT = "123456789012"
#: Seconds the demo waits for the run's outcome event.
OUTCOME_TIMEOUT = 60.0


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    demo = sub.add_parser("demo", help="run the whole provisioning job on embedded defaults")
    demo.add_argument(
        "--out", type=Path, help="work directory (default: a new temporary directory)"
    )
    demo.add_argument("--name", default="demo-appliance-1", help="device name")
    demo.add_argument(
        "--dry-run",
        action="store_true",
        help="render the network under the work directory even when root (no namespace)",
    )
    demo.set_defaults(handler=run)


class _Steps:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.mark = self.started
        self.number = 0

    def step(self, title: str) -> None:
        now = time.perf_counter()
        self.number += 1
        print(f"\n[{self.number}] {title}  (at {now - self.started:.2f} s)")
        self.mark = now

    def say(self, text: str) -> None:
        print(f"    {text}")

    def timed(self, text: str) -> None:
        now = time.perf_counter()
        print(f"    {text}  (+{now - self.mark:.2f} s)")
        self.mark = now


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    if not args.verbose:
        # The demo shows each step itself (and provokes a refusal on purpose); the run's own
        # log lines still go to provisioning.log on the stick.
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.CRITICAL)
    work: Path = args.out or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_demo(work, args.name, namespace=not args.dry_run))


def _network_text(work: Path, namespace: bool) -> str:
    if not namespace:
        return f'''[network]
backend = "dry-run"
dry_run_root = "{work / "root"}"'''
    return f'''[network]
backend = "netlink"
probe_timeout_seconds = 10
resolv_conf = "{work / "resolv.conf"}"
networkd_runtime_dir = "{work / "run-network"}"
networkd_persist_dir = "{work / "etc-network"}"
dry_run_root = "{work / "root"}"
[ntp]
# the demo leaves the machine's time service alone
backend = "none"'''


def _config_text(work: Path, trust: Path, *, namespace: bool = False) -> str:
    return f"""
[agent]
state_dir = "{work / "state"}"
runtime_dir = "{work / "run"}"
[archive]
trust_anchor = "{trust}"
# the demo machine's clock may not report NTP sync; the window is checked against it as is
require_synchronized_clock = false
{_network_text(work, namespace)}
[usb]
source = "directory"
directory = "{work / "sticks"}"
debounce_seconds = 0
[mqtt]
connect_timeout_seconds = 5
reconnect_initial_seconds = 0.2
reconnect_max_seconds = 2
[registry]
ca_dir = "{work / "registry-ca"}"
database = "{work / "registry.db"}"
region = "{REGION}"
account = "{ACCOUNT}"
"""


async def _demo(  # noqa: PLR0915 - a linear script of steps
    work: Path, name: str, *, namespace: bool = True
) -> int:
    from agent.archive.make import DeviceRequest, build_archive
    from agent.archive.network import parse_network_payload
    from agent.config import load_config
    from agent.demo_netns import DemoNamespace, available
    from agent.demo_world import (
        TEMPLATE,
        DemoPki,
        EventWatcher,
        OperationalBroker,
        RegistryServe,
        add_template,
        make_image,
        read_image,
    )
    from agent.fsutil import ensure_dir
    from agent.provisioning.service import ProvisioningService
    from agent.registry.ca import REGISTRY_FILES, init_ca

    show = _Steps()
    print(f"edge-agent demo: everything happens under {work}, on 127.0.0.1")
    why_not = available() if namespace else "--dry-run"
    netns = DemoNamespace() if why_not is None else None
    async with contextlib.AsyncExitStack() as stack:
        if netns is not None:
            show.step("Lab: a private network namespace for the appliance")
            stack.callback(netns.remove)
            netns.create()
            netns.enter()
            show.timed(
                f"namespace {netns.name}: eth0, eth1 (veth) to gateways 198.18.10.1 and "
                f"198.18.11.1 in {netns.peer}; the demo runs inside it"
            )
        show.step("Factory: create the PKI (offline root, signer, claim and device issuers)")
        ca = init_ca(work / "factory-ca", name="edge-agent demo CA")
        pki = DemoPki(ca, work / "tls")
        show.say(f"root:   {ca.root_cert.subject.rfc4514_string()} (key goes offline)")
        show.say(f"claim issuer:  {ca.claim_issuer.cert.subject.rfc4514_string()} (factory)")
        show.say(f"device issuer: {ca.device_issuer.cert.subject.rfc4514_string()} (registry)")
        registry_ca = ensure_dir(work / "registry-ca")
        for file_name in REGISTRY_FILES:  # the registry holds the device issuer, not the root key
            shutil.copy2(work / "factory-ca" / file_name, registry_ca / file_name)
        show.timed(f"registry host holds only: {', '.join(REGISTRY_FILES)}")

        show.step("Cloud side: the operational broker and the fleet-provisioning endpoint")
        broker = OperationalBroker(work / "broker", pki)
        broker.start()
        stack.callback(broker.stop)
        show.timed(f"mosquitto (operational broker, mutual TLS) on 127.0.0.1:{broker.port}")
        config_path = work / "agent.toml"
        config_path.write_text(
            _config_text(work, pki.root, namespace=netns is not None), encoding="utf-8"
        )
        add_template(work / "registry.db", broker.port, region=REGION, account=ACCOUNT)
        serve = RegistryServe(config_path, pki, work / "registry-serve.log")
        serve.start()
        stack.callback(serve.stop)
        show.timed(
            f"edge-agent registry serve on 127.0.0.1:{serve.port}, template {TEMPLATE!r} "
            f"(mqttEndpoint localhost:{broker.port})"
        )
        watcher = EventWatcher(broker.port, pki)
        await watcher.start()
        stack.push_async_callback(watcher.stop)
        show.timed("a subscriber listens on edge/+/events")

        show.step("Factory: ProvisionDevice -> certificates-omni_<name>.zip on a FAT stick")
        serial = secrets.token_hex(4)
        built = build_archive(
            ca.factory(),
            DeviceRequest(
                name=name,
                networking=parse_network_payload(
                    NAMESPACE_NETWORK if netns is not None else DEMO_NETWORK
                ),
                tags={"site": "demo"},
                endpoint=f"localhost:{serve.port}",
                template=TEMPLATE,
                template_parameters={"SerialNumber": serial},
            ),
        )
        images = ensure_dir(work / "images")
        archive_name = f"certificates-omni_{name}.zip"
        (images / archive_name).write_bytes(built.data)
        image = make_image(images / "stick.img", {archive_name: built.data})
        response = built.response()
        show.say(json.dumps({k: v for k, v in response.items() if k != "Certificates"}))
        show.timed(f"{archive_name} ({len(built.data)} bytes) on a FAT image: {image}")

        show.step("Appliance: start the provisioning side of edge-agent run")
        config = load_config(config_path)
        service = ProvisioningService(config, on_status=show.timed)
        await stack.enter_async_context(service)
        show.timed(f"net recover: {(service.network_recovery or {}).get('action')}")
        show.say(f"watching {config.usb.directory} for sticks (directory source, inotify)")

        show.step("Technician: insert the stick")
        stick = Path(config.usb.directory) / image.name
        image.rename(stick)
        run_id = await _wait_run(service)
        show.timed(f"insertion seen; run {run_id} started")
        outcome = await watcher.wait_for(run_id, "RUN_OUTCOME", OUTCOME_TIMEOUT)
        await service.wait_idle()
        record = service.device(run_id)
        assert record is not None  # noqa: S101 - the run was just made
        if netns is not None:
            show.say(
                f"network: applied with the netlink backend in namespace {netns.name}, "
                "probed and committed"
            )
            for port, addresses in netns.addresses().items():
                show.say(f"network: {port} {' '.join(addresses) or '(no address)'}")
        else:
            show.say(
                "network: applied with the dry-run backend under "
                f"{config.network.dry_run_root} (nothing on this machine changed; "
                f"no network namespace: {why_not})"
            )
            rendered = Path(config.network.dry_run_root) / "etc" / "systemd" / "network"
            for path in sorted(rendered.glob("*.network")):
                show.say(f"network: wrote {path.name}")
        show.step("Operator: the outcome event arrives over MQTT")
        show.say(json.dumps(outcome))

        show.step("Technician: result.json read back from the stick")
        result = json.loads(read_image(stick, "edge-agent/result.json") or b"{}")
        show.say(f"status {result.get('status')}, thing {result.get('thingName')}")
        show.say(
            "timings: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in (result.get("timings") or {}).items())
        )
        log = read_image(stick, "edge-agent/provisioning.log") or b""
        show.timed(f"provisioning.log: {len(log.splitlines())} lines")

        show.step("Technician: the same archive on a second stick")
        again = make_image(images / "again.img", {archive_name: built.data})
        again.rename(Path(config.usb.directory) / again.name)
        second = await _wait_run(service, after={run_id})
        refused = await watcher.wait_for(second, "RUN_OUTCOME", OUTCOME_TIMEOUT)
        await service.wait_idle()
        error = refused["body"].get("error", {})
        show.timed(
            f"refused: {refused['body']['status']} {error.get('code')} {error.get('reason')}"
        )

        show.step("Done")
        show.say(f"status: {record.status} ({record.device_name} is {record.thing_name})")
        show.say("stopping the appliance, the endpoint and the broker")
    show.timed("everything stopped")
    return EXIT_OK


async def _wait_run(service: Any, *, after: set[str] | None = None) -> str:
    """The id of the first run not in ``after``."""
    deadline = time.monotonic() + OUTCOME_TIMEOUT
    while time.monotonic() < deadline:
        current = service.current
        last = service.store.last()
        for candidate in (current, last.run_id if last else None):
            if candidate and candidate not in (after or set()):
                return str(candidate)
        await asyncio.sleep(0.01)
    msg = "the stick insertion was not seen"
    raise TimeoutError(msg)
