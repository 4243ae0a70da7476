"""The fleet-provisioning MQTT API, answered through the registry core.

:class:`FleetProvisioning` turns one request (its AWS topic, payload and the claim
certificate of the connection that sent it) into one reply (``.../accepted`` or
``.../rejected``), in JSON or CBOR as the topic says:

* ``$aws/certificates/create-from-csr/<fmt>``: CreateCertificateFromCsr;
* ``$aws/certificates/create/<fmt>``: CreateKeysAndCertificate;
* ``$aws/provisioning-templates/<name>/provision/<fmt>``: RegisterThing.

RejectedErrors carry exactly AWS's fields, ``{"statusCode", "errorCode", "errorMessage"}``.
A ``certificateOwnershipToken`` is bound to the claim certificate's SHA-256 fingerprint and
expires after an hour; tokens and claim use are kept in the registry database
(:mod:`agent.registry.fleet_store`), so any worker can serve any step.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.chains import ChainError
from agent.errors import AgentError, ResourceNotFoundError
from agent.jsonutil import loads_strict
from agent.registry import fleet_store
from agent.registry.ca import (
    DeviceIssuer,
    PrivateKey,
    generate_key,
    key_to_pem,
    signature_hash,
)
from agent.registry.errors import CsrError, ProvisioningDeniedError
from agent.registry.group_commit import GroupCommitter
from agent.registry.hook import PreProvisioningHook
from agent.registry.register import Registry
from agent.registry.signing import IssuedCertificate
from agent.registry.storage import (
    CertificateRecord,
    SqliteRegistryStorage,
    SqliteRegistryTransaction,
)
from agent.registry.template import CERTIFICATE_PREFIX, Template, parse_template
from agent.registry.templates_store import TemplateStore

_log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
#: A durable write: runs inside a transaction, returns what the request needs from it.
WriteFn = Callable[[SqliteRegistryTransaction], Any]
#: A request's work as a generator: it yields each write and is resumed with its result
#: (or the write's exception thrown in) once the write is durable.
Steps = Generator[WriteFn, Any, R]
TOKEN_LIFETIME = dt.timedelta(hours=1)
Format = Literal["json", "cbor"]
Operation = Literal["CreateCertificateFromCsr", "CreateKeysAndCertificate", "RegisterThing"]

_TOPICS: tuple[tuple[re.Pattern[str], Operation], ...] = (
    (re.compile(r"\$aws/certificates/create-from-csr/(json|cbor)"), "CreateCertificateFromCsr"),
    (re.compile(r"\$aws/certificates/create/(json|cbor)"), "CreateKeysAndCertificate"),
    (
        re.compile(r"\$aws/provisioning-templates/([0-9A-Za-z_-]{1,36})/provision/(json|cbor)"),
        "RegisterThing",
    ),
)


class RejectedError(Exception):
    """A request refused with AWS's rejection fields."""

    def __init__(self, status_code: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message

    def body(self) -> dict[str, Any]:
        """``{"statusCode", "errorCode", "errorMessage"}``."""
        return {
            "statusCode": self.status_code,
            "errorCode": self.error_code,
            "errorMessage": self.message,
        }


class ClaimCertificates:
    """Checks connections' claim certificates, remembering the ones already verified.

    A device sends two or three requests over one connection, each with the same claim
    certificate. Its chain, key usage and constraints do not change; only the time does. So
    a certificate verified once is accepted again without the chain check while the time is
    inside the validity windows of the certificate and its issuer; outside them, or for any
    certificate not seen yet, the full check runs. Shared by a worker's threads.

    Args:
        issuer: the registry's claim issuer (None: every certificate is refused).
        size: how many verified certificates to remember.
    """

    def __init__(self, issuer: DeviceIssuer | None, size: int = 4096) -> None:
        self.issuer = issuer
        self._size = size
        self._known: dict[str, tuple[dt.datetime, dt.datetime, str]] = {}

    def check(self, pem: str, at: dt.datetime) -> str:
        """Verify ``pem`` as a claim certificate valid at ``at``; its common name ("" if none).

        Raises:
            RejectedError: 401 ``Unauthorized``, not a valid claim certificate.
        """
        known = self._known.get(pem)
        if known is not None and known[0] <= at <= known[1]:
            return known[2]
        try:
            if self.issuer is None:
                raise ChainError("the registry has no claim issuer configured")
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
            self.issuer.verify_claim_certificate(cert, at=at)
        except (ValueError, UnicodeEncodeError) as exc:
            _log.warning("refused a request from a non-claim certificate: %s", exc)
            raise RejectedError(
                401, "Unauthorized", "the connection's certificate is not a valid claim certificate"
            ) from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer_cert = self.issuer.claim_issuer_cert
        if len(self._known) >= self._size:
            self._known.clear()
        self._known[pem] = (
            max(cert.not_valid_before_utc, issuer_cert.not_valid_before_utc),
            min(cert.not_valid_after_utc, issuer_cert.not_valid_after_utc),
            str(names[0].value) if names else "",
        )
        return self._known[pem][2]


def _invalid_token(message: str) -> RejectedError:
    return RejectedError(400, "InvalidCertificateOwnershipToken", message)


@dataclass(frozen=True, slots=True)
class FleetRequest:
    """One request as the plugin forwards it.

    Attributes:
        topic: the AWS topic the device published to.
        payload: the device's payload.
        claim_sha256: SHA-256 fingerprint (64 hex) of the connection's claim certificate.
        claim_pem: that certificate in PEM.
        client_id: the device's MQTT client id (sent to the pre-provisioning hook).
    """

    topic: str
    payload: bytes
    claim_sha256: str
    claim_pem: str
    client_id: str = ""


@dataclass(frozen=True, slots=True)
class FleetReply:
    """The answer to send: its AWS response topic and encoded payload."""

    topic: str
    payload: bytes
    accepted: bool
    body: dict[str, Any]


def parse_topic(topic: str) -> tuple[Operation, str, Format] | None:
    """The operation, template name ('' unless RegisterThing) and format of a topic."""
    for pattern, operation in _TOPICS:
        match = pattern.fullmatch(topic)
        if match:
            groups = match.groups()
            fmt: Format = "json" if groups[-1] == "json" else "cbor"
            return operation, groups[0] if len(groups) == 2 else "", fmt  # noqa: PLR2004
    return None


def encode(body: dict[str, Any], fmt: Format) -> bytes:
    """The payload of a reply body."""
    if fmt == "cbor":
        return cbor2.dumps(body)
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def decode(payload: bytes, fmt: Format, *, allow_empty: bool = False) -> dict[str, Any]:
    """A request payload as an object.

    Raises:
        RejectedError: ``InvalidPayload`` (400) when it is not a JSON or CBOR object.
    """
    if not payload and allow_empty:
        return {}
    try:
        value = cbor2.loads(payload) if fmt == "cbor" else loads_strict(payload)
    except (ValueError, RecursionError, cbor2.CBORDecodeError, UnicodeDecodeError):
        raise RejectedError(
            400, "InvalidPayload", f"the payload is not valid {fmt.upper()}"
        ) from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RejectedError(400, "InvalidPayload", "the payload must be an object")
    return value


def _csr_pem(key: PrivateKey, common_name: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return csr.sign(key, signature_hash(key)).public_bytes(Encoding.PEM).decode("ascii")


def drive(steps: Steps[R], write: Callable[[WriteFn], Any]) -> R:
    """Run ``steps`` to the end in this thread, each write with ``write`` (blocking)."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            fn = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: R = stop.value
            return result
        try:
            value, error = write(fn), None
        except Exception as exc:  # noqa: BLE001 - thrown into the steps, as a direct call would
            value, error = None, exc


def internal_failure(request: FleetRequest) -> FleetReply:
    """The reply to a request whose handling failed unexpectedly (500 InternalFailure)."""
    rejection = RejectedError(500, "InternalFailure", "the registry failed to process it")
    fmt: Format = "cbor" if request.topic.endswith("cbor") else "json"
    payload = encode(rejection.body(), fmt)
    return FleetReply(request.topic + "/rejected", payload, accepted=False, body={})


def _rejection_for(exc: AgentError) -> RejectedError:
    if isinstance(exc, CsrError):
        return RejectedError(400, "InvalidCsr", exc.message)
    if isinstance(exc, ProvisioningDeniedError):
        return RejectedError(403, "AccessDenied", exc.message)
    if isinstance(exc, ResourceNotFoundError):
        return RejectedError(404, "ResourceNotFound", exc.message)
    if exc.status_code >= 500:  # noqa: PLR2004
        return RejectedError(500, "InternalFailure", "the registry failed to process the request")
    return RejectedError(exc.status_code, exc.code.removesuffix("Exception"), exc.message)


class FleetProvisioning:
    """Answers fleet-provisioning requests.

    Args:
        registry: the registry core (signs with the device issuer).
        storage: the registry's SQLite storage (tokens live in the same database).
        templates: the provisioning-template store.
        claim_registrations: successful RegisterThing calls per claim certificate (0: any).
        csr_subject: ``claim`` requires a CSR's common name to be the claim certificate's.
        max_request_bytes: the largest payload answered.
        clock: the current time.
        committer: shares durable commits between concurrent requests (default: each
            request commits its own transaction).
        claims: the claim-certificate check, shared between a worker's threads (default:
            this instance's own, with the registry's issuer).
    """

    def __init__(
        self,
        registry: Registry,
        storage: SqliteRegistryStorage,
        templates: TemplateStore,
        *,
        claim_registrations: int = 1,
        csr_subject: Literal["claim", "any"] = "claim",
        max_request_bytes: int = 65536,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        committer: GroupCommitter | None = None,
        claims: ClaimCertificates | None = None,
    ) -> None:
        self.registry = registry
        self.storage = storage
        self.templates = templates
        self.claim_registrations = claim_registrations
        self.csr_subject = csr_subject
        self.max_request_bytes = max_request_bytes
        self.clock = clock
        self.committer = committer
        self.claims = claims or ClaimCertificates(registry.ca)
        self._parsed: dict[str, Template] = {}
        self._described: tuple[str, dict[str, Any]] | None = None
        fleet_store.migrate(storage.store)

    # --- entry point ---------------------------------------------------------------------

    def handle(self, request: FleetRequest) -> FleetReply | None:
        """Answer one request; None when the topic is not a fleet-provisioning request.

        Blocks until the request's writes are durable.
        """
        steps = self.steps(request)
        if steps is None:
            return None
        return drive(steps, self._write_now)

    def steps(self, request: FleetRequest) -> Steps[FleetReply] | None:
        """The work of one request (see :data:`Steps`); None for a topic not answered here.

        Everything but the writes runs when the generator is advanced, in the caller's
        thread, on this instance's database connection; each yielded write must run in a
        durable transaction (:meth:`GroupCommitter.submit` or its own) before the generator
        is resumed.
        """
        parsed = parse_topic(request.topic)
        if parsed is None:
            return None
        return self._steps(request, *parsed)

    def blocking(self, request: FleetRequest) -> bool:
        """Whether answering may wait on more than the database.

        True for a RegisterThing of a template with a pre-provisioning hook: the hook is
        called, and its decision recorded, in the thread that advances the steps.
        """
        self._described = None
        parsed = parse_topic(request.topic)
        if parsed is None or parsed[0] != "RegisterThing":
            return False
        try:
            described = self.templates.describe(parsed[1])
        except AgentError:
            return False
        # read once: the steps started next for this request take it (see _template)
        self._described = (parsed[1], described)
        return bool(described.get("preProvisioningHook"))

    def _steps(
        self, request: FleetRequest, operation: Operation, template_name: str, fmt: Format
    ) -> Steps[FleetReply]:
        try:
            self._check_size(request)
            self._check_claim_certificate(request)
            if operation == "CreateCertificateFromCsr":
                body = yield from self._create_from_csr(request, fmt)
            elif operation == "CreateKeysAndCertificate":
                body = yield from self._create_keys(request, fmt)
            else:
                body = yield from self._register_thing(request, template_name, fmt)
        except RejectedError as rejection:
            return self._reply(request.topic + "/rejected", rejection.body(), fmt, accepted=False)
        except AgentError as exc:
            return self._reply(
                request.topic + "/rejected", _rejection_for(exc).body(), fmt, accepted=False
            )
        return self._reply(request.topic + "/accepted", body, fmt, accepted=True)

    def _check_claim_certificate(self, request: FleetRequest) -> None:
        """The connection's certificate is a claim certificate, valid now, for clientAuth.

        The broker has checked the chain at the handshake; this holds even when the broker is
        an operator's own, configured more loosely: only the claim issuer's certificates may
        provision, never a device certificate or one from another CA.
        """
        self.claims.check(request.claim_pem, self.clock())

    def _check_size(self, request: FleetRequest) -> None:
        if len(request.payload) > self.max_request_bytes:
            raise RejectedError(
                400, "InvalidPayload", f"the payload is larger than {self.max_request_bytes} bytes"
            )

    @staticmethod
    def _reply(topic: str, body: dict[str, Any], fmt: Format, *, accepted: bool) -> FleetReply:
        return FleetReply(topic, encode(body, fmt), accepted, body)

    # --- CreateCertificateFromCsr / CreateKeysAndCertificate -----------------------------

    def _claim_common_name(self, request: FleetRequest) -> str:
        return self.claims.check(request.claim_pem, self.clock())

    def _create_from_csr(self, request: FleetRequest, fmt: Format) -> Steps[dict[str, Any]]:
        data = decode(request.payload, fmt)
        csr = data.get("certificateSigningRequest")
        if not isinstance(csr, str) or not csr:
            raise RejectedError(
                400, "InvalidPayload", "certificateSigningRequest must be a PEM string"
            )
        csr_sha256 = fleet_store.digest(csr.strip())
        db = self.storage.store.db
        existing = fleet_store.find_csr(db, request.claim_sha256, csr_sha256)
        if existing is not None:
            return (yield from self._reissue_token(request, existing))
        issued = self.registry.sign_csr(csr)
        if self.csr_subject == "claim":
            wanted = self._claim_common_name(request)
            got = issued.parameters.get(CERTIFICATE_PREFIX + "CommonName", "")
            if got != wanted:
                raise RejectedError(
                    400,
                    "InvalidCsr",
                    "the CSR's common name must be the claim certificate's common name",
                )

        def write(tx: SqliteRegistryTransaction) -> tuple[str, str]:
            again = fleet_store.find_csr(tx.db, request.claim_sha256, csr_sha256)
            if again is not None:  # another worker answered a retry of the same request
                cert_id = again
            else:
                cert_id = issued.certificate_id
                self._put_pending(tx, issued)
                fleet_store.record_csr(tx.db, request.claim_sha256, csr_sha256, cert_id)
            return cert_id, self._new_token(tx.db, request, cert_id)

        cert_id, token = yield from self._write(write)
        # what was just written, unless another worker had answered a retry first
        pem = issued.certificate_pem if cert_id == issued.certificate_id else None
        pem = pem or self._certificate_pem(cert_id)
        return {
            "certificateOwnershipToken": token,
            "certificateId": cert_id,
            "certificatePem": pem,
        }

    def _create_keys(self, request: FleetRequest, fmt: Format) -> Steps[dict[str, Any]]:
        decode(request.payload, fmt, allow_empty=True)
        name = self._claim_common_name(request)
        if not name:
            # A claim for a device name longer than a CN holds (64) has none. The permanent
            # certificate's CN is the device's identity at the operational broker, so a
            # stand-in shared by such devices would let one act on another's topics.
            raise RejectedError(
                400,
                "InvalidRequest",
                "the claim certificate has no common name (a device name longer than 64 "
                "characters): the permanent certificate could not name the device",
            )
        key = generate_key("ec-p256")
        issued = self.registry.sign_csr(_csr_pem(key, name))

        def write(tx: SqliteRegistryTransaction) -> str:
            self._put_pending(tx, issued)
            return self._new_token(tx.db, request, issued.certificate_id)

        token = yield from self._write(write)
        return {
            "certificateId": issued.certificate_id,
            "certificatePem": issued.certificate_pem,
            "privateKey": key_to_pem(key).decode("ascii"),
            "certificateOwnershipToken": token,
        }

    @staticmethod
    def _write(fn: Callable[[SqliteRegistryTransaction], T]) -> Steps[T]:
        """Yield ``fn`` to whoever drives the steps; its result once durable."""
        result: T = yield fn
        return result

    def _write_now(self, fn: WriteFn) -> Any:
        """Run ``fn`` in a durable transaction (shared with other requests when grouped)."""
        if self.committer is not None:
            return self.committer.run(fn)
        with self.storage.transaction() as tx:
            return fn(tx)

    def _put_pending(self, tx: SqliteRegistryTransaction, issued: IssuedCertificate) -> None:
        now = self.clock()
        # INACTIVE until RegisterThing activates it (AWS: PENDING_ACTIVATION).
        tx.put_certificate(
            CertificateRecord(issued.certificate_id, issued.certificate_pem, "INACTIVE", now, now)
        )

    def _new_token(self, db: Any, request: FleetRequest, certificate_id: str) -> str:
        token = secrets.token_urlsafe(48)
        fleet_store.add_token(
            db,
            token,
            certificate_id=certificate_id,
            claim_sha256=request.claim_sha256,
            expires_at=self.clock() + TOKEN_LIFETIME,
        )
        return token

    def _reissue_token(self, request: FleetRequest, certificate_id: str) -> Steps[dict[str, Any]]:
        token = yield from self._write(lambda tx: self._new_token(tx.db, request, certificate_id))
        return {
            "certificateOwnershipToken": token,
            "certificateId": certificate_id,
            "certificatePem": self._certificate_pem(certificate_id),
        }

    def _certificate_pem(self, certificate_id: str) -> str:
        record = self.storage.get_certificate(certificate_id)
        if record is None:
            raise RejectedError(500, "InternalFailure", "the certificate is missing")
        return record.certificate_pem

    # --- RegisterThing -------------------------------------------------------------------

    def _template(self, name: str) -> tuple[Template, str, PreProvisioningHook | None]:
        memo, self._described = self._described, None
        try:
            described = memo[1] if memo is not None and memo[0] == name else None
            described = described or self.templates.describe(name)
        except AgentError:
            raise RejectedError(
                404, "ResourceNotFound", f"the provisioning template {name} does not exist"
            ) from None
        if described["type"] != "FLEET_PROVISIONING":
            raise RejectedError(
                400, "InvalidRequest", f"{name} is not a fleet-provisioning template"
            )
        if not described["enabled"]:
            raise RejectedError(
                400, "InvalidRequest", f"the provisioning template {name} is disabled"
            )
        body = described["templateBody"]
        key = fleet_store.digest(body)
        template = self._parsed.get(key)
        if template is None:
            template = parse_template(body)
            self._parsed[key] = template
        hook = None
        hook_spec = described.get("preProvisioningHook")
        if hook_spec:
            hook = PreProvisioningHook(
                str(hook_spec["targetArn"]), timeout=self.registry.hook_timeout
            )
        return template, str(described["templateArn"]), hook

    def _check_token(self, request: FleetRequest, token: str) -> fleet_store.TokenRecord:
        record = fleet_store.get_token(self.storage.store.db, token)
        if record is None or not secrets.compare_digest(record.claim_sha256, request.claim_sha256):
            raise _invalid_token("the certificate ownership token is not valid")
        if self.clock() >= record.expires_at:
            raise _invalid_token("the certificate ownership token has expired")
        return record

    def _register_thing(
        self, request: FleetRequest, name: str, fmt: Format
    ) -> Steps[dict[str, Any]]:
        data = decode(request.payload, fmt)
        token = data.get("certificateOwnershipToken")
        if token is None or token == "":
            raise _invalid_token("Certificate ownership token cannot be empty.")
        if not isinstance(token, str) or len(token) > 2048:  # noqa: PLR2004
            raise _invalid_token("the certificate ownership token is not valid")
        parameters = data.get("parameters", {})
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
        ):
            raise RejectedError(400, "InvalidPayload", "parameters must map strings to strings")
        record = self._check_token(request, token)
        if record.result is not None:
            if record.template_name == name:  # the device retries an answer it lost
                result: dict[str, Any] = json.loads(record.result)
                return result
            raise _invalid_token("the certificate ownership token was already used")
        self._check_claim(self.storage.store.db, request)
        template, template_arn, hook = self._template(name)
        prepared = self.registry.prepare(
            template,
            parameters,
            certificate_id=record.certificate_id,
            hook=hook,
            template_arn=template_arn,
            client_id=request.client_id,
            claim_certificate_id=request.claim_sha256,
        )

        def write(tx: SqliteRegistryTransaction) -> dict[str, Any]:
            again = fleet_store.get_token(tx.db, token)
            if again is not None and again.result is not None:
                if again.template_name == name:
                    stored: dict[str, Any] = json.loads(again.result)
                    return stored
                raise _invalid_token("the certificate ownership token was already used")
            self._check_claim(tx.db, request)
            outcome = self.registry.commit(prepared, transaction=tx, now=self.clock())
            body: dict[str, Any] = {
                "deviceConfiguration": outcome.device_configuration,
                "thingName": outcome.thing_name or "",
            }
            fleet_store.spend_token(tx.db, token, name, json.dumps(body, separators=(",", ":")))
            fleet_store.count_registration(tx.db, request.claim_sha256, outcome.thing_name or "")
            return body

        body = yield from self._write(write)
        _log.info("registered thing %s through fleet provisioning", body["thingName"])
        return body

    def _check_claim(self, db: Any, request: FleetRequest) -> None:
        if self.claim_registrations == 0:
            return
        used = fleet_store.claim_registrations(db, request.claim_sha256)
        if used >= self.claim_registrations:
            raise RejectedError(
                403,
                "ClaimCertificateAlreadyUsed",
                "this claim certificate has already been used to provision a device",
            )
