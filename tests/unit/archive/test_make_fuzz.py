"""``archive make`` over generated inputs: exit 0 or the error JSON, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main

SEED_CODES = {"ValidationException", "InvalidRequestException", "ConflictException"}
NAME_CHARS = st.sampled_from("abcXYZ019-_ .\n\r\u2028\u0661\u00e9/\\:\x00\udc80")
#: Any code point, lone surrogates included (undecodable argv bytes arrive as those).
ANY_CHAR = st.characters(exclude_categories=())
names = st.one_of(
    st.text(NAME_CHARS, max_size=300),
    st.integers(1, 300).map(lambda n: "n" * n),
    st.text(ANY_CHAR, max_size=40),
)
one_line = st.text(ANY_CHAR, max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
networking = st.one_of(
    st.none(),
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "Ethernet0": st.fixed_dictionaries(
                {"ConnectionType": st.sampled_from(["DHCP", "STATIC_IP", "x"])},
                optional={
                    "StaticIpConnectionInfo": st.dictionaries(
                        st.sampled_from(["IpAddress", "Mask", "DefaultGateway", "Dns"]),
                        st.text(ANY_CHAR, max_size=20)
                        | st.lists(st.text(ANY_CHAR, max_size=20), max_size=3),
                    )
                },
            ),
            "Ntp": st.fixed_dictionaries(
                {"NtpServers": st.lists(st.text(max_size=30), max_size=7)}
            ),
        },
    ),
)


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-ca") / "ca"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["ca", "init", "--out", str(path)]) == 0
    return path


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=names,
    description=st.none() | one_line,
    tags=st.lists(st.text(ANY_CHAR, max_size=140), max_size=3),
    endpoint=st.none()
    | st.text(max_size=30)
    | st.sampled_from(["h:1", "h:0", "h:65536", "a.b:8883"]),
    template=st.none() | st.text(max_size=40),
    lifetime=st.none() | st.integers(-5, 400).map(str) | st.text(max_size=5),
    parameters=st.lists(st.text(ANY_CHAR, max_size=30), max_size=3),
    network=networking,
    raw_network=st.none() | st.binary(max_size=40),
)
def test_archive_make_answers_with_exit_0_or_the_error_json(
    factory: Path,
    name: str,
    description: str | None,
    tags: list[str],
    endpoint: str | None,
    template: str | None,
    lifetime: str | None,
    parameters: list[str],
    network: Any,
    raw_network: bytes | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        argv = ["archive", "make", "--ca", str(factory), "--out", str(out), "--name", name]
        if description is not None:
            argv += ["--description", description]
        for tag in tags:
            argv += ["--tag", tag]
        for parameter in parameters:
            argv += ["--parameter", parameter]
        if endpoint is not None:
            argv += ["--endpoint", endpoint]
        if template is not None:
            argv += ["--template", template]
        if lifetime is not None:
            argv += ["--lifetime", lifetime]
        if network is not None or raw_network is not None:
            net = Path(tmp) / "net.json"
            net.write_bytes(
                raw_network if raw_network is not None else json.dumps(network).encode()
            )
            argv += ["--networking", str(net)]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: a usage error, exit 2, no traceback
                assert exc.code == 2
                assert "Traceback" not in stderr.getvalue()
                return
        assert "Traceback" not in stderr.getvalue()
        body = json.loads(stdout.getvalue())
        if code == 0:
            assert body["Status"] == "AWAITING_PROVISIONING"
            assert len(list(out.iterdir())) == 1
            return
        assert code in {1, 2}, body
        error = body["error"]
        assert error["code"] in SEED_CODES, error
        assert error["code"] != "InternalServerException"
        assert error["reason"]
        assert error["message"]
        assert not out.exists() or not list(out.iterdir())  # nothing half-written
