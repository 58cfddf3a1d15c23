"""The ``unibus`` command's edge: whatever a verb raises ends as one line on stderr that
says what to do, with status 1, never a traceback."""

from __future__ import annotations

import argparse

import nats.errors
import pytest

from unibus.cli import main as cli_main
from unibus.core.errors import StoreUnavailableError


def _parser_whose_verb_raises(error: BaseException) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unibus")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def handler(_args: argparse.Namespace) -> int:
        raise error

    verbs.add_parser("restore").set_defaults(handler=handler)
    return parser


@pytest.mark.parametrize(
    "error",
    [nats.errors.TimeoutError(), nats.errors.NoRespondersError(), TimeoutError()],
    ids=["nats-timeout", "no-responders", "timeout"],
)
def test_a_bus_that_does_not_answer_ends_a_verb_with_one_line_saying_what_to_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: BaseException
) -> None:
    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_whose_verb_raises(error))
    assert cli_main.main(["restore"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("unibus restore: error: the bus did not answer")
    assert "unibus status" in err
    assert "Traceback" not in err


def test_a_unibus_error_ends_a_verb_with_its_own_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = StoreUnavailableError("the store is unreachable: start the cluster first")
    monkeypatch.setattr(cli_main, "build_parser", lambda: _parser_whose_verb_raises(error))
    assert cli_main.main(["restore"]) == 1
    assert capsys.readouterr().err == (
        "unibus restore: error: the store is unreachable: start the cluster first\n"
    )
