"""Fleet provisioning by claim over MQTT, as AWS IoT Core defines it (and ``registry serve``).

With the claim certificate of the installed archive:

1. ``CreateCertificateFromCsr`` (default): the device key is generated here (EC P-256, or
   RSA-2048 / Ed25519) and written 0600 atomically before the CSR (CN = ``iotThingName``)
   leaves; or ``CreateKeysAndCertificate`` when configured (the key comes from the server
   and is written the same way at once).
2. ``RegisterThing`` on ``$aws/provisioning-templates/<template>/provision/<fmt>`` with the
   ownership token and the archive's ``templateParameters``.
3. The permanent certificate and key become the credential set in force (atomic switch); the
   claim session is closed and the appliance reconnects with its permanent identity to
   ``deviceConfiguration.mqttEndpoint`` if the template returned one, else the same endpoint.

Accepted/rejected are subscribed before each publish. Every wait is bounded by the time left
in the claim certificate's window. The exchange is resumable: the step reached, the
certificate id and the ownership token are committed after each step (``fleet_exchange``
table), so a process killed between steps continues with the same claim and token instead
of orphaning a certificate. Neither the private key nor the token is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.archive.install import current_credentials
from agent.archive.manifest import COMMON_NAME_MAX
from agent.errors import EXIT_REJECTED, AgentError, StateError, ValidationError
from agent.faults import crash_point
from agent.fsutil import PRIVATE_FILE, PUBLIC_FILE, atomic_write, ensure_dir
from agent.mqtt.client import Endpoint, Identity, Session, Settings, connect
from agent.mqtt.credentials import install_set
from agent.store import Store

_log = logging.getLogger(__name__)

KeyKind = Literal["ec-p256", "rsa-2048", "ed25519"]
Mode = Literal["csr", "create-keys"]
Format = Literal["json", "cbor"]
Step = Literal["started", "certificate", "registered", "installed"]
#: (operation, request, outcome, answer) of one fleet-provisioning request.
Exchange = Callable[[str, dict[str, Any], str, dict[str, Any]], None]

COMPONENT = "mqtt_fleet"
MIGRATIONS = (
    """
    CREATE TABLE fleet_exchange (
        claim_fingerprint    TEXT PRIMARY KEY,
        thing_name           TEXT NOT NULL,
        mode                 TEXT NOT NULL,
        step                 TEXT NOT NULL,
        certificate_id       TEXT,
        ownership_token      TEXT,
        certificate_pem      TEXT,
        registered_thing     TEXT,
        device_configuration TEXT,
        credential_set       TEXT,
        updated_at           TEXT NOT NULL
    );
    """,
)


class FleetProvisioningError(AgentError):
    """The fleet-provisioning API rejected a request (AWS's fields kept)."""

    code = "InvalidRequestException"
    status_code = 400
    exit_code = EXIT_REJECTED
    default_reason = "FLEET_REJECTED"
    aws_fields: ClassVar[tuple[str, ...]] = ("statusCode", "errorCode", "errorMessage")

    def __init__(self, operation: str, rejected: dict[str, Any]) -> None:
        self.operation = operation
        self.aws_status = rejected.get("statusCode")
        self.aws_code = str(rejected.get("errorCode", "Unknown"))
        self.aws_message = str(rejected.get("errorMessage", ""))
        super().__init__(
            f"{operation} was rejected: {self.aws_status} {self.aws_code}: {self.aws_message}",
            reason="FLEET_REJECTED",
        )

    def to_dict(self) -> dict[str, Any]:
        """The error shape, with AWS's rejection under ``aws``."""
        data = super().to_dict()
        data["error"]["aws"] = {
            "operation": self.operation,
            "statusCode": self.aws_status,
            "errorCode": self.aws_code,
            "errorMessage": self.aws_message,
        }
        return data


class FleetTimeoutError(AgentError):
    """No answer in time (bounded by the claim certificate's window)."""

    code = "InternalServerException"
    status_code = 504
    retryable = True
    default_reason = "FLEET_TIMEOUT"


class ClaimExpiredError(ValidationError):
    """The claim certificate's window is over."""

    default_reason = "CLAIM_EXPIRED"


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """How to run the exchange."""

    mode: Mode = "csr"
    key_type: KeyKind = "ec-p256"
    payload_format: Format = "json"
    #: Most seconds any one answer is waited for (also bounded by the claim window).
    step_timeout: float = 30.0
    #: Override of the archive's ``iotEndpoint`` (``host:port``); empty: the archive's.
    endpoint: str = ""
    protocol: Literal["auto", "5", "3.1.1"] = "auto"


@dataclass(frozen=True, slots=True)
class FleetResult:
    """What the exchange produced."""

    thing_name: str
    certificate_id: str
    credential_dir: Path
    endpoint: Endpoint
    device_configuration: dict[str, str]
    resumed_from: str

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON."""
        return {
            "thingName": self.thing_name,
            "certificateId": self.certificate_id,
            "credentialDir": str(self.credential_dir),
            "endpoint": str(self.endpoint),
            "deviceConfiguration": self.device_configuration,
            "resumedFrom": self.resumed_from,
            "status": "PROVISIONED",
        }


def generate_device_key(
    kind: KeyKind,
) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """A new device key."""
    if kind == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: Any, thing_name: str) -> bytes:
    """A PEM CSR whose subject CN is ``thing_name``, or an empty subject for a longer name.

    AWS IoT Core does not read a CSR's subject; the registry requires a CN (the permanent
    certificate's CN is the device's identity at its operational broker) and refuses a CSR
    without one, which is then a reported rejection rather than a failure to build the CSR.
    """
    attributes = (
        [x509.NameAttribute(NameOID.COMMON_NAME, thing_name)]
        if 0 < len(thing_name) <= COMMON_NAME_MAX
        else []
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data


def _encode(fmt: Format, data: dict[str, Any]) -> bytes:
    if fmt == "cbor":
        import cbor2  # noqa: PLC0415 - loaded only by an appliance configured for CBOR

        return cbor2.dumps(data)
    return json.dumps(data).encode()


def _loads(fmt: Format, payload: bytes) -> Any:
    if fmt != "cbor":
        return json.loads(payload)
    import cbor2  # noqa: PLC0415 - loaded only by an appliance configured for CBOR

    try:
        return cbor2.loads(payload)
    except cbor2.CBORDecodeError as exc:
        raise ValueError(str(exc)) from None


def _decode(fmt: Format, payload: bytes) -> dict[str, Any]:
    try:
        data = _loads(fmt, payload)
    except ValueError as exc:
        raise FleetProvisioningError(
            "response",
            {"statusCode": 500, "errorCode": "MalformedResponse", "errorMessage": str(exc)},
        ) from None
    if not isinstance(data, dict):
        raise FleetProvisioningError(
            "response",
            {"statusCode": 500, "errorCode": "MalformedResponse", "errorMessage": "not an object"},
        )
    return data


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class FleetExchange:
    """One appliance's exchange of its claim certificate for permanent credentials.

    Args:
        state_dir: the agent's state directory (credential sets, ``agent.db``).
        options: how to run it.
        on_step: called with each step name once it is durable (tests stop there).
        on_exchange: called with (operation, request, outcome, answer) of each request
            (for checks against the schemas; it sees secrets, so it must not log them).
    """

    def __init__(
        self,
        state_dir: Path,
        options: FleetOptions | None = None,
        *,
        on_step: Callable[[str], None] | None = None,
        on_exchange: Exchange | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.options = options or FleetOptions()
        self._on_step = on_step or (lambda _s: None)
        self._on_exchange = on_exchange
        self._store = Store(ensure_dir(state_dir) / "agent.db")
        self._store.migrate(COMPONENT, MIGRATIONS)

    def close(self) -> None:
        """Close the state store."""
        self._store.close()

    # --- state ---------------------------------------------------------------------------

    def _row(self, fingerprint: str) -> dict[str, Any] | None:
        row = self._store.db.execute(
            "SELECT * FROM fleet_exchange WHERE claim_fingerprint = ?", (fingerprint,)
        ).fetchone()
        return dict(row) if row is not None else None

    def _must_row(self, fingerprint: str) -> dict[str, Any]:
        row = self._row(fingerprint)
        if row is None:
            raise StateError("the fleet exchange record vanished", reason="STATE_CORRUPT")
        return row

    def _save(self, fingerprint: str, **values: Any) -> None:
        values["updated_at"] = _now_text()
        columns = ", ".join(f"{k} = ?" for k in values)
        with self._store.transaction() as db:
            db.execute(
                f"UPDATE fleet_exchange SET {columns} WHERE claim_fingerprint = ?",  # noqa: S608 - fixed names
                (*values.values(), fingerprint),
            )
        if "step" in values:
            self._on_step(str(values["step"]))

    def _pending_dir(self, fingerprint: str) -> Path:
        return ensure_dir(self.state_dir / "credentials" / "pending" / fingerprint[:16])

    # --- the exchange --------------------------------------------------------------------

    async def run(self) -> FleetResult:
        """Run (or resume) the exchange to the end."""
        claim_dir = current_credentials(self.state_dir)
        if claim_dir is None:
            raise StateError(
                "no archive is installed (run archive install first)", reason="NOT_INSTALLED"
            )
        manifest = json.loads((claim_dir / "manifest.json").read_bytes())
        self._adopt_switched(claim_dir)
        done = self._finished(manifest)
        if done is not None:
            return done
        claim = x509.load_pem_x509_certificate((claim_dir / "certificate.pem").read_bytes())
        fingerprint = claim.fingerprint(hashes.SHA256()).hex()
        thing = str(manifest["iotThingName"])
        row = self._row(fingerprint)
        if row is None:
            with self._store.transaction() as db:
                db.execute(
                    "INSERT INTO fleet_exchange(claim_fingerprint, thing_name, mode, step, "
                    "updated_at) VALUES (?, ?, ?, 'started', ?)",
                    (fingerprint, thing, self.options.mode, _now_text()),
                )
            row = self._must_row(fingerprint)
        resumed_from = str(row["step"])
        endpoint = Endpoint.parse(self.options.endpoint or str(manifest["iotEndpoint"]))
        deadline = claim.not_valid_after_utc
        if row["step"] in ("started", "certificate"):
            # Only these steps still speak with the claim certificate, so only they need its
            # window: an exchange that registered before a crash is finished after the claim
            # has expired too (installing the permanent set is local).
            settings = Settings(
                endpoint=endpoint,
                identity=Identity.from_credential_set(claim_dir),
                client_id=thing,
                protocol=self.options.protocol,
                connect_timeout=min(self.options.step_timeout, self._left(deadline)),
            )
            async with connect(settings) as session:
                if row["step"] == "started":
                    await self._certificate(session, fingerprint, thing, deadline)
                    row = self._must_row(fingerprint)
                await self._register(session, fingerprint, row, manifest, deadline)
            row = self._must_row(fingerprint)
        if row["step"] == "registered":
            self._install(fingerprint, row, claim_dir)
            row = self._must_row(fingerprint)
        config = json.loads(row["device_configuration"] or "{}")
        operational = (
            Endpoint.parse(config["mqttEndpoint"]) if config.get("mqttEndpoint") else endpoint
        )
        return FleetResult(
            thing_name=str(row["registered_thing"]),
            certificate_id=str(row["certificate_id"]),
            credential_dir=self.state_dir / "credentials" / "sets" / str(row["credential_set"]),
            endpoint=operational,
            device_configuration=config,
            resumed_from=resumed_from,
        )

    def _adopt_switched(self, current: Path) -> None:
        """Record an install a crash interrupted after the switch to the permanent set.

        The set in force then holds the certificate of an exchange still recorded as
        ``registered``: the exchange is finished (recorded ``installed`` with that set), not
        started again with the permanent certificate taken for a claim.
        """
        certificate = current / "certificate.pem"
        if not current.name.split("-", 1)[-1].startswith("fleet-") or not certificate.exists():
            return
        pem = certificate.read_bytes()
        for row in self._store.db.execute(
            "SELECT claim_fingerprint, certificate_pem FROM fleet_exchange"
            " WHERE step = 'registered'"
        ).fetchall():
            if row["certificate_pem"] and str(row["certificate_pem"]).encode() == pem:
                _log.warning("fleet provisioning: the permanent set was in force; recorded")
                fingerprint = str(row["claim_fingerprint"])
                self._drop_pending(fingerprint)
                self._save(
                    fingerprint, step="installed", credential_set=current.name, ownership_token=None
                )

    def _drop_pending(self, fingerprint: str) -> None:
        pending = self.state_dir / "credentials" / "pending" / fingerprint[:16]
        with contextlib.suppress(OSError):
            (pending / "private.key").unlink()
            pending.rmdir()

    def _finished(self, manifest: dict[str, Any]) -> FleetResult | None:
        """The result of an exchange already completed for the set in force."""
        current = current_credentials(self.state_dir)
        if current is None:
            return None
        row = self._store.db.execute(
            "SELECT * FROM fleet_exchange WHERE step = 'installed' AND credential_set = ?",
            (current.name,),
        ).fetchone()
        if row is None:
            return None
        config = json.loads(row["device_configuration"] or "{}")
        endpoint = Endpoint.parse(
            config.get("mqttEndpoint") or self.options.endpoint or str(manifest["iotEndpoint"])
        )
        return FleetResult(
            str(row["registered_thing"]),
            str(row["certificate_id"]),
            current,
            endpoint,
            config,
            "installed",
        )

    def _left(self, deadline: dt.datetime) -> float:
        left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
        if left <= 0:
            raise ClaimExpiredError(
                f"the claim certificate expired at {deadline.isoformat()}; make a new archive"
            )
        return left

    async def _call(
        self,
        session: Session,
        operation: str,
        topic: str,
        request: dict[str, Any],
        deadline: dt.datetime,
    ) -> dict[str, Any]:
        """Subscribe to accepted/rejected, publish, wait (bounded) for the answer."""
        fmt = self.options.payload_format
        answers: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        def collect(message: aiomqtt.Message) -> None:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            answers.put_nowait((message.topic.value.rsplit("/", 1)[-1], payload))

        await session.subscribe(f"{topic}/accepted", collect)
        await session.subscribe(f"{topic}/rejected", collect)
        await session.publish(topic, _encode(fmt, request))
        if operation == "RegisterThing":
            crash_point("fleet.registering")
        wait = min(self.options.step_timeout, self._left(deadline))
        try:
            outcome, payload = await asyncio.wait_for(answers.get(), wait)
        except TimeoutError:
            raise FleetTimeoutError(f"no answer to {operation} within {wait:.0f} s") from None
        data = _decode(fmt, payload)
        if self._on_exchange is not None:
            self._on_exchange(operation, request, outcome, data)
        if outcome != "accepted":
            raise FleetProvisioningError(operation, data)
        return data

    async def _certificate(
        self, session: Session, fingerprint: str, thing: str, deadline: dt.datetime
    ) -> None:
        fmt = self.options.payload_format
        pending = self._pending_dir(fingerprint)
        key_path = pending / "private.key"
        if self.options.mode == "csr":
            if key_path.exists():  # a crash after the key was made: keep that key
                key: Any = serialization.load_pem_private_key(key_path.read_bytes(), None)
            else:
                key = generate_device_key(self.options.key_type)
                atomic_write(key_path, _pem(key), PRIVATE_FILE)
            csr = make_csr(key, thing)
            data = await self._call(
                session,
                "CreateCertificateFromCsr",
                f"$aws/certificates/create-from-csr/{fmt}",
                {"certificateSigningRequest": csr.decode()},
                deadline,
            )
        else:
            data = await self._call(
                session, "CreateKeysAndCertificate", f"$aws/certificates/create/{fmt}", {}, deadline
            )
            private = data.get("privateKey")
            if not isinstance(private, str):
                raise FleetProvisioningError(
                    "CreateKeysAndCertificate",
                    {
                        "statusCode": 500,
                        "errorCode": "MalformedResponse",
                        "errorMessage": "no privateKey",
                    },
                )
            atomic_write(key_path, private.encode(), PRIVATE_FILE)
        for name in ("certificateId", "certificatePem", "certificateOwnershipToken"):
            if not isinstance(data.get(name), str):
                raise FleetProvisioningError(
                    "CreateCertificate",
                    {
                        "statusCode": 500,
                        "errorCode": "MalformedResponse",
                        "errorMessage": f"no {name}",
                    },
                )
        _log.info("fleet provisioning: certificate %s issued", data["certificateId"][:16])
        self._save(
            fingerprint,
            step="certificate",
            certificate_id=data["certificateId"],
            ownership_token=data["certificateOwnershipToken"],
            certificate_pem=data["certificatePem"],
        )

    async def _register(
        self,
        session: Session,
        fingerprint: str,
        row: dict[str, Any],
        manifest: dict[str, Any],
        deadline: dt.datetime,
    ) -> None:
        fmt = self.options.payload_format
        template = str(manifest["provisioningTemplate"])
        request: dict[str, Any] = {"certificateOwnershipToken": row["ownership_token"]}
        parameters = manifest.get("templateParameters")
        if parameters:
            request["parameters"] = dict(parameters)
        data = await self._call(
            session,
            "RegisterThing",
            f"$aws/provisioning-templates/{template}/provision/{fmt}",
            request,
            deadline,
        )
        config = data.get("deviceConfiguration") or {}
        if not isinstance(config, dict):
            config = {}
        _log.info("fleet provisioning: registered thing %s", data.get("thingName"))
        self._save(
            fingerprint,
            step="registered",
            registered_thing=str(data.get("thingName") or row["thing_name"]),
            device_configuration=json.dumps({str(k): str(v) for k, v in config.items()}),
        )

    def _install(self, fingerprint: str, row: dict[str, Any], claim_dir: Path) -> None:
        pending = self._pending_dir(fingerprint)
        key = (pending / "private.key").read_bytes()
        target = install_set(
            self.state_dir,
            f"fleet-{str(row['certificate_id'])[:16]}",
            {
                "certificate.pem": (str(row["certificate_pem"]).encode(), PUBLIC_FILE),
                "private.key": (key, PRIVATE_FILE),
                "root-ca.pem": ((claim_dir / "root-ca.pem").read_bytes(), PUBLIC_FILE),
                "manifest.json": ((claim_dir / "manifest.json").read_bytes(), PUBLIC_FILE),
            },
        )
        crash_point("fleet.switched")
        # the key is in the set now: its pending copy goes before the exchange is recorded as
        # installed, so no crash leaves a second copy behind
        self._drop_pending(fingerprint)
        self._save(fingerprint, step="installed", credential_set=target.name, ownership_token=None)


async def provision(
    state_dir: Path,
    options: FleetOptions | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    on_exchange: Exchange | None = None,
) -> FleetResult:
    """Run (or resume) the exchange; the claim session is closed before this returns."""
    exchange = FleetExchange(state_dir, options, on_step=on_step, on_exchange=on_exchange)
    try:
        return await exchange.run()
    finally:
        exchange.close()
