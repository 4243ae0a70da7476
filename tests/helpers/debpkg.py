"""The Debian package for tests: built, unpacked, and laid over / in a mount namespace.

``package``: ``packaging/build-deb`` into a scratch directory, then ``dpkg-deb -x`` (the
tree) and ``dpkg-deb -e`` (the control files). ``overlay``: a work directory for a private
mount namespace in which the package's /usr, /opt and /etc lie over the machine's (overlayfs;
Debian 12's /lib is usr/lib), with writable /etc and /var layers kept in the work directory,
after the package's postinst ran there as dpkg runs it. Nothing reaches the machine's own
files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.env import need_binary, need_root

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


@dataclass(frozen=True)
class Package:
    deb: Path
    tree: Path  # dpkg-deb -x
    control: Path  # dpkg-deb -e


def build_package(out: Path) -> Package:
    """``packaging/build-deb --out OUT``, then the package unpacked beside it."""
    for tool in ("dpkg-deb", "git", "make", "gcc"):
        need_binary(tool)
    done = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb.name == f"edge-agent_{VERSION}_{arch()}.deb"
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=120)
    control = out / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True, timeout=60)
    return Package(deb, tree, control)


def prepare_overlay(package: Package, work: Path) -> Path:
    """A work directory whose writable /etc and /var layers have seen the postinst run."""
    need_root("overlay mounts in a private mount namespace need root")
    for tool in ("unshare", "setpriv", "systemd-sysusers", "systemd-tmpfiles"):
        need_binary(tool)
    # dpkg follows Debian 12's /lib -> usr/lib link; the overlay of /usr does the same
    merged = work / "pkg"
    shutil.copytree(package.tree, merged, symlinks=True)
    shutil.copytree(merged / "lib", merged / "usr" / "lib", symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(merged / "lib")
    for layer in ("etc", "var"):
        for part in ("upper", "work"):
            (work / layer / part).mkdir(parents=True)
    (work / "overlay.sh").write_text(OVERLAY, encoding="utf-8")
    env = clean_env(DPKG_MAINTSCRIPT_PACKAGE="edge-agent", DPKG_MAINTSCRIPT_NAME="postinst")
    done = in_namespace(work, ["sh", str(package.control / "postinst"), "configure", ""], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return work


def arch() -> str:
    """dpkg's architecture of this machine."""
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


#: Shell lines laying the package ($pkg) over /usr, /opt and /etc, /var writable with its
#: changes under $work, and an empty /run (in a private mount namespace).
MOUNT_PACKAGE = r"""
mount -t overlay overlay -o "lowerdir=$pkg/usr:/usr" /usr
mount -t overlay overlay -o "lowerdir=$pkg/opt:/opt" /opt
layer() {  # layer LOWER... TARGET NAME: writable, its changes in $work/NAME
  mount -t overlay overlay -o "lowerdir=$1,upperdir=$work/$3/upper,workdir=$work/$3/work" "$2"
}
layer "$pkg/etc:/etc" /etc etc
layer /var /var var
mount -t tmpfs tmpfs /run
"""

OVERLAY = (
    r"""
set -e
pkg=$1; work=$2; shift 2"""
    + MOUNT_PACKAGE
    + 'exec "$@"\n'
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what points into the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("EDGE_AGENT_")
    }
    return {**env, **extra}


def in_namespace(
    work: Path, command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "--"),
            *("sh", str(work / "overlay.sh"), str(work / "pkg"), str(work), *command),
        ],
        cwd=work,  # not the checkout, whose agent/ would shadow the installed one
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env if env is not None else clean_env(),
    )
