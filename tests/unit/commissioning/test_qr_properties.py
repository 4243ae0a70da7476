"""Property tests: any input gives a payload or a QrFormatError, and secrets stay hidden."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.commissioning.errors import QrFormatError
from agent.commissioning.qr import REDACTED, parse
from tests.unit.commissioning.vectors import load_vectors

VALID = [v["input"] for v in load_vectors() if "expected" in v and "kind" not in v]

_ALPHABETS = st.sampled_from(
    ["0123456789", "0123456789ABCDEFabcdef|$%:ZIAMG", "WIFI:STPH;\\ ", "DPP:KCMIVHB;/,", ""]
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid vector with a few characters replaced, inserted or deleted."""
    text = list(draw(st.sampled_from(VALID)))
    alphabet = draw(_ALPHABETS) or "0123456789;:$|"
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(st.sampled_from(alphabet))
        if op == "insert" or pos == len(text):
            text.insert(pos, char)
        elif op == "replace":
            text[pos] = char
        else:
            del text[pos]
    return "".join(text)


PREFIXES = st.sampled_from(["", "90", "9001", "WIFI:", "DPP:", "MT:", "Z:", "HUE:Z:", "zws2dsk:"])
ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.builds(lambda p, s: p + s, PREFIXES, st.text(max_size=200)),
    st.builds(lambda p, s: p + s, PREFIXES, st.text("0123456789", max_size=200)),
    mutated(),
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ANY_TEXT)
@example("9" * 5000)
@example("90" * 2000)
@example("MT:" + "." * 4000)
def test_only_the_project_error(text: str) -> None:
    try:
        payload = parse(text)
    except QrFormatError as exc:
        wire = exc.to_dict()["error"]
        assert wire["code"] == "ValidationException"
        assert wire["reason"].startswith("QR_")
        json.dumps(wire)
        return
    json.dumps(payload.to_dict())
    redacted = json.dumps(payload.to_dict(), ensure_ascii=False)
    for secret in payload.secret_values():
        if len(secret) >= 4:
            assert secret not in redacted


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated())
def test_secrets_never_in_redacted_output(text: str) -> None:
    try:
        payload = parse(text)
    except QrFormatError as exc:
        assert text.strip() not in exc.message
        return
    shown = payload.to_dict()
    for key in payload.secrets:
        if payload.fields.get(key) is not None:
            assert shown[key] != payload.fields[key]
            assert shown[key] == REDACTED or shown[key].startswith("*****")


SECRET_CASES = [
    (
        "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD",
        ["0102030405060708090A", "F7DB70E0"],
    ),
    ("WIFI:S:home;T:WPA;P:correct-horse-battery;;", ["correct-horse-battery"]),
    ("MT:U9VJ0OMV172PX813210", ["49910688"]),
    (
        "900132782003515253545541424344453132333435212223242500100435301537022065520001000000300578",
        ["51525-"],
    ),
]


@pytest.mark.parametrize(("code", "secrets"), SECRET_CASES)
def test_cli_redacts_stdout_and_logs(
    code: str,
    secrets: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert main(["-v", "qr", "parse", code, "--json"]) == 0
    out = capsys.readouterr()
    for secret in secrets:
        assert secret not in out.out
        assert secret not in out.err
        assert secret not in caplog.text
    assert main(["qr", "parse", code, "--json", "--show-secrets"]) == 0
    shown = capsys.readouterr().out
    assert all(secret in shown for secret in secrets)


def test_cli_error_exit_and_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code = "000D6FFFFED4163B|52797BF4A5084DAA8E1712B61741CA024052"
    assert main(["qr", "parse", code]) == 1
    out = capsys.readouterr()
    error = json.loads(out.out)["error"]
    assert error["reason"] == "QR_CHECKSUM_MISMATCH"
    assert error["code"] == "ValidationException"
    assert "52797BF4" not in out.out + out.err
    assert main(["qr", "parse", "hello"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "QR_UNKNOWN_FORMAT"


def test_cli_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qr", "parse", "WIFI:S:home;T:nopass;;"]) == 0
    out = capsys.readouterr().out
    assert "ssid: home" in out
    assert "authenticationMaterialType: WIFI_SETUP_QR_BAR_CODE" in out


def _unescaped_by_hand(body: str, j: int) -> tuple[int, str]:
    """ZXing's reading, character by character: ``\\x`` is ``x``; ``;`` ends the value."""
    value: list[str] = []
    while j < len(body) and body[j] != ";":
        if body[j] == "\\" and j + 1 < len(body):
            j += 1
        value.append(body[j])
        j += 1
    return j, "".join(value)


@given(st.text("ab;\\:\n ", max_size=16), st.integers(0, 16))
def test_wifi_escapes_read_as_zxing_does(body: str, start: int) -> None:
    from agent.commissioning.qr.wifi import _escaped

    start = min(start, len(body))
    assert _escaped(body, start) == _unescaped_by_hand(body, start)
