"""Z-Wave against a real Z-Wave JS server driving the real zwave-js driver (emulated stick)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commissioning.backend import Commissioner
from agent.commissioning.errors import RadioUnavailableError
from agent.commissioning.notify import RecordingNotifier
from agent.commissioning.qr import parse
from agent.commissioning.things import FAILED, ManagedThings
from agent.commissioning.zwave import ZWaveConnection
from agent.store import Store
from tests.helpers.env import need_binary, unavailable

SERVER_DIR = Path(__file__).resolve().parents[2] / "zwave-js"
SMART_START = (
    "900132782003515253545541424344453132333435212223242500100435301537022065520001000000300578"
)
DSK = "51525-35455-41424-34445-31323-33435-21222-32425"
S2_ONLY = (
    "900032782003515253545541424344453132333435212223242500100435301537022065520001000000300578"
)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(cache: Path, pending_node: int | None = None) -> Iterator[str]:
    """Start tests/zwave-js/server.mjs on a free loopback port; yield its URL."""
    node = need_binary("node")
    if not (SERVER_DIR / "node_modules" / "@zwave-js" / "server").is_dir():
        unavailable("the Z-Wave JS server's npm packages are missing", "scripts/setup runs npm ci")
    port = _free_port()
    log = cache / "server.log"
    argv = [str(node), str(SERVER_DIR / "server.mjs"), str(port), str(cache)]
    if pending_node is not None:
        argv.append(str(pending_node))
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"READY" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            pytest.fail(f"the Z-Wave JS server did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def zwave_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("zwave-cache")) as url:
        yield url


def test_provision_list_unprovision(zwave_server: str) -> None:
    async def scenario() -> None:
        async with ZWaveConnection(zwave_server) as connection:
            backend = connection.backend
            await backend.provision(parse(SMART_START))
            entries = await backend.provisioned()
            ours = [e for e in entries if e["dsk"] == DSK]
            assert len(ours) == 1
            assert ours[0]["securityClasses"] == [0, 1]
            assert ours[0]["manufacturerId"] == 65520
            await backend.unprovision(DSK)
            assert [e for e in await backend.provisioned() if e["dsk"] == DSK] == []

    asyncio.run(scenario())


def _thing(tmp_path: Path, code: str) -> tuple[ManagedThings, str]:
    things = ManagedThings(
        Store(tmp_path / "s.db"), region="us-east-1", account="1", notifier=RecordingNotifier()
    )
    thing_id: str = things.create(
        {
            "AuthenticationMaterial": code,
            "AuthenticationMaterialType": "ZWAVE_QR_BAR_CODE",
            "Role": "DEVICE",
        }
    ).body["Id"]
    return things, thing_id


def test_smart_start_timeout_removes_the_entry(zwave_server: str, tmp_path: Path) -> None:
    things, thing_id = _thing(tmp_path, SMART_START)

    async def scenario() -> list[str]:
        async with ZWaveConnection(zwave_server) as connection:
            commissioner = Commissioner(things, [connection.backend], join_timeout=1)
            assert await commissioner.commission(thing_id) == FAILED
            return [e["dsk"] for e in await connection.backend.provisioned()]

    assert DSK not in asyncio.run(scenario())
    described = things.describe(thing_id)
    assert described["FailureReason"] == "JOIN_TIMEOUT"


def test_s2_inclusion_started_and_stopped(zwave_server: str, tmp_path: Path) -> None:
    things, thing_id = _thing(tmp_path, S2_ONLY)

    async def scenario() -> None:
        async with ZWaveConnection(zwave_server) as connection:
            commissioner = Commissioner(things, [connection.backend], join_timeout=1)
            assert await commissioner.commission(thing_id) == FAILED

    asyncio.run(scenario())
    assert things.describe(thing_id)["FailureReason"] == "JOIN_TIMEOUT"


def test_unreachable_server_is_clear() -> None:
    async def scenario() -> None:
        with pytest.raises(RadioUnavailableError) as info:
            async with ZWaveConnection(f"ws://127.0.0.1:{_free_port()}", ready_timeout=2):
                pass
        assert info.value.reason == "ZWAVE_SERVER_UNAVAILABLE"

    asyncio.run(scenario())


def test_s2_inclusion_adds_the_node_and_activates(tmp_path: Path) -> None:
    """The emulated controller has a device waiting: the inclusion really adds node 5."""
    things, thing_id = _thing(tmp_path, S2_ONLY)
    cache = tmp_path / "cache"
    cache.mkdir()
    with running_server(cache, pending_node=5) as url:

        async def scenario() -> str:
            async with ZWaveConnection(url) as connection:
                commissioner = Commissioner(things, [connection.backend], join_timeout=30)
                return await commissioner.commission(thing_id)

        assert asyncio.run(scenario()) == "ACTIVATED"
    recorder = things._notifier
    assert isinstance(recorder, RecordingNotifier)
    assert [e.status for e in recorder.things] == [
        "UNASSOCIATED",
        "PRE_ASSOCIATED",
        "DISCOVERED",
        "ACTIVATED",
    ]
