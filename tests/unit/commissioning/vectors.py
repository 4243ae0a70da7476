"""The public QR test vectors (shared test data), loaded once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: ``QR_VECTORS`` names another vectors file of the same shape (e.g. a larger corpus).
VECTORS_PATH = Path(os.environ.get("QR_VECTORS") or Path(__file__).with_name("qr_vectors.json"))


def load_vectors() -> list[dict[str, Any]]:
    """Every vector in the file."""
    data: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


def vector_id(vector: dict[str, Any]) -> str:
    """A short test id: format, kind and the start of the input."""
    kind = vector.get("kind", "error" if "error" in vector else "ok")
    return f"{vector['format']}-{kind}-{vector['input'][:24]}"
