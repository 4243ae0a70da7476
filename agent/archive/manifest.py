"""``manifest.json`` of archive format v1: its model, schema check and canonical encoding."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.archive.network import NetworkPayload, parse_network_payload
from agent.config import parse_rfc3339
from agent.errors import FieldProblem, ManifestError, ValidationError
from agent.jsonutil import loads_strict
from agent.seedpattern import seed_pattern

FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNER = "signer.pem"
CERTIFICATE = "certificate.pem"
PRIVATE_KEY = "private.key"
ROOT_CA = "root-ca.pem"
#: Every entry of a v1 archive, in the order they are written.
ENTRY_NAMES = (MANIFEST, SIGNATURE, SIGNER, CERTIFICATE, PRIVATE_KEY, ROOT_CA)
#: The entries whose SHA-256 the manifest lists (all but itself and its signature).
HASHED_NAMES = (SIGNER, CERTIFICATE, PRIVATE_KEY, ROOT_CA)

NAME_RE = seed_pattern(r"^[a-zA-Z0-9\-\_]+$")
TEMPLATE_NAME_RE = seed_pattern(r"^[0-9A-Za-z_-]+$")
SHA256_HEX_RE = seed_pattern(r"^[0-9a-f]{64}$")
ENDPOINT_RE = seed_pattern(
    r"^(?=.{1,253}:)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*:([1-9]\d{0,4})$"
)
MAX_NAME = 255
#: A claim certificate binds its device name as this URI + Name in its subjectAltName (a
#: Name holds up to 255 characters, a common name only 64: the CN is set only when it fits).
DEVICE_NAME_URI_PREFIX = "urn:edge-agent:device:"
#: What a thing name may not hold: it becomes an MQTT topic level (``edge/<thingName>/``)
#: and a client id, where '/' adds a level, '+' and '#' are wildcards a topic name may not
#: carry, and NUL and other control characters are refused or invisible.
_TOPIC_UNSAFE = re.compile(r"[/+#\x00-\x1f\x7f-\x9f\u2028\u2029]")
COMMON_NAME_MAX = 64


def device_name_uri(name: str) -> str:
    """The subjectAltName URI that binds a claim certificate to device ``name``."""
    return DEVICE_NAME_URI_PREFIX + name


MAX_TEMPLATE_NAME = 36
MAX_TAGS = 50
MAX_PARAMETERS = 100
ARCHIVE_NAME_RE = seed_pattern(r"^certificates-omni_(?P<name>[a-zA-Z0-9\-\_]{1,255})\.zip$")


@dataclass(frozen=True, slots=True)
class Manifest:
    """The signed description of one provisioning archive."""

    device_name: str
    device_id: str
    arn: str
    iot_thing_name: str
    created_at: str
    iot_endpoint: str
    provisioning_template: str
    files: dict[str, str]
    template_parameters: dict[str, str] | None = None
    networking_configuration: NetworkPayload | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON object."""
        out: dict[str, Any] = {
            "formatVersion": self.format_version,
            "deviceName": self.device_name,
            "deviceId": self.device_id,
            "arn": self.arn,
            "iotThingName": self.iot_thing_name,
            "createdAt": self.created_at,
            "iotEndpoint": self.iot_endpoint,
            "provisioningTemplate": self.provisioning_template,
        }
        if self.template_parameters is not None:
            out["templateParameters"] = dict(self.template_parameters)
        if self.networking_configuration is not None:
            out["networkingConfiguration"] = self.networking_configuration.to_json()
        if self.description is not None:
            out["description"] = self.description
        if self.tags:
            out["tags"] = dict(self.tags)
        out["files"] = dict(self.files)
        return out

    def encode(self) -> bytes:
        """The exact bytes written to ``manifest.json`` (and signed)."""
        return (json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n").encode()


_REQUIRED = (
    "formatVersion",
    "deviceName",
    "deviceId",
    "arn",
    "iotThingName",
    "createdAt",
    "iotEndpoint",
    "provisioningTemplate",
    "files",
)
_OPTIONAL = ("templateParameters", "networkingConfiguration", "description", "tags")


def _text(
    data: dict[str, Any],
    key: str,
    out: list[FieldProblem],
    *,
    pattern: re.Pattern[str] | None = None,
    max_len: int = MAX_NAME,
    min_len: int = 1,
) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        out.append(FieldProblem(key, "must be a string"))
        return ""
    if not min_len <= len(value) <= max_len:
        out.append(FieldProblem(key, f"length must be {min_len} to {max_len}"))
    elif pattern is not None and not pattern.fullmatch(value):
        out.append(FieldProblem(key, f"does not match {pattern.pattern}"))
    return value


def _string_map(
    value: Any, key: str, out: list[FieldProblem], *, max_items: int, max_key: int, max_value: int
) -> dict[str, str]:
    if not isinstance(value, dict):
        out.append(FieldProblem(key, "must be an object of strings"))
        return {}
    if len(value) > max_items:
        out.append(FieldProblem(key, f"at most {max_items} entries allowed"))
    result: dict[str, str] = {}
    for k, v in value.items():
        if not 1 <= len(k) <= max_key:
            out.append(FieldProblem(f"{key}.{k}", f"key length must be 1 to {max_key}"))
        elif not isinstance(v, str):
            out.append(FieldProblem(f"{key}.{k}", "must be a string"))
        elif len(v) > max_value:
            out.append(FieldProblem(f"{key}.{k}", f"value length must be at most {max_value}"))
        else:
            result[k] = v
    return result


def parse_manifest(data: bytes) -> Manifest:  # noqa: C901, PLR0912, PLR0915 - one check per field
    """Parse and schema-check ``manifest.json``; every problem is reported at once."""
    try:
        raw = loads_strict(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(
            f"manifest.json is not valid JSON: {exc}", reason="MANIFEST_INVALID"
        ) from None
    if not isinstance(raw, dict):
        raise ManifestError("manifest.json must hold a JSON object", reason="MANIFEST_INVALID")
    version = raw.get("formatVersion")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ManifestError(
            f"manifest.json has format version {version!r}; this agent reads version "
            f"{FORMAT_VERSION}",
            reason="UNSUPPORTED_FORMAT_VERSION",
            fields=[FieldProblem("formatVersion", f"must be {FORMAT_VERSION}")],
        )
    out: list[FieldProblem] = [
        FieldProblem(key, "unknown field") for key in raw if key not in _REQUIRED + _OPTIONAL
    ]
    out.extend(FieldProblem(key, "is required") for key in _REQUIRED if key not in raw)
    device_name = _text(raw, "deviceName", out, pattern=NAME_RE)
    device_id = _text(raw, "deviceId", out, pattern=NAME_RE)
    arn = _text(raw, "arn", out)
    thing = _text(raw, "iotThingName", out)
    if _TOPIC_UNSAFE.search(thing):
        out.append(
            FieldProblem(
                "iotThingName",
                "must not contain '/', '+', '#' or control characters (it names the MQTT topics)",
            )
        )
    created = _text(raw, "createdAt", out, max_len=64)
    if created:
        try:
            parse_rfc3339(created)
        except ValueError:
            out.append(FieldProblem("createdAt", "must be an RFC 3339 date-time"))
    endpoint = _text(raw, "iotEndpoint", out, pattern=ENDPOINT_RE, max_len=260)
    template = _text(
        raw, "provisioningTemplate", out, pattern=TEMPLATE_NAME_RE, max_len=MAX_TEMPLATE_NAME
    )
    files = raw.get("files")
    hashes: dict[str, str] = {}
    if not isinstance(files, dict):
        out.append(FieldProblem("files", "must be an object of entry name to SHA-256"))
    else:
        if sorted(files) != sorted(HASHED_NAMES):
            out.append(FieldProblem("files", f"must list exactly {', '.join(HASHED_NAMES)}"))
        for name, digest in files.items():
            if not isinstance(digest, str) or not SHA256_HEX_RE.fullmatch(digest):
                out.append(FieldProblem(f"files.{name}", "must be a lower-case hex SHA-256"))
            else:
                hashes[name] = digest
    params = None
    if "templateParameters" in raw:
        params = _string_map(
            raw["templateParameters"],
            "templateParameters",
            out,
            max_items=MAX_PARAMETERS,
            max_key=2048,
            max_value=4096,
        )
    network = None
    if "networkingConfiguration" in raw:
        try:
            network = parse_network_payload(
                raw["networkingConfiguration"], "networkingConfiguration"
            )
        except ValidationError as exc:
            out.extend(exc.fields)
    description = None
    if "description" in raw:
        description = _text(raw, "description", out, min_len=0)
    tags: dict[str, str] = {}
    if "tags" in raw:
        tags = _string_map(raw["tags"], "tags", out, max_items=MAX_TAGS, max_key=128, max_value=256)
    if out:
        raise ManifestError(
            "manifest.json does not follow format v1: "
            + "; ".join(f"{p.path}: {p.message}" for p in out),
            reason="MANIFEST_INVALID",
            fields=out,
        )
    return Manifest(
        device_name=device_name,
        device_id=device_id,
        arn=arn,
        iot_thing_name=thing,
        created_at=created,
        iot_endpoint=endpoint,
        provisioning_template=template,
        files=hashes,
        template_parameters=params,
        networking_configuration=network,
        description=description,
        tags=tags,
    )
