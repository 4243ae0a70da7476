"""Fleet-provisioning payloads in both formats, and what a malformed answer becomes."""

from __future__ import annotations

import pytest

from agent.mqtt.fleet import FleetProvisioningError, _decode, _encode


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_round_trip(fmt: str) -> None:
    body = {"certificateOwnershipToken": "t", "parameters": {"SerialNumber": "x1"}}
    assert _decode(fmt, _encode(fmt, body)) == body  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [
        ("json", b"{not json"),
        ("json", b"[1, 2]"),
        ("cbor", b"\xff\xff"),  # a break code where no indefinite item is open
        ("cbor", b"\x9f"),  # an indefinite array never closed
        ("cbor", b"\x83\x01\x02\x03"),  # a well-formed array, not an object
    ],
)
def test_malformed_answer_is_a_malformed_response(fmt: str, payload: bytes) -> None:
    with pytest.raises(FleetProvisioningError) as caught:
        _decode(fmt, payload)  # type: ignore[arg-type]
    assert "MalformedResponse" in str(caught.value.to_dict())
