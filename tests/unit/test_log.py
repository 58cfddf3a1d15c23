"""Logging: JSON lines, and no subjects, payloads or secrets at the default level (SPEC §3)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from unibus.core.log import REDACTED, configure_logging, get_logger

SENSITIVE = [
    "seed",
    "secret",
    "password",
    "pass",
    "payload",
    "subject",
    "sig",
    "signature",
    "jwt",
    "token",
    "data",
    "body",
    "sealed",
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging is process-global: undo it so other tests log as before."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    asyncio_level = logging.getLogger("asyncio").level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(asyncio_level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    err = capsys.readouterr().err
    assert err.endswith("\n")
    records = []
    for line in err.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict)
        records.append(record)
    return records


def _one(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    records = _lines(capsys)
    assert len(records) == 1
    return records[0]


@pytest.mark.parametrize("key", SENSITIVE)
def test_json_logging_redacts_sensitive_key(capsys: pytest.CaptureFixture[str], key: str) -> None:
    configure_logging(json=True)
    get_logger("t").info("event", **{key: "unibus.room.r0abc.msg SUSECRETSEED"})
    record = _one(capsys)
    assert record[key] == REDACTED


def test_json_logging_never_prints_the_sensitive_value(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    get_logger("t").warning("event", **{key: f"leak-{key}" for key in SENSITIVE})
    err = capsys.readouterr().err
    assert "leak-" not in err


def test_json_logging_keeps_other_keys(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    get_logger("t").info("decision", reason="revoked", user="UABC", attempt=3, ok=True)
    record = _one(capsys)
    assert record["event"] == "decision"
    assert record["reason"] == "revoked"
    assert record["user"] == "UABC"
    assert record["attempt"] == 3
    assert record["ok"] is True
    assert record["level"] == "info"
    assert "timestamp" in record


def test_json_logging_redacts_sensitive_keys_inside_nested_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=True)
    request = {"user": "UABC", "jwt": "eyJleak", "parts": [{"seed": "SUleak"}, "plain"]}
    get_logger("t").info("request", request=request, pairs=({"token": "leak"},))
    record = _one(capsys)
    assert record["request"] == {
        "user": "UABC",
        "jwt": REDACTED,
        "parts": [{"seed": REDACTED}, "plain"],
    }
    assert record["pairs"] == [{"token": REDACTED}]
    # Redaction copies: the caller's data is left untouched.
    assert request["jwt"] == "eyJleak"
    assert request["parts"] == [{"seed": "SUleak"}, "plain"]


def test_json_logging_redacts_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    get_logger("t").bind(subject="unibus.room.x.msg", room="r").info("bound")
    record = _one(capsys)
    assert record["subject"] == REDACTED
    assert record["room"] == "r"


def test_debug_logging_redacts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True, debug=True)
    values = {key: f"value-{key}" for key in SENSITIVE}
    get_logger("t").info("event", **values)
    record = _one(capsys)
    for key, value in values.items():
        assert record[key] == value


def test_debug_logging_lowers_the_level_to_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True, debug=True)
    get_logger("t").debug("detail")
    assert _one(capsys)["level"] == "debug"


def test_default_level_is_info_and_drops_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    log = get_logger("t")
    log.debug("hidden")
    log.info("shown")
    assert [r["event"] for r in _lines(capsys)] == ["shown"]


def test_level_setting_filters_lower_levels(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True, level="warning")
    log = get_logger("t")
    log.info("hidden")
    log.warning("shown")
    log.error("also shown")
    assert [r["event"] for r in _lines(capsys)] == ["shown", "also shown"]


def test_unknown_level_name_falls_back_to_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True, level="chatty")
    log = get_logger("t")
    log.debug("hidden")
    log.info("shown")
    assert [r["event"] for r in _lines(capsys)] == ["shown"]


def test_json_output_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    log = get_logger("t")
    log.info("first", note="multi\nline")
    log.info("second")
    log.warning("third", n=3)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["event"] for line in lines] == ["first", "second", "third"]
    assert json.loads(lines[0])["note"] == "multi\nline"


def test_logs_go_to_stderr_not_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    get_logger("t").info("event")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err


def test_console_logging_also_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=False)
    get_logger("t").info("event", seed="SUconsoleleak", handle="ada")
    err = capsys.readouterr().err
    assert "SUconsoleleak" not in err
    assert REDACTED in err
    assert "ada" in err


def test_configure_logging_quiets_asyncio() -> None:
    configure_logging(json=True)
    assert logging.getLogger("asyncio").level == logging.ERROR


def test_logging_follows_a_replaced_stderr_instead_of_writing_to_a_closed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program (or test runner) that swaps and closes stderr must not break logging."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(json=True)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)

    get_logger("unibus.test").info("still here")

    assert "still here" in second.getvalue()
