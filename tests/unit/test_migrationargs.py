"""The migration's options: one definition shared by ``unibus migrate-to-kv`` and
``python -m unibus.migrate``, so both accept, check and document the same (no sockets)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from unibus.cli import migrate as cli_migrate
from unibus.cli.main import main as cli_main
from unibus.core.connect import NatsTarget
from unibus.core.errors import ConfigError
from unibus.migrate.cli import DEFAULT_TIMEOUT, MigrationCommand
from unibus.migrate.cli import build_parser as service_parser
from unibus.migrate.cli import main as service_main

SHARED = ("--db", "--replicas", "--no-backup", "--force", "--timeout", "--json")
URLS = ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224")


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unibus")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    cli_migrate.register(verbs)
    verb = verbs.choices["migrate-to-kv"]
    assert isinstance(verb, argparse.ArgumentParser)
    return verb


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: action for action in parser._actions for s in action.option_strings}


def _service_argv(*extra: str) -> list[str]:
    return ["--nats-url", URLS[0], "--internal-id-file", "id.nk", *extra]


def _cli_argv(*extra: str) -> list[str]:
    return ["--nats-url", URLS[0], "--identity", "id.nk", *extra]


def test_both_entrypoints_define_the_shared_options_identically() -> None:
    cli, service = _options(_cli_parser()), _options(service_parser())
    for option in SHARED:
        a, b = cli[option], service[option]
        assert (a.dest, a.type, a.nargs, a.required, a.metavar) == (
            b.dest,
            b.type,
            b.nargs,
            b.required,
            b.metavar,
        ), option
        if option != "--replicas":  # its default differs on purpose (see the next test)
            assert (a.default, a.help) == (b.default, b.help), option


def test_the_same_shared_arguments_make_the_same_command() -> None:
    shared = ["--db", "m.db", "--replicas", "2", "--no-backup", "--force", "--timeout", "9"]
    target = NatsTarget(urls=URLS)
    from_cli = MigrationCommand.from_args(_cli_parser().parse_args(_cli_argv(*shared)), target)
    from_service = MigrationCommand.from_args(
        service_parser().parse_args(_service_argv(*shared, "--json")), target
    )

    assert from_cli.options == from_service.options
    assert from_cli.options.db == Path("m.db")
    assert (from_cli.options.replicas, from_cli.options.backup, from_cli.options.force) == (
        2,
        False,
        True,
    )
    assert from_cli.timeout == from_service.timeout == 9.0
    assert (from_cli.as_json, from_service.as_json) == (False, True)


@pytest.mark.parametrize(("urls", "replicas"), [(URLS[:1], 1), (URLS[:2], 2), (URLS * 2, 3)])
def test_replicas_default_to_the_nodes_given_for_the_cli_and_to_three_for_the_job(
    urls: tuple[str, ...], replicas: int
) -> None:
    target = NatsTarget(urls=urls)
    cli = MigrationCommand.from_args(_cli_parser().parse_args(_cli_argv("--db", "m.db")), target)
    job = MigrationCommand.from_args(
        service_parser().parse_args(_service_argv("--db", "m.db")), target
    )

    assert cli.options.replicas == replicas
    assert job.options.replicas == 3
    assert cli.timeout == job.timeout == DEFAULT_TIMEOUT
    assert (cli.options.backup, cli.options.force) == (job.options.backup, job.options.force)
    assert (cli.options.backup, cli.options.force) == (True, False)


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "-5"], "--timeout"),
        (["--replicas", "9"], "replicas"),
    ],
)
def test_unusable_values_are_refused_by_both_before_anything_runs(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "absent.db"  # never opened: the options are refused first
    with pytest.raises(ConfigError, match=complaint):
        MigrationCommand.from_args(
            service_parser().parse_args(_service_argv("--db", str(db), *flags)),
            NatsTarget(urls=URLS),
        )

    assert service_main(_service_argv("--db", str(db), *flags)) == 1
    assert cli_main(["migrate-to-kv", *_cli_argv("--db", str(db), *flags)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("unibus-migrate: error: ")
    assert err[1].startswith("unibus migrate-to-kv: error: ")
    assert all(complaint in line for line in err)


def test_both_helps_list_every_option_with_its_real_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _cli_parser().parse_args(["--help"])
    cli = " ".join(capsys.readouterr().out.split())  # unwrapped
    with pytest.raises(SystemExit):
        service_parser().parse_args(["--help"])
    job = " ".join(capsys.readouterr().out.split())

    for option in SHARED:
        assert option in cli
        assert option in job
    for option in ("--dir", "--nats-url", "--ca", "--identity", "--internal-id-file"):
        assert option in cli
    for option in ("--nats-url", "--ca", "--internal-id-file"):
        assert option in job
    assert f"(default {DEFAULT_TIMEOUT:g})" in cli
    assert f"(default {DEFAULT_TIMEOUT:g})" in job
    assert "(default one per node URL, at most 3)" in cli
    assert "(default 3)" in job
