"""How the chaos check judges what it saw, reports it, and plans and undoes its damage.

No sockets: the invariants are judged from the figures the probes would collect, the
drivers are asked for the commands they would run (and the compose driver drives a
stand-in for `docker compose`), and the request protocol of `unibus up` is exercised on
files with this process standing in for `unibus up`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import msgspec
import pytest

from unibus.stack.chaos import (
    FAILOVER_GRACE,
    PHASES,
    ChaosReport,
    Invariant,
    Outcome,
    PhaseReport,
    Published,
    WriteAfter,
    judge_acknowledged,
    judge_admitted,
    judge_closed_api,
    judge_cut,
    judge_no_ack_without_quorum,
    judge_publishing,
    judge_recovery,
    judge_refused,
    judge_survivor_apis,
    judge_write,
    plan,
)
from unibus.stack.drivers import ComposeDriver, ComposeNode, LocalDriver, compose_nodes
from unibus.stack.layout import StackLayout
from unibus.stack.supervise import (
    Request,
    Result,
    cancel_requested,
    follow,
    read_request,
    write_result,
)

KILL = 100.0
"""The monotonic time of the damage in the series below."""


# -- invariants -----------------------------------------------------------------------------------
def test_every_acknowledged_message_read_back_holds() -> None:
    verdict = judge_acknowledged(["a", "b"], ["a", "b", "unacknowledged-but-stored"])
    assert verdict.held
    assert verdict.figure == "2 acknowledged, 0 of them missing when read back"


def test_an_acknowledged_message_missing_when_read_back_fails_and_is_named() -> None:
    verdict = judge_acknowledged(["a", "b", "c"], ["a"])
    assert not verdict.held
    assert "2 of them missing" in verdict.figure
    assert "b, c" in verdict.figure


def test_nothing_acknowledged_is_not_reported_as_nothing_lost() -> None:
    verdict = judge_acknowledged([], [])
    assert not verdict.held
    assert "nothing could be checked" in verdict.figure


def test_publishing_holds_only_when_every_publish_was_acknowledged() -> None:
    ok = [Published("a", True, 0.1), Published("b", True, 5.2)]
    assert judge_publishing("publishing keeps working", ok, via="n2").held
    assert "longest took 5.2s" in judge_publishing("p", ok, via="n2").figure
    one_lost = [*ok, Published("c", False, 30.0)]
    verdict = judge_publishing("publishing keeps working", one_lost, via="n2")
    assert not verdict.held
    assert verdict.figure.startswith("2 of 3 publishes through n2 acknowledged")


def test_connects_refused_only_during_the_election_still_hold() -> None:
    outcomes = [
        (KILL - 1, Outcome.ADMITTED),
        (KILL + 3, Outcome.DENIED),
        (KILL + 5, Outcome.UNANSWERED),
        (KILL + FAILOVER_GRACE + 1, Outcome.ADMITTED),
    ]
    verdict = judge_admitted(outcomes, damage_at=KILL)
    assert verdict.held, verdict.figure
    assert "2 of 4 connects admitted" in verdict.figure
    assert "the last 5.0s after it" in verdict.figure


@pytest.mark.parametrize("when", [KILL - 1, KILL + FAILOVER_GRACE + 0.5])
def test_a_connect_refused_outside_the_election_fails(when: float) -> None:
    outcomes = [
        (when, Outcome.DENIED),
        (KILL + FAILOVER_GRACE + 2, Outcome.ADMITTED),
    ]
    verdict = judge_admitted(outcomes, damage_at=KILL)
    assert not verdict.held
    assert "1 denied" in verdict.figure


def test_connects_that_stopped_before_the_election_ended_prove_nothing() -> None:
    verdict = judge_admitted([(KILL + 1, Outcome.ADMITTED)], damage_at=KILL)
    assert not verdict.held
    assert "none made later than" in verdict.figure


def test_a_node_fails_closed_when_no_connect_is_admitted_denied_or_unanswered() -> None:
    outcomes = [Outcome.DENIED, Outcome.DENIED, Outcome.UNANSWERED]
    verdict = judge_refused("n3 fails closed", "n3", outcomes)
    assert verdict.held
    assert verdict.figure == "0 of 3 connects to n3 admitted (2 denied, 1 unanswered)"


def test_a_single_admitted_connect_breaks_fail_closed() -> None:
    verdict = judge_refused("n3 fails closed", "n3", [Outcome.DENIED, Outcome.ADMITTED])
    assert not verdict.held
    assert verdict.figure.startswith("1 of 2 connects to n3 admitted")


def test_fail_closed_without_any_probe_does_not_pass() -> None:
    assert not judge_refused("n3 fails closed", "n3", []).held
    assert not judge_closed_api("n3", []).held
    assert not judge_no_ack_without_quorum("n3", []).held


def test_survivor_apis_may_answer_503_only_within_the_election_allowance() -> None:
    samples = {
        "n1": [(KILL - 1, 200), (KILL + 2, 503), (KILL + 6, 200), (KILL + FAILOVER_GRACE + 1, 200)],
        "n3": [(KILL - 1, 200), (KILL + FAILOVER_GRACE + 1, 200)],
    }
    verdict = judge_survivor_apis(samples, damage_at=KILL)
    assert verdict.held, verdict.figure
    assert "n1: 4 asked, 3x 200, 1x 503 (not 200 until 2.0s after the crash)" in verdict.figure


@pytest.mark.parametrize(
    "late",
    [(KILL + FAILOVER_GRACE + 1, 503), (KILL + 1, None), (KILL - 1, 503)],
    ids=["503 after the allowance", "no answer at all", "503 before the crash"],
)
def test_a_survivor_api_failing_outside_the_allowance_or_silent_fails(
    late: tuple[float, int | None],
) -> None:
    samples = {"n1": [(KILL - 2, 200), late, (KILL + FAILOVER_GRACE + 2, 200)]}
    assert not judge_survivor_apis(samples, damage_at=KILL).held


def test_a_cut_off_api_that_answers_503_or_nothing_is_closed_and_a_200_is_not() -> None:
    closed = judge_closed_api("n3", [503, None, 503])
    assert closed.held
    assert closed.figure == "0 of 3 /healthz answers from n3 were 2xx (2x 503, 1x no answer)"
    assert not judge_closed_api("n3", [503, 200]).held


def test_a_publish_acknowledged_without_quorum_fails() -> None:
    none = [Published(f"m{i}", False, 2.0) for i in range(5)]
    assert judge_no_ack_without_quorum("n2", none).held
    assert not judge_no_ack_without_quorum("n2", [*none, Published("x", True, 0.1)]).held


@pytest.mark.parametrize(
    ("status", "after", "held"),
    [
        (503, WriteAfter.ABSENT, True),
        (None, WriteAfter.ABSENT, True),
        (503, WriteAfter.COMPLETE, True),  # proposed before quorum went, committed later
        (201, WriteAfter.COMPLETE, False),  # accepted without quorum
        (503, WriteAfter.PARTIAL, False),
        (503, WriteAfter.UNKNOWN, False),
    ],
)
def test_an_api_write_without_quorum_is_refused_and_all_or_nothing(
    status: int | None, after: WriteAfter, held: bool
) -> None:
    verdict = judge_write(status, after)
    assert verdict.held is held
    assert f"after recovery the user is {after.value}" in verdict.figure


def test_recovery_and_the_cut_report_their_time_or_what_was_seen() -> None:
    assert judge_recovery("n2 comes back", 12.34, 180, []).figure == "healthy after 12.3s"
    failed = judge_recovery("n2 comes back", None, 180, ["2 of 3 nodes answer"])
    assert not failed.held
    assert failed.figure == "not healthy within 180s; last seen: 2 of 3 nodes answer"
    assert judge_cut("n3", 4.0, 60).held
    assert not judge_cut("n3", None, 60).held


# -- the report -----------------------------------------------------------------------------------
def _report(*, restore_held: bool = True) -> ChaosReport:
    phase = PhaseReport("stop-one", action="n2 killed")
    phase.invariants.append(Invariant("no acknowledged message lost", True, "3 acknowledged"))
    restore = PhaseReport("restore")
    restore.invariants.append(Invariant("every node back", restore_held, "healthy after 1s"))
    return ChaosReport(phases=[phase, restore])


def test_a_report_passes_only_with_every_invariant_held_and_the_restore_done() -> None:
    assert _report().ok
    assert not _report(restore_held=False).ok
    no_restore = _report()
    no_restore.phases.pop()
    assert not no_restore.ok


def test_an_interrupted_or_stopped_check_never_passes() -> None:
    interrupted = _report()
    interrupted.interrupted = True
    assert not interrupted.ok
    stopped = _report()
    stopped.error = "StackError: gone"
    assert not stopped.ok


def test_a_phase_not_run_fails_and_says_why() -> None:
    report = _report()
    report.phases.insert(
        1,
        PhaseReport(
            "cut-off",
            ran=False,
            invariants=[Invariant("not run", False, "the cluster did not recover")],
        ),
    )
    assert not report.ok
    assert "  FAIL  not run: the cluster did not recover" in report.lines()


def test_the_report_prints_each_invariant_with_its_figure_and_its_verdict() -> None:
    lines = _report(restore_held=False).lines()
    assert lines[0] == "stop one node (n2 killed):"
    assert "  ok    no acknowledged message lost: 3 acknowledged" in lines
    assert "  FAIL  every node back: healthy after 1s" in lines
    assert lines[-1] == "the chaos check FAILED"


def test_the_json_report_round_trips_with_each_invariant_and_its_verdict() -> None:
    report = _report()
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is True
    assert data["phases"][0]["invariants"][0] == {
        "invariant": "no acknowledged message lost",
        "held": True,
        "figure": "3 acknowledged",
    }
    assert ChaosReport.from_json(data).to_json() == report.to_json()


# -- plans and drivers ----------------------------------------------------------------------------
def _compose(ssh: str | None = None) -> ComposeDriver:
    compose = ["docker", "compose", "-f", "compose.yaml", "-p", "demo"]
    nodes = [
        ComposeNode(
            name=n.name,
            compose=n.compose,
            node_service=n.node_service,
            services=n.services,
            ssh=ssh,
        )
        for n in compose_nodes(compose, ["n1", "n2", "n3"])
    ]
    return ComposeDriver(nodes)


def test_compose_kills_and_restarts_a_node_with_its_services() -> None:
    steps = _compose().chaos_steps("n2")
    assert steps.kill == (
        "docker compose -f compose.yaml -p demo kill "
        "n2 authcallout-n2 controlplane-n2 natsexporter-n2",
    )
    assert steps.revive == (
        "docker compose -f compose.yaml -p demo start "
        "n2 authcallout-n2 controlplane-n2 natsexporter-n2",
    )


def test_compose_cuts_a_node_off_by_freezing_it_with_its_services() -> None:
    steps = _compose().chaos_steps("n1")
    assert steps.isolate == (
        "docker compose -f compose.yaml -p demo pause "
        "n1 authcallout-n1 controlplane-n1 natsexporter-n1",
    )
    assert steps.heal == (
        "docker compose -f compose.yaml -p demo unpause "
        "n1 authcallout-n1 controlplane-n1 natsexporter-n1",
    )
    assert "frozen" in _compose().cut_off
    assert "frozen" in LocalDriver.cut_off


def test_on_a_remote_host_every_command_runs_over_ssh() -> None:
    steps = _compose(ssh="root@203.0.113.10").chaos_steps("n1")
    for step in (*steps.kill, *steps.revive, *steps.isolate, *steps.heal):
        assert step.startswith("ssh -o BatchMode=yes root@203.0.113.10 "), step


def test_the_plan_names_every_phase_then_each_nodes_commands() -> None:
    lines = plan(["n1", "n2", "n3"], LocalDriver.cut_off, LocalDriver.chaos_steps)
    assert lines[0].startswith("first: check that n1, n2, n3 are healthy")
    phases = [line.split(":")[0] for line in lines[1:] if not line.startswith("[")]
    assert phases == [
        "stop one",
        "cut off",
        "stop two",
        "restore (always, on failure and Ctrl-C too)",
    ]
    assert "Cut off means: its nats-server, callout and API frozen" in lines[2]
    assert "[n2] kill: SIGKILL nats-server n2, its authcallout and controlplane" in lines
    assert "[n3] isolate: SIGSTOP nats-server n3, its authcallout and controlplane" in lines
    only = plan(["n1", "n2", "n3"], LocalDriver.cut_off, LocalDriver.chaos_steps, ["stop-two"])
    phases = [line.split(":")[0] for line in only[1:] if not line.startswith("[")]
    assert phases == ["stop two", "restore (always, on failure and Ctrl-C too)"]
    assert not any("isolate" in line for line in only), "a phase not asked for is not planned"
    assert set(PHASES) == {"stop-one", "cut-off", "stop-two"}


def test_a_compose_plan_shows_the_commands_it_runs_on_each_node() -> None:
    driver = _compose()
    lines = plan(driver.nodes, driver.cut_off, driver.chaos_steps)
    assert (
        "[n3] kill: docker compose -f compose.yaml -p demo kill "
        "n3 authcallout-n3 controlplane-n3 natsexporter-n3"
    ) in lines


# -- the request protocol of `unibus up` ----------------------------------------------------------
@pytest.fixture
def as_unibus_up(tmp_path: Path) -> Iterator[StackLayout]:
    """A stack directory whose `unibus up` is this process: SIGHUP is caught, not fatal."""
    layout = StackLayout.at(tmp_path)
    layout.up_pid.write_text(f"{os.getpid()}\n")
    hups: list[int] = []

    def caught(signum: int, _frame: FrameType | None) -> None:
        hups.append(signum)
        # What `unibus up` does on a cancel: undo, then answer the request.
        pending = tmp_path / "pending-id"
        if pending.exists() and cancel_requested(layout, pending.read_text()):
            write_result(
                layout,
                Result(id=pending.read_text(), ok=False, interrupted=True, report={"ok": False}),
            )

    previous = signal.signal(signal.SIGHUP, caught)
    try:
        yield layout
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_request_without_a_kind_is_a_rollout_as_before(tmp_path: Path) -> None:
    layout = StackLayout.at(tmp_path)
    (tmp_path / "up.request.json").write_text('{"v":1,"id":"abc","node_bound":30.0}')
    request = read_request(layout)
    assert request == Request(id="abc", kind="rollout", node_bound=30.0)
    assert read_request(layout) is None, "a request is taken once"


def test_an_interrupted_requester_cancels_its_request_and_waits_for_the_answer(
    as_unibus_up: StackLayout, tmp_path: Path
) -> None:
    (tmp_path / "pending-id").write_text("req-1")
    lines: list[str] = []

    result = follow(
        as_unibus_up,
        "req-1",
        deadline=time.monotonic() + 10,
        on_line=lines.append,
        interrupted=lambda: True,
    )

    assert result.interrupted
    assert cancel_requested(as_unibus_up, "req-1")
    assert not cancel_requested(as_unibus_up, "another request")
    assert msgspec.json.decode((tmp_path / "up.result.json").read_bytes())["id"] == "req-1"


# -- compose, undone idempotently -----------------------------------------------------------------
_FAKE_COMPOSE = """\
import json, sys
from pathlib import Path
state_file = Path(sys.argv[1])
state = json.loads(state_file.read_text())
verb, *services = sys.argv[2:]
calls = state.setdefault("calls", [])
calls.append([verb, *services])
wanted = {"pause": ("running", "paused"), "unpause": ("paused", "running"),
          "kill": (None, "exited"), "start": (None, "running")}
if verb == "ps":
    services = [s for s in services if not s.startswith("-") and s != "json"]
    for name in services:
        print(json.dumps({"Service": name, "State": state[name]}))
elif verb in wanted:
    before, after = wanted[verb]
    for name in services:
        if before is not None and state[name] != before:
            sys.exit(f"Container {name} is not {before}")  # as compose refuses
        state[name] = after
state_file.write_text(json.dumps(state))
"""


@pytest.fixture
def fake_compose(tmp_path: Path) -> tuple[ComposeDriver, Path]:
    """A driver over a stand-in for `docker compose` that keeps container states in a file
    and refuses what compose refuses (pausing a paused container, unpausing a running one)."""
    script = tmp_path / "compose.py"
    script.write_text(_FAKE_COMPOSE)
    state = tmp_path / "state.json"
    names = [
        f"{s}{n}"
        for n in ("n1", "n2", "n3")
        for s in ("", "authcallout-", "controlplane-", "natsexporter-")
    ]
    state.write_text(json.dumps(dict.fromkeys(names, "running")))
    nodes = compose_nodes([sys.executable, str(script), str(state)], ["n1", "n2", "n3"])
    return ComposeDriver(nodes), state


def _states(state: Path) -> dict[str, str]:
    data = json.loads(state.read_text())
    data.pop("calls")
    return data


async def test_cutting_off_and_healing_twice_changes_nothing_more(
    fake_compose: tuple[ComposeDriver, Path],
) -> None:
    driver, state = fake_compose
    await driver.isolate("n2")
    await driver.isolate("n2")
    assert {k: v for k, v in _states(state).items() if v != "running"} == {
        "n2": "paused",
        "authcallout-n2": "paused",
        "controlplane-n2": "paused",
        "natsexporter-n2": "paused",
    }
    await driver.heal("n2")
    await driver.heal("n2")
    await driver.heal("n1")  # never cut off: nothing to thaw
    assert set(_states(state).values()) == {"running"}


async def test_a_killed_node_is_revived_with_its_services_and_a_revive_repeats_safely(
    fake_compose: tuple[ComposeDriver, Path],
) -> None:
    driver, state = fake_compose
    await driver.kill("n3")
    assert _states(state)["controlplane-n3"] == "exited"
    await driver.revive("n3")
    await driver.revive("n3")
    assert set(_states(state).values()) == {"running"}
