"""Board profiles: which kernel interface is Ethernet0 and Ethernet1 on this appliance.

A profile is a TOML file ``<name>.toml``; the bundled ones are package data in
``agent/boards/`` (see ``hw/boards/README.md``). Each port names its interface in exactly
one way: ``name`` (``eth0``), ``mac``
(``00:11:22:33:44:55``) or ``path`` (the device's sysfs path, a glob allowed, e.g.
``/sys/devices/platform/soc/*.ethernet``). Unknown keys are rejected with their key paths.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import from_mapping
from agent.errors import ConfigError, FieldProblem

#: Where the profiles shipped with the source tree live.
BUNDLED_BOARDS_DIR = Path(__file__).resolve().parents[1] / "boards"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_BOARD_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: A Linux LED class name (``/sys/class/leds/<name>``): one path component.
LED_NAME = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")


class BoardProfileError(ConfigError):
    """A board profile is missing or wrong, or names an interface that is not there."""

    default_reason = "BOARD_PROFILE_INVALID"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """How one port finds its interface: exactly one of ``name``, ``mac``, ``path``."""

    name: str = ""
    mac: str = ""
    path: str = ""


@dataclass(frozen=True, slots=True)
class LedSpec:
    """The status LED (used by the status component)."""

    #: ``/sys/class/leds/<name>``; empty when the board has no LED.
    name: str = ""
    #: Trigger to restore when the agent lets go of the LED.
    default_trigger: str = "none"


@dataclass(frozen=True, slots=True)
class UsbSpec:
    """The provisioning USB port (used by the USB component)."""

    #: sysfs path glob of the port's USB device (``/sys/devices/.../usb2/2-1``); empty: any.
    port_path: str = ""
    #: Lowest negotiated speed in Mb/s (5000 = USB 3.0).
    min_speed_mbps: int = 5000


@dataclass(frozen=True, slots=True)
class BoardProfile:
    """One board profile file."""

    description: str = ""
    Ethernet0: PortSpec | None = None
    Ethernet1: PortSpec | None = None
    led: LedSpec = field(default_factory=LedSpec)
    usb: UsbSpec = field(default_factory=UsbSpec)


@dataclass(frozen=True, slots=True)
class Board:
    """A loaded profile and its name."""

    name: str
    profile: BoardProfile

    def specs(self) -> dict[str, PortSpec]:
        """The configured ports, by port name."""
        out: dict[str, PortSpec] = {}
        if self.profile.Ethernet0 is not None:
            out["Ethernet0"] = self.profile.Ethernet0
        if self.profile.Ethernet1 is not None:
            out["Ethernet1"] = self.profile.Ethernet1
        return out


def board_path(board: str, boards_dir: Path | None = None) -> Path:
    """The file of ``board``: a path to a ``.toml`` file, or a name searched in the dirs."""
    if board.endswith(".toml") or "/" in board:
        return Path(board)
    if not _BOARD_NAME.match(board):
        raise BoardProfileError(
            f"board name {board!r} is not valid (lower-case letters, digits, - and _)",
            fields=[FieldProblem("network.board", "not a valid board name")],
        )
    for directory in (boards_dir, BUNDLED_BOARDS_DIR):
        if directory is not None and (directory / f"{board}.toml").is_file():
            return directory / f"{board}.toml"
    searched = ", ".join(str(d) for d in (boards_dir, BUNDLED_BOARDS_DIR) if d is not None)
    raise BoardProfileError(
        f"no board profile {board!r} (searched {searched})",
        reason="BOARD_PROFILE_NOT_FOUND",
        fields=[FieldProblem("network.board", "no such board profile")],
    )


def load_board(board: str = "generic", boards_dir: Path | None = None) -> Board:
    """Load and check a board profile.

    Raises:
        BoardProfileError: The file is missing, not TOML, or has unknown or invalid keys.
    """
    path = board_path(board, boards_dir)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BoardProfileError(
            f"cannot read board profile {path}: {exc.strerror}",
            reason="BOARD_PROFILE_NOT_FOUND",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise BoardProfileError(f"board profile {path} is not valid TOML: {exc}") from exc
    try:
        profile = from_mapping(BoardProfile, data, source=str(path))
    except ConfigError as exc:
        raise BoardProfileError(exc.message, fields=exc.fields) from exc
    problems: list[FieldProblem] = []
    for port, spec in (("Ethernet0", profile.Ethernet0), ("Ethernet1", profile.Ethernet1)):
        if spec is not None:
            _check_spec(port, spec, problems)
    if profile.led.name and (
        not LED_NAME.match(profile.led.name) or profile.led.name in {".", ".."}
    ):
        problems.append(FieldProblem("led.name", "not an LED class name (letters, digits, _.:+-)"))
    if profile.usb.port_path and not profile.usb.port_path.startswith("/sys/"):
        problems.append(FieldProblem("usb.port_path", "must be a sysfs path under /sys/"))
    if problems:
        raise BoardProfileError(
            f"board profile {path} has {len(problems)} problem(s): "
            + "; ".join(f"{p.path}: {p.message}" for p in problems),
            fields=problems,
        )
    return Board(name=path.stem, profile=profile)


def _check_spec(port: str, spec: PortSpec, problems: list[FieldProblem]) -> None:
    given = [k for k in ("name", "mac", "path") if getattr(spec, k)]
    if len(given) != 1:
        problems.append(FieldProblem(port, "give exactly one of name, mac, path"))
        return
    if spec.name and not _IFNAME.match(spec.name):
        problems.append(FieldProblem(f"{port}.name", "not a valid interface name"))
    if spec.mac and not _MAC.match(spec.mac.lower()):
        problems.append(FieldProblem(f"{port}.mac", "must look like 00:11:22:33:44:55"))
    if spec.path and not spec.path.startswith("/sys/"):
        problems.append(FieldProblem(f"{port}.path", "must be a sysfs path under /sys/"))


def resolve_interfaces(board: Board, sysfs: Path = Path("/sys")) -> dict[str, str]:
    """Map each configured port to the kernel interface name present now.

    Ports given by ``name`` resolve without looking; ``mac`` and ``path`` are looked up in
    ``<sysfs>/class/net`` (each entry's ``address`` file and ``device`` link; ``path``
    patterns are written as ``/sys/...`` and read under ``sysfs``).

    Raises:
        BoardProfileError: A port given by MAC or path matches no interface, or several.
    """
    out: dict[str, str] = {}
    problems: list[FieldProblem] = []
    sys_class_net = sysfs / "class" / "net"
    for port, spec in board.specs().items():
        if spec.name:
            out[port] = spec.name
            continue
        matches = (
            [
                entry.name
                for entry in sorted(sys_class_net.iterdir())
                if _matches(entry, spec, sysfs)
            ]
            if sys_class_net.is_dir()
            else []
        )
        if len(matches) == 1:
            out[port] = matches[0]
        else:
            how = f"mac {spec.mac}" if spec.mac else f"path {spec.path}"
            what = "no interface" if not matches else f"several interfaces ({', '.join(matches)})"
            problems.append(FieldProblem(port, f"{how} matches {what}"))
    if problems:
        raise BoardProfileError(
            f"board {board.name!r}: " + "; ".join(f"{p.path}: {p.message}" for p in problems),
            reason="BOARD_INTERFACE_NOT_FOUND",
            fields=problems,
        )
    return out


def _matches(entry: Path, spec: PortSpec, sysfs: Path) -> bool:
    if spec.mac:
        try:
            return (entry / "address").read_text().strip().lower() == spec.mac.lower()
        except OSError:
            return False
    device = entry / "device"
    if not device.exists():
        return False
    real = os.path.realpath(device)
    pattern = str(sysfs) + spec.path.removeprefix("/sys")
    return fnmatch.fnmatch(real, pattern) or fnmatch.fnmatch(real, pattern.rstrip("/") + "/*")
