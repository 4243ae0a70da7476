"""The installed units under systemd itself: its sandbox, its notify socket, a real provisioning.

systemd 252 boots as PID 1 of fresh PID, mount, network, UTS, IPC and cgroup namespaces, in
cgroups of its own under this process's (removed afterwards), over the package laid on / as
in ``tests/helpers/debpkg.py``. It starts a target that wants both services; a test drop-in
removes only their default dependencies on the boot targets (nothing else boots), sends
their output to a file and, for the agent, adds an ``ExecStartPost=`` probe that runs inside
the service's sandbox and writes what it may and may not do. Then:

* ``edge-agent.service`` is active with the status the agent sent (Type=notify), has the
  unit's capabilities, seccomp and no_new_privs, sees a read-only system but for its paths,
  cannot open a block device that is not a SCSI disk, answers ``edge-agent status``, reloads
  on ``systemctl reload`` and stops cleanly;
* ``edge-agent-registry.service`` is active as its own user with no capability and
  provisions a device (CreateCertificateFromCsr + RegisterThing) through mosquitto and the
  plugin, all under its sandbox.

/proc/sys is read-only in the namespace, so systemd's start-up tuning of kernel limits never
reaches this machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.registry.ca import Issuer, cert_to_pem, generate_key, key_to_pem, load_factory_keys
from tests.helpers.debpkg import MOUNT_PACKAGE, REPO, clean_env
from tests.helpers.endpoint import EndpointPki, add_template
from tests.helpers.env import need_binary, need_root, unavailable

pytestmark = pytest.mark.slow

PORT = 18883  # inside the namespace's own network: no clash with this machine's ports

TARGET = """[Unit]
Description=edge-agent sandbox check
DefaultDependencies=no
Wants=edge-agent.service edge-agent-registry.service
"""

AGENT_DROP_IN = """[Unit]
DefaultDependencies=no
[Service]
StandardOutput=append:/run/edge-agent-test.log
StandardError=inherit
ExecStartPost=/bin/sh /etc/edge-agent/sandbox-probe.sh
"""

REGISTRY_DROP_IN = """[Unit]
DefaultDependencies=no
[Service]
StandardOutput=append:/run/edge-agent-registry-test.log
StandardError=inherit
"""

#: Runs as ExecStartPost= of edge-agent.service: inside its namespaces, cgroup and filters.
PROBE = r"""
out=/run/edge-agent/sandbox-probe
: > "$out"
try() {
  name=$1; shift
  if "$@" 2>/dev/null; then echo "$name=yes" >> "$out"; else echo "$name=no" >> "$out"; fi
}
for path in /etc /usr /var/lib /run /etc/edge-agent /var/lib/edge-agent /run/edge-agent \
            /etc/systemd/network /run/systemd/network /tmp; do
  f="$path/.probe-$$"
  try "write:$path" sh -c ": > '$f' && rm -f '$f'"
done
try "see:/home" sh -c '[ -z "$(ls -A /home)" ]'
# Inaccessible paths are empty nodes of mode 0 (which CAP_DAC_OVERRIDE may open): content?
try "content:/etc/passwd" test -s /etc/passwd
try "content:/etc/shadow" test -s /etc/shadow
registry_ca=/var/lib/edge-agent-registry/ca
try "content:$registry_ca" sh -c "[ -n \"\$(ls -A $registry_ca)\" ]"
for dev in /dev/loop0 /dev/vda /dev/zram0; do
  [ -e "$dev" ] || continue
  try "open:$dev" sh -c "exec 3<'$dev'"
done
try "open:/dev/null" sh -c ': < /dev/null'
"""

BOOT = (
    r"""
set -e
pkg=$1; work=$2
mount -t proc proc /proc
mount --bind -o ro /proc/sys /proc/sys"""
    + MOUNT_PACKAGE
    + r""": > "$work/console.log"
mount --bind "$work/console.log" /dev/console  # systemd's own log, not this machine's console
# what systemd-tmpfiles-setup.service does at boot, for the package's file only
systemd-tmpfiles --create /usr/lib/tmpfiles.d/edge-agent.conf
exec env container=edge-agent-test /lib/systemd/systemd --system --unit=edge-sandbox.target \
  --log-target=console --log-level=info --show-status=no
"""
)

#: Moves itself into a cgroup of its own in every hierarchy, then starts the namespaces.
ENTER = r"""
set -e
name=$1; shift
if [ -f /sys/fs/cgroup/cgroup.procs ]; then roots=/sys/fs/cgroup; else
  roots=$(for d in /sys/fs/cgroup/*/; do [ -f "$d/cgroup.procs" ] && echo "${d%/}"; done); fi
for root in $roots; do
  mkdir "$root/$name"
  for f in cpuset.cpus cpuset.mems; do  # a v1 cpuset takes no task before it has both
    if [ -f "$root/$f" ]; then cat "$root/$f" > "$root/$name/$f"; fi
  done
  echo $$ > "$root/$name/cgroup.procs"
done
exec unshare --pid --fork --mount --net --uts --ipc --cgroup --propagation private -- "$@"
"""


def _cgroup_roots() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.procs").exists():
        return [base]
    return [d for d in sorted(base.iterdir()) if (d / "cgroup.procs").exists()]


def _remove_cgroups(name: str) -> None:
    for root in _cgroup_roots():
        top = root / name
        if not top.exists():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            directory.rmdir()
        top.rmdir()


@dataclass
class Machine:
    """The booted namespace: its systemd's host pid and the test's work directory."""

    pid: int
    work: Path

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command inside the namespace (its mounts, PID namespace and network)."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--mount", "--pid", "--net", "--", *command],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=clean_env(),
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        done = self.run("systemctl", "show", unit, "-p", ",".join(properties))
        assert done.returncode == 0, done.stderr
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def wait_active(self, unit: str, timeout: float = 40) -> dict[str, str]:
        """Wait until ``unit`` is active; fail with its log when it fails or never gets there."""
        deadline = time.monotonic() + timeout
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = self.show(unit, "ActiveState", "SubState", "StatusText", "MainPID", "Result")
            if state.get("ActiveState") == "active":
                return state
            if state.get("ActiveState") == "failed" or state.get("Result") not in {"success", None}:
                break
            time.sleep(0.2)
        log = self.run("sh", "-c", "cat /run/*-test.log 2>/dev/null").stdout[-4000:]
        raise AssertionError(f"{unit} is not active: {state}\n{log}")

    def host_pid(self, unit: str) -> int:
        """The host pid of ``unit``'s main process."""
        inner = int(self.show(unit, "MainPID")["MainPID"])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text(encoding="utf-8")
            except OSError:
                continue
            for line in status.splitlines():
                pids = line.split()[1:] if line.startswith("NSpid:") else []
                if (
                    len(pids) > 1
                    and int(pids[-1]) == inner
                    and _same_pid_ns(int(entry.name), self.pid)
                ):
                    return int(entry.name)
        raise AssertionError(f"no host process for {unit} (pid {inner} inside)")


def _same_pid_ns(pid: int, init: int) -> bool:
    try:
        return Path(f"/proc/{pid}/ns/pid").readlink() == Path(f"/proc/{init}/ns/pid").readlink()
    except OSError:
        return False


def _registry_files(work: Path, overlay: Path) -> None:
    """The registry host's set-up (docs/operations.md), placed in the writable layers."""
    users = {
        line.split(":")[0]: line.split(":")
        for line in (overlay / "etc/upper/passwd").read_text(encoding="utf-8").splitlines()
    }
    uid, gid = int(users["edge-agent-registry"][2]), int(users["edge-agent-registry"][3])
    pki = EndpointPki(work / "pki")
    ca = work / "var/upper/lib/edge-agent-registry/ca"
    for name in ("ca.pem", "claim-issuer.pem", "device-issuer.pem", "device-issuer.key"):
        shutil.copy(pki.directory / "ca" / name, ca / name)
        (ca / name).chmod(0o600)
        os.chown(ca / name, uid, gid)
    database = ca.parent / "registry.db"
    add_template(database)
    for path in database.parent.glob("registry.db*"):
        os.chown(path, uid, gid)
    tls = work / "etc/upper/edge-agent/registry"
    tls.mkdir(parents=True)
    shutil.copy(pki.server_cert, tls / "server.pem")
    shutil.copy(pki.server_key, tls / "server.key")
    (tls / "server.pem").chmod(0o644)
    (tls / "server.key").chmod(0o640)
    os.chown(tls / "server.key", 0, gid)
    (work / "etc/upper/default").mkdir(exist_ok=True)
    (work / "etc/upper/default/edge-agent-registry").write_text(
        f"EDGE_AGENT_REGISTRY_LISTEN=127.0.0.1:{PORT}\n", encoding="utf-8"
    )


@pytest.fixture(scope="module")
def machine(overlay: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    need_root("systemd in namespaces needs root")
    for tool in ("unshare", "nsenter"):
        need_binary(tool)
    if not Path("/lib/systemd/systemd").exists():
        unavailable("systemd is not installed", "scripts/setup installs it")
    work = tmp_path_factory.mktemp("systemd")
    for layer in ("etc", "var"):
        shutil.copytree(overlay / layer / "upper", work / layer / "upper", symlinks=True)
        (work / layer / "work").mkdir()
    system = work / "etc/upper/systemd/system"
    (system / "edge-sandbox.target").write_text(TARGET, encoding="utf-8")
    for unit, drop_in in (("edge-agent", AGENT_DROP_IN), ("edge-agent-registry", REGISTRY_DROP_IN)):
        (system / f"{unit}.service.d").mkdir(parents=True)
        (system / f"{unit}.service.d/test.conf").write_text(drop_in, encoding="utf-8")
    (work / "etc/upper/edge-agent").mkdir(exist_ok=True)
    (work / "etc/upper/edge-agent/sandbox-probe.sh").write_text(PROBE, encoding="utf-8")
    _registry_files(work, overlay)
    (work / "boot.sh").write_text(BOOT, encoding="utf-8")
    (work / "enter.sh").write_text(ENTER, encoding="utf-8")
    name = f"edge-agent-test-{secrets.token_hex(4)}"
    console = (work / "boot.log").open("w")
    boot = subprocess.Popen(
        [
            *("sh", str(work / "enter.sh"), name),
            *("sh", str(work / "boot.sh"), str(overlay / "pkg"), str(work)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        env=clean_env(),
    )
    try:
        init = _wait_for_init(boot, work)
        yield Machine(init, work)
        subprocess.run(
            ["nsenter", f"--target={init}", "--mount", "--pid", "--", "systemctl", "exit", "0"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        boot.wait(timeout=30)
    finally:
        if boot.poll() is None:
            boot.kill()  # unshare: its child, PID 1 of the namespace, takes the rest with it
            boot.wait(timeout=30)
        console.close()
        _remove_cgroups(name)


def _wait_for_init(boot: subprocess.Popen[bytes], work: Path) -> int:
    """The host pid of the namespace's systemd, once its manager answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if boot.poll() is not None:
            break
        children = Path(f"/proc/{boot.pid}/task/{boot.pid}/children")
        try:
            pids = children.read_text(encoding="utf-8").split()
        except OSError:
            pids = []
        for pid in pids:
            done = subprocess.run(
                [
                    *("nsenter", f"--target={pid}", "--mount", "--pid", "--"),
                    *("systemctl", "is-system-running"),
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if done.stdout.strip() in {"running", "degraded", "starting"}:
                return int(pid)
        time.sleep(0.2)
    logs = [work / "boot.log", work / "console.log"]
    log = "".join(p.read_text(errors="replace") for p in logs if p.exists())[-3000:]
    unavailable(f"systemd did not boot in a namespace on this machine: {log}", "run as root")
    raise AssertionError("unreachable")  # pragma: no cover


def test_agent_runs_in_its_sandbox(machine: Machine) -> None:
    state = machine.wait_active("edge-agent.service")
    assert state["SubState"] == "running"
    assert state["StatusText"] == "running"  # STATUS= from the agent's READY=1 (Type=notify)
    pid = machine.host_pid("edge-agent.service")
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    # the unit's three: CAP_DAC_OVERRIDE is bit 1, CAP_NET_ADMIN 12, CAP_NET_RAW 13
    assert int(status["CapBnd"], 16) == (1 << 1) | (1 << 12) | (1 << 13)
    assert int(status["CapEff"], 16) == (1 << 1) | (1 << 12) | (1 << 13)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    probe = machine.run("cat", "/run/edge-agent/sandbox-probe")
    assert probe.returncode == 0, probe.stderr
    seen = dict(line.split("=", 1) for line in probe.stdout.split())
    for path in ("/etc", "/usr", "/var/lib", "/run", "/etc/edge-agent"):
        assert seen[f"write:{path}"] == "no", path
    for path in ("/var/lib/edge-agent", "/run/edge-agent", "/etc/systemd/network"):
        assert seen[f"write:{path}"] == "yes", path
    assert seen["write:/run/systemd/network"] == "yes"
    assert seen["write:/tmp"] == "yes"  # its private /tmp
    assert seen["see:/home"] == "yes"  # empty
    # CAP_DAC_OVERRIDE reads what it sees; the secrets of others are not there to see
    assert seen["content:/etc/passwd"] == "yes"
    assert seen["content:/etc/shadow"] == "no"
    assert seen["content:/var/lib/edge-agent-registry/ca"] == "no"
    assert seen["open:/dev/null"] == "yes"
    blocked = [key for key in seen if key.startswith("open:/dev/") and key != "open:/dev/null"]
    assert blocked, seen  # at least one non-SCSI block device exists here
    for key in blocked:
        assert seen[key] == "no", key


def test_agent_answers_reloads_and_stops(machine: Machine) -> None:
    machine.wait_active("edge-agent.service")
    status = machine.run("edge-agent", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["state"] == "RUNNING"
    done = machine.run("systemctl", "reload", "edge-agent.service")
    assert done.returncode == 0, done.stderr
    state = machine.wait_active("edge-agent.service")
    assert state["StatusText"] == "running"
    log = machine.run("cat", "/run/edge-agent-test.log").stdout
    assert "configuration reloaded" in log
    done = machine.run("systemctl", "stop", "edge-agent.service")
    assert done.returncode == 0, done.stderr
    after = machine.show("edge-agent.service", "ActiveState", "Result", "ExecMainStatus")
    assert after == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}


def test_registry_provisions_a_device_from_its_sandbox(machine: Machine) -> None:
    state = machine.wait_active("edge-agent-registry.service")
    assert state["StatusText"] == f"serving fleet provisioning on 127.0.0.1:{PORT}"
    pid = machine.host_pid("edge-agent-registry.service")
    status = Path(f"/proc/{pid}/status").read_text()
    assert "CapEff:\t0000000000000000" in status
    assert "CapBnd:\t0000000000000000" in status
    assert machine.show("edge-agent-registry.service", "User") == {"User": "edge-agent-registry"}
    pki = machine.work / "pki"  # the PKI _registry_files set the registry up with
    claim = _claim(pki, load_factory_keys(pki / "ca").claim_issuer)
    device = subprocess.run(
        [
            *("nsenter", f"--net=/proc/{machine.pid}/ns/net", "--"),
            *(sys.executable, "-m", "tests.helpers.claim_device_driver", str(PORT)),
            *(str(pki / "ca" / "ca.pem"), str(claim[0]), str(claim[1])),
            *(claim[2], "SN-SANDBOX-1"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert device.returncode == 0, device.stdout + device.stderr
    assert json.loads(device.stdout.splitlines()[-1]) == {"thingName": "edge-SN-SANDBOX-1"}


def _claim(directory: Path, issuer: Issuer) -> tuple[Path, Path, str]:
    """A claim certificate (clientAuth, valid now) and its key, from the claim issuer."""
    name = f"dev-{secrets.token_hex(4)}"
    key = generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    cert = issuer.issue(
        common_name=name,
        public_key=key.public_key(),
        not_before=now - dt.timedelta(minutes=5),
        lifetime=dt.timedelta(hours=1),
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert_to_pem(cert))
    key_path.write_bytes(key_to_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path, name
