"""``resolv.conf`` managed by a resolver: the agent goes through it, and a revert puts it back.

Each agent run happens inside the lab's namespace (``ip netns exec`` gives it a private mount
namespace) with the resolver's directories laid over the real paths there, so the agent sees
exactly what an appliance sees (``resolv.conf`` a link into ``/run/resolvconf/`` or
``/run/systemd/resolve/``) while the host's own ``/etc``, ``/run`` and DNS stay untouched.

* resolvconf is real, in both of Debian's implementations: openresolv and Debian's own
  resolvconf, unpacked by ``scripts/setup`` into ``.cache/<package>`` (never installed:
  resolvconf's postinst links the host's ``/etc/resolv.conf``, openresolv's hooks make the
  host's DHCP client rewrite it). The package tree is overlaid read-only on ``/etc`` and
  ``/usr/lib`` (with the test's layer on top: ``/etc/resolv.conf`` a link into
  ``/run/resolvconf/``, and openresolv's ``resolvconf.conf``) and ``/run/resolvconf`` is a test
  directory (prepared as Debian's ``tmpfiles.d`` does for its resolvconf).
* systemd-resolved needs D-Bus and PID 1 and cannot run here, so ``resolvectl`` is replaced at
  the OS-tool edge (see :func:`fake_resolvectl`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.env import unavailable
from tests.helpers.network import static_ip
from tests.integration.netconf.conftest import REPO, Lab, wait_for
from tests.integration.netconf.test_recovery import DEAD_GATEWAYS

pytestmark = pytest.mark.netns

UNPACKED = REPO / ".cache"
#: the agent's record as each implementation keeps it (Debian's strips comments and blanks)
OUR_RECORD = {
    "openresolv": (
        "# Written by edge-agent from the provisioning archive.\nnameserver 198.18.1.53\n"
    ),
    "resolvconf": "nameserver 198.18.1.53\n",
}
GOOD = {
    "Ethernet0": static_ip("198.18.1.20", "24", "198.18.1.1", ["198.18.1.53"]),
    "Ethernet1": static_ip("198.18.2.20", "24", "198.18.2.1", []),
}

# $1 resolver, $2 directory for its run dir, $3 package tree or tool dir, $4 config dir;
# the rest is the command. Mounts are private to this process tree (ip netns exec).
MOUNT_AND_RUN = r"""
set -eu
resolver=$1 state=$2 tools=$3 conf=$4
shift 4
mount -t tmpfs -o mode=0755 edge-agent-test /run
if [ "$resolver" = resolvconf ]; then
  mount -t overlay edge-agent-test -o "lowerdir=$conf:$tools/etc:/etc" /etc
  mount -t overlay edge-agent-test -o "lowerdir=$tools/lib:/usr/lib" /usr/lib
  mkdir /run/resolvconf
  mount --bind "$state" /run/resolvconf
  PATH="$tools/sbin:$PATH"
else
  mkdir -p /run/systemd/resolve
  mount --bind "$state" /run/systemd/resolve
  PATH="$tools:$PATH"
fi
export PATH
exec "$@"
"""


class Resolver:
    """A resolver's directories for one lab, and commands run with them in place."""

    def __init__(self, lab: Lab, kind: str, package: str = "") -> None:
        self.lab, self.kind = lab, kind
        self.state = lab.tmp / f"{kind}-run"
        self.conf = lab.tmp / f"{kind}-etc"
        self.state.mkdir()
        self.conf.mkdir()
        #: where the implementation keeps one file per record
        self.records = "interfaces" if package == "openresolv" else "interface"
        if kind == "resolvconf":
            self.tools = UNPACKED / package / "root"
            if not (self.tools / "sbin" / "resolvconf").is_file():
                unavailable(f"{package} is not unpacked in .cache/{package}", "run scripts/setup")
            # the appliance's /etc/resolv.conf in this mount namespace
            (self.conf / "resolv.conf").symlink_to("/run/resolvconf/resolv.conf")
            if package == "openresolv":
                conf = "resolv_conf=/run/resolvconf/resolv.conf\n"  # Debian's layout
                (self.conf / "resolvconf.conf").write_text(conf)
            else:  # what Debian's tmpfiles.d/resolvconf.conf makes at boot
                (self.state / "interface").mkdir()
                (self.state / "enable-updates").touch()
                (self.state / "resolv.conf").touch()
        else:
            self.tools = lab.tmp / "resolved-bin"
            self.tools.mkdir()

    def argv(self, *command: str) -> list[str]:
        return self.lab.in_ns(
            "sh", "-c", MOUNT_AND_RUN, "sh", self.kind, str(self.state), str(self.tools),
            str(self.conf), *command,
        )  # fmt: skip

    def agent_argv(self, *args: str) -> list[str]:
        return self.argv(sys.executable, "-m", "agent", "--config", str(self.lab.config), *args)

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.agent_argv(*args), capture_output=True, text=True, timeout=120, check=False,
            cwd=REPO,
        )  # fmt: skip

    def apply(self, payload: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
        return self.agent("net", "apply", str(self.lab.payload_file(payload)), *args)

    def resolvconf(self, *args: str, stdin: str = "") -> None:
        subprocess.run(self.argv("resolvconf", *args), input=stdin, text=True, check=True,
                       capture_output=True, timeout=30)  # fmt: skip

    def files(self) -> dict[str, str]:
        """Every file of the resolver's run directory (records, generated resolv.conf).

        openresolv's lock (``lock/pid``) comes and goes while it runs, so it is left out.
        """
        out = {}
        for path in sorted(self.state.rglob("*")):
            name = str(path.relative_to(self.state))
            if name.startswith("lock"):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                out[name] = path.read_text()
        return out


@pytest.fixture(params=["openresolv", "resolvconf"])
def package(request: pytest.FixtureRequest) -> str:
    """The resolvconf implementation (Debian package) under test."""
    name: str = request.param
    return name


def resolvconf_lab(lab: Lab, package: str) -> tuple[Resolver, Path]:
    """resolvconf with a DHCP client's record for eth1, and the agent's link into its dir."""
    resolver = Resolver(lab, "resolvconf", package)
    resolver.resolvconf("-a", "eth1.dhcp", stdin="nameserver 198.18.2.1\n")
    link = lab.tmp / "resolv.conf"  # the agent's network.resolv_conf in the lab config
    link.symlink_to("/run/resolvconf/resolv.conf")
    return resolver, link


def test_resolvconf_gets_the_servers_and_a_failed_trial_restores_its_records(
    lab: Lab, package: str
) -> None:
    resolver, link = resolvconf_lab(lab, package)
    ours, dhcp = f"{resolver.records}/edge-agent", f"{resolver.records}/eth1.dhcp"
    before = resolver.files()
    assert "nameserver 198.18.2.1\n" in before["resolv.conf"]
    assert before[dhcp] == "nameserver 198.18.2.1\n"
    assert ours not in before

    # a failed first trial: ours was never there, so the revert drops it again
    result = resolver.apply(DEAD_GATEWAYS, "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert resolver.files() == before
    assert link.is_symlink()
    assert str(link.readlink()) == "/run/resolvconf/resolv.conf"

    result = resolver.apply(GOOD, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    committed = resolver.files()
    # the servers went into resolvconf's own record; resolvconf wrote resolv.conf from all records
    assert committed[ours] == OUR_RECORD[package]
    assert committed[dhcp] == "nameserver 198.18.2.1\n"
    assert committed["resolv.conf"] != before["resolv.conf"]
    assert "nameserver 198.18.1.53\n" in committed["resolv.conf"]
    assert "nameserver 198.18.2.1\n" in committed["resolv.conf"]
    assert str(link.readlink()) == "/run/resolvconf/resolv.conf"

    # a failed trial with other servers: resolvconf's previous record comes back exactly
    result = resolver.apply(DEAD_GATEWAYS, "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert resolver.files() == committed
    assert link.is_symlink()
    assert str(link.readlink()) == "/run/resolvconf/resolv.conf"


def test_recover_after_a_kill_restores_resolvconf_records(lab: Lab, package: str) -> None:
    resolver, link = resolvconf_lab(lab, package)
    result = resolver.apply(GOOD, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    committed = resolver.files()
    proc = lab.start(
        resolver.agent_argv("net", "apply", str(lab.payload_file(DEAD_GATEWAYS)),
                            "--probe-timeout", "120"),
        "apply",
    )  # fmt: skip
    # resolvconf writes the trial's record, then resolv.conf from it
    wait_for(
        lambda: "nameserver 198.18.1.54\n" in resolver.files().get("resolv.conf", ""),
        30,
        "the trial's servers in resolvconf's resolv.conf",
    )
    assert "nameserver 198.18.1.54\n" in resolver.files()[f"{resolver.records}/edge-agent"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    result = resolver.agent("net", "recover", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["action"] == "reverted"
    assert out["failures"] == []
    assert resolver.files() == committed
    assert link.is_symlink()
    assert str(link.readlink()) == "/run/resolvconf/resolv.conf"


RESOLVECTL = """#!{python}
import json, sys
log, state = {log!r}, {state!r}
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
try:
    with open(state) as f:
        links = json.load(f)
except FileNotFoundError:
    links = {{}}
verb, ifname, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
if verb == "dns" and not servers:
    print(f"Link 2 ({{ifname}}): " + " ".join(links.get(ifname, [])))
    sys.exit(0)
if verb == "dns":
    links[ifname] = servers
elif verb == "revert":
    links.pop(ifname, None)
else:
    sys.exit(f"unexpected resolvectl command: {{sys.argv[1:]}}")
with open(state, "w") as f:
    json.dump(links, f)
"""


def fake_resolvectl(resolver: Resolver) -> tuple[Path, Path]:
    """A ``resolvectl`` first on ``PATH`` that records its argv and keeps per-link servers.

    The real one is a D-Bus client of systemd-resolved, which needs the system bus and
    PID 1 (it cannot run on this machine or in CI). This one stands in at the tool's edge: it
    logs every command line (JSON, one a line) and keeps the per-link DNS servers that
    ``resolvectl dns IFNAME SERVERS...`` sets and ``resolvectl revert IFNAME`` drops, as
    systemd-resolved does; ``resolvectl dns IFNAME`` prints them in resolvectl's format.
    """
    log, state = resolver.lab.tmp / "resolvectl.log", resolver.lab.tmp / "resolved-links.json"
    tool = resolver.tools / "resolvectl"
    tool.write_text(RESOLVECTL.format(python=sys.executable, log=str(log), state=str(state)))
    tool.chmod(0o755)
    return log, state


def resolved_lab(lab: Lab) -> tuple[Resolver, Path, Path, Path]:
    resolver = Resolver(lab, "systemd-resolved")
    log, state = fake_resolvectl(resolver)
    stub = "# This is /run/systemd/resolve/stub-resolv.conf\nnameserver 127.0.0.53\n"
    (resolver.state / "stub-resolv.conf").write_text(stub)
    link = lab.tmp / "resolv.conf"
    link.symlink_to("/run/systemd/resolve/stub-resolv.conf")
    return resolver, link, log, state


def commands(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def links(state: Path) -> dict[str, list[str]]:
    if not state.exists():
        return {}
    result: dict[str, list[str]] = json.loads(state.read_text())
    return result


def test_systemd_resolved_gets_per_link_servers_and_a_revert_reverts_the_links(lab: Lab) -> None:
    resolver, link, log, state = resolved_lab(lab)
    stub = resolver.files()

    result = resolver.apply(DEAD_GATEWAYS, "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert commands(log) == [
        ["dns", "eth0"],  # the snapshot reads what resolved holds for each port
        ["dns", "eth1"],
        ["dns", "eth0", "198.18.1.54"],
        ["revert", "eth0"],  # it held nothing for either port before
        ["revert", "eth1"],
    ]
    assert links(state) == {}
    assert resolver.files() == stub  # nothing written through the link
    assert str(link.readlink()) == "/run/systemd/resolve/stub-resolv.conf"

    log.unlink()
    result = resolver.apply(GOOD, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    # eth1 names no servers
    assert commands(log) == [["dns", "eth0"], ["dns", "eth1"], ["dns", "eth0", "198.18.1.53"]]
    assert links(state) == {"eth0": ["198.18.1.53"]}
    assert resolver.files() == stub
    assert link.is_symlink()
    assert str(link.readlink()) == "/run/systemd/resolve/stub-resolv.conf"


def test_systemd_resolved_revert_puts_the_committed_servers_back(lab: Lab) -> None:
    resolver, link, _log, state = resolved_lab(lab)
    result = resolver.apply(GOOD, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert links(state) == {"eth0": ["198.18.1.53"]}
    result = resolver.apply(DEAD_GATEWAYS, "--probe-timeout", "2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert str(link.readlink()) == "/run/systemd/resolve/stub-resolv.conf"
    assert links(state) == {"eth0": ["198.18.1.53"]}
