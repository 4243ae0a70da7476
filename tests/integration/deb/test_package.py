"""The Debian package: built by packaging/build-deb, read back with dpkg-deb, installed.

"Installed" means two things here, neither touching this machine's own files:

* ``dpkg-deb -x`` into a scratch directory, then the agent run from there;
* the package laid over / in a private mount namespace (overlayfs: /usr, /opt and /etc from
  the package over the machine's, writable /etc and /var layers in the test's directory, an
  empty /run), where its postinst runs as dpkg would run it and the installed service runs
  with the unit's capability bounding set, no_new_privs, its supplementary group and no
  writable executable memory (setpriv and PR_SET_MDWE: what systemd would apply, short of
  the namespaces, which need systemd itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from tests.helpers.debpkg import REPO, VERSION, Package, arch, clean_env, in_namespace
from tests.helpers.env import need_binary

PLUGIN = "usr/lib/edge-agent/edge_registry_plugin.so"

pytestmark = pytest.mark.slow


def _field(package: Package, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(package.deb), name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def _contents(package: Package) -> dict[str, str]:
    """Path → listing line of every member (``dpkg-deb -c``)."""
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(package.deb)], capture_output=True, text=True, check=True
    ).stdout
    members = {}
    for line in listing.splitlines():
        name = line.split(None, 5)[5].removeprefix("./")
        members[name.split(" -> ")[0].rstrip("/")] = line
    return members


def test_control_fields(package: Package) -> None:
    assert _field(package, "Package") == "edge-agent"
    assert _field(package, "Version") == VERSION
    assert _field(package, "Architecture") == arch()
    depends = [d.strip() for d in _field(package, "Depends").split(",")]
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"python3 (>= {python})" in depends
    for name in ("mtools", "libssl3", "libudev1", "iputils-ping", "systemd"):
        assert name in depends
    assert "mosquitto" in _field(package, "Recommends")


def test_only_the_configuration_is_a_conffile(package: Package) -> None:
    conffiles = (package.control / "conffiles").read_text(encoding="utf-8").split()
    assert conffiles == ["/etc/edge-agent/agent.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(package.control / script, os.X_OK)


def test_contents(package: Package) -> None:
    members = _contents(package)
    shipped = {
        "lib/systemd/system/edge-agent.service": REPO / "systemd/edge-agent.service",
        "lib/systemd/system/edge-agent-registry.service": REPO
        / "systemd/edge-agent-registry.service",
        "usr/lib/sysusers.d/edge-agent.conf": REPO / "systemd/edge-agent.sysusers.conf",
        "usr/lib/tmpfiles.d/edge-agent.conf": REPO / "systemd/edge-agent.tmpfiles.conf",
        "lib/udev/rules.d/90-edge-agent.rules": REPO / "hw/udev/90-edge-agent.rules",
        "usr/share/edge-agent/netlink-backend.conf": REPO / "systemd/netlink-backend.conf",
        "etc/edge-agent/agent.toml": REPO / "packaging/etc/agent.toml",
        "usr/share/doc/edge-agent/operations.md": REPO / "docs/operations.md",
    }
    for member, source in shipped.items():
        assert member in members, member
        assert (package.tree / member).read_bytes() == source.read_bytes(), member
        assert members[member].startswith("-rw-r--r-- root/root"), members[member]
    assert members["usr/bin/edge-agent"].endswith(
        "./usr/bin/edge-agent -> /opt/edge-agent/bin/edge-agent"
    )
    assert members["usr/lib/edge-agent/edge_registry_plugin.so"].startswith("-rw-r--r-- root/root")
    assert "opt/edge-agent/bin/edge-agent" in members
    assert "opt/edge-agent/pyvenv.cfg" in members
    # nothing from the build machine's staging tree, no pip in the image
    assert not any("/pip/" in m or m.endswith("/bin/pip") for m in members)
    cfg = (package.tree / "opt/edge-agent/pyvenv.cfg").read_text(encoding="utf-8")
    assert "command = /usr/bin/python3 -m venv /opt/edge-agent" in cfg.splitlines()
    script = (package.tree / "opt/edge-agent/bin/edge-agent").read_text(encoding="utf-8")
    assert script.splitlines()[0] == "#!/opt/edge-agent/bin/python"


def test_plugin_is_the_mosquitto_plugin(package: Package) -> None:
    need_binary("nm")
    symbols = subprocess.run(
        [
            "nm",
            "-D",
            "--defined-only",
            str(package.tree / "usr/lib/edge-agent/edge_registry_plugin.so"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in ("mosquitto_plugin_version", "mosquitto_plugin_init", "mosquitto_plugin_cleanup"):
        assert name in symbols


def test_example_configuration_loads(package: Package) -> None:
    config = load_config(package.tree / "etc/edge-agent/agent.toml")
    assert config.api.group == "edge-agent"
    assert config.network.backend == "networkd"
    assert config.usb.source == "udev"


def test_extracted_agent_runs_from_its_own_environment(package: Package, tmp_path: Path) -> None:
    python = package.tree / "opt/edge-agent/bin/python"
    script = package.tree / "opt/edge-agent/bin/edge-agent"
    env = clean_env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    where = run("-c", "import agent, aiohttp; print(agent.__file__, agent.__version__)")
    assert where.returncode == 0, where.stderr
    location, version = where.stdout.split()
    assert Path(location).is_relative_to(package.tree / "opt/edge-agent")
    assert version == VERSION
    done = run(str(script), "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: edge-agent" in done.stdout
    payload = tmp_path / "net.json"
    payload.write_text(json.dumps({"Ethernet0": {"ConnectionType": "DHCP"}}), encoding="utf-8")
    plan = run(
        str(script),
        *("--config", str(package.tree / "etc/edge-agent/agent.toml")),
        *("net", "plan", str(payload), "--json"),
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert json.loads(plan.stdout)["board"] == "generic"


# --- the package over / in a private mount namespace --------------------------------------

#: Runs inside the namespace as the service manager would start the service (system python,
#: standard library only): the unit's capability bounding set, no_new_privs,
#: SupplementaryGroups=edge-agent, MemoryDenyWriteExecute (PR_SET_MDWE), the notify socket.
SERVICE_DRIVER = r"""
import ctypes, grp, json, os, signal, socket, stat, subprocess, sys, time

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)

def mdwe():
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")

caps = sys.argv[1]
gid = grp.getgrnam("edge-agent").gr_gid
os.makedirs("/run/edge-agent", mode=0o755)  # RuntimeDirectory=edge-agent
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind("/run/notify.sock")
notify.settimeout(30)
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "NOTIFY_SOCKET": "/run/notify.sock", "WATCHDOG_USEC": "30000000",
       "STATE_DIRECTORY": "/var/lib/edge-agent", "RUNTIME_DIRECTORY": "/run/edge-agent"}
service = subprocess.Popen(
    ["setpriv", "--bounding-set=-all," + caps, "--inh-caps=-all", f"--groups={gid}",
     "--no-new-privs", "/usr/bin/edge-agent", "run"],
    env=env, preexec_fn=mdwe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
report = {"messages": []}
try:
    while True:
        message = notify.recv(4096).decode()
        report["messages"].append(message)
        if "READY=1" in message.splitlines():
            break
    sock = os.stat("/run/edge-agent/api.sock")
    report["socket"] = {"mode": oct(stat.S_IMODE(sock.st_mode)), "gid": sock.st_gid,
                        "group_gid": gid}
    status = subprocess.run(["/usr/bin/edge-agent", "status", "--json"], capture_output=True,
                            text=True, timeout=30)
    report["status"] = {"code": status.returncode, "body": status.stdout}
    caps_line = [l for l in open(f"/proc/{service.pid}/status") if l.startswith("CapBnd")]
    report["bounding"] = caps_line[0].split()[1] if caps_line else ""
finally:
    service.send_signal(signal.SIGTERM)
    out, _ = service.communicate(timeout=30)
    report["exit"] = service.returncode
    report["output"] = out[-3000:]
    notify.settimeout(1)
    try:
        while True:
            report["messages"].append(notify.recv(4096).decode())
    except (TimeoutError, OSError):
        pass
print(json.dumps(report))
"""


def _lines(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


def test_postinst_makes_users_directories_and_enables_the_agent(overlay: Path) -> None:
    etc = overlay / "etc" / "upper"
    var = overlay / "var" / "upper"
    groups = _lines(etc / "group")
    users = _lines(etc / "passwd")
    assert "edge-agent" in groups
    assert "edge-agent-registry" in users
    registry_uid = int(users["edge-agent-registry"][2])
    state = var / "lib" / "edge-agent"
    assert (state.stat().st_mode & 0o777, state.stat().st_uid) == (0o700, 0)
    ca = var / "lib" / "edge-agent-registry" / "ca"
    assert (ca.stat().st_mode & 0o777, ca.stat().st_uid) == (0o700, registry_uid)
    wants = etc / "systemd" / "system" / "multi-user.target.wants"
    link = (wants / "edge-agent.service").readlink()
    assert link == Path("/lib/systemd/system/edge-agent.service")
    assert not (wants / "edge-agent-registry.service").exists()  # a registry host's choice


def test_installed_units_verify_at_their_installed_paths(overlay: Path) -> None:
    need_binary("systemd-analyze")
    done = in_namespace(
        overlay,
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            "/lib/systemd/system/edge-agent.service",
            "/lib/systemd/system/edge-agent-registry.service",
        ],
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    where = in_namespace(
        overlay,
        [
            "/opt/edge-agent/bin/python",
            "-c",
            "from agent.registry.serve import plugin_path; print(plugin_path())",
        ],
    )
    assert where.stdout.strip() == "/usr/lib/edge-agent/edge_registry_plugin.so", where.stderr


def test_installed_service_runs_with_the_units_capabilities(overlay: Path) -> None:
    """READY=1, the API socket handed to the edge-agent group without CAP_CHOWN, a clean stop."""
    (overlay / "driver.py").write_text(SERVICE_DRIVER, encoding="utf-8")
    caps = "+net_admin,+net_raw,+dac_override"  # the unit's CapabilityBoundingSet=
    done = in_namespace(overlay, ["python3", str(overlay / "driver.py"), caps])
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("READY=1" in m.splitlines() for m in report["messages"]), report
    assert report["socket"]["mode"] == "0o660"
    assert report["socket"]["gid"] == report["socket"]["group_gid"], report
    assert report["status"]["code"] == 0, report
    assert json.loads(report["status"]["body"])["state"] == "RUNNING"
    # CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_DAC_OVERRIDE (1) and nothing else
    assert int(report["bounding"], 16) == (1 << 12) | (1 << 13) | (1 << 1), report
    assert any("STOPPING=1" in m.splitlines() for m in report["messages"]), report
    assert report["exit"] == 0, report["output"]
