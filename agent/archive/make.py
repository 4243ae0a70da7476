"""Making provisioning archives (the ProvisionDevice side, ``edge-agent archive make``)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.archive.manifest import (
    CERTIFICATE,
    COMMON_NAME_MAX,
    ENDPOINT_RE,
    HASHED_NAMES,
    MANIFEST,
    MAX_PARAMETERS,
    NAME_RE,
    PRIVATE_KEY,
    ROOT_CA,
    SIGNATURE,
    SIGNER,
    TEMPLATE_NAME_RE,
    Manifest,
    device_name_uri,
)
from agent.archive.network import NetworkPayload
from agent.errors import FieldProblem, ValidationError
from agent.fsutil import atomic_write
from agent.registry.ca import (
    FactoryKeys,
    KeyType,
    PrivateKey,
    PublicKey,
    cert_to_pem,
    generate_key,
    key_to_pem,
)
from agent.seedpattern import is_unicode_text, seed_pattern

MAX_LIFETIME = dt.timedelta(minutes=5)
_TAG_KEY_RE = seed_pattern(r"^.+$")
_ANY_RE = seed_pattern(r"^.*$")
#: ``certificates-omni_`` + Name + ``.zip`` must fit one file name (255 bytes).
ARCHIVE_NAME_OVERHEAD = len("certificates-omni_.zip")
FILE_NAME_MAX = 255
PARAMETER_KEY_MAX = 2048
PARAMETER_VALUE_MAX = 4096
PORT_MAX = 65535


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A ProvisionDevice request, validated by :func:`validate_request`."""

    name: str
    description: str | None = None
    networking: NetworkPayload | None = None
    tags: dict[str, str] | None = None
    endpoint: str = "localhost:8883"
    template: str = "edge-agent-fleet"
    template_parameters: dict[str, str] | None = None
    lifetime: dt.timedelta = MAX_LIFETIME
    not_before: dt.datetime | None = None


def _unicode_problems(request: DeviceRequest) -> list[FieldProblem]:
    fields: list[tuple[str, str]] = [
        ("Name", request.name),
        ("Description", request.description or ""),
        ("iotEndpoint", request.endpoint),
        ("provisioningTemplate", request.template),
    ]
    fields += [(f"Tags.{k}", k + v) for k, v in (request.tags or {}).items()]
    fields += [
        (f"templateParameters.{k}", k + v) for k, v in (request.template_parameters or {}).items()
    ]
    return [
        FieldProblem(path.encode("utf-8", "replace").decode(), "must be valid Unicode text")
        for path, value in fields
        if not is_unicode_text(value)
    ]


def _parameter_problems(parameters: dict[str, str] | None) -> list[FieldProblem]:
    params = parameters or {}
    out = []
    if len(params) > MAX_PARAMETERS:
        out.append(FieldProblem("templateParameters", f"at most {MAX_PARAMETERS} entries allowed"))
    for key, value in params.items():
        if not 1 <= len(key) <= PARAMETER_KEY_MAX or len(value) > PARAMETER_VALUE_MAX:
            out.append(
                FieldProblem(
                    f"templateParameters.{key[:64]}",
                    f"keys are 1 to {PARAMETER_KEY_MAX} characters, values at most "
                    f"{PARAMETER_VALUE_MAX}",
                )
            )
    return out


def validate_request(request: DeviceRequest) -> None:  # noqa: C901, PLR0912 - one check per field
    """Check a request exactly as the seed says; report every problem at once."""
    unicode = _unicode_problems(request)
    if unicode:
        raise ValidationError(
            f"the device request is invalid: {unicode[0].path}: {unicode[0].message}",
            reason="FIELD_VALIDATION_FAILED",
            fields=unicode,
        )
    out: list[FieldProblem] = _parameter_problems(request.template_parameters)
    if not 1 <= len(request.name) <= 255:  # noqa: PLR2004 - the seed's limit
        out.append(FieldProblem("Name", "length must be 1 to 255"))
    elif not NAME_RE.fullmatch(request.name):
        out.append(FieldProblem("Name", r"must match ^[a-zA-Z0-9\-\_]+$"))
    elif len(request.name) + ARCHIVE_NAME_OVERHEAD > FILE_NAME_MAX:
        raise ValidationError(
            f"the Name is {len(request.name)} characters long: the archive's file name "
            f"certificates-omni_<Name>.zip would exceed the {FILE_NAME_MAX}-byte file-name limit "
            f"(at most {FILE_NAME_MAX - ARCHIVE_NAME_OVERHEAD} characters fit)",
            reason="ARCHIVE_FILE_NAME_TOO_LONG",
            fields=[FieldProblem("Name", "too long for the archive's file name")],
        )
    if request.description is not None and (
        len(request.description) > 255 or not _ANY_RE.fullmatch(request.description)  # noqa: PLR2004
    ):
        out.append(FieldProblem("Description", "must be one line of at most 255 characters"))
    tags = request.tags or {}
    if len(tags) > 50:  # noqa: PLR2004 - the seed's limit
        out.append(FieldProblem("Tags", "at most 50 tags allowed"))
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or not _TAG_KEY_RE.fullmatch(key):  # noqa: PLR2004
            out.append(FieldProblem(f"Tags.{key}", "key must be 1 to 128 characters, one line"))
        if len(value) > 256 or not _ANY_RE.fullmatch(value):  # noqa: PLR2004
            out.append(FieldProblem(f"Tags.{key}", "value must be one line, at most 256"))
    if (
        not ENDPOINT_RE.fullmatch(request.endpoint)
        or int(request.endpoint.rsplit(":", 1)[1]) > PORT_MAX
    ):
        out.append(FieldProblem("iotEndpoint", "must be HOST:PORT"))
    if not 1 <= len(request.template) <= 36 or not TEMPLATE_NAME_RE.fullmatch(request.template):  # noqa: PLR2004
        out.append(FieldProblem("provisioningTemplate", "must be 1 to 36 of [0-9A-Za-z_-]"))
    if not dt.timedelta(seconds=1) <= request.lifetime <= MAX_LIFETIME:
        out.append(FieldProblem("lifetime", "must be 1 to 300 seconds"))
    if out:
        raise ValidationError(
            "the device request is invalid: " + "; ".join(f"{p.path}: {p.message}" for p in out),
            reason="FIELD_VALIDATION_FAILED",
            fields=out,
        )


def _device_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "device-" + "".join(secrets.choice(alphabet) for _ in range(26))


def sign_manifest(key: PrivateKey, data: bytes) -> bytes:
    """``manifest.sig``: ECDSA-SHA256 (DER) for EC keys, Ed25519 for Ed25519 keys."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise ValidationError(
        "the archive signer key must be EC or Ed25519", reason="SIGNER_KEY_UNSUPPORTED"
    )


def zip_entries(entries: list[tuple[str, bytes]]) -> bytes:
    """A flat, deflated ZIP with entries in the given order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100600 << 16
            info.create_system = 3
            archive.writestr(info, data)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class BuiltArchive:
    """An archive in memory and the ProvisionDevice response that describes it."""

    filename: str
    data: bytes
    manifest: Manifest

    def response(self) -> dict[str, Any]:
        """The seed's ProvisionDevice response."""
        return {
            "Arn": self.manifest.arn,
            "Certificates": base64.b64encode(self.data).decode("ascii"),
            "DeviceId": self.manifest.device_id,
            "IotThingName": self.manifest.iot_thing_name,
            "Status": "AWAITING_PROVISIONING",
        }


def issue_claim_certificate(
    keys: FactoryKeys,
    name: str,
    public_key: PublicKey,
    not_before: dt.datetime,
    lifetime: dt.timedelta,
    *,
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> x509.Certificate:
    """A claim certificate for device ``name`` from the claim issuer (see :func:`build_archive`)."""
    fits = len(name) <= COMMON_NAME_MAX
    return keys.claim_issuer.issue(
        common_name=name if fits else None,
        public_key=public_key,
        not_before=not_before,
        lifetime=lifetime,
        eku=eku,
        uris=(device_name_uri(name),),
    )


def build_archive(
    keys: FactoryKeys,
    request: DeviceRequest,
    *,
    region: str = "us-east-1",
    account: str = "123456789012",
    claim_key_type: KeyType = "ec-p256",
    claim_key: PrivateKey | None = None,
) -> BuiltArchive:
    """Issue a claim certificate and pack a signed v1 archive (in memory).

    The claim certificate comes from the claim issuer and binds the device name in its
    subjectAltName (:func:`agent.archive.manifest.device_name_uri`); its CN is the name when
    the name fits in a CN (64 characters). ``certificate.pem`` holds the certificate and the
    claim issuer's, so the appliance can build the chain to its root.
    """
    validate_request(request)
    not_before = request.not_before or dt.datetime.now(dt.UTC).replace(microsecond=0)
    key = claim_key or generate_key(claim_key_type)
    certificate = issue_claim_certificate(
        keys, request.name, key.public_key(), not_before, request.lifetime
    )
    files = {
        SIGNER: cert_to_pem(keys.signer_cert),
        CERTIFICATE: cert_to_pem(certificate) + cert_to_pem(keys.claim_issuer.cert),
        PRIVATE_KEY: key_to_pem(key),
        ROOT_CA: cert_to_pem(keys.root_cert),
    }
    device_id = _device_id()
    manifest = Manifest(
        device_name=request.name,
        device_id=device_id,
        arn=f"arn:aws:panorama:{region}:{account}:device/{device_id}",
        iot_thing_name=request.name,
        created_at=dt.datetime.now(dt.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z"),
        iot_endpoint=request.endpoint,
        provisioning_template=request.template,
        files={name: hashlib.sha256(files[name]).hexdigest() for name in HASHED_NAMES},
        template_parameters=request.template_parameters,
        networking_configuration=request.networking,
        description=request.description,
        tags=dict(request.tags or {}),
    )
    manifest_bytes = manifest.encode()
    data = zip_entries(
        [
            (MANIFEST, manifest_bytes),
            (SIGNATURE, sign_manifest(keys.signer_key, manifest_bytes)),
            *((name, files[name]) for name in HASHED_NAMES),
        ]
    )
    return BuiltArchive(f"certificates-omni_{request.name}.zip", data, manifest)


def write_archive(built: BuiltArchive, out_dir: Path) -> Path:
    """Write the archive into ``out_dir`` atomically; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / built.filename
    # The archive holds the claim key: owner-only, like every key file.
    atomic_write(path, built.data)
    return path
