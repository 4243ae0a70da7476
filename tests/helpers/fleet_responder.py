"""A fleet-provisioning responder on a real mosquitto, deciding with the real registry code.

It answers ``$aws/certificates/create-from-csr/<fmt>``, ``$aws/certificates/create/<fmt>``
and ``$aws/provisioning-templates/<name>/provision/<fmt>`` as AWS IoT does (same topics,
payloads and rejection fields), signing with :class:`agent.registry.register.Registry`. It
lets the device side be tested without the registry's own endpoint; unlike that endpoint
it does not bind responses to the asking connection (the test broker's ACL shares
``$aws/#``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import cbor2

from agent.errors import AgentError
from agent.mqtt.client import Endpoint, Identity, Session, Settings, connect
from agent.registry.ca import generate_key, key_to_pem
from agent.registry.register import Registry


def aws_rejection(exc: AgentError) -> dict[str, Any]:
    """AWS's rejected payload for an agent error."""
    return {"statusCode": exc.status_code, "errorCode": exc.code, "errorMessage": exc.message}


@dataclass
class Responder:
    """Answers fleet-provisioning requests for the templates it knows."""

    registry: Registry
    templates: dict[str, dict[str, Any]]
    endpoint: Endpoint
    identity: Identity
    disabled: set[str] = field(default_factory=set)
    tokens: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: Subject CN of certificates made by CreateKeysAndCertificate (the broker's user name).
    create_keys_cn: str = "AWS IoT Certificate"
    #: Called with the operation before answering; return False to withhold the answer.
    gate: Callable[[str], bool] = lambda _op: True

    async def serve(self, ready: asyncio.Event) -> None:
        """Answer until cancelled."""
        settings = Settings(
            self.endpoint, self.identity, client_id=f"registry-{secrets.token_hex(3)}"
        )
        async with connect(settings) as session:

            def handler(message: aiomqtt.Message) -> Awaitable[None]:
                return self._answer(session, message)

            for topic in (
                "$aws/certificates/create-from-csr/+",
                "$aws/certificates/create/+",
                "$aws/provisioning-templates/+/provision/+",
            ):
                await session.subscribe(topic, handler)
            ready.set()
            await session.closed

    async def _answer(self, session: Session, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parts = topic.split("/")
        fmt = parts[-1]
        if fmt not in ("json", "cbor"):
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        operation = {
            "create-from-csr": "CreateCertificateFromCsr",
            "create": "CreateKeysAndCertificate",
        }.get(parts[2], "RegisterThing")
        self.requests.append(operation)
        if not self.gate(operation):
            return
        try:
            request = (
                (cbor2.loads(payload) if fmt == "cbor" else json.loads(payload)) if payload else {}
            )
            body = await asyncio.to_thread(self._decide, operation, parts, request)
            outcome = "accepted"
        except AgentError as exc:
            body, outcome = aws_rejection(exc), "rejected"
        data = cbor2.dumps(body) if fmt == "cbor" else json.dumps(body).encode()
        with contextlib.suppress(Exception):
            await session.publish(f"{topic}/{outcome}", data)

    def _decide(self, operation: str, parts: list[str], request: dict[str, Any]) -> dict[str, Any]:
        if operation == "CreateCertificateFromCsr":
            issued = self.registry.create_certificate_from_csr(
                str(request.get("certificateSigningRequest", ""))
            )
            token = secrets.token_urlsafe(32)
            self.tokens[token] = issued.certificate_id
            return {
                "certificateId": issued.certificate_id,
                "certificatePem": issued.certificate_pem,
                "certificateOwnershipToken": token,
            }
        if operation == "CreateKeysAndCertificate":
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.x509.oid import NameOID

            key = generate_key("ec-p256")
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(
                    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.create_keys_cn)])
                )
                .sign(key, hashes.SHA256())
                .public_bytes(serialization.Encoding.PEM)
                .decode()
            )
            issued = self.registry.create_certificate_from_csr(csr)
            token = secrets.token_urlsafe(32)
            self.tokens[token] = issued.certificate_id
            return {
                "certificateId": issued.certificate_id,
                "certificatePem": issued.certificate_pem,
                "privateKey": key_to_pem(key).decode(),
                "certificateOwnershipToken": token,
            }
        template = parts[2]
        from agent.errors import InvalidRequestError, ResourceNotFoundError

        if template not in self.templates:
            raise ResourceNotFoundError(f"no template {template}")
        if template in self.disabled:
            raise InvalidRequestError(f"template {template} is disabled")
        token = str(request.get("certificateOwnershipToken"))
        if token not in self.tokens:
            raise InvalidRequestError("Certificate ownership token is invalid.")
        parameters = dict(request.get("parameters") or {})
        result = self.registry.register_thing(
            self.templates[template], parameters, certificate_id=self.tokens[token]
        )
        return {"deviceConfiguration": result.device_configuration, "thingName": result.thing_name}
