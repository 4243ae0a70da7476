"""``edge-agent demo``: the main job on embedded defaults, each step shown as it happens.

Everything happens under one work directory (a new temporary one unless ``--out`` is
given), and nothing outside it is touched: a factory CA, an archive on a simulated stick
(a directory), validation, installation into a private state directory, the archive's
network and NTP settings applied with the dry-run backend under a private root, a
self-hosted registry signing a device CSR and evaluating a fleet-provisioning template
(RegisterThing), and the refusals a technician would meet (a tampered archive, a second use).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import EXIT_OK, AgentError

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


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    demo = sub.add_parser("demo", help="run the whole provisioning job on embedded defaults")
    demo.add_argument(
        "--out", type=Path, help="work directory (default: a new temporary directory)"
    )
    demo.add_argument("--name", default="demo-appliance-1", help="device name")
    demo.set_defaults(handler=run)


class _Steps:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.number = 0

    def step(self, title: str) -> None:
        self.number += 1
        elapsed = (time.perf_counter() - self.started) * 1000
        print(f"\n[{self.number}] {title}  (+{elapsed:.0f} ms)")

    @staticmethod
    def say(text: str) -> None:
        print(f"    {text}")


def run(args: argparse.Namespace) -> int:  # noqa: PLR0915 - a linear script of steps
    """Run the demo."""
    from agent.archive.clock import SystemClock
    from agent.archive.install import provision_from_file
    from agent.archive.make import DeviceRequest, build_archive, write_archive
    from agent.archive.network import parse_network_payload
    from agent.archive.verify import Policy, check_window, verify_archive
    from agent.config import load_config
    from agent.registry.ca import init_ca

    if not args.verbose:
        # The demo provokes refusals on purpose; it shows them itself.
        logging.getLogger("agent").setLevel(logging.ERROR)
    config = load_config(args.config)
    work = args.out or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    show = _Steps()
    print(f"edge-agent demo: everything happens under {work}")

    show.step("Factory: create the PKI (offline root, signer, claim and device issuers)")
    ca = init_ca(work / "factory-ca", name="edge-agent demo CA")
    show.say(f"root:   {ca.root_cert.subject.rfc4514_string()} (key goes offline)")
    show.say(f"signer: {ca.signer_cert.subject.rfc4514_string()} (codeSigning)")
    show.say(f"claim issuer:  {ca.claim_issuer.cert.subject.rfc4514_string()} (factory)")
    show.say(f"device issuer: {ca.device_issuer.cert.subject.rfc4514_string()} (registry)")

    show.step("Factory: ProvisionDevice -> certificates-omni_<name>.zip on the stick")
    request = DeviceRequest(
        name=args.name,
        networking=parse_network_payload(DEMO_NETWORK),
        tags={"site": "demo"},
    )
    built = build_archive(ca.factory(), request)
    archive = write_archive(built, work / "stick")
    response = built.response()
    show.say(f"wrote {archive} ({len(built.data)} bytes)")
    show.say(
        json.dumps({k: v for k, v in response.items() if k != "Certificates"})
        + " (+ Certificates: base64 of the zip)"
    )

    show.step("Appliance: prove the archive genuine")
    policy = Policy(trust_anchors=(ca.root_cert,))
    clock = SystemClock(config.archive.build_time_floor, config.archive.require_synchronized_clock)
    verified = verify_archive(archive, policy, clock)
    summary = verified.summary()
    show.say(f"device {summary['deviceName']}, thing {summary['iotThingName']}")
    show.say(f"claim certificate SHA-256 {summary['certificateFingerprint']}")
    show.say(f"valid {summary['notBefore']} .. {summary['notAfter']} (5 minutes)")
    show.say(f"time check: {summary['timeCheck']}")
    if verified.time_check == "deferred":
        show.say("the clock is not synchronised yet: the window is checked after NTP sync;")
        show.say("this demo checks it against the system clock now")
        check_window(verified.certificate, dt.datetime.now(dt.UTC), policy.clock_skew)
        show.say("window check: passed")
    network = summary["networkingConfiguration"] or {}
    for port in ("Ethernet0", "Ethernet1"):
        if port in network:
            show.say(f"{port}: {json.dumps(network[port])}")
    if "Ntp" in network:
        show.say(f"NTP servers: {', '.join(network['Ntp']['NtpServers'])}")

    show.step("Appliance: install the credentials atomically")
    state = work / "state"
    steps: list[str] = []
    _, result = provision_from_file(archive, policy, clock, state, on_step=steps.append)
    show.say(" -> ".join(steps))
    show.say(
        f"credentials in force: {state / 'credentials' / 'current'} -> {result.credential_dir}"
    )
    show.say("private.key is 0600 in a 0700 directory; the archive is recorded as used")

    show.step("Appliance: apply Ethernet0/Ethernet1 and NTP (dry-run backend, private root)")
    from agent.netconf.demo import run_demo_step

    if verified.manifest.networking_configuration is not None:
        run_demo_step(verified.manifest.networking_configuration, work / "root", show.say)

    show.step("Registry (self-hosted): sign a device CSR and RegisterThing from a template")
    from agent.fsutil import ensure_dir
    from agent.registry.ca import REGISTRY_FILES
    from agent.registry.demo import run_demo_step as registry_step

    registry_ca = ensure_dir(work / "registry-ca")
    for name in REGISTRY_FILES:  # the registry host gets the device issuer, never the root key
        shutil.copy2(work / "factory-ca" / name, registry_ca / name)
    show.say(f"registry host holds only: {', '.join(REGISTRY_FILES)}")
    registry_step(registry_ca, work / "registry", show.say)

    show.step("Appliance: refusals a technician may meet")
    _refusal(
        show.say,
        "the same archive again",
        lambda: provision_from_file(archive, policy, clock, state),
    )
    tampered = work / "tampered" / archive.name
    tampered.parent.mkdir(exist_ok=True)
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0x01
    tampered.write_bytes(bytes(data))
    _refusal(
        show.say, "a copy with one bit flipped", lambda: verify_archive(tampered, policy, clock)
    )

    show.step("Done")
    show.say("status: SUCCEEDED (archive validated and credentials installed)")
    return EXIT_OK


def _refusal(say: Callable[[str], None], label: str, action: Callable[[], object]) -> None:
    try:
        action()
    except AgentError as exc:
        say(f"{label}: refused, {exc.code} {exc.reason}: {exc.message}")
    else:
        msg = f"{label} was accepted; the demo expected a refusal"
        raise AssertionError(msg)
