"""Runs the fleet exchange and stops dead after one step (for ``kill -9`` between steps).

``python -m tests.helpers.fleet_driver STATE ENDPOINT STEP`` prints ``step <name>`` after
each durable step and, after STEP, waits (the test kills it there with SIGKILL).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from agent.mqtt.fleet import FleetOptions, provision


def main(argv: list[str]) -> None:
    state, endpoint, stop_after = argv

    def on_step(step: str) -> None:
        print(f"step {step}", flush=True)
        if step == stop_after:
            time.sleep(3600)  # blocks the loop: nothing more happens until the kill

    asyncio.run(provision(Path(state), FleetOptions(endpoint=endpoint), on_step=on_step))


if __name__ == "__main__":
    main(sys.argv[1:])
