"""The parse result shared by every QR format, and its redaction."""

from __future__ import annotations

from collections.abc import Callable
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


class _Pending:
    """Stands in a field whose value is derived on first use; never ``None``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<derived on use>"


#: The placeholder of a derived field (see :class:`QrPayload`).
PENDING: Any = _Pending()
_SET = object.__setattr__


class QrPayload:
    """One decoded code (immutable).

    ``fields`` holds the format's JSON fields (camelCase); ``secrets`` names those of them
    that are secret, and ``masks`` gives, for a secret, the redacted form to show instead of
    :data:`REDACTED` (a DSK keeps its public blocks and hides its PIN).

    A field that is expensive to compute and follows from the validated ones (a Zigbee link
    key from its checked install code) may be given as :data:`PENDING` with ``derive``: the
    first read of :attr:`fields` (or a :meth:`to_dict` that shows secrets) fills it in. A
    redacted :meth:`to_dict` does not need its value, only that it exists.
    """

    __slots__ = (
        "_derive",
        "_fields",
        "authentication_material_type",
        "format",
        "masks",
        "secrets",
        "source",
    )

    authentication_material_type: AuthenticationMaterialType | None
    format: str
    secrets: frozenset[str]
    masks: dict[str, str]
    #: The code as scanned, trimmed (secret for most formats; never part of :meth:`to_dict`).
    source: str
    _fields: dict[str, Any]
    _derive: Callable[[], dict[str, Any]] | None

    def __init__(
        self,
        authentication_material_type: AuthenticationMaterialType | None,
        format: str,  # noqa: A002 - the JSON field's name
        fields: dict[str, Any],
        *,
        secrets: frozenset[str] = frozenset(),
        masks: dict[str, str] | None = None,
        source: str = "",
        derive: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        set_ = _SET
        set_(self, "authentication_material_type", authentication_material_type)
        set_(self, "format", format)
        set_(self, "_fields", fields)
        set_(self, "secrets", secrets)
        set_(self, "masks", masks if masks is not None else {})
        set_(self, "source", source)
        set_(self, "_derive", derive)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"QrPayload is immutable (cannot set {name})")

    @property
    def fields(self) -> dict[str, Any]:
        """Every field, derived ones computed (once)."""
        derive = self._derive
        if derive is not None:
            fields = self._fields
            fields.update(derive())
            if any(v is PENDING for v in fields.values()):
                raise ValueError("derive left a pending field")
            object.__setattr__(self, "_derive", None)
        return self._fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QrPayload):
            return NotImplemented
        return (
            self.authentication_material_type == other.authentication_material_type
            and self.format == other.format
            and self.fields == other.fields
            and self.secrets == other.secrets
            and self.masks == other.masks
        )

    __hash__ = None  # type: ignore[assignment] # mutable-looking dict inside: not hashable

    def __repr__(self) -> str:
        return (
            f"QrPayload(authentication_material_type={self.authentication_material_type!r}, "
            f"format={self.format!r}, fields={self._fields!r}, secrets={self.secrets!r}, "
            f"masks={self.masks!r})"
        )

    def to_dict(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """The JSON form; secrets are redacted unless ``show_secrets``."""
        out: dict[str, Any] = {
            "authenticationMaterialType": self.authentication_material_type,
            "format": self.format,
        }
        if show_secrets:
            out.update(self.fields)
            return out
        secrets, masks = self.secrets, self.masks
        for key, value in self._fields.items():
            if value is not None and key in secrets:
                out[key] = masks.get(key, REDACTED)
            elif value is PENDING:
                out[key] = self.fields[key]
            else:
                out[key] = value
        return out

    def secret_values(self) -> list[str]:
        """Every secret value as text (used to prove they never leak)."""
        fields = self.fields
        return [str(fields[k]) for k in self.secrets if fields.get(k) is not None]
