"""A separate process that produces outbox events and/or drains them (for ``kill -9`` tests).

``python -m tests.helpers.outbox_driver STATE THING CERT KEY CA PORT COUNT`` publishes COUNT
LOG events (printing ``durable <seq>`` after each is committed), keeps sending to the broker
on PORT and prints ``drained`` once the outbox is empty, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from agent.mqtt.client import Backoff, Endpoint, Identity, Link, Settings
from agent.mqtt.outbox import open_outbox


async def _main(argv: list[str]) -> None:
    state, thing, cert, key, ca, port, count = argv
    outbox = await open_outbox(Path(state), thing_name=thing, topic=f"edge/{thing}/events")
    settings = Settings(
        endpoint=Endpoint("localhost", int(port)),
        identity=Identity(Path(cert), Path(key), Path(ca)),
        client_id=thing,
        status_topic=f"edge/{thing}/status",
        backoff=Backoff(0.05, 0.5),
    )
    link = Link(settings, [outbox.attach])
    task = asyncio.create_task(link.run())
    for i in range(int(count)):
        event = await outbox.publish("LOG", {"level": "info", "message": f"event {i}"})
        print(f"durable {event['seq']}", flush=True)
    await outbox.drained()
    print("drained", flush=True)
    await asyncio.sleep(3600)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
