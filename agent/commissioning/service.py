"""Wiring: the configured radio backends, the managed things and a scanner, run together."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from agent.commissioning.backend import Commissioner, RadioBackend
from agent.commissioning.errors import RadioUnavailableError
from agent.commissioning.notify import CommissioningNotifier, FanOutNotifier, LedNotifier
from agent.commissioning.scanner import ScanHandler, ScanSource, SerialScanSource, StdinScanSource
from agent.commissioning.things import ManagedThings
from agent.config import AgentConfig, CommissioningSection
from agent.errors import AgentError, ConfigError, FieldProblem
from agent.netconf.boards import LedSpec, load_board
from agent.status.led import open_led
from agent.store import Store

_log = logging.getLogger(__name__)


def _passphrase(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read commissioning.dpp_passphrase_file {path}",
            fields=[FieldProblem("commissioning.dpp_passphrase_file", "unreadable")],
        ) from exc


@contextlib.asynccontextmanager
async def open_backends(section: CommissioningSection) -> AsyncIterator[list[RadioBackend]]:
    """Start every configured backend; a backend that cannot start is logged and left out."""
    backends: list[RadioBackend] = []
    async with contextlib.AsyncExitStack() as stack:
        if section.zigbee_radio != "none":
            from agent.commissioning.zigbee import open_zigbee  # noqa: PLC0415 - optional radio

            try:
                zigbee = await open_zigbee(section)
                backends.append(zigbee)
                stack.push_async_callback(zigbee.close)
            except RadioUnavailableError as exc:
                _log.error("Zigbee commissioning is unavailable: %s", exc.message)
        if section.zwave_server_url:
            from agent.commissioning.zwave import ZWaveConnection  # noqa: PLC0415

            try:
                connection = await stack.enter_async_context(
                    ZWaveConnection(section.zwave_server_url)
                )
                backends.append(connection.backend)
            except RadioUnavailableError as exc:
                _log.error("Z-Wave commissioning is unavailable: %s", exc.message)
        if section.wifi_ctrl_socket:
            from agent.commissioning.wifi import (  # noqa: PLC0415
                DppBackend,
                DppNetwork,
                WifiUplinkBackend,
            )
            from agent.commissioning.wpactrl import WpaCtrl  # noqa: PLC0415

            try:
                ctrl = await stack.enter_async_context(WpaCtrl(section.wifi_ctrl_socket))
                uplink_ctrl = await stack.enter_async_context(WpaCtrl(section.wifi_ctrl_socket))
            except RadioUnavailableError as exc:
                _log.error("Wi-Fi commissioning is unavailable: %s", exc.message)
            else:
                backends.append(
                    WifiUplinkBackend(uplink_ctrl, connect_within=section.uplink_timeout_seconds)
                )
                if section.dpp_ssid:
                    secret = (
                        None
                        if section.dpp_conf == "sta-dpp"
                        else _passphrase(section.dpp_passphrase_file)
                    )
                    network = DppNetwork(section.dpp_ssid, section.dpp_conf, secret)
                    backends.append(DppBackend(ctrl, network))
        yield backends


def scan_source(spec: str, section: CommissioningSection) -> ScanSource:
    """``stdin`` or a serial device path."""
    if spec == "stdin":
        return StdinScanSource()
    return SerialScanSource(
        spec, baudrate=section.scanner_baudrate, terminator=section.scanner_terminator
    )


async def run_scanner(
    config: AgentConfig,
    store: Store,
    notifier: CommissioningNotifier,
    source: ScanSource,
) -> None:
    """Answer scans from ``source`` and commission with every configured backend.

    Answers also go to the board's status LED (``network.board``'s ``led``), if it has one.
    """
    section = config.commissioning
    try:
        board = load_board(config.network.board, config.network.boards_dir)
    except AgentError as exc:
        _log.warning("no status LED for scan answers: %s", exc.message)
        spec = LedSpec()
    else:
        spec = board.profile.led
    async with open_led(spec, config.status) as led, open_backends(section) as backends:
        notifier = FanOutNotifier(notifier, LedNotifier(led))
        things = ManagedThings(
            store,
            region=config.registry.region,
            account=config.registry.account,
            notifier=notifier,
            repair_zigbee_crc=section.zigbee_crc == "repair",
        )
        commissioner = Commissioner(things, backends, join_timeout=section.join_timeout_seconds)
        handler = ScanHandler(
            things,
            notifier,
            commissioner=commissioner,
            repair_zigbee_crc=section.zigbee_crc == "repair",
        )
        await handler.run(source)
