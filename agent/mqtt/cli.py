"""``edge-agent provision fleet``: trade the installed claim for permanent credentials.

Runs (or resumes) the fleet-provisioning exchange against the archive installed in
``--state-dir``, then reconnects with the permanent identity to the operational broker and
reports a ``FLEET_PROVISIONED`` event through the durable outbox (``--no-report`` skips it).
Prints the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from agent.errors import EXIT_OK


def register(sub: Any) -> None:
    """Add the ``provision`` command."""
    provision = sub.add_parser("provision", help="fleet provisioning over MQTT")
    p_sub = provision.add_subparsers(dest="provision_command", required=True, metavar="COMMAND")
    fleet = p_sub.add_parser(
        "fleet", help="exchange the installed claim certificate for permanent credentials"
    )
    fleet.add_argument("--state-dir", type=Path, help="agent state directory (default: config)")
    fleet.add_argument(
        "--mode", choices=("csr", "create-keys"), help="CSR or CreateKeysAndCertificate"
    )
    fleet.add_argument("--key-type", choices=("ec-p256", "rsa-2048", "ed25519"), help="device key")
    fleet.add_argument("--format", choices=("json", "cbor"), help="payload format")
    fleet.add_argument(
        "--endpoint", help="provisioning endpoint HOST:PORT (default: the archive's)"
    )
    fleet.add_argument("--step-timeout", type=float, help="seconds per answer (claim-bounded)")
    fleet.add_argument(
        "--no-report", action="store_true", help="do not reconnect and report FLEET_PROVISIONED"
    )
    fleet.add_argument("--json", action="store_true", help="JSON output (the default)")
    fleet.set_defaults(handler=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    from agent.cli import print_json
    from agent.config import load_config
    from agent.mqtt.fleet import FleetOptions

    config = load_config(args.config)
    section = config.mqtt
    state_dir: Path = args.state_dir or config.agent.state_dir
    options = FleetOptions(
        mode=args.mode or section.fleet_mode,
        key_type=args.key_type or section.fleet_key_type,
        payload_format=args.format or section.fleet_format,
        step_timeout=args.step_timeout or section.fleet_step_timeout_seconds,
        endpoint=args.endpoint or "",
        protocol=section.protocol,
    )
    result = asyncio.run(_run(state_dir, options, section, report=not args.no_report))
    print_json(result)
    return EXIT_OK


async def _run(state_dir: Path, options: Any, section: Any, *, report: bool) -> dict[str, Any]:
    from agent.mqtt.agent_link import ApplianceMqtt
    from agent.mqtt.fleet import provision

    result = await provision(state_dir, options)
    out = result.to_json()
    if report:
        endpoint = result.endpoint
        if section.endpoint:
            from agent.mqtt.client import Endpoint

            endpoint = Endpoint.parse(section.endpoint)
        async with ApplianceMqtt(state_dir, section, endpoint=endpoint) as mqtt:
            outbox = mqtt.require_outbox()
            event = await outbox.publish(
                "FLEET_PROVISIONED",
                {
                    "thingName": result.thing_name,
                    "certificateId": result.certificate_id,
                    "endpoint": str(endpoint),
                    "deviceConfiguration": result.device_configuration,
                },
            )
            try:
                await asyncio.wait_for(outbox.drained(), section.connect_timeout_seconds * 3)
                out["reported"] = {"seq": event["seq"], "delivered": True}
            except TimeoutError:
                # durable in the outbox: the daemon delivers it once the broker is reachable
                out["reported"] = {"seq": event["seq"], "delivered": False}
    return out
