"""The appliance's first act with its permanent identity: FLEET_PROVISIONED over the outbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config import MqttSection
from agent.mqtt.agent_link import ApplianceMqtt
from agent.mqtt.fleet import FleetResult


async def report_provisioned(state: Path, result: FleetResult) -> None:
    """Connect to ``result.endpoint`` with the installed set and deliver one event."""
    async with ApplianceMqtt(state, MqttSection(), endpoint=result.endpoint) as mqtt:
        outbox = mqtt.require_outbox()
        await outbox.publish(
            "FLEET_PROVISIONED",
            {
                "thingName": result.thing_name,
                "certificateId": result.certificate_id,
                "endpoint": str(result.endpoint),
                "deviceConfiguration": result.device_configuration,
            },
        )
        await asyncio.wait_for(outbox.drained(), 15)
