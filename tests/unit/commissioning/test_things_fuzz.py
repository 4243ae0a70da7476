"""Any JSON body: a managed thing or the project's error, never a crash or a half-write."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commissioning.things import ManagedThings
from agent.errors import AgentError
from agent.store import Store

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    [
        "AuthenticationMaterial",
        "AuthenticationMaterialType",
        "Role",
        "Name",
        "Tags",
        "MetaData",
        "CapabilityReport",
        "ClientToken",
        "Capabilities",
    ]
)
GOOD = {
    "AuthenticationMaterial": "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD",
    "AuthenticationMaterialType": "ZIGBEE_QR_BAR_CODE",
    "Role": "DEVICE",
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(FIELDS | st.text(max_size=10), JSON, max_size=6), st.booleans())
def test_any_body(changes: dict[str, Any], start_valid: bool) -> None:
    body: Any = {**GOOD, **changes} if start_valid else changes
    with tempfile.TemporaryDirectory() as tmp:
        things = ManagedThings(Store(Path(tmp) / "s.db"), region="r", account="1")
        try:
            result = things.create(body)
        except AgentError as exc:
            assert exc.to_dict()["error"]["statusCode"] in {400, 409}
            assert things.list() == []
        else:
            assert result.status_code == 201
            assert [t["Id"] for t in things.list()] == [result.body["Id"]]
