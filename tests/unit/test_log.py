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

from unibus.core import naming
from unibus.core.log import REDACTED, Redactor, configure_logging, get_logger
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.xkeys import CurveKeyPair

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


def test_debug_logging_shows_data_keys_but_never_secret_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=True, debug=True)
    values = {key: f"value-{key}" for key in SENSITIVE}
    get_logger("t").info("event", **values)
    record = _one(capsys)
    for key in ("payload", "subject", "sig", "signature", "data", "body", "sealed"):
        assert record[key] == values[key]
    for key in ("seed", "secret", "password", "pass", "jwt", "token"):
        assert record[key] == REDACTED


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


# -- free text: seeds, subjects and room ids wherever they appear (SPEC §3) -----------------------
ROOM = "k3q9z0m1x7w2v8u4t5s6"
ROOM_SUBJECT = naming.room_subject(ROOM)
USER = KeyPair.generate(Prefix.USER)
SEEDS = {
    "user": USER.seed,
    "account": KeyPair.generate(Prefix.ACCOUNT).seed,
    "server": KeyPair.generate(Prefix.SERVER).seed,
    "curve": CurveKeyPair.generate().seed,
}
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJ4IiwibmF0cyI6e319.c2lnbmF0dXJl"


def _redact(*, names: bool = True, **fields: Any) -> dict[str, Any]:
    return dict(Redactor(names=names)(None, "info", fields))


def _fail(exc: Exception) -> None:
    """Raise ``exc`` from a frame of its own, so a traceback is there to format."""
    raise exc


@pytest.mark.parametrize("names", [True, False], ids=["default", "debug"])
@pytest.mark.parametrize("kind", list(SEEDS))
def test_a_seed_is_redacted_wherever_it_appears_at_every_level(kind: str, names: bool) -> None:
    seed = SEEDS[kind]
    out = _redact(
        names=names,
        event=f"loaded {seed}",
        error=f"bad identity file: {seed!r}",
        nested={"files": [(f"seed={seed}",)]},
        glued=f"{USER.public_key}{seed}AB",
    )
    assert seed not in repr(out)
    assert out["event"] == "loaded [redacted seed]"
    assert out["error"] == "bad identity file: '[redacted seed]'"
    assert out["nested"] == {"files": [("seed=[redacted seed]",)]}


def test_an_encoded_private_key_and_a_jwt_are_redacted_at_every_level() -> None:
    private = "P" + "A" * 105
    for names in (True, False):
        out = _redact(names=names, event=f"key {private}", note=f"issued {JWT} to x")
        assert out == {"event": "key [redacted seed]", "note": "issued [redacted jwt] to x"}


def test_public_keys_are_kept_they_name_who_and_are_no_secret() -> None:
    keys = [USER.public_key, KeyPair.generate(Prefix.ACCOUNT).public_key]
    keys.append(CurveKeyPair.generate().public_key)
    text = "users " + ", ".join(keys) + " revoked"
    assert _redact(event=text, user=USER.public_key) == {"event": text, "user": USER.public_key}


def test_a_subject_in_an_exception_message_is_redacted_and_its_namespace_kept() -> None:
    try:
        _fail(PermissionError(f'nats: permissions violation for publish to "{ROOM_SUBJECT}"'))
    except PermissionError as exc:
        out = _redact(event="publish failed", error=str(exc))
    assert out["error"] == 'nats: permissions violation for publish to "unibus.room.[redacted]"'


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        (ROOM_SUBJECT, "unibus.room.[redacted]"),
        (naming.room_wildcard(ROOM), "unibus.room.[redacted]"),
        (
            naming.consumer_create_subject(ROOM, naming.history_consumer(ROOM, USER.public_key, 0)),
            "$JS.[redacted]",
        ),
        (f"$JS.ACK.{naming.MESSAGES_STREAM}.c.1.5.5.1700000000000000000.0", "$JS.[redacted]"),
        (f"$KV.{naming.ROOMS_BUCKET}.{ROOM}", "$KV.[redacted]"),
        (naming.CALLOUT_SUBJECT, "$SYS.[redacted]"),
        (naming.inbox_prefix(USER.public_key), "_INBOX.[redacted]"),
        (f"{naming.inbox_prefix(USER.public_key)}.x8Yq2.3", "_INBOX.[redacted]"),
        ("_INBOX.x8Yq2AbC.3", "_INBOX.[redacted]"),
        ("_R_.aBc12.XyZ", "_R_.[redacted]"),
    ],
)
def test_subjects_of_rooms_inboxes_and_the_server_are_redacted(subject: str, shown: str) -> None:
    out = _redact(event=f"timeout on {subject}, giving up", error=f"{subject}: no responders")
    assert out == {
        "event": f"timeout on {shown}, giving up",
        "error": f"{shown}: no responders",
    }


def test_a_room_id_outside_a_subject_is_redacted() -> None:
    consumer = naming.history_consumer(ROOM, USER.public_key, 1)
    out = _redact(event=f"GET /rooms/{ROOM}/members", consumer=consumer, room=ROOM)
    assert out["event"] == "GET /rooms/[redacted room]/members"
    assert out["room"] == "[redacted room]"
    assert ROOM not in out["consumer"]


def test_debug_shows_subjects_and_room_ids() -> None:
    text = f"timeout on {ROOM_SUBJECT} for room {ROOM} via {naming.CALLOUT_SUBJECT}"
    assert _redact(names=False, event=text) == {"event": text}


def test_nested_values_are_redacted_in_a_copy_keys_of_nested_mappings_included() -> None:
    rooms = {ROOM: {"seed": "anything", "n": 2}, "list": [ROOM, (ROOM_SUBJECT, 7)]}
    out = _redact(rooms=rooms)
    assert out["rooms"] == {
        "[redacted room]": {"seed": REDACTED, "n": 2},
        "list": ["[redacted room]", ("unibus.room.[redacted]", 7)],
    }
    assert rooms == {ROOM: {"seed": "anything", "n": 2}, "list": [ROOM, (ROOM_SUBJECT, 7)]}


def test_values_that_are_not_text_are_passed_through_as_they_are() -> None:
    marker = object()
    fields: dict[str, Any] = {"n": 3, "ratio": 0.5, "ok": True, "none": None, "marker": marker}
    out = _redact(**fields)
    assert out == fields
    assert out["marker"] is marker


def test_an_exception_given_as_a_value_is_redacted_not_printed_raw() -> None:
    out = _redact(error=ValueError(f"no responders on {ROOM_SUBJECT} for {USER.seed}"))
    shown = "ValueError('no responders on unibus.room.[redacted] for [redacted seed]')"
    assert out["error"] == shown


def test_field_names_and_ordinary_text_are_kept() -> None:
    fields: dict[str, Any] = {
        "event": "authorization changed",
        "subject_count": 2,
        "room_count": "1",
        "bucket": naming.ROOMS_BUCKET,
        "stream": naming.MESSAGES_STREAM,
        "digest": "9f" * 32,
        "nuid": "aB3dEfGhIjKlMnOpQrStUv",
        "timestamp": "2025-01-02T03:04:05.678901Z",
        "what": "open the store",
        "word": "internationalisation",  # a room id's shape (20 of [a-z0-9]), word or not
    }
    out = _redact(**fields)
    assert out == {**fields, "word": "[redacted room]"}


# -- through configure_logging: tracebacks and the standard library -------------------------------
def test_a_logged_traceback_is_text_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    try:
        _fail(RuntimeError(f"refused {ROOM_SUBJECT} for {USER.seed}"))
    except RuntimeError:
        get_logger("t").exception("failed")
    err = capsys.readouterr().err
    record = json.loads(err)
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: refused unibus.room.[redacted] for [redacted seed]" in record["exception"]
    assert ROOM not in err
    assert USER.seed not in err


def test_a_console_traceback_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=False)
    try:
        _fail(RuntimeError(f"refused {ROOM_SUBJECT} for {USER.seed}"))
    except RuntimeError:
        get_logger("t").error("failed", exc_info=True)
    err = capsys.readouterr().err
    assert "RuntimeError: refused unibus.room.[redacted] for [redacted seed]" in err
    assert ROOM not in err
    assert USER.seed not in err


def test_debug_logging_shows_subjects_but_still_redacts_seeds_in_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=True, debug=True)
    get_logger("t").debug("loaded", note=f"{USER.seed} for {ROOM_SUBJECT}")
    assert _one(capsys)["note"] == f"[redacted seed] for {ROOM_SUBJECT}"


def test_standard_library_records_are_json_lines_and_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger().handlers.clear()  # as in a service process: nobody else owns them
    configure_logging(json=True)
    configure_logging(json=True)  # configuring again adds no second handler
    nats_log = logging.getLogger("nats.aio.client")
    nats_log.info("published on %s", ROOM_SUBJECT)
    try:
        _fail(PermissionError(f'permissions violation for subscription to "{ROOM_SUBJECT}"'))
    except PermissionError:
        nats_log.error("nats: encountered error on %s", ROOM_SUBJECT, exc_info=True)
    err = capsys.readouterr().err
    record = json.loads(err)
    assert record["event"] == "nats: encountered error on unibus.room.[redacted]"
    assert record["logger"] == "nats.aio.client"
    assert record["level"] == "error"
    assert 'subscription to "unibus.room.[redacted]"' in record["exception"]
    assert ROOM not in err


def test_a_program_that_owns_standard_library_logging_keeps_its_handlers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    theirs = logging.NullHandler()
    root.addHandler(theirs)
    configure_logging(json=True)
    assert root.handlers == [theirs]
    logging.getLogger("nats").warning("theirs to print")
    assert capsys.readouterr().err == ""
