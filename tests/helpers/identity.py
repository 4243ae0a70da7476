"""An appliance that is already provisioned: its permanent set installed for a test broker."""

from __future__ import annotations

import json
from pathlib import Path

from agent.fsutil import PRIVATE_FILE, PUBLIC_FILE
from agent.mqtt.credentials import install_set
from tests.helpers.mosquitto import Broker, Pki


def install_identity(state: Path, pki: Pki, broker: Broker, thing: str) -> None:
    """Install a credential set for ``thing`` issued by ``pki``, pointing at ``broker``."""
    cert, key = pki.issue(thing)
    manifest = {
        "deviceName": thing,
        "deviceId": "device-abcdefghijklmnop",
        "arn": "arn:aws:panorama:us-east-1:123456789012:device/device-abcdefghijklmnop",
        "iotThingName": thing,
        "iotEndpoint": f"localhost:{broker.port}",
        "provisioningTemplate": "fleet",
    }
    install_set(
        state,
        "test",
        {
            "certificate.pem": (cert.read_bytes(), PUBLIC_FILE),
            "private.key": (key.read_bytes(), PRIVATE_FILE),
            "root-ca.pem": (pki.ca_path.read_bytes(), PUBLIC_FILE),
            "manifest.json": (json.dumps(manifest).encode(), PUBLIC_FILE),
        },
    )
