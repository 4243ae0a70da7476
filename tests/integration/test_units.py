"""The systemd units, tmpfiles.d, sysusers.d and udev rules, checked by systemd's own tools.

* ``systemd-analyze verify``: any output on stderr (unknown keys, bad values, missing
  executables) fails, since systemd reports most mistakes only as warnings with status 0.
  The units name ``/usr/bin/edge-agent``, where the Debian package puts it; the check runs
  on a copy that names this checkout's installed console script instead, the one change.
* ``systemd-analyze security --offline=yes --threshold``: the exposure score stays under a
  ceiling, and the settings that matter most are what the units promise.
* ``systemd-sysusers --root`` and ``systemd-tmpfiles --create --root``: the users, groups and
  directories they make in a scratch root.
* The udev rules through ``udevadm test`` (udev 252 has no ``udevadm verify``) in a private
  mount namespace whose /etc/udev/rules.d, /dev and /run are its own, so nothing reaches the
  machine's devices or udev database. A real device of this machine stands in for the
  stick: a rule file sorted before ours gives it the properties a USB stick has
  (``ID_BUS=usb``), which is what the rules match on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.env import need_binary, need_root

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
RULES = REPO / "hw" / "udev" / "90-edge-agent.rules"
INSTALLED_BINARY = "/usr/bin/edge-agent"

#: Exposure ceilings (systemd-analyze security, 0 = fully locked down, 10 = nothing). The
#: units score 2.5 (agent), 3.5 (agent with the netlink drop-in) and 1.1 (registry).
AGENT_CEILING = 3.0
NETLINK_CEILING = 4.0
REGISTRY_CEILING = 1.5


def _console_script() -> Path:
    script = Path(sys.executable).parent / "edge-agent"
    if not script.is_file():
        pytest.fail(f"{script} is missing: scripts/setup installs the package into .venv")
    return script


def _unit_copy(name: str, directory: Path, *, drop_ins: tuple[str, ...] = ()) -> Path:
    """``systemd/<name>`` in ``directory`` with ExecStart pointing at the installed script."""
    text = (SYSTEMD / name).read_text(encoding="utf-8")
    assert INSTALLED_BINARY in text
    copy = directory / name
    copy.write_text(text.replace(INSTALLED_BINARY, str(_console_script())), encoding="utf-8")
    if drop_ins:
        conf_dir = directory / f"{name}.d"
        conf_dir.mkdir()
        for drop_in in drop_ins:
            shutil.copy(SYSTEMD / drop_in, conf_dir / drop_in)
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    need_binary("systemd-analyze")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


UNITS = [
    ("edge-agent.service", ()),
    ("edge-agent.service", ("netlink-backend.conf",)),
    ("edge-agent-registry.service", ()),
]


@pytest.mark.parametrize(("name", "drop_ins"), UNITS)
def test_units_verify_without_a_single_warning(
    tmp_path: Path, name: str, drop_ins: tuple[str, ...]
) -> None:
    unit = _unit_copy(name, tmp_path, drop_ins=drop_ins)
    done = _analyze("verify", "--man=no", str(unit))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_verify_reports_what_the_units_would_hide(tmp_path: Path) -> None:
    """The check above can fail: a typo and a missing binary are reported."""
    unit = _unit_copy("edge-agent.service", tmp_path)
    text = unit.read_text(encoding="utf-8")
    unit.write_text(text.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes"))
    done = _analyze("verify", "--man=no", str(unit))
    assert "Unknown key 'ProtectHomme'" in done.stderr
    unit.write_text(text.replace(str(_console_script()), "/nonexistent/edge-agent"))
    done = _analyze("verify", "--man=no", str(unit))
    assert done.returncode != 0
    assert "/nonexistent/edge-agent" in done.stderr


def _exposure(unit: Path, ceiling: float) -> tuple[float, dict[str, bool | None]]:
    done = _analyze("security", "--offline=yes", f"--threshold={int(ceiling * 10)}", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert match, done.stdout + done.stderr
    assert done.returncode == 0, f"exposure {match.group(1)} over {ceiling}"
    detail = _analyze("security", "--offline=yes", "--json=short", str(unit))
    assert detail.returncode == 0, detail.stderr
    checks = {item["name"]: item["set"] for item in json.loads(detail.stdout)}
    return float(match.group(1)), checks


def test_agent_exposure_and_what_it_may_do(tmp_path: Path) -> None:
    score, checks = _exposure(_unit_copy("edge-agent.service", tmp_path), AGENT_CEILING)
    assert score <= AGENT_CEILING
    # granted: network configuration, the probe's ping, chronyd's socket
    assert checks["CapabilityBoundingSet=~CAP_NET_ADMIN"] is False
    assert checks["CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"] is False
    assert checks["CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)"] is False
    # refused: mounting, module loading, identity changes, raw devices beyond the stick
    for refused in (
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "CapabilityBoundingSet=~CAP_SYS_MODULE",
        "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
        "CapabilityBoundingSet=~CAP_SYS_RAWIO",
        "NoNewPrivileges=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "ProtectKernelTunables=",
        "RestrictAddressFamilies=~AF_PACKET",
        "RestrictNamespaces=~mnt",
        "MemoryDenyWriteExecute=",
        "SystemCallArchitectures=",
    ):
        assert checks[refused] is True, refused


def test_netlink_drop_in_adds_only_what_dhcpcd_needs(tmp_path: Path) -> None:
    unit = _unit_copy("edge-agent.service", tmp_path, drop_ins=("netlink-backend.conf",))
    score, checks = _exposure(unit, NETLINK_CEILING)
    assert score <= NETLINK_CEILING
    assert checks["CapabilityBoundingSet=~CAP_SYS_ADMIN"] is False
    assert checks["RestrictAddressFamilies=~AF_PACKET"] is False
    assert checks["RestrictNamespaces=~mnt"] is False
    assert checks["RestrictNamespaces=~user"] is True
    assert checks["RestrictNamespaces=~net"] is True


def test_registry_exposure_far_lower(tmp_path: Path) -> None:
    score, checks = _exposure(_unit_copy("edge-agent-registry.service", tmp_path), REGISTRY_CEILING)
    assert score <= REGISTRY_CEILING
    for refused in (
        "User=/DynamicUser=",
        "CapabilityBoundingSet=~CAP_NET_ADMIN",
        "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
        "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
        "PrivateDevices=",
        "PrivateUsers=",
        "ProcSubset=",
        "RestrictAddressFamilies=~AF_NETLINK",
        "SystemCallFilter=~@privileged",
    ):
        assert checks[refused] is True, refused


def test_security_threshold_fails_a_unit_over_it(tmp_path: Path) -> None:
    """The ceiling check can fail: the registry unit is over a threshold of 1.0."""
    unit = _unit_copy("edge-agent-registry.service", tmp_path)
    assert _analyze("security", "--offline=yes", "--threshold=15", str(unit)).returncode == 0
    assert _analyze("security", "--offline=yes", "--threshold=10", str(unit)).returncode != 0


# --- sysusers.d and tmpfiles.d ------------------------------------------------------------


def _table(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A root with the sysusers users made and the tmpfiles directories created."""
    need_root("systemd-tmpfiles sets owners only as root")
    need_binary("systemd-sysusers")
    need_binary("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    done = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD / "edge-agent.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [
            "systemd-tmpfiles",
            "--create",
            f"--root={root}",
            str(SYSTEMD / "edge-agent.tmpfiles.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return root


def test_sysusers_makes_the_api_group_and_the_registry_user(scratch_root: Path) -> None:
    groups = _table(scratch_root / "etc" / "group")
    users = _table(scratch_root / "etc" / "passwd")
    assert "edge-agent" in groups
    assert "edge-agent" not in users  # the agent runs as root; the group is for the API
    name, _, uid, gid, _, home, shell = users["edge-agent-registry"]
    assert name == "edge-agent-registry"
    assert 0 < int(uid) < 1000  # a system user
    assert groups["edge-agent-registry"][2] == gid
    assert home == "/var/lib/edge-agent-registry"
    assert shell == "/usr/sbin/nologin"


def test_tmpfiles_creates_the_directories_with_their_modes(scratch_root: Path) -> None:
    users = _table(scratch_root / "etc" / "passwd")
    registry_uid = int(users["edge-agent-registry"][2])
    expected = {
        "var/lib/edge-agent": (0o700, 0),
        "run/edge-agent": (0o755, 0),
        "run/systemd/network": (0o755, 0),
        "etc/systemd/timesyncd.conf.d": (0o755, 0),
        "var/lib/edge-agent-registry": (0o700, registry_uid),
        "var/lib/edge-agent-registry/ca": (0o700, registry_uid),
    }
    for relative, (mode, uid) in expected.items():
        info = (scratch_root / relative).stat()
        assert oct(info.st_mode & 0o7777) == oct(mode), relative
        assert info.st_uid == uid, relative


def test_units_name_the_directories_tmpfiles_and_sysusers_make() -> None:
    agent = (SYSTEMD / "edge-agent.service").read_text(encoding="utf-8")
    registry = (SYSTEMD / "edge-agent-registry.service").read_text(encoding="utf-8")
    sysusers = (SYSTEMD / "edge-agent.sysusers.conf").read_text(encoding="utf-8")
    assert "StateDirectory=edge-agent\n" in agent
    assert "RuntimeDirectory=edge-agent\n" in agent
    assert "SupplementaryGroups=edge-agent\n" in agent
    assert "\ng edge-agent -\n" in sysusers
    assert "StateDirectory=edge-agent-registry\n" in registry
    assert "User=edge-agent-registry\n" in registry
    assert "\nu edge-agent-registry " in sysusers
    assert "--database /var/lib/edge-agent-registry/registry.db" in registry
    assert "--ca-dir /var/lib/edge-agent-registry/ca" in registry


# --- udev rules ---------------------------------------------------------------------------


def _first(pattern: str) -> Path:
    for candidate in sorted(Path("/sys/class").glob(pattern)):
        return candidate.resolve()
    pytest.fail(f"no {pattern} device on this machine")
    raise AssertionError("unreachable")  # pragma: no cover


def _udev_test(rules: dict[str, str], device: Path, action: str = "add") -> str:
    """``udevadm test`` with only ``rules`` (plus the system's /usr/lib rules) in effect."""
    need_root("udevadm test in a private mount namespace needs root")
    need_binary("udevadm")
    need_binary("unshare")
    work = Path(tempfile.mkdtemp(prefix="edge-agent-udev-"))
    try:
        for name, text in rules.items():
            (work / name).write_text(text, encoding="utf-8")
        script = (
            'mount --bind "$1" /etc/udev/rules.d && mount -t tmpfs tmpfs /run && '
            'mount -t tmpfs tmpfs /dev && exec udevadm test --action="$2" "$3"'
        )
        done = subprocess.run(
            [
                *("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script),
                *("sh", str(work), action, str(device)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(work)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _properties(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            found[key] = value
    return found


def _rule_errors(output: str, name: str) -> list[str]:
    """udev's complaints about rules file ``name``: lines ``<path>:<line> <problem>``.

    (Rules that apply are traced as ``<device>: <path>:<line> ...``, with the device first.)
    """
    pattern = re.compile(rf"/etc/udev/rules\.d/{re.escape(name)}:\d+ ")
    return [line for line in output.splitlines() if pattern.match(line)]


RULES_NAME = "90-edge-agent.rules"


def _pretend(subsystem: str, kernel: str, properties: dict[str, str]) -> str:
    assignments = ", ".join(f'ENV{{{k}}}="{v}"' for k, v in properties.items())
    return f'SUBSYSTEM=="{subsystem}", KERNEL=="{kernel}", {assignments}\n'


def test_usb_block_devices_are_hidden_from_automounters() -> None:
    block = _first("block/*")
    rules = RULES.read_text(encoding="utf-8")
    as_stick = _udev_test(
        {
            "00-pretend-usb.rules": _pretend("block", block.name, {"ID_BUS": "usb"}),
            RULES_NAME: rules,
        },
        block,
    )
    assert f"Reading rules file: /etc/udev/rules.d/{RULES_NAME}" in as_stick
    assert _rule_errors(as_stick, RULES_NAME) == []
    found = _properties(as_stick)
    assert found.get("ID_BUS") == "usb"
    assert found.get("UDISKS_IGNORE") == "1"
    assert found.get("UDISKS_AUTO") == "0"


def test_other_disks_are_left_alone() -> None:
    block = _first("block/*")
    rules = RULES.read_text(encoding="utf-8")
    for pretend in ({}, {"ID_BUS": "ata"}):
        extra = {"00-pretend.rules": _pretend("block", block.name, pretend)} if pretend else {}
        found = _properties(_udev_test({**extra, RULES_NAME: rules}, block))
        assert "UDISKS_IGNORE" not in found
        assert "UDISKS_AUTO" not in found


def test_the_commented_serial_examples_are_valid_rules() -> None:
    """Uncommented, the examples parse, and the Zigbee one links a matching tty by its IDs."""
    examples = [
        line[2:]
        for line in RULES.read_text(encoding="utf-8").splitlines()
        if line.startswith("# SUBSYSTEM==")
    ]
    assert len(examples) == 3
    tty = _first("tty/tty1")
    ids = {
        "ID_BUS": "usb",
        "ID_VENDOR_ID": "10c4",
        "ID_MODEL_ID": "ea60",
        "ID_SERIAL_SHORT": "0001",
    }
    output = _udev_test(
        {
            "00-pretend-cp210x.rules": _pretend("tty", tty.name, ids),
            "91-examples.rules": "\n".join(examples) + "\n",
        },
        tty,
    )
    assert "Reading rules file: /etc/udev/rules.d/91-examples.rules" in output
    assert _rule_errors(output, "91-examples.rules") == []
    assert _properties(output).get("DEVLINKS", "").split() == ["/dev/edge-agent/zigbee"]


def test_udev_reports_a_broken_rule() -> None:
    """The parse check can fail: udev names the file and line of a bad rule."""
    block = _first("block/*")
    broken = RULES.read_text(encoding="utf-8").replace(
        'ENV{UDISKS_AUTO}="0"', 'ENV{UDISKS_AUTO}=="0", GROUPP="disk"'
    )
    output = _udev_test({RULES_NAME: broken}, block)
    assert _rule_errors(output, RULES_NAME)
