"""The agent's configuration: one TOML file read into frozen dataclasses.

Unknown keys are rejected, values are type-checked, and every problem in the file is
reported at once in a single :class:`~agent.errors.ConfigError`, each with its key path
(``network.probe_timeout_seconds``). Defaults are the embedded defaults the demo runs on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.errors import ConfigError, FieldProblem

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")

#: Certificates that claim to be older than this were issued before this agent was built,
#: so a clock reading earlier than this is certainly wrong (the RTC lost its time).
BUILD_TIME_FLOOR = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _state_dir_default() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/edge-agent").split(":")[0])


def _runtime_dir_default() -> Path:
    return Path(os.environ.get("RUNTIME_DIRECTORY", "/run/edge-agent").split(":")[0])


def _limits(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"min": low, "max": high}


@dataclass(frozen=True, slots=True)
class AgentSection:
    """Where the agent keeps its state and runtime files."""

    state_dir: Path = field(default_factory=_state_dir_default)
    runtime_dir: Path = field(default_factory=_runtime_dir_default)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class ArchiveSection:
    """How provisioning archives are checked."""

    #: PEM file with the provisioning trust anchor(s).
    trust_anchor: Path = Path("/etc/edge-agent/provisioning-ca.pem")
    #: The claim certificate may live at most this long (the seed's 5 minutes).
    max_lifetime_seconds: int = field(default=300, metadata=_limits(1, 3600))
    #: Tolerated clock difference between the factory and this appliance.
    clock_skew_seconds: int = field(default=60, metadata=_limits(0, 3600))
    max_archive_bytes: int = field(default=1024 * 1024, metadata=_limits(1024))
    max_entry_bytes: int = field(default=256 * 1024, metadata=_limits(1024))
    max_total_bytes: int = field(default=1024 * 1024, metadata=_limits(1024))
    max_compression_ratio: int = field(default=100, metadata=_limits(1))
    #: A clock earlier than this is not trusted (RFC 3339).
    build_time_floor: dt.datetime = BUILD_TIME_FLOOR
    #: Trust the clock only once the kernel reports it synchronised (NTP).
    require_synchronized_clock: bool = True


@dataclass(frozen=True, slots=True)
class NetworkSection:
    """How Ethernet0/Ethernet1 are applied (owned by :mod:`agent.netconf`)."""

    backend: Literal["networkd", "netlink", "dry-run"] = "networkd"
    #: Board profile name (``agent/boards/<name>.toml``, shipped in the package).
    board: str = "generic"
    #: How long a trial configuration has to prove itself before it is rolled back.
    probe_timeout_seconds: float = field(default=60.0, metadata=_limits(1, 3600))
    #: Extra directory searched for board profiles before the bundled ``agent/boards``.
    boards_dir: Path = Path("/etc/edge-agent/boards")
    #: ``host:port`` the probe must reach over TCP (the MQTT endpoint); empty: not checked.
    probe_endpoint: str = ""
    #: networkd: trial files (volatile) and committed files.
    networkd_runtime_dir: Path = Path("/run/systemd/network")
    networkd_persist_dir: Path = Path("/etc/systemd/network")
    networkd_reload_command: tuple[str, ...] = ("networkctl", "reload")
    #: ``{ifname}`` is replaced by the interface; an empty array skips the step.
    networkd_reconfigure_command: tuple[str, ...] = ("networkctl", "reconfigure", "{ifname}")
    #: netlink: where the static ports' DNS servers are written.
    resolv_conf: Path = Path("/etc/resolv.conf")
    #: networkd: where distribution and runtime ``.network`` files live (besides the two
    #: directories above), searched to find which file manages a port.
    networkd_dist_dirs: tuple[Path, ...] = (
        Path("/usr/local/lib/systemd/network"),
        Path("/usr/lib/systemd/network"),
    )
    #: netlink: the dhcpcd command a DHCP port is handed to (``{ifname}``, ``{metric}``); it
    #: runs with the agent's own pid, lease and resolv.conf paths.
    dhcp_command: tuple[str, ...] = (
        "dhcpcd", "-4", "-b", "-m", "{metric}", "-C", "hostname", "{ifname}",
    )  # fmt: skip
    #: dry-run: the root directory everything is rendered under.
    dry_run_root: Path = Path("/run/edge-agent/net-dry-run")


@dataclass(frozen=True, slots=True)
class NtpSection:
    """How the archive's NTP servers are applied (owned by :mod:`agent.netconf`)."""

    backend: Literal["chrony", "timesyncd", "none"] = "chrony"
    #: Bounded wait for the first synchronisation after the servers are applied.
    sync_timeout_seconds: float = field(default=120.0, metadata=_limits(0, 3600))
    #: chrony: the ``sourcedir`` the agent's ``edge-agent.sources`` goes to.
    chrony_sources_dir: Path = Path("/etc/chrony/sources.d")
    #: chrony: how to run chronyc (add ``-h /path/chronyd.sock`` for another daemon).
    chronyc_command: tuple[str, ...] = ("chronyc",)
    #: chrony: options appended to every ``server`` line.
    chrony_source_options: str = "iburst"
    #: timesyncd: the drop-in directory, the restart command and the "synchronised" flag.
    timesyncd_dropin_dir: Path = Path("/etc/systemd/timesyncd.conf.d")
    timesyncd_restart_command: tuple[str, ...] = ("systemctl", "restart", "systemd-timesyncd")
    timesyncd_synced_flag: Path = Path("/run/systemd/timesync/synchronized")


@dataclass(frozen=True, slots=True)
class RegistrySection:
    """The registry side: ARNs, the signing CA, bulk input (owned by :mod:`agent.registry`)."""

    region: str = "us-east-1"
    account: str = "123456789012"
    #: CA directory written by ``edge-agent ca init``.
    ca_dir: Path = Path("/var/lib/edge-agent/ca")
    #: SQLite database of things, certificates and policies (component ``registry``).
    database: Path = Path("/var/lib/edge-agent/registry.db")
    #: Lifetime of certificates signed from CSRs.
    certificate_lifetime_days: int = field(default=365, metadata=_limits(1, 3650))
    #: Key types a CSR may carry (``rsa`` means RSA of at least ``min_rsa_bits``).
    allowed_key_types: tuple[Literal["ec-p256", "ec-p384", "rsa", "ed25519"], ...] = (
        "ec-p256",
        "ec-p384",
        "rsa",
        "ed25519",
    )
    min_rsa_bits: int = field(default=2048, metadata=_limits(2048, 16384))
    #: A CSR's subject common name must match this regular expression (full match).
    common_name_pattern: str = "[A-Za-z0-9:_.-]{1,64}"
    #: Time budget of the pre-provisioning hook (the AWS limit is 5 seconds).
    hook_timeout_seconds: float = field(default=5.0, metadata=_limits(0.1, 5.0))
    #: Local root of bulk registration input: ``inputFileBucket`` is a directory of it and
    #: ``inputFileKey`` a path inside that; nothing outside the root is ever read.
    bulk_root: Path = Path("/var/lib/edge-agent/bulk-input")
    #: Fleet provisioning: successful RegisterThing calls one claim certificate may make
    #: (1 for per-device archive claims; 0 for shared fleet claims, without limit).
    claim_registrations: int = field(default=1, metadata=_limits(0, 1_000_000))
    #: Fleet provisioning: ``claim`` requires a CSR's common name to be the claim
    #: certificate's; ``any`` accepts any name allowed by ``common_name_pattern``.
    csr_subject: Literal["claim", "any"] = "claim"
    #: Fleet provisioning: the largest request payload the endpoint answers (bytes).
    max_request_bytes: int = field(default=65536, metadata=_limits(4096, 131072))


@dataclass(frozen=True, slots=True)
class CommissioningSection:
    """QR commissioning of Zigbee, Z-Wave and Wi-Fi devices (owned by agent.commissioning)."""

    #: SQLite database of managed things (ARNs use ``registry.region``/``registry.account``);
    #: left at this default, it is ``<agent.state_dir>/commissioning.db``
    #: (:meth:`AgentConfig.commissioning_database`).
    database: Path = Path("/var/lib/edge-agent/commissioning.db")
    #: ``strict`` refuses a Zigbee install code with a wrong CRC; ``repair`` replaces the CRC
    #: (the parse result then says ``crcRepaired``).
    zigbee_crc: Literal["strict", "repair"] = "strict"
    #: How long a device has to join after its code is accepted.
    join_timeout_seconds: float = field(default=300.0, metadata=_limits(1, 3600))
    #: Zigbee radio library (``none``: no Zigbee backend) and its serial port.
    zigbee_radio: Literal["none", "znp", "ezsp", "deconz"] = "none"
    zigbee_device: str = "/dev/ttyACM0"
    zigbee_baudrate: int = field(default=115200, metadata=_limits(9600, 1000000))
    #: Install-code join window (zigpy ``permit_with_link_key``; 254 s at most).
    zigbee_permit_seconds: int = field(default=60, metadata=_limits(1, 254))
    zigbee_database: Path = Path("/var/lib/edge-agent/zigbee.db")
    #: Z-Wave JS server websocket (``ws://127.0.0.1:3000``); empty: no Z-Wave backend.
    zwave_server_url: str = ""
    #: wpa_supplicant control socket of the Wi-Fi interface; empty: no Wi-Fi backend.
    wifi_ctrl_socket: str = ""
    #: Network handed to DPP enrollees: ``sta-dpp`` (connector) or ``sta-psk``/``sta-sae``.
    dpp_conf: Literal["sta-dpp", "sta-psk", "sta-sae"] = "sta-dpp"
    dpp_ssid: str = ""
    #: File (0600) holding the passphrase for ``sta-psk``/``sta-sae``.
    dpp_passphrase_file: Path = Path("/etc/edge-agent/dpp-passphrase")
    #: How long an uplink network from a ``WIFI:`` code has to connect before rollback.
    uplink_timeout_seconds: float = field(default=30.0, metadata=_limits(1, 600))
    #: Scanner input: ``stdin``, a serial device path, or empty for none.
    scanner: str = ""
    scanner_baudrate: int = field(default=9600, metadata=_limits(1200, 1000000))
    #: What ends one scan on a serial scanner.
    scanner_terminator: Literal["cr", "lf", "crlf", "tab"] = "cr"


@dataclass(frozen=True, slots=True)
class ApiSection:
    """The local API (owned by :mod:`agent.api`)."""

    #: Its Unix socket; unset: ``<agent.runtime_dir>/api.sock``.
    socket: Path | None = None
    #: Group that owns the 0660 socket (its members may use the API); empty: root's group.
    group: str = ""
    #: Serve the registry's operations (templates, RegisterThing, bulk tasks) on the socket,
    #: on the ``[registry]`` database; off on an appliance that is not a registry host.
    registry: bool = False

    def socket_path(self, agent: AgentSection) -> Path:
        """The socket, resolved against the runtime directory."""
        return self.socket if self.socket is not None else agent.runtime_dir / "api.sock"


@dataclass(frozen=True, slots=True)
class UsbSection:
    """How provisioning sticks are found and read (owned by :mod:`agent.usb`)."""

    #: ``udev`` (falls back to ``kernel`` without udevd), ``kernel`` or ``directory``.
    source: Literal["udev", "kernel", "directory"] = "udev"
    #: directory source: each ``*.img`` FAT image appearing here is a stick.
    directory: Path = Path("/run/edge-agent/sticks")
    #: Lowest negotiated USB speed in Mb/s; unset: the board profile's (5000, USB 3.0).
    min_speed_mbps: int | None = field(default=None, metadata=_limits(1, 1_000_000))
    #: A stick must stay this long before it is taken (plug bounces, udev change events).
    debounce_seconds: float = field(default=0.5, metadata=_limits(0, 10))
    #: Largest archive copied off a stick.
    max_archive_bytes: int = field(default=1024 * 1024, metadata=_limits(1024))
    #: Write ``edge-agent/result.json`` and ``provisioning.log`` back to the stick.
    write_back: bool = True
    #: Every mtools command must finish within this time.
    mtools_timeout_seconds: float = field(default=10.0, metadata=_limits(0.1, 300))
    #: Largest directory listing mtools may print.
    mtools_max_listing_bytes: int = field(default=256 * 1024, metadata=_limits(4096))
    #: Where mdir, mcopy and mmd are.
    mtools_dir: Path = Path("/usr/bin")


@dataclass(frozen=True, slots=True)
class StatusSection:
    """How the outcome is shown on the LED (owned by :mod:`agent.status`)."""

    #: The Linux LED class directory (``<root>/<name>/trigger`` and ``brightness``).
    led_class_root: Path = Path("/sys/class/leds")
    #: After a success or failure is shown, the LED gets its previous state back.
    restore_after_seconds: float = field(default=600.0, metadata=_limits(0, 86400))


@dataclass(frozen=True, slots=True)
class MqttSection:
    """The MQTT client, the outbox and fleet provisioning (owned by :mod:`agent.mqtt`)."""

    #: Our topics live under this prefix; ``{thingName}`` is replaced.
    topic_prefix: str = "edge/{thingName}/"
    #: Override of the operational broker (``host:port``); empty: the one provisioning gave.
    endpoint: str = ""
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_seconds: int = field(default=60, metadata=_limits(5, 3600))
    connect_timeout_seconds: float = field(default=10.0, metadata=_limits(0.5, 300))
    reconnect_initial_seconds: float = field(default=0.5, metadata=_limits(0.01, 600))
    reconnect_max_seconds: float = field(default=60.0, metadata=_limits(0.01, 3600))
    #: QoS 1 messages in flight at once.
    inflight_window: int = field(default=20, metadata=_limits(1, 65535))
    outbox_max_events: int = field(default=100_000, metadata=_limits(10))
    outbox_max_bytes: int = field(default=64 * 1024 * 1024, metadata=_limits(4096))
    #: Fleet provisioning: CSR (key made here) or CreateKeysAndCertificate.
    fleet_mode: Literal["csr", "create-keys"] = "csr"
    fleet_key_type: Literal["ec-p256", "rsa-2048", "ed25519"] = "ec-p256"
    fleet_format: Literal["json", "cbor"] = "json"
    #: Most seconds one fleet-provisioning answer is awaited (also bounded by the claim).
    fleet_step_timeout_seconds: float = field(default=30.0, metadata=_limits(0.1, 300))


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole configuration file."""

    agent: AgentSection = field(default_factory=AgentSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    ntp: NtpSection = field(default_factory=NtpSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    commissioning: CommissioningSection = field(default_factory=CommissioningSection)
    api: ApiSection = field(default_factory=ApiSection)
    usb: UsbSection = field(default_factory=UsbSection)
    status: StatusSection = field(default_factory=StatusSection)
    mqtt: MqttSection = field(default_factory=MqttSection)

    def commissioning_database(self) -> Path:
        """``commissioning.database``, or ``<agent.state_dir>/commissioning.db`` by default."""
        configured = self.commissioning.database
        if configured == CommissioningSection().database:
            return self.agent.state_dir / "commissioning.db"
        return configured


T = TypeVar("T")


def load_config(path: Path | None = None) -> AgentConfig:
    """Read the configuration file; a missing file at the default path means all defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return AgentConfig()
        path = DEFAULT_CONFIG_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {path}: {exc.strerror}",
            reason="CONFIG_UNREADABLE",
        ) from exc
    return parse_config(raw.decode("utf-8", errors="replace"), source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> AgentConfig:
    """Parse TOML text into :class:`AgentConfig`, reporting every problem at once."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}", reason="CONFIG_SYNTAX") from exc
    return from_mapping(AgentConfig, data, source=source)


def from_mapping(cls: type[T], data: dict[str, Any], *, source: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` or raise one ConfigError listing every problem."""
    problems: list[FieldProblem] = []
    value = _build(cls, data, prefix, problems)
    if problems:
        listing = "; ".join(f"{p.path}: {p.message}" for p in problems)
        raise ConfigError(f"{source} has {len(problems)} problem(s): {listing}", fields=problems)
    return typing.cast("T", value)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(cls: type[Any], data: Any, path: str, problems: list[FieldProblem]) -> Any:
    if not isinstance(data, dict):
        problems.append(FieldProblem(path or "<root>", "must be a table"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems.extend(
        FieldProblem(_join(path, key), "unknown key") for key in data if key not in fields
    )
    kwargs: dict[str, Any] = {}
    for name, fld in fields.items():
        if name not in data:
            continue
        value = _convert(hints[name], data[name], _join(path, name), problems)
        if value is not None:
            low, high = fld.metadata.get("min"), fld.metadata.get("max")
            if low is not None and value < low:
                problems.append(FieldProblem(_join(path, name), f"must be at least {low}"))
            elif high is not None and value > high:
                problems.append(FieldProblem(_join(path, name), f"must be at most {high}"))
            kwargs[name] = value
    if problems:
        return None
    return cls(**kwargs)


def _convert(  # noqa: C901, PLR0911, PLR0912 - one branch per supported type
    hint: Any, value: Any, path: str, problems: list[FieldProblem]
) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(args[0], value, path, problems)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            problems.append(FieldProblem(path, f"must be one of {', '.join(map(repr, choices))}"))
            return None
        return value
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if not isinstance(value, list):
            problems.append(FieldProblem(path, "must be an array"))
            return None
        items = [_convert(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast("type[Any]", hint), value, path, problems)
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(FieldProblem(path, "must be true or false"))
            return None
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(FieldProblem(path, "must be an integer"))
            return None
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(FieldProblem(path, "must be a number"))
            return None
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            problems.append(FieldProblem(path, "must be a string"))
            return None
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            problems.append(FieldProblem(path, "must be a non-empty path string"))
            return None
        return Path(value)
    if hint is dt.datetime:
        return _convert_datetime(value, path, problems)
    msg = f"unsupported config type {hint!r} at {path}"
    raise TypeError(msg)


def _convert_datetime(value: Any, path: str, problems: list[FieldProblem]) -> dt.datetime | None:
    if isinstance(value, str):
        try:
            value = parse_rfc3339(value)
        except ValueError:
            problems.append(FieldProblem(path, "must be an RFC 3339 date-time"))
            return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        problems.append(FieldProblem(path, "must be an RFC 3339 date-time with a time zone"))
        return None
    return value.astimezone(dt.UTC)


def parse_rfc3339(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp with an explicit offset (``Z`` or ``+hh:mm``)."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset")
    return value.astimezone(dt.UTC)
