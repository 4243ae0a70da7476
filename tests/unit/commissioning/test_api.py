"""``/managed-things`` on the real local API (aiohttp on a Unix socket), commissioning a
Zigbee device through zigpy with stub radio methods."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from agent.api import LocalApi
from agent.commissioning import api as commissioning_api
from agent.commissioning.backend import RadioBackend
from agent.commissioning.runtime import CommissioningService
from agent.commissioning.zigbee import ZigbeeBackend
from agent.config import AgentConfig, CommissioningSection
from agent.daemon import api_request
from agent.status.led import SysfsLed
from tests.helpers.zigbee import StubRadioApp, create_body, make_app, nwk

ZIGBEE = "Z:0102030405060708$I:0102030405060708090A0B0C0D0E0F1090FD"
INSTALL_CODE = "0102030405060708090A0B0C0D0E0F1090FD"
LINK_KEY = "F7DB70E028B72B3F67D90A54F6916FF4"
ARN = re.compile(
    r"arn:aws:iotmanagedintegrations:[0-9a-zA-Z-]+:[0-9]+:managed-thing/[0-9a-zA-Z:_-]+"
)
WIFI = "WIFI:T:WPA;S:edge-net;P:hunter22;;"


def body(**overrides: Any) -> dict[str, Any]:
    return create_body(ZIGBEE, **overrides)


class Client:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def __call__(self, method: str, target: str, payload: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(api_request, self.socket, method, target, 10.0, payload)

    async def raw(self, target: str, data: bytes) -> tuple[int, Any]:
        import http.client
        import json
        import socket as sockets

        def post() -> tuple[int, Any]:
            conn = http.client.HTTPConnection("localhost")
            sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            sock.connect(str(self.socket))
            conn.sock = sock
            conn.request("POST", target, data, {"Content-Type": "application/json"})
            response = conn.getresponse()
            out = response.status, json.loads(response.read())
            conn.close()
            return out

        return await asyncio.to_thread(post)


def config(tmp_path: Path, **section: Any) -> AgentConfig:
    return AgentConfig(
        commissioning=CommissioningSection(database=tmp_path / "things.db", **section)
    )


def stub_radios(app: StubRadioApp) -> Callable[[CommissioningSection], Any]:
    @contextlib.asynccontextmanager
    async def radios(section: CommissioningSection) -> AsyncIterator[list[RadioBackend]]:
        yield [ZigbeeBackend(app, permit_seconds=section.zigbee_permit_seconds)]

    return radios


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, agent_config: AgentConfig, radios: Any = None, led: Any = None
) -> AsyncIterator[tuple[Client, CommissioningService]]:
    kwargs: dict[str, Any] = {"radios": radios} if radios is not None else {}
    if led is not None:
        kwargs["led"] = led
    service = CommissioningService(agent_config, **kwargs)
    api = LocalApi(tmp_path / "api.sock")
    api.add_routes(commissioning_api.routes(service))
    async with service:
        await api.start()
        try:
            yield Client(api.socket_path), service
        finally:
            await api.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_create_idempotency_and_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, config(tmp_path)) as (call, service):
            code, created = await call("POST", "/managed-things", body(ClientToken="tok-1"))
            assert code == 201
            assert set(created) == {"Arn", "CreatedAt", "Id"}
            assert ARN.fullmatch(created["Arn"])
            assert created["Arn"].endswith("/" + created["Id"])
            # same token, same body: the first answer again
            assert await call("POST", "/managed-things", body(ClientToken="tok-1")) == (
                201,
                created,
            )
            # same token, another body
            code, err = await call("POST", "/managed-things", body(ClientToken="tok-1", Brand="x"))
            assert code == 409
            assert err["error"]["code"] == "ConflictException"
            assert err["error"]["reason"] == "CLIENT_TOKEN_CONFLICT"
            # the same device again
            code, err = await call("POST", "/managed-things", body())
            assert (code, err["error"]["reason"]) == (409, "DEVICE_ALREADY_MANAGED")
            # every field problem at once
            code, err = await call(
                "POST",
                "/managed-things",
                {"AuthenticationMaterial": ZIGBEE, "Brand": "b@d", "X": 1},
            )
            assert code == 400
            assert err["error"]["code"] == "ValidationException"
            paths = {f["path"] for f in err["error"]["fields"]}
            assert {"X", "Brand", "Role", "AuthenticationMaterialType"} <= paths
            # a code of another type than declared
            code, err = await call(
                "POST", "/managed-things", body(AuthenticationMaterialType="ZWAVE_QR_BAR_CODE")
            )
            assert (code, err["error"]["reason"]) == (400, "QR_TYPE_MISMATCH")
            assert INSTALL_CODE not in str(err)
            # not JSON, duplicate keys, not an object
            for raw in (b"{nope", b'{"Role":"DEVICE","Role":"DEVICE"}', b"[1]"):
                code, err = await call.raw("/managed-things", raw)
                assert code == 400, raw
                assert err["error"]["code"] == "ValidationException"
            # nothing half-written: one thing only
            assert service.things.counts() == {"UNASSOCIATED": 1}

    run(scenario)


def test_list_describe_delete(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, config(tmp_path)) as (call, _service):
            _, first = await call("POST", "/managed-things", body())
            _, second = await call(
                "POST",
                "/managed-things",
                body(
                    AuthenticationMaterial=WIFI, AuthenticationMaterialType="WIFI_SETUP_QR_BAR_CODE"
                ),
            )
            code, listed = await call("GET", "/managed-things")
            assert code == 200
            assert [i["Id"] for i in listed["Items"]] == [first["Id"], second["Id"]]
            code, listed = await call("GET", "/managed-things?status=ACTIVATED")
            assert (code, listed) == (200, {"Items": []})
            code, err = await call("GET", "/managed-things?status=BOGUS")
            assert (code, err["error"]["code"]) == (400, "ValidationException")
            code, err = await call("GET", "/managed-things?colour=red")
            assert code == 400
            code, described = await call("GET", f"/managed-things/{first['Id']}")
            assert code == 200
            assert described["ProvisioningStatus"] == "UNASSOCIATED"
            assert described["AuthenticationMaterial"] == "<redacted>"
            assert described["Device"]["ieee"] == "01:02:03:04:05:06:07:08"
            text = str(described)
            assert INSTALL_CODE not in text
            assert LINK_KEY not in text
            code, wifi = await call("GET", f"/managed-things/{second['Id']}")
            assert "hunter22" not in str(wifi)
            code, err = await call("GET", "/managed-things/no-such-thing")
            assert (code, err["error"]["code"]) == (404, "ResourceNotFoundException")
            code, err = await call("GET", "/managed-things/bad%20id")
            assert (code, err["error"]["code"]) == (400, "ValidationException")
            assert await call("DELETE", f"/managed-things/{first['Id']}") == (
                200,
                {"Id": first["Id"], "Deleted": True},
            )
            code, err = await call("DELETE", f"/managed-things/{first['Id']}")
            assert code == 404
            code, err = await call("PUT", "/managed-things")
            assert (code, err["error"]["code"]) == (405, "MethodNotAllowedException")

    run(scenario)


def test_created_thing_is_commissioned_to_activated(tmp_path: Path) -> None:
    ieee = "01:02:03:04:05:06:07:08"

    async def scenario() -> None:
        app = make_app()
        agent_config = config(tmp_path, zigbee_radio="znp")
        async with serving(tmp_path, agent_config, stub_radios(app)) as (call, service):
            status = service.status()
            assert status["enabled"] is True
            assert status["backends"] == {"zigbee": "UP"}
            assert status["scanner"] is None
            _, created = await call("POST", "/managed-things", body())
            await asyncio.wait_for(app.permit_started.wait(), 5)
            node, key, _ = app.permits[0]
            assert str(node) == ieee
            assert bytes(key).hex().upper() == LINK_KEY
            target = f"/managed-things/{created['Id']}"
            assert (await call("GET", target))[1]["ProvisioningStatus"] == "PRE_ASSOCIATED"
            import zigpy.types as t

            app.handle_join(nwk(0x2345), t.EUI64.convert(ieee), nwk(0))
            app.device_initialized(app.get_device(ieee=t.EUI64.convert(ieee)))
            for _ in range(100):
                if (await call("GET", target))[1]["ProvisioningStatus"] == "ACTIVATED":
                    break
                await asyncio.sleep(0.02)
            assert (await call("GET", target))[1]["ProvisioningStatus"] == "ACTIVATED"
            assert service.status()["things"] == {"ACTIVATED": 1}

    run(scenario)


def test_stopping_fails_unfinished_things(tmp_path: Path) -> None:
    async def scenario() -> str:
        app = make_app()
        agent_config = config(tmp_path, zigbee_radio="znp")
        async with serving(tmp_path, agent_config, stub_radios(app)) as (call, _service):
            _, created = await call("POST", "/managed-things", body())
            await asyncio.wait_for(app.permit_started.wait(), 5)
        thing_id: str = created["Id"]
        return thing_id

    thing_id = asyncio.run(scenario())

    async def after() -> None:
        async with serving(tmp_path, config(tmp_path)) as (call, service):
            _, described = await call("GET", f"/managed-things/{thing_id}")
            assert described["ProvisioningStatus"] == "FAILED"
            assert described["FailureReason"] == "AGENT_STOPPED"
            assert service.status()["enabled"] is False

    run(after)


def test_outcomes_on_the_status_led(tmp_path: Path) -> None:
    led_dir = tmp_path / "leds" / "ACT"
    led_dir.mkdir(parents=True)
    for name, value in (
        ("trigger", "none [mmc0] timer"),
        ("brightness", "0"),
        ("max_brightness", "1"),
        ("delay_on", "0"),
        ("delay_off", "0"),
    ):
        (led_dir / name).write_text(value + "\n")

    def led_state() -> tuple[str, str, str]:
        trigger, delay_on, brightness = (
            (led_dir / a).read_text().strip() for a in ("trigger", "delay_on", "brightness")
        )
        return trigger, delay_on, brightness

    async def until(thing: str, status: str, call: Client) -> None:
        for _ in range(200):
            if (await call("GET", f"/managed-things/{thing}"))[1]["ProvisioningStatus"] == status:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{thing} never became {status}")

    async def scenario() -> list[tuple[str, str, str]]:
        import zigpy.types as t

        seen = []
        app = make_app()
        async with SysfsLed("ACT", root=tmp_path / "leds") as led:
            agent_config = config(tmp_path, zigbee_radio="znp")
            async with serving(tmp_path, agent_config, stub_radios(app), lambda: led) as (
                call,
                _service,
            ):
                _, zwave = await call(
                    "POST",
                    "/managed-things",
                    body(
                        AuthenticationMaterial="zws2dsk:51525-35455-41424-34445-31323-33435-21222-32425",
                        AuthenticationMaterialType="ZWAVE_QR_BAR_CODE",
                    ),
                )
                await until(zwave["Id"], "FAILED", call)  # no Z-Wave radio
                await asyncio.sleep(0.05)  # the LED is set from the loop
                seen.append(led_state())
                _, zigbee = await call("POST", "/managed-things", body())
                await asyncio.wait_for(app.permit_started.wait(), 5)
                ieee = t.EUI64.convert("01:02:03:04:05:06:07:08")
                app.handle_join(nwk(0x2345), ieee, nwk(0))
                app.device_initialized(app.get_device(ieee=ieee))
                await until(zigbee["Id"], "ACTIVATED", call)
                await asyncio.sleep(0.05)
                seen.append(led_state())
        return seen

    failed, activated = asyncio.run(scenario())
    assert failed[:2] == ("timer", "100")  # fast blink
    assert activated[0] == "none"
    assert activated[2] == "1"  # steady on


def test_unusable_database_leaves_the_api_answering_503(tmp_path: Path) -> None:
    (tmp_path / "things.db").mkdir()  # a directory where the database should be

    async def scenario() -> None:
        async with serving(tmp_path, config(tmp_path)) as (call, service):
            code, err = await call("POST", "/managed-things", body())
            assert code == 503
            assert err["error"]["code"] == "ServiceUnavailableException"
            assert err["error"]["reason"] == "COMMISSIONING_UNAVAILABLE"
            code, _ = await call("GET", "/managed-things")
            assert code == 503
            status = service.status()
            assert status["enabled"] is False
            assert status["error"]["code"]

    run(scenario)
