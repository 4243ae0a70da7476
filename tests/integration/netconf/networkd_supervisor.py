"""Run the real systemd-networkd in a test namespace and restart it on demand.

Without D-Bus, ``networkctl reload`` cannot reach networkd, so the tests configure the agent's
reload command as ``networkd_supervisor.py --reload STATE_DIR``: it signals this supervisor,
which stops networkd, starts a fresh one (re-reading every ``.network`` file, as a reload
does) and bumps a generation counter that the reload command waits for.

Usage (inside ``ip netns exec`` after the mounts are set up):
    networkd_supervisor.py --serve STATE_DIR
    networkd_supervisor.py --reload STATE_DIR
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

NETWORKD = "/lib/systemd/systemd-networkd"


def serve(state: Path) -> None:
    restart = False
    stop = False

    def on_hup(signum: int, frame: object) -> None:
        nonlocal restart
        restart = True

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_TARGET="console")
    generation = 0
    child = subprocess.Popen([NETWORKD], env=env)
    (state / "generation").write_text(str(generation))
    (state / "supervisor.pid").write_text(str(os.getpid()))
    while not stop:
        time.sleep(0.05)
        if restart:
            restart = False
            child.terminate()
            child.wait(timeout=10)
            child = subprocess.Popen([NETWORKD], env=env)
            generation += 1
            (state / "generation").write_text(str(generation))
    child.terminate()
    child.wait(timeout=10)


def reload(state: Path) -> int:
    before = int((state / "generation").read_text())
    os.kill(int((state / "supervisor.pid").read_text()), signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if int((state / "generation").read_text() or before) > before:
            return 0
        time.sleep(0.02)
    sys.stderr.write("networkd did not restart within 10 s\n")
    return 1


if __name__ == "__main__":
    mode, state_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "--serve":
        serve(state_dir)
        sys.exit(0)
    sys.exit(reload(state_dir))
