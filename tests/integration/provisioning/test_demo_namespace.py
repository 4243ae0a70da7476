"""``edge-agent demo`` as root: the network applied for real in a private network namespace.

The demo makes its namespaces, applies the archive's static Ethernet0/Ethernet1 with the
netlink backend inside (probe, commit), provisions and, once it ends, leaves no namespace
and no process behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.env import need_binary, need_root

pytestmark = [pytest.mark.netns, pytest.mark.mqtt, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def test_demo_as_root_applies_the_network_in_a_private_namespace(tmp_path: Path) -> None:
    need_root()
    for name in ("ip", "mosquitto", "mkfs.vfat", "mcopy"):
        need_binary(name)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--out", str(tmp_path / "demo")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:] + out[-3000:]
    found = re.search(r"network: applied with the netlink backend in namespace (ea-demo-\w+)", out)
    assert found, out
    namespace = found.group(1)
    assert "network: eth0 198.18.10.20/24" in out
    assert "network: eth1 198.18.11.20/24" in out
    assert "status: SUCCEEDED" in out
    assert "refused: FAILED ConflictException ARCHIVE_ALREADY_USED" in out
    assert "everything stopped" in out
    # nothing left: the namespaces are gone, and with them anything started inside
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert namespace not in listed.stdout
    assert namespace.replace("ea-demo-", "ea-demogw-") not in listed.stdout
    # the host's own interfaces were not touched: no demo veth end is left on the host
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
    token = namespace.removeprefix("ea-demo-")
    assert token not in links.stdout
