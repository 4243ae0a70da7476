"""Splitting scanner bytes into scans."""

from __future__ import annotations

from agent.commissioning.scanner import MAX_SCAN_BYTES, split_scans


def test_split_keeps_partial_scan() -> None:
    buffer = bytearray(b"first\rsec")
    assert split_scans(buffer, b"\r") == [b"first"]
    assert buffer == bytearray(b"sec")
    buffer += b"ond\r\n\rthird\n"
    assert split_scans(buffer, b"\r") == [b"second"]
    assert split_scans(buffer, b"\n") == [b"third"]
    assert buffer == bytearray()


def test_split_crlf_and_tab() -> None:
    assert split_scans(bytearray(b"a\r\nb\r\n"), b"\r\n") == [b"a", b"b"]
    assert split_scans(bytearray(b"a\tb\t"), b"\t") == [b"a", b"b"]


def test_overlong_garbage_is_dropped() -> None:
    buffer = bytearray(b"x" * (MAX_SCAN_BYTES + 1))
    assert split_scans(buffer, b"\r") == []
    assert buffer == bytearray()
