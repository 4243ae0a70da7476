"""A device provisioning itself through a fleet-provisioning endpoint, as a child process.

``python -m tests.helpers.claim_device_driver PORT CA CERT KEY NAME SERIAL`` makes a CSR for
``NAME``, asks ``CreateCertificateFromCsr`` and then ``RegisterThing`` (template
``edge-fleet``) on 127.0.0.1:PORT with the claim certificate, and prints one JSON line:
``{"thingName": ...}`` or ``{"rejected": TOPIC, "payload": ...}``. A child process, so a test
can run it inside another network namespace (``nsenter --net``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers.endpoint import Claim, RawDevice
from tests.helpers.registry import make_csr

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
REGISTER = "$aws/provisioning-templates/edge-fleet/provision/json"


def main(argv: list[str]) -> int:
    """Run one provisioning; 0 when the thing was registered."""
    port, ca, cert, key, name, serial = argv
    device = RawDevice(int(port), Claim(name, Path(cert), Path(key), ""), Path(ca))
    try:
        csr = make_csr(name)
        topic, payload = device.request(CSR_TOPIC, json.dumps({"certificateSigningRequest": csr}))
        if not topic.endswith("/accepted"):
            print(json.dumps({"rejected": topic, "payload": payload.decode()}))
            return 1
        token = json.loads(payload)["certificateOwnershipToken"]
        body = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}
        topic, payload = device.request(REGISTER, json.dumps(body))
        if not topic.endswith("/accepted"):
            print(json.dumps({"rejected": topic, "payload": payload.decode()}))
            return 1
        print(json.dumps({"thingName": json.loads(payload)["thingName"]}))
        return 0
    finally:
        device.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
