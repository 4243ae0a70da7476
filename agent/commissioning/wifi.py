"""Wi-Fi: DPP enrollees configured through wpa_supplicant, and the appliance's own uplink.

:class:`DppBackend` acts as DPP Configurator for a scanned ``DPP:`` URI:
``DPP_CONFIGURATOR_ADD`` (once), ``DPP_QR_CODE`` (the peer's bootstrap id), then
``DPP_AUTH_INIT`` with the configured network; ``DPP-AUTH-SUCCESS`` means ``DISCOVERED`` and
``DPP-CONF-SENT`` ``ACTIVATED``. :class:`WifiUplink` applies a ``WIFI:`` code to the
appliance's own interface as a new network block, and rolls back (the network removed and
the previous ones re-enabled, checked against a snapshot) when it does not connect in time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent.commissioning.backend import JoinProgress
from agent.commissioning.errors import (
    CommissioningTimeoutError,
    RadioError,
    UnsupportedDeviceError,
)
from agent.commissioning.qr import QrPayload
from agent.commissioning.wpactrl import WpaCtrl
from agent.errors import ApplyError

_log = logging.getLogger(__name__)

_FAILURE_EVENTS = (
    "DPP-AUTH-INIT-FAILED",
    "DPP-CONF-FAILED",
    "DPP-NOT-COMPATIBLE",
    "DPP-FAIL",
    "DPP-TX-STATUS result=FAILED",
)


def _hex(text: str) -> str:
    return text.encode("utf-8").hex()


@dataclass(frozen=True, slots=True)
class DppNetwork:
    """What enrollees are given: ``sta-dpp`` (a connector) or ``sta-psk``/``sta-sae``."""

    ssid: str
    conf: str = "sta-dpp"
    passphrase: str | None = None

    def arguments(self) -> str:
        """The ``DPP_AUTH_INIT`` arguments after ``peer=`` (hex-encoded values)."""
        args = f"conf={self.conf} ssid={_hex(self.ssid)}"
        if self.passphrase is not None:
            args += f" pass={_hex(self.passphrase)}"
        return args


class DppBackend:
    """Configures DPP enrollees from their bootstrapping URI."""

    name = "wifi-dpp"

    def __init__(self, ctrl: WpaCtrl, network: DppNetwork) -> None:
        self._ctrl = ctrl
        self._network = network
        self._configurator: int | None = None

    def accepts(self, payload: QrPayload) -> bool:
        """``DPP:`` URIs."""
        return payload.format == "dpp"

    async def configurator(self) -> int:
        """This appliance's configurator id (added on first use).

        Raises:
            RadioError: wpa_supplicant refused (built without DPP?).
        """
        if self._configurator is None:
            reply = await self._ctrl.request("DPP_CONFIGURATOR_ADD")
            if not reply.isdigit():
                raise RadioError(
                    "wpa_supplicant refused DPP_CONFIGURATOR_ADD (built without DPP?)",
                    reason="DPP_UNSUPPORTED",
                )
            self._configurator = int(reply)
        return self._configurator

    async def add_peer(self, uri: str) -> int:
        """Register a scanned URI; return the peer's bootstrap id.

        Raises:
            UnsupportedDeviceError: wpa_supplicant refused the URI (``DPP_URI_REFUSED``).
        """
        reply = await self._ctrl.request(f"DPP_QR_CODE {uri}")
        if not reply.isdigit():
            raise UnsupportedDeviceError(
                "wpa_supplicant refused the DPP URI", reason="DPP_URI_REFUSED"
            )
        return int(reply)

    async def commission(
        self, payload: QrPayload, progress: JoinProgress, *, within: float
    ) -> None:
        """Authenticate and configure the enrollee.

        Raises:
            RadioError: ``DPP_AUTH_INIT`` refused (``DPP_AUTH_INIT_FAILED``) or a failure event.
            CommissioningTimeoutError: no configuration within ``within`` seconds.
        """
        configurator = await self.configurator()
        peer = await self.add_peer(payload.source)
        await self._ctrl.attach()
        command = (
            f"DPP_AUTH_INIT peer={peer} {self._network.arguments()} configurator={configurator}"
        )
        reply = await self._ctrl.request(command)
        if reply != "OK":
            raise RadioError(
                "wpa_supplicant could not start DPP authentication with the enrollee "
                "(no usable radio or channel)",
                reason="DPP_AUTH_INIT_FAILED",
            )
        await self._follow(progress, within)

    async def _follow(self, progress: JoinProgress, within: float) -> None:
        wanted = ("DPP-AUTH-SUCCESS", "DPP-CONF-SENT", *_FAILURE_EVENTS)
        while True:
            event = await self._ctrl.wait_event(wanted, within)
            if event is None:
                raise CommissioningTimeoutError(
                    f"the DPP enrollee was not configured within {within:g} s",
                    reason="JOIN_TIMEOUT",
                )
            if event.startswith(_FAILURE_EVENTS):
                raise RadioError(f"DPP failed: {event.split(' ', 1)[0]}", reason="DPP_FAILED")
            if event.startswith("DPP-AUTH-SUCCESS"):
                progress.discovered({"event": "DPP-AUTH-SUCCESS"})
            else:
                progress.activated({"event": "DPP-CONF-SENT"})
                return


def _network_commands(payload: QrPayload) -> list[tuple[str, str]]:
    """``SET_NETWORK`` variable/value pairs for a ``WIFI:`` code."""
    f = payload.fields
    security = f["security"].upper()
    pairs = [("ssid", _hex(f["ssid"]))]
    password: str | None = f["password"]
    if f.get("eapMethod") or security.endswith("EAP"):
        raise UnsupportedDeviceError(
            "enterprise (EAP) uplinks are not supported", reason="UPLINK_NOT_SUPPORTED"
        )
    if security == "OWE":
        pairs += [("key_mgmt", "OWE"), ("ieee80211w", "2")]
    elif security == "NOPASS" or password is None:
        pairs.append(("key_mgmt", "NONE"))
    elif security == "WEP":
        key = password if len(password) in {10, 26, 58} and _is_hex(password) else None
        pairs += [("key_mgmt", "NONE"), ("wep_key0", key or f'"{password}"')]
    elif security == "SAE" or f.get("transitionDisable"):
        pairs += [("key_mgmt", "SAE"), ("sae_password", f'"{password}"'), ("ieee80211w", "2")]
    else:
        psk = password if len(password) == 64 and _is_hex(password) else f'"{password}"'  # noqa: PLR2004 - a raw PSK
        pairs += [("key_mgmt", "WPA-PSK SAE"), ("psk", psk), ("ieee80211w", "1")]
        pairs.append(("sae_password", f'"{password}"'))
    if f.get("hidden"):
        pairs.append(("scan_ssid", "1"))
    return pairs


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


async def list_networks(ctrl: WpaCtrl) -> list[tuple[str, str, str]]:
    """``LIST_NETWORKS`` as (id, ssid, flags) without the transient ``[CURRENT]``."""
    reply = await ctrl.request("LIST_NETWORKS")
    rows = []
    for line in reply.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 4:  # noqa: PLR2004 - id, ssid, bssid, flags
            flags = parts[3].replace("[CURRENT]", "")
            rows.append((parts[0], parts[1], flags))
    return rows


class WifiUplink:
    """Applies a ``WIFI:`` code to the appliance's own Wi-Fi interface, with rollback."""

    def __init__(self, ctrl: WpaCtrl) -> None:
        self._ctrl = ctrl

    async def _ok(self, command: str, what: str) -> str:
        reply = await self._ctrl.request(command)
        if reply.startswith("FAIL"):
            raise ApplyError(f"wpa_supplicant refused {what}", reason="UPLINK_APPLY_FAILED")
        return reply

    async def apply(self, payload: QrPayload, *, within: float) -> dict[str, Any]:
        """Add and select the network; keep it only if it connects within ``within`` seconds.

        Raises:
            UnsupportedDeviceError: not a ``WIFI:`` code, or an enterprise network.
            ApplyError: refused, or not connected in time (rolled back; ``ROLLBACK_FAILED``
                if the previous networks could not be restored).
        """
        if payload.format != "wifi":
            raise UnsupportedDeviceError(
                "an uplink needs a WIFI: code", reason="UPLINK_NOT_SUPPORTED"
            )
        pairs = _network_commands(payload)
        before = await list_networks(self._ctrl)
        await self._ctrl.attach()
        network_id = await self._ok("ADD_NETWORK", "ADD_NETWORK")
        try:
            for name, value in pairs:
                await self._ok(f"SET_NETWORK {network_id} {name} {value}", f"the {name} setting")
            await self._ok(f"SELECT_NETWORK {network_id}", "SELECT_NETWORK")
            await self._connected(within)
        except BaseException:
            await self._rollback(network_id, before)
            raise
        await self._ctrl.request("SAVE_CONFIG")
        return {"networkId": int(network_id), "ssid": payload.fields["ssid"]}

    async def _connected(self, within: float) -> None:
        event = await self._ctrl.wait_event(
            ("CTRL-EVENT-CONNECTED", "CTRL-EVENT-SSID-TEMP-DISABLED"), within
        )
        if event is None or not event.startswith("CTRL-EVENT-CONNECTED"):
            raise ApplyError(
                f"the uplink network did not connect within {within:g} s; rolled back",
                reason="UPLINK_NOT_CONNECTED",
            )

    async def _rollback(self, network_id: str, before: list[tuple[str, str, str]]) -> None:
        await self._ctrl.request(f"REMOVE_NETWORK {network_id}")
        for net_id, _ssid, flags in before:
            if "[DISABLED]" not in flags:
                await self._ctrl.request(f"ENABLE_NETWORK {net_id}")
        after = await list_networks(self._ctrl)
        if after != before:
            _log.error("uplink rollback left %d networks, expected %d", len(after), len(before))
            raise ApplyError(
                "the previous Wi-Fi networks could not be restored", reason="ROLLBACK_FAILED"
            )


class WifiUplinkBackend:
    """A ``WIFI:`` code as a commissioning job: the appliance's own uplink network."""

    name = "wifi-uplink"

    def __init__(self, ctrl: WpaCtrl, *, connect_within: float | None = None) -> None:
        self._uplink = WifiUplink(ctrl)
        self._connect_within = connect_within

    def accepts(self, payload: QrPayload) -> bool:
        """``WIFI:`` codes."""
        return payload.format == "wifi"

    async def commission(
        self, payload: QrPayload, progress: JoinProgress, *, within: float
    ) -> None:
        """Apply the network; connected means ``ACTIVATED``, otherwise it is rolled back.

        The uplink's own deadline (``connect_within``), when set, replaces ``within``.

        Raises:
            ApplyError: not connected in time (rolled back) or refused.
        """
        deadline = self._connect_within if self._connect_within is not None else within
        result = await self._uplink.apply(payload, within=deadline)
        progress.activated(result)
