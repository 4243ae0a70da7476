"""The registry's step of the project demo: a device obtains its certificate and thing.

It follows fleet provisioning by CSR: the device makes a key and a CSR (the key never leaves
it), the registry signs the CSR (CreateCertificateFromCsr), then evaluates a
fleet-provisioning template (RegisterThing) that names the certificate by its id.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.fsutil import PUBLIC_FILE, atomic_write, ensure_dir
from agent.registry.ca import (
    DEVICE_ISSUER_CERT,
    generate_key,
    init_ca,
    key_to_pem,
    load_device_issuer,
    signature_hash,
)
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage

#: The fleet-provisioning example of the reference notes (section 2.3).
EXAMPLE_TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Site": {"Type": "String", "Default": "lab"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {"site": {"Ref": "Site"}, "serial": {"Ref": "SerialNumber"}},
                "ThingGroups": ["edge-appliances"],
            },
            "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING"},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                "Status": "ACTIVE",
            },
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "EdgeAppliancePolicy"}},
    },
    "DeviceConfiguration": {"ntpServer": "pool.ntp.org"},
}

DEMO_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["*"]}],
}


def run_demo_step(ca_dir: Path, work_dir: Path, echo: Callable[[str], None]) -> None:
    """Provision one demo device against a local registry, echoing each step.

    Args:
        ca_dir: the CA directory (created with ``init_ca`` when it holds no CA yet).
        work_dir: where the registry database and the device's files are written.
        echo: prints one line.
    """
    ensure_dir(work_dir)
    if not (ca_dir / DEVICE_ISSUER_CERT).exists():
        echo(f"registry: creating a provisioning PKI in {ca_dir}")
        init_ca(ca_dir)
    # The registry holds only the device issuer's key and public certificates.
    ca = load_device_issuer(ca_dir)
    echo(f"registry: device issuer {ca.issuer.cert.subject.rfc4514_string()}")
    serial = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    thing_name = f"edge-{serial}"

    echo("device: generating an EC P-256 key and a certificate signing request")
    key = generate_key("ec-p256")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                    x509.NameAttribute(NameOID.COMMON_NAME, thing_name),
                ]
            )
        )
        .sign(key, signature_hash(key))
    )
    csr_pem = csr.public_bytes(Encoding.PEM).decode("ascii")
    atomic_write(work_dir / "device.key", key_to_pem(key))

    with SqliteRegistryStorage.open(work_dir / "registry.db") as storage:
        registry = Registry(storage, ca, region="eu-central-1", account="123456789012")
        issued = registry.create_certificate_from_csr(csr_pem)
        certificate_id = issued.certificate_id
        echo(f"registry: CSR checked and signed; certificate id {certificate_id[:16]}...")
        registry.create_policy("EdgeAppliancePolicy", DEMO_POLICY)
        echo("registry: evaluating the fleet-provisioning template (RegisterThing)")
        result = registry.register_thing(
            EXAMPLE_TEMPLATE,
            {"SerialNumber": serial},
            certificate_id=certificate_id,
        )
    atomic_write(work_dir / "device.pem", issued.certificate_pem.encode("ascii"), PUBLIC_FILE)
    for logical_id, arn in result.resource_arns.items():
        echo(f"registry: {logical_id} -> {arn}")
    echo(f"device: deviceConfiguration {json.dumps(result.device_configuration)}")
    echo(f"device: certificate written to {work_dir / 'device.pem'}")
