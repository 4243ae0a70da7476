"""The parse result shared by every QR format, and its redaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent.commissioning.errors import QrFormatError
from agent.errors import FieldProblem

#: The seed's ``AuthenticationMaterialType`` values.
AuthenticationMaterialType = Literal[
    "WIFI_SETUP_QR_BAR_CODE", "ZWAVE_QR_BAR_CODE", "ZIGBEE_QR_BAR_CODE"
]

REDACTED = "<redacted>"

#: Field path used in errors about the scanned code itself.
QR_FIELD = "qr"


def qr_error(message: str, reason: str = "QR_FIELD_INVALID", path: str = QR_FIELD) -> QrFormatError:
    """A :class:`QrFormatError` naming the offending part of the code (never its value)."""
    return QrFormatError(message, reason=reason, fields=[FieldProblem(path, message)])


@dataclass(frozen=True, slots=True)
class QrPayload:
    """One decoded code.

    ``fields`` holds the format's JSON fields (camelCase); ``secrets`` names those of them
    that are secret, and ``masks`` gives, for a secret, the redacted form to show instead of
    :data:`REDACTED` (a DSK keeps its public blocks and hides its PIN).
    """

    authentication_material_type: AuthenticationMaterialType | None
    format: str
    fields: dict[str, Any]
    secrets: frozenset[str] = frozenset()
    masks: dict[str, str] = field(default_factory=dict)
    #: The code as scanned, trimmed (secret for most formats; never part of :meth:`to_dict`).
    source: str = field(default="", repr=False, compare=False)

    def to_dict(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """The JSON form; secrets are redacted unless ``show_secrets``."""
        out: dict[str, Any] = {
            "authenticationMaterialType": self.authentication_material_type,
            "format": self.format,
        }
        for key, value in self.fields.items():
            if not show_secrets and key in self.secrets and value is not None:
                out[key] = self.masks.get(key, REDACTED)
            else:
                out[key] = value
        return out

    def secret_values(self) -> list[str]:
        """Every secret value as text (used to prove they never leak)."""
        return [str(self.fields[k]) for k in self.secrets if self.fields.get(k) is not None]
