"""Wiring: a configured backend that cannot start is left out, and said so."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.commissioning.scanner import SerialScanSource, StdinScanSource
from agent.commissioning.service import open_backends, scan_source
from agent.config import CommissioningSection


def test_unreachable_backends_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    section = CommissioningSection(
        wifi_ctrl_socket=str(tmp_path / "no-such-socket"),
        zigbee_radio="deconz",
        dpp_ssid="edge-net",
    )

    async def scenario() -> int:
        async with open_backends(section) as backends:
            return len(backends)

    caplog.set_level(logging.ERROR)
    assert asyncio.run(scenario()) == 0
    assert "Wi-Fi commissioning is unavailable" in caplog.text
    assert "Zigbee commissioning is unavailable" in caplog.text


def test_scan_sources() -> None:
    section = CommissioningSection(scanner_baudrate=115200, scanner_terminator="lf")
    assert isinstance(scan_source("stdin", section), StdinScanSource)
    serial_source = scan_source("/dev/ttyACM0", section)
    assert isinstance(serial_source, SerialScanSource)
    assert serial_source.name == "/dev/ttyACM0"
