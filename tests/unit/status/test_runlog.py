"""provisioning.log: a run's lines, and never a secret in them."""

from __future__ import annotations

import logging

import pytest

from agent.status.runlog import REDACTED, RunLog, find_secrets, redact

PEM = (
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIBf3XLv9q0YwZg7b6H2k1r8s3kzVf0JcXh6T2aY1n5sOoAoGCCqGSM49\n"
    "AwEHoUQDQgAE9y5e2Hqk0P3tTn6h2U8c0v1b6JrS7yW1b0K4xQ==\n"
    "-----END EC PRIVATE KEY-----"
)
SECRETS = [
    "MHcCAQEEIBf3XLv9q0YwZg7b6H2k1r8s3kzVf0JcXh6T2aY1n5sOoAoGCCqGSM49",
    "hunter2-correct-horse",
    "s3cr3t-psk-value",
    "24859-64107-46202-12845-60130-32106-31205-54321",
    "0123456789abcdef0123456789abcdef01234567",
]


def _fail_with(message: str) -> None:
    raise ValueError(message)


def test_a_runs_lines_are_kept_and_secrets_never(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("agent.provisioning.test")
    with RunLog.capture() as run_log:
        log.info("archive %s copied off the stick (%d bytes)", "certificates-omni_dev-1.zip", 3000)
        log.info("claim key:\n%s", PEM)
        log.warning("joining with password=%s and psk: %s", SECRETS[1], SECRETS[2])
        log.info('payload {"token": "%s", "dsk": "%s"}', "abcDEF123", SECRETS[3])
        log.info("key material %s", SECRETS[4])
        try:
            _fail_with(f"bad key {SECRETS[0]}")
        except ValueError:
            log.exception("step failed")
        log.debug("debug lines are not kept")
        logging.getLogger("elsewhere").info("other loggers are not kept")
    text = run_log.text()
    assert "archive certificates-omni_dev-1.zip copied off the stick (3000 bytes)" in text
    assert "ValueError" in text
    assert REDACTED in text
    for secret in SECRETS:
        assert secret not in text
    assert "BEGIN" not in text
    assert "abcDEF123" not in text
    assert "debug lines" not in text
    assert "other loggers" not in text
    assert find_secrets(text) == []
    assert len(run_log.lines) == 6
    assert all(line.split(" ", 1)[0].endswith("Z") for line in run_log.lines)


def test_capture_restores_the_logger_level() -> None:
    target = logging.getLogger("agent")
    old = target.level
    target.setLevel(logging.ERROR)
    try:
        with RunLog.capture() as run_log:
            logging.getLogger("agent.x").info("kept although the logger was at ERROR")
        assert target.level == logging.ERROR
        assert target.handlers == []
        assert "kept although" in run_log.text()
    finally:
        target.setLevel(old)


def test_limits_drop_lines_and_say_so() -> None:
    with RunLog.capture(max_lines=3) as run_log:
        for i in range(5):
            logging.getLogger("agent").info("line %d", i)
    assert len(run_log.lines) == 3
    assert run_log.text().endswith("[2 more lines not kept]\n")


def test_redact_leaves_ordinary_text_alone() -> None:
    plain = (
        "stick usb:0781:5581:4C530001230915116183:1 at /dev/sdb1: partition on USB at 5000 Mb/s;"
        " certificates-omni_a-very-long-appliance-name-for-the-warehouse.zip; token expired"
    )
    assert redact(plain) == plain
    assert find_secrets(plain) == []


def test_find_secrets_flags_what_redact_hides() -> None:
    raw = f"{PEM} password={SECRETS[1]} {SECRETS[4]}"
    assert set(find_secrets(raw)) >= {"PEM block", "value of 'password'", "hex key material"}
    assert find_secrets(redact(raw)) == []
