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
NO_MASKS: dict[str, str] = {}


class QrPayload:
    """One decoded code (immutable: its attributes are read-only properties).

    ``fields`` holds the format's JSON fields (camelCase); ``secrets`` names those of them
    that are secret, and ``masks`` gives, for a secret, the redacted form to show instead of
    :data:`REDACTED` (a DSK keeps its public blocks and hides its PIN).

    A field that is expensive to compute and follows from the validated ones (a Zigbee link
    key from its checked install code) may be given as :data:`PENDING` with ``derive``: the
    first read of :attr:`fields` (or a :meth:`to_dict` that shows secrets) fills it in. A
    redacted :meth:`to_dict` does not need its value, only that it exists.

    Every scan builds one, so it is a plain slotted object with plain assignments in
    ``__init__`` (read-only by having no setters), not a frozen dataclass.
    """

    __slots__ = ("_derive", "_fields", "_format", "_masks", "_secrets", "_source", "_type")

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
        self._type = authentication_material_type
        self._format = format
        self._fields = fields
        self._secrets = secrets
        self._masks = masks if masks is not None else NO_MASKS
        self._source = source
        self._derive = derive

    @property
    def authentication_material_type(self) -> AuthenticationMaterialType | None:
        """The seed's ``AuthenticationMaterialType`` of the code (``None`` for Matter)."""
        return self._type

    @property
    def format(self) -> str:
        """The layout read (``zwave-s2``, ``zigbee-z``, ``wifi``, ``dpp``, ...)."""
        return self._format

    @property
    def secrets(self) -> frozenset[str]:
        """The names of the secret fields."""
        return self._secrets

    @property
    def masks(self) -> dict[str, str]:
        """For a secret, the redacted form shown instead of :data:`REDACTED`."""
        return dict(self._masks)

    @property
    def source(self) -> str:
        """The code as scanned, trimmed (secret for most formats; never in :meth:`to_dict`)."""
        return self._source

    @property
    def fields(self) -> dict[str, Any]:
        """Every field, derived ones computed (once)."""
        derive = self._derive
        if derive is not None:
            fields = self._fields
            fields.update(derive())
            if any(v is PENDING for v in fields.values()):
                raise ValueError("derive left a pending field")
            self._derive = None
        return self._fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QrPayload):
            return NotImplemented
        return (
            self._type == other._type
            and self._format == other._format
            and self.fields == other.fields
            and self._secrets == other._secrets
            and self._masks == other._masks
        )

    __hash__ = None  # type: ignore[assignment] # mutable-looking dict inside: not hashable

    def __repr__(self) -> str:
        return (
            f"QrPayload(authentication_material_type={self._type!r}, "
            f"format={self._format!r}, fields={self._fields!r}, secrets={self._secrets!r}, "
            f"masks={self._masks!r})"
        )

    def to_dict(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """The JSON form; secrets are redacted unless ``show_secrets``."""
        out: dict[str, Any] = {
            "authenticationMaterialType": self._type,
            "format": self._format,
        }
        if show_secrets:
            out.update(self.fields)
            return out
        out.update(self._fields)
        masks = self._masks
        for key in self._secrets:
            if out.get(key) is not None:
                out[key] = masks.get(key, REDACTED)
        if self._derive is not None and PENDING in out.values():  # a derived public field
            fields = self.fields
            for key, value in out.items():
                if value is PENDING:
                    out[key] = fields[key]
        return out

    def secret_values(self) -> list[str]:
        """Every secret value as text (used to prove they never leak)."""
        fields = self.fields
        return [str(fields[k]) for k in self._secrets if fields.get(k) is not None]


_NEW = object.__new__


def payload(  # noqa: PLR0917 - positional: the cheap call on the parsers' hot path
    authentication_material_type: AuthenticationMaterialType | None,
    fmt: str,
    fields: dict[str, Any],
    secrets: frozenset[str],
    masks: dict[str, str],
    source: str,
    derive: Callable[[], dict[str, Any]] | None = None,
) -> QrPayload:
    """:class:`QrPayload` built without the keyword call (the parsers' hot path)."""
    out: QrPayload = _NEW(QrPayload)
    out._type = authentication_material_type  # noqa: SLF001 - the class's own factory
    out._format = fmt  # noqa: SLF001
    out._fields = fields
    out._secrets = secrets  # noqa: SLF001
    out._masks = masks  # noqa: SLF001
    out._source = source  # noqa: SLF001
    out._derive = derive  # noqa: SLF001
    return out
