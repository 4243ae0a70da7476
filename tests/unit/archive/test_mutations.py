"""Property tests: mutated archives never crash the validator and are never accepted changed."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.archive.clock import FixedClock
from agent.archive.manifest import ENTRY_NAMES
from agent.archive.verify import Policy, verify_archive
from agent.errors import ArchiveError
from agent.registry.ca import CertificateAuthority
from tests.helpers.forge import NOW, Forge, raw_zip

CLOCK = FixedClock(NOW + dt.timedelta(seconds=30))
SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass(frozen=True)
class Original:
    raw: bytes
    parts: list[tuple[str, bytes]]
    entries: dict[str, bytes]
    dir: Path
    policy: Policy


@pytest.fixture(scope="module")
def original(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Original:
    parts = Forge(ca).parts()
    raw = raw_zip(parts)
    return Original(
        raw,
        parts,
        dict(parts),
        tmp_path_factory.mktemp("mut"),
        Policy(trust_anchors=(ca.root_cert,)),
    )


def outcome(original: Original, data: bytes) -> None:
    """Validate ``data``: a clean rejection, or an acceptance of unchanged content."""
    path = original.dir / "certificates-omni_dev-1.zip"
    path.write_bytes(data)
    try:
        verified = verify_archive(path, original.policy, CLOCK)
    except ArchiveError as exc:
        assert exc.code == "ValidationException"
        assert exc.reason.isupper()
        assert "PRIVATE KEY" not in exc.message
        return
    assert verified.contents.entries == original.entries


def test_the_original_is_accepted(original: Original) -> None:
    outcome(original, original.raw)
    assert (
        verify_archive(
            original.dir / "certificates-omni_dev-1.zip", original.policy, CLOCK
        ).time_check
        == "passed"
    )


@SETTINGS
@given(data=st.data())
def test_bit_flips(original: Original, data: st.DataObject) -> None:
    bits = data.draw(
        st.lists(st.integers(0, len(original.raw) * 8 - 1), min_size=1, max_size=6, unique=True)
    )
    mutated = bytearray(original.raw)
    for bit in bits:
        mutated[bit // 8] ^= 1 << (bit % 8)
    outcome(original, bytes(mutated))


@SETTINGS
@given(data=st.data())
def test_truncation_and_garbage_tail(original: Original, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(original.raw) - 1))
    tail = data.draw(st.binary(max_size=64))
    outcome(original, original.raw[:cut] + tail)


@SETTINGS
@given(data=st.data())
def test_renamed_entries(original: Original, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(original.parts) - 1))
    new_name = data.draw(
        st.sampled_from(ENTRY_NAMES)
        | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
    )
    parts = list(original.parts)
    old_name, payload = parts[index]
    parts[index] = (new_name, payload)
    outcome(original, raw_zip(parts))
    if new_name != old_name:
        with pytest.raises(ArchiveError):
            verify_archive(original.dir / "certificates-omni_dev-1.zip", original.policy, CLOCK)


@SETTINGS
@given(order=st.permutations(range(6)))
def test_reordered_entries_are_the_same_archive(original: Original, order: list[int]) -> None:
    parts = [original.parts[i] for i in order]
    outcome(original, raw_zip(parts))
    verified = verify_archive(original.dir / "certificates-omni_dev-1.zip", original.policy, CLOCK)
    assert verified.contents.entries == original.entries


@SETTINGS
@given(data=st.data())
def test_entry_content_changes_are_refused(original: Original, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(original.parts) - 1))
    name, payload = original.parts[index]
    replacement = data.draw(st.binary(max_size=2048).filter(lambda b: b != payload))
    parts = list(original.parts)
    parts[index] = (name, replacement)
    outcome(original, raw_zip(parts))
    with pytest.raises(ArchiveError):
        verify_archive(original.dir / "certificates-omni_dev-1.zip", original.policy, CLOCK)


def test_store_and_deflate_are_equivalent(original: Original) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, payload in original.parts:
            archive.writestr(name, payload)
    outcome(original, buffer.getvalue())
    verified = verify_archive(original.dir / "certificates-omni_dev-1.zip", original.policy, CLOCK)
    assert verified.contents.entries == original.entries
