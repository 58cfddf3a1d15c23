"""The chaos check: a running deployment shown to fail the way it promises, on itself.

An operator runs it against their own cluster (``unibus chaoscheck``). Each phase starts
from a healthy cluster, does one kind of damage through a driver (``unibus.stack.drivers``),
measures what clients see, undoes the damage and waits for the cluster to be whole again:

``stop-one``
    The node leading the message history is killed (a crash, not a planned stop) while a
    publisher connected through it publishes with acknowledgements, a client connects
    every 200 ms as the SDK does, and the other nodes' APIs are asked for ``/healthz``.
    No acknowledged message is lost (read back once the node is back); every publish is
    acknowledged; every connect is admitted and the survivors' APIs answer 200, except
    within the election's allowance (``FAILOVER_GRACE``: while the streams the callout
    and the API decide from elect a leader, they fail closed). Then the node is started
    again.
``cut-off``
    The JetStream meta leader is cut off: frozen with its callout and API, which is how a
    partition looks from the majority's side, where the check stands (why not a network
    disconnect: ``unibus.stack.drivers``). The majority sees it gone and keeps
    acknowledging writes; the cut-off node fails closed: after the staleness its services
    promise, no connect through it is admitted and its API never answers 2xx (a frozen
    node answers nothing: that is the figure). Then it is thawed, rejoins and catches up.
    A node alive without quorum, answering and refusing, is what ``stop-two`` measures.
``stop-two``
    Two nodes are killed. Through the one left: no connect is admitted, its API never
    answers 2xx, no publish is acknowledged, and an API write (adding a user) is refused
    and, once the others are back, is either absent or there whole, never in part.
``restore``
    Whatever the check did is undone and the cluster is healthy: every node answering
    over a full mesh, every asset at full replication with its followers current, every
    callout and API ready. This runs always: after the last phase, after a failure, and
    when the check is cancelled (Ctrl-C), so a check never leaves its damage behind.

The check writes only its own data: messages under a fresh room id (purged at the end)
and, in ``stop-two``, one user with a fresh key nobody holds (revoked at the end if the
write took effect). Each invariant is reported with its figure; the check passed only if
every invariant of every phase held and the restore did.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from unibus.client.api import DEFAULT_RETRY_BUDGET, ApiClient
from unibus.client.connection import BusConnection
from unibus.client.errors import AccessDeniedError, ApiError
from unibus.client.profile import StackInfo
from unibus.core import naming
from unibus.core.connect import NatsTarget, connect
from unibus.core.errors import StackError, UnibusError
from unibus.core.models import Role, Status
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.stack.clusterstate import ClusterState, observe
from unibus.stack.drivers import ChaosSteps

__all__ = [
    "DEFAULT_BOUND",
    "PHASES",
    "ChaosCheck",
    "ChaosDriver",
    "ChaosRefusedError",
    "ChaosReport",
    "Deployment",
    "Invariant",
    "Outcome",
    "PhaseReport",
    "Published",
    "WriteAfter",
    "judge_acknowledged",
    "judge_admitted",
    "judge_closed_api",
    "judge_cut",
    "judge_no_ack_without_quorum",
    "judge_publishing",
    "judge_recovery",
    "judge_refused",
    "judge_survivor_apis",
    "judge_write",
    "plan",
]

PHASES: Final = ("stop-one", "cut-off", "stop-two")
"""The damaging phases, in the order they run; ``restore`` always follows."""
TITLES: Final = {
    "stop-one": "stop one node",
    "cut-off": "cut one node off the network",
    "stop-two": "stop two nodes",
    "restore": "restore",
}
DEFAULT_BOUND: Final = 180.0
"""Seconds the cluster may take to be whole again after each phase (and the restore)."""
FAILOVER_GRACE: Final = DEFAULT_RETRY_BUDGET
"""How long after a crash the survivors' APIs may answer 503: the SDK's API client rides
out exactly that long (an election takes 5-7 s), so past it a client would see errors."""
FAIL_CLOSED_SETTLE: Final = 5.0
"""Seconds after the damage before the fail-closed probes count: the callout's view may
be trusted for 2 s after its last quorum confirmation plus 1 s of grace, the API's for
0.5 s; a connect admitted within that bound is the promise, not a breach."""
FAIL_CLOSED_WINDOW: Final = 8.0
"""How long the fail-closed probes run once they count."""
CUT_NOTICE_BOUND: Final = 60.0
"""Seconds the majority may take to see a cut-off node gone (a peer that stops answering
is dropped from the server ping at once; its routes only after the ping interval)."""
GATE_PATIENCE: Final = 15.0
"""Seconds the cluster may take to look healthy before the check refuses to begin: under
writes a follower is briefly behind now and then, which is not a degraded asset."""
PROBE_EVERY: Final = 0.2
API_PROBE_EVERY: Final = 0.5
PUBLISH_EVERY: Final = 0.05
PUBLISH_BUDGET: Final = 30.0
"""Seconds one publish is retried (same message id, so never stored twice) before it
counts as not acknowledged."""
SDK_CONNECT_BUDGET: Final = 15.0
"""A probe connecting as the SDK does: every URL, denials during an election retried."""
RAW_CONNECT_TIMEOUT: Final = 4.0
"""One connect to one node, no retry: a denial arrives within the callout's 3 s."""
HEALTHZ_TIMEOUT: Final = 10.0
"""``/healthz`` without quorum waits out its barrier and a stream info (2 s each)."""
API_WRITE_TIMEOUT: Final = 15.0
CONNECT_BOUND: Final = 20.0
OBSERVE_BOUND: Final = 60.0
"""One look at the whole cluster: the servers' pings, every asset, each node's services."""
READ_BACK_BOUND: Final = 30.0
"""Seconds the check keeps reading before an acknowledged message counts as lost."""
_POLL: Final = 0.5

Progress = Callable[[str], None]


# -- what is judged -------------------------------------------------------------------------------
class Outcome(enum.StrEnum):
    """What one connect attempt came to."""

    ADMITTED = "admitted"
    DENIED = "denied"
    """The node answered and refused (authorization violation)."""
    UNANSWERED = "unanswered"
    """Nothing answered in time: unreachable, frozen, or the connection dropped."""


@dataclass(frozen=True)
class Published:
    """One message the check published: acknowledged or not, and how long it took."""

    id: str
    acknowledged: bool
    seconds: float


class WriteAfter(enum.StrEnum):
    """An API write refused without quorum, as read once the cluster is whole again."""

    ABSENT = "absent"
    COMPLETE = "complete"
    """Present and exactly as written."""
    PARTIAL = "partial"
    """Present but not as written."""
    UNKNOWN = "unknown"
    """Could not be read back (the cluster did not recover, or the read failed)."""


@dataclass(frozen=True)
class Invariant:
    name: str
    held: bool
    figure: str

    def to_json(self) -> dict[str, Any]:
        return {"invariant": self.name, "held": self.held, "figure": self.figure}


@dataclass
class PhaseReport:
    phase: str
    action: str = ""
    """What was done, in words (``n2 killed``)."""
    invariants: list[Invariant] = field(default_factory=list)
    seconds: float = 0.0
    ran: bool = True

    @property
    def title(self) -> str:
        return TITLES[self.phase]

    @property
    def held(self) -> bool:
        return self.ran and bool(self.invariants) and all(i.held for i in self.invariants)

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "title": self.title,
            "action": self.action,
            "ran": self.ran,
            "held": self.held,
            "seconds": round(self.seconds, 1),
            "invariants": [i.to_json() for i in self.invariants],
        }


@dataclass
class ChaosReport:
    phases: list[PhaseReport] = field(default_factory=list)
    interrupted: bool = False
    error: str | None = None
    """What stopped the check before its end, if anything did."""
    notes: list[str] = field(default_factory=list)
    """What the check did to its own data at the end (purge, revocation), or failed to."""

    @property
    def ok(self) -> bool:
        """Every phase ran and every invariant held, the restore's included."""
        restored = any(p.phase == "restore" and p.held for p in self.phases)
        return (
            restored
            and not self.interrupted
            and self.error is None
            and all(p.held for p in self.phases)
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChaosReport:
        """Back from ``to_json`` (the local stack's ``unibus up`` answers in JSON)."""
        return cls(
            phases=[
                PhaseReport(
                    phase=str(p["phase"]),
                    action=str(p.get("action", "")),
                    invariants=[
                        Invariant(str(i["invariant"]), bool(i["held"]), str(i["figure"]))
                        for i in p.get("invariants", [])
                    ],
                    seconds=float(p.get("seconds", 0.0)),
                    ran=bool(p.get("ran", True)),
                )
                for p in data.get("phases", [])
            ],
            interrupted=bool(data.get("interrupted")),
            error=data.get("error"),
            notes=[str(n) for n in data.get("notes", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "interrupted": self.interrupted,
            "error": self.error,
            "phases": [p.to_json() for p in self.phases],
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """The report as an operator reads it: each invariant with its figure."""
        out: list[str] = []
        for phase in self.phases:
            action = f" ({phase.action})" if phase.action else ""
            out.append(f"{phase.title}{action}:")
            if not phase.ran:
                out.append(
                    "  FAIL  not run: " + (phase.invariants[0].figure if phase.invariants else "")
                )
                continue
            for invariant in phase.invariants:
                mark = "ok  " if invariant.held else "FAIL"
                out.append(f"  {mark}  {invariant.name}: {invariant.figure}")
        out.extend(f"note: {note}" for note in self.notes)
        if self.interrupted:
            out.append("interrupted: the check stopped early and undid what it had done")
        if self.error is not None:
            out.append(f"stopped: {self.error}")
        out.append("every invariant held" if self.ok else "the chaos check FAILED")
        return out


def judge_acknowledged(acked: Collection[str], stored: Collection[str]) -> Invariant:
    """Every acknowledged message is in the stream afterwards."""
    lost = set(acked) - set(stored)
    held = bool(acked) and not lost
    figure = f"{len(acked)} acknowledged, {len(lost)} of them missing when read back"
    if not acked:
        figure = "nothing was acknowledged, so nothing could be checked"
    elif lost:
        figure += f" (e.g. {', '.join(sorted(lost)[:3])})"
    return Invariant("no acknowledged message lost", held, figure)


def judge_publishing(name: str, published: Sequence[Published], *, via: str) -> Invariant:
    """Every publish was acknowledged within its budget."""
    acked = [p for p in published if p.acknowledged]
    longest = max((p.seconds for p in published), default=0.0)
    held = bool(published) and len(acked) == len(published)
    figure = (
        f"{len(acked)} of {len(published)} publishes through {via} acknowledged "
        f"(the longest took {longest:.1f}s)"
    )
    return Invariant(name, held, figure)


def _tally(outcomes: Sequence[Outcome]) -> str:
    counts = {o: sum(1 for x in outcomes if x is o) for o in Outcome}
    return ", ".join(f"{n} {o.value}" for o, n in counts.items() if n)


def judge_admitted(
    outcomes: Sequence[tuple[float, Outcome]],
    *,
    damage_at: float,
    grace: float = FAILOVER_GRACE,
) -> Invariant:
    """Every connect (made as the SDK makes it) was admitted, except within ``grace``
    seconds after the crash: while the streams the callout decides from elect a leader,
    it fails closed. ``outcomes``: (monotonic time the attempt began, its outcome)."""
    admitted = sum(1 for _, o in outcomes if o is Outcome.ADMITTED)
    during = [(t, o) for t, o in outcomes if damage_at <= t < damage_at + grace]
    outside = [o for t, o in outcomes if not damage_at <= t < damage_at + grace]
    after = [t for t, _ in outcomes if t >= damage_at + grace]
    refused_during = [t for t, o in during if o is not Outcome.ADMITTED]
    held = bool(after) and all(o is Outcome.ADMITTED for o in outside)
    figure = f"{admitted} of {len(outcomes)} connects admitted"
    if refused_during:
        figure += (
            f"; {len(refused_during)} not, in the election after the crash (the last "
            f"{max(refused_during) - damage_at:.1f}s after it)"
        )
    if not held:
        figure += f" ({_tally([o for _, o in outcomes])})" if outcomes else ""
        if not after:
            figure += f"; none made later than {grace:g}s after the crash to judge by"
        else:
            figure += f"; refused later than {grace:g}s after the crash"
    return Invariant("connects keep being admitted", held, figure)


def judge_refused(name: str, node: str, outcomes: Sequence[Outcome]) -> Invariant:
    """No connect through ``node`` was admitted (and there were attempts)."""
    admitted = sum(1 for o in outcomes if o is Outcome.ADMITTED)
    held = bool(outcomes) and admitted == 0
    figure = f"{admitted} of {len(outcomes)} connects to {node} admitted"
    if outcomes:
        figure += f" ({_tally(outcomes)})"
    return Invariant(name, held, figure)


def _statuses(samples: Sequence[int | None]) -> str:
    counts: dict[str, int] = {}
    for status in samples:
        key = "no answer" if status is None else str(status)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n}x {key}" for key, n in sorted(counts.items()))


def judge_survivor_apis(
    samples: Mapping[str, Sequence[tuple[float, int | None]]],
    *,
    damage_at: float,
    grace: float = FAILOVER_GRACE,
) -> Invariant:
    """Each survivor's ``/healthz`` answered every time, and 200 except within ``grace``
    seconds after the damage (an election). ``samples``: (monotonic time, status or None)."""
    held = bool(samples) and all(samples.values())
    parts: list[str] = []
    for node, series in samples.items():
        unanswered = sum(1 for _, status in series if status is None)
        late = [(t, s) for t, s in series if s != 200 and not damage_at <= t < damage_at + grace]
        early = [t for t, s in series if s != 200 and damage_at <= t < damage_at + grace]
        if unanswered or late:
            held = False
        detail = f"{node}: {len(series)} asked, " + _statuses([s for _, s in series])
        if early:
            detail += f" (not 200 until {max(early) - damage_at:.1f}s after the crash)"
        parts.append(detail)
    figure = "; ".join(parts) or "no survivor was asked"
    return Invariant("the survivors' APIs keep answering", held, figure)


def judge_closed_api(
    node: str, samples: Sequence[int | None], *, name: str | None = None
) -> Invariant:
    """``node``'s API never answered 2xx (503, or no answer at all)."""
    succeeded = sum(1 for s in samples if s is not None and 200 <= s < 300)
    held = bool(samples) and succeeded == 0
    figure = f"{succeeded} of {len(samples)} /healthz answers from {node} were 2xx" + (
        f" ({_statuses(samples)})" if samples else ""
    )
    return Invariant(name or f"{node}'s API never answers 2xx", held, figure)


def judge_no_ack_without_quorum(node: str, published: Sequence[Published]) -> Invariant:
    acked = sum(1 for p in published if p.acknowledged)
    held = bool(published) and acked == 0
    figure = f"{acked} of {len(published)} publishes through {node} acknowledged"
    return Invariant("no write is acknowledged without quorum", held, figure)


def judge_write(status: int | None, after: WriteAfter) -> Invariant:
    """An API write without quorum is refused, and afterwards absent or whole.

    ``status``: the API's answer (None: no answer). A 2xx means the write was accepted
    without quorum; present-but-different afterwards is a partial write. A refused write
    found whole afterwards is allowed: the node had proposed it before it knew quorum was
    gone, and the majority committed it on its return (all or nothing, not "never").
    """
    answer = "no answer" if status is None else str(status)
    refused = status is None or not 200 <= status < 300
    held = refused and after in (WriteAfter.ABSENT, WriteAfter.COMPLETE)
    figure = f"adding a user answered {answer}; after recovery the user is {after.value}"
    return Invariant("an API write is refused and not partly written", held, figure)


def judge_recovery(
    name: str, seconds: float | None, bound: float, problems: Sequence[str]
) -> Invariant:
    """The cluster was whole again within ``bound`` seconds (``seconds`` None: it was not)."""
    if seconds is not None:
        return Invariant(name, True, f"healthy after {seconds:.1f}s")
    seen = "; ".join(problems) or "services not ready"
    return Invariant(name, False, f"not healthy within {bound:g}s; last seen: {seen}")


def judge_cut(node: str, seconds: float | None, bound: float) -> Invariant:
    """The damage took effect: the majority stopped seeing ``node``."""
    name = f"the majority sees {node} gone"
    if seconds is None:
        return Invariant(name, False, f"{node} still answered its peers after {bound:g}s")
    return Invariant(name, True, f"after {seconds:.1f}s")


# -- where and how --------------------------------------------------------------------------------
class ChaosDriver(Protocol):
    """Damages one node and undoes it (``unibus.stack.drivers``)."""

    @property
    def nodes(self) -> tuple[str, ...]: ...

    @property
    def cut_off(self) -> str:
        """What isolating a node does here, in words."""
        ...

    def chaos_steps(self, node: str) -> ChaosSteps: ...

    async def kill(self, node: str) -> None: ...

    async def revive(self, node: str) -> None: ...

    async def isolate(self, node: str) -> None: ...

    async def heal(self, node: str) -> None: ...

    async def services_ready(self, node: str) -> bool: ...


@dataclass(frozen=True)
class Deployment:
    """How the check reaches each node, and as whom."""

    nats_urls: Mapping[str, str]
    api_urls: Mapping[str, str]
    ca_file: Path
    internal: Path
    system: Path
    admin: Path

    @classmethod
    def from_stack_info(cls, info: StackInfo) -> Deployment:
        if len(info.api_urls) != len(info.nodes):
            raise StackError(
                f"stack.json lists {len(info.nodes)} nodes but {len(info.api_urls)} API "
                "URLs: render it again (`unibus compose init` or `unibus deploy render`)"
            )
        return cls(
            nats_urls={node.name: node.client_url for node in info.nodes},
            api_urls={node.name: url for node, url in zip(info.nodes, info.api_urls, strict=True)},
            ca_file=Path(info.ca_file),
            internal=Path(info.internal_id_file),
            system=Path(info.sys_id_file),
            admin=Path(info.admin_seed_file),
        )

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.nats_urls)

    def target(self, identity: Path, nodes: Sequence[str] = ()) -> NatsTarget:
        names = nodes or self.nodes
        return NatsTarget(
            urls=tuple(self.nats_urls[n] for n in names),
            ca_file=self.ca_file,
            identity_file=identity,
        )


class ChaosRefusedError(StackError):
    """The cluster was not healthy when the check was asked to begin: nothing was done."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(
            "refusing to run the chaos check on a cluster that is not healthy (its "
            "findings would be meaningless and the damage could cost quorum): "
            + "; ".join(problems)
            + ". Fix these first (`unibus status` shows them), then run the check again"
        )
        self.problems = tuple(problems)


def plan(
    nodes: Sequence[str],
    cut_off: str,
    chaos_steps: Callable[[str], ChaosSteps],
    phases: Sequence[str] = PHASES,
) -> list[str]:
    """What the check would do, in order (printed without ``--yes``): ``cut_off`` and
    ``chaos_steps`` are the driver's (``LocalDriver``'s work without an instance).

    Which node each phase damages is chosen when it runs (it depends on who leads), so
    the commands follow, per node, after the phases.
    """
    lines = [
        f"first: check that {', '.join(nodes)} are healthy (every node, full mesh, every "
        "asset at full replication, every callout and API ready), else stop having done "
        "nothing"
    ]
    if "stop-one" in phases:
        lines.append(
            "stop one: kill the node leading the message history while publishing through "
            "it and connecting every 200 ms; then revive it"
        )
    if "cut-off" in phases:
        lines.append(
            "cut off: isolate the JetStream meta leader; publish through the majority, probe "
            "the node's connects and API; then heal it. Cut off means: " + cut_off
        )
    if "stop-two" in phases:
        lines.append(
            "stop two: kill two nodes; probe connects, the API, publishes and one API write "
            "(adding a user) through the one left; then revive both"
        )
    lines.append(
        "restore (always, on failure and Ctrl-C too): undo whatever is still done, wait "
        "for a healthy cluster; purge the check's messages, revoke its user if written"
    )
    wanted = {"kill", "revive"} if {"stop-one", "stop-two"} & set(phases) else set()
    if "cut-off" in phases:
        wanted |= {"isolate", "heal"}
    for node in nodes:
        steps = chaos_steps(node)
        for what in ("kill", "revive", "isolate", "heal"):
            if what in wanted:
                lines += [f"[{node}] {what}: {step}" for step in getattr(steps, what)]
    return lines


# -- probing --------------------------------------------------------------------------------------
def _is_denial(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()


async def _healthz(url: str, ca_file: Path) -> int | None:
    """The status of ``url``/healthz, or None if nothing answered in time."""

    def ask() -> int | None:
        context = ssl.create_default_context(cafile=str(ca_file))
        try:
            with urllib.request.urlopen(  # noqa: S310 - https to the deployment's own API
                f"{url.rstrip('/')}/healthz", timeout=HEALTHZ_TIMEOUT, context=context
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ssl.SSLError):
            return None

    return await asyncio.to_thread(ask)


async def _to_the_end(work: Awaitable[None]) -> None:
    """Await ``work`` to its end even if cancelled meanwhile, then pass the cancellation on."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def _repeating(attempt: Callable[[], Awaitable[None]], every: float) -> AsyncIterator[None]:
    """Run ``attempt`` every ``every`` seconds (or back to back when slower) meanwhile."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            began = time.monotonic()
            await attempt()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, every - (time.monotonic() - began))):
                    await stop.wait()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task


class ChaosCheck:
    """One run of the check against ``deployment`` through ``driver``.

    ``report`` fills in as the check goes, so a caller that cancels ``run`` still has
    what was seen (and the restore's outcome: cancellation runs it too).
    """

    def __init__(
        self,
        driver: ChaosDriver,
        deployment: Deployment,
        *,
        phases: Sequence[str] = PHASES,
        bound: float = DEFAULT_BOUND,
        messages: int = 90,
        progress: Progress | None = None,
    ) -> None:
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise StackError(f"unknown phase {unknown[0]!r}: one of {', '.join(PHASES)}")
        missing = [n for n in driver.nodes if n not in deployment.nats_urls]
        if missing or len(driver.nodes) != 3:
            raise StackError(
                "the chaos check needs a three-node cluster whose nodes stack.json names "
                f"(driver: {', '.join(driver.nodes)}; stack.json: "
                f"{', '.join(deployment.nodes)})"
            )
        self.report = ChaosReport()
        self._driver = driver
        self._deployment = deployment
        self._phases = [p for p in PHASES if p in phases]
        self._bound = bound
        self._messages = messages
        self._say = progress or (lambda _message: None)
        self._admin = read_seed_file(deployment.admin)
        self._subject = naming.room_subject(naming.new_room_id())
        self._run = secrets.token_hex(6)
        self._killed: list[str] = []
        self._isolated: list[str] = []
        self._written_user: str | None = None
        self._published = False

    @property
    def subject(self) -> str:
        """The one subject the check publishes to (a fresh room id; purged at the end)."""
        return self._subject

    # -- the run ----------------------------------------------------------------------------------
    async def run(self) -> ChaosReport:
        """Run every phase, then restore; refused (nothing done) on an unhealthy cluster.

        Raises:
            ChaosRefusedError: the cluster was not healthy to begin with.
        """
        state = await self._gate()
        try:
            for index, phase in enumerate(self._phases):
                started = time.monotonic()
                report = PhaseReport(phase)
                self.report.phases.append(report)
                self._say(f"{TITLES[phase]}: starting")
                if phase == "stop-one":
                    after = await self._stop_one(state, report)
                elif phase == "cut-off":
                    after = await self._cut_off(state, report)
                else:
                    after = await self._stop_two(state, report)
                report.seconds = time.monotonic() - started
                for invariant in report.invariants:
                    mark = "ok" if invariant.held else "FAIL"
                    self._say(f"{TITLES[phase]}: {mark} {invariant.name}: {invariant.figure}")
                if after is None:
                    for rest in self._phases[index + 1 :]:
                        self.report.phases.append(
                            PhaseReport(
                                rest,
                                ran=False,
                                invariants=[
                                    Invariant(
                                        "not run",
                                        False,
                                        "the cluster did not recover from the phase before",
                                    )
                                ],
                            )
                        )
                    break
                # The next phase picks its node from what the recovery saw whole.
                state = after
        except asyncio.CancelledError:
            self.report.interrupted = True
            self._say("interrupted: undoing what the check did")
            raise
        except (UnibusError, OSError, TimeoutError, nats.errors.Error) as exc:
            self.report.error = f"{type(exc).__name__}: {exc}"
            self._say(f"stopped: {self.report.error}; undoing what the check did")
        finally:
            await self._restore()
        return self.report

    async def restore_everything(self) -> ChaosReport:
        """Heal and start every node, whatever did the damage (a check killed outright)."""
        self._isolated = list(self._driver.nodes)
        self._killed = list(self._driver.nodes)
        await self._restore()
        return self.report

    async def _connect(self, identity: Path, nodes: Sequence[str] = (), **options: Any) -> NATS:
        """A connection to ``nodes`` (every node by default), or an error within
        ``CONNECT_BOUND``: nats-py's first connect retries forever while no node answers."""
        target = self._deployment.target(identity, nodes)
        async with asyncio.timeout(CONNECT_BOUND):
            return await connect(target, name="unibus-chaoscheck", **options)

    # -- observation ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _observer(self, nodes: Sequence[str] = ()) -> AsyncIterator[tuple[NATS, NATS]]:
        """Connections (internal, system) to ``nodes`` only: one to a node being damaged
        would hang until nats-py's ping noticed, minutes later."""
        dep = self._deployment
        nc = await self._connect(dep.internal, nodes)
        try:
            sys_nc = await self._connect(dep.system, nodes)
            try:
                yield nc, sys_nc
            finally:
                await sys_nc.close()
        finally:
            await nc.close()

    async def _state(self, nc: NATS, sys_nc: NATS) -> tuple[ClusterState | None, list[str]]:
        try:
            state = await observe(nc, sys_nc, expected=len(self._driver.nodes))
        except Exception as exc:  # noqa: BLE001 - nats-py raises its own errors mid-election
            return None, [f"the cluster did not answer ({type(exc).__name__})"]
        return state, state.problems()

    async def _whole(self) -> tuple[ClusterState | None, list[str]]:
        """The cluster's state, plus every node's callout and API readiness."""
        async with self._observer() as (nc, sys_nc):
            state, problems = await self._state(nc, sys_nc)
        for node in self._driver.nodes:
            if not await self._driver.services_ready(node):
                problems.append(f"{node}: its callout or API is not ready")
        return state, problems

    async def _gate(self) -> ClusterState:
        deadline = time.monotonic() + GATE_PATIENCE
        while True:
            try:
                async with asyncio.timeout(OBSERVE_BOUND):
                    state, problems = await self._whole()
            except (UnibusError, OSError, TimeoutError, nats.errors.Error) as exc:
                state, problems = None, [f"the cluster did not answer ({exc})"]
            if state is not None and not problems:
                self._say("the cluster is healthy")
                return state
            if time.monotonic() >= deadline:
                raise ChaosRefusedError(problems)
            await asyncio.sleep(_POLL)

    async def _wait_whole(self) -> tuple[ClusterState | None, float, list[str]]:
        """Until the cluster is whole again, within the bound: (its state, or None at the
        bound; seconds waited; what was last seen wrong)."""
        started = time.monotonic()
        deadline = started + self._bound
        while True:
            try:
                async with asyncio.timeout(OBSERVE_BOUND):
                    state, problems = await self._whole()
            except (UnibusError, OSError, TimeoutError, nats.errors.Error) as exc:
                state, problems = None, [f"the cluster did not answer ({type(exc).__name__})"]
            if state is not None and not problems:
                return state, time.monotonic() - started, []
            if time.monotonic() >= deadline:
                return None, time.monotonic() - started, problems
            await asyncio.sleep(_POLL)

    # -- probes -----------------------------------------------------------------------------------
    async def _sdk_connect(self) -> Outcome:
        """A client connecting as the SDK does: every URL, an election's denials retried."""
        dep = self._deployment
        try:
            async with asyncio.timeout(SDK_CONNECT_BUDGET + 5.0):
                bus = await BusConnection.connect(
                    [dep.nats_urls[n] for n in dep.nodes],
                    self._admin,
                    ca_file=dep.ca_file,
                    name="unibus-chaoscheck-probe",
                    connect_timeout=2.0,
                    connect_budget=SDK_CONNECT_BUDGET,
                )
        except AccessDeniedError:
            return Outcome.DENIED
        except Exception:  # noqa: BLE001 - anything else: the client got no connection
            return Outcome.UNANSWERED
        await bus.close()
        return Outcome.ADMITTED

    async def _raw_connect(self, node: str) -> Outcome:
        """One connect to ``node`` alone, no retry."""
        dep = self._deployment
        try:
            async with asyncio.timeout(RAW_CONNECT_TIMEOUT + 1.0):
                nc = await connect(
                    dep.target(dep.admin, (node,)),
                    name="unibus-chaoscheck-probe",
                    connect_timeout=RAW_CONNECT_TIMEOUT,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                )
                try:
                    await nc.flush(timeout=2)
                finally:
                    await nc.close()
        except Exception as exc:  # noqa: BLE001 - classified: a denial or no answer
            return Outcome.DENIED if _is_denial(exc) else Outcome.UNANSWERED
        return Outcome.ADMITTED

    @contextlib.asynccontextmanager
    async def _connecting(
        self, node: str | None, outcomes: list[tuple[float, Outcome]]
    ) -> AsyncIterator[None]:
        """Connect every 200 ms meanwhile: as the SDK does (``node`` None), or to ``node``.
        ``outcomes`` gets (monotonic time the attempt began, its outcome)."""

        async def attempt() -> None:
            began = time.monotonic()
            outcome = await (self._sdk_connect() if node is None else self._raw_connect(node))
            outcomes.append((began, outcome))

        async with _repeating(attempt, PROBE_EVERY):
            yield

    @contextlib.asynccontextmanager
    async def _asking(
        self, nodes: Sequence[str], samples: dict[str, list[tuple[float, int | None]]]
    ) -> AsyncIterator[None]:
        """Ask each node's ``/healthz`` every half second meanwhile."""
        dep = self._deployment
        async with contextlib.AsyncExitStack() as stack:
            for node in nodes:
                series = samples.setdefault(node, [])

                async def attempt(node: str = node, series: list[Any] = series) -> None:
                    at = time.monotonic()
                    series.append((at, await _healthz(dep.api_urls[node], dep.ca_file)))

                await stack.enter_async_context(_repeating(attempt, API_PROBE_EVERY))
            yield

    async def _publish(
        self,
        nc: NATS,
        ids: Sequence[str],
        *,
        budget: float = PUBLISH_BUDGET,
        before: Callable[[int], Awaitable[None]] | None = None,
    ) -> list[Published]:
        """Publish each id with acknowledgement, retrying it (same id) for ``budget``."""
        js = nc.jetstream(timeout=2.0)
        self._published = True  # from the first attempt on, something may be stored
        published: list[Published] = []
        for index, message_id in enumerate(ids):
            if before is not None:
                await before(index)
            started = time.monotonic()
            acknowledged = False
            while True:
                try:
                    await js.publish(
                        self._subject, message_id.encode(), headers={"Nats-Msg-Id": message_id}
                    )
                    acknowledged = True
                    break
                except Exception:  # noqa: BLE001 - unacknowledged: retried with the same id
                    if time.monotonic() - started + 0.2 >= budget:
                        break
                    await asyncio.sleep(0.2)
            published.append(Published(message_id, acknowledged, time.monotonic() - started))
            await asyncio.sleep(PUBLISH_EVERY)
        return published

    async def _read_back(self, wanted: Collection[str]) -> set[str]:
        """The ids stored under the check's subject, read through every node.

        Read again (a fresh consumer each time) until every id in ``wanted`` is there or
        ``READ_BACK_BOUND`` passes: just after an election a new consumer may deliver
        nothing for a moment, which is not a loss; a message still missing at the bound is.
        """
        dep = self._deployment
        stored: set[str] = set()
        deadline = time.monotonic() + READ_BACK_BOUND
        nc = await self._connect(dep.internal)
        try:
            js = nc.jetstream(timeout=5.0)
            while True:
                try:
                    stored |= await self._read_once(js)
                except Exception as exc:  # noqa: BLE001 - a failed read is read again
                    self._say(f"reading back failed ({type(exc).__name__}: {exc}); again")
                if set(wanted) <= stored or time.monotonic() >= deadline:
                    return stored
                await asyncio.sleep(1.0)
        finally:
            await nc.close()

    async def _read_once(self, js: JetStreamContext) -> set[str]:
        found: set[str] = set()
        sub = await js.pull_subscribe(self._subject, durable=None, stream=naming.MESSAGES_STREAM)
        try:
            while True:
                try:
                    batch = await sub.fetch(200, timeout=3.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    return found
                for msg in batch:
                    found.add((msg.headers or {}).get("Nats-Msg-Id", ""))
                    await msg.ack()
        finally:
            await sub.unsubscribe()

    def _ids(self, phase: str, count: int) -> list[str]:
        # Unique to this run: the stream drops a message whose id it saw within its
        # duplicate window, from any subject, yet acknowledges it (as a duplicate).
        return [f"chaoscheck-{self._run}-{phase}-{i}" for i in range(count)]

    # -- phases -----------------------------------------------------------------------------------
    def _others(self, *nodes: str) -> list[str]:
        return [n for n in self._driver.nodes if n not in nodes]

    async def _kill(self, node: str) -> None:
        self._killed.append(node)  # noted first: a kill that fails half-way is undone too
        await self._driver.kill(node)

    async def _revive(self, *nodes: str) -> None:
        for node in nodes:
            await self._driver.revive(node)
            self._killed = [n for n in self._killed if n != node]

    async def _recover(self, name: str) -> tuple[Invariant, ClusterState | None]:
        state, seconds, problems = await self._wait_whole()
        verdict = judge_recovery(name, seconds if state else None, self._bound, problems)
        return verdict, state

    async def _stop_one(self, state: ClusterState, report: PhaseReport) -> ClusterState | None:
        leader = next((a.leader for a in state.assets if a.name == naming.MESSAGES_STREAM), None)
        victim = leader if leader in self._driver.nodes else self._driver.nodes[0]
        survivors = self._others(victim)
        report.action = f"{victim} killed" + (" (it led the message history)" if leader else "")
        dep = self._deployment
        # The publisher is connected through the victim: it must fail over as a client would.
        publisher = await self._connect(dep.internal, (victim, *survivors), randomize=False)
        connects: list[tuple[float, Outcome]] = []
        samples: dict[str, list[tuple[float, int | None]]] = {}
        killed_at = time.monotonic()
        count = max(3, self._messages)

        async def kill_a_third_in(index: int) -> None:
            nonlocal killed_at
            if index == count // 3:
                self._say(f"stop one: killing {victim}")
                killed_at = time.monotonic()
                await self._kill(victim)

        try:
            async with self._connecting(None, connects), self._asking(survivors, samples):
                published = await self._publish(
                    publisher,
                    self._ids("stop-one", count),
                    before=kill_a_third_in,
                )
                # Keep watching until the election allowance is over: the survivors'
                # APIs must be back to 200 by then, and connects must still be admitted.
                remaining = killed_at + FAILOVER_GRACE + 2.0 - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
        finally:
            await publisher.close()
        self._say(f"stop one: starting {victim} again")
        await self._revive(victim)
        recovery, whole = await self._recover(f"{victim} comes back")
        # Read back once the node is back: a node returning with a stale log must not
        # have cost anything the others acknowledged.
        acked = [p.id for p in published if p.acknowledged]
        stored = await self._read_back(acked)
        report.invariants += [
            judge_acknowledged(acked, stored),
            judge_publishing("publishing keeps working", published, via=f"{victim} (killed)"),
            judge_admitted(connects, damage_at=killed_at),
            judge_survivor_apis(samples, damage_at=killed_at),
            recovery,
        ]
        return whole

    async def _cut_off(self, state: ClusterState, report: PhaseReport) -> ClusterState | None:
        meta = state.meta_leader
        victim = meta if meta in self._driver.nodes else self._driver.nodes[-1]
        majority = self._others(victim)
        report.action = f"{victim} cut off" + (" (the JetStream meta leader)" if meta else "")
        self._isolated.append(victim)
        self._say(f"cut off: isolating {victim}")
        cut_at = time.monotonic()
        await self._driver.isolate(victim)
        connects: list[tuple[float, Outcome]] = []
        samples: dict[str, list[tuple[float, int | None]]] = {}
        async with self._observer(majority) as (nc, sys_nc):

            async def noticed() -> float | None:
                deadline = cut_at + CUT_NOTICE_BOUND
                while time.monotonic() < deadline:
                    seen, _ = await self._state(nc, sys_nc)
                    if seen is not None and victim not in {n.name for n in seen.nodes}:
                        return time.monotonic() - cut_at
                    await asyncio.sleep(_POLL)
                return None

            async def fail_closed() -> None:
                settle = cut_at + FAIL_CLOSED_SETTLE - time.monotonic()
                if settle > 0:
                    await asyncio.sleep(settle)  # within the promised staleness: not judged
                async with self._connecting(victim, connects), self._asking([victim], samples):
                    await asyncio.sleep(FAIL_CLOSED_WINDOW)  # the probes run meanwhile

            notice, published, _ = await asyncio.gather(
                noticed(),
                self._publish(nc, self._ids("cut-off", max(3, self._messages // 2))),
                fail_closed(),
            )
        self._say(f"cut off: healing {victim}")
        await self._driver.heal(victim)
        self._isolated = [n for n in self._isolated if n != victim]
        recovery, whole = await self._recover(f"{victim} heals and catches up")
        acked = [p.id for p in published if p.acknowledged]
        stored = await self._read_back(acked)
        report.invariants += [
            judge_cut(victim, notice, CUT_NOTICE_BOUND),
            judge_publishing(
                "the majority keeps serving writes", published, via=", ".join(majority)
            ),
            judge_acknowledged(acked, stored),
            judge_refused(
                f"{victim} fails closed: no connect admitted", victim, [o for _, o in connects]
            ),
            judge_closed_api(victim, [s for _, s in samples.get(victim, [])]),
            recovery,
        ]
        return whole

    async def _stop_two(self, state: ClusterState, report: PhaseReport) -> ClusterState | None:
        meta = state.meta_leader
        # The one left is not the meta leader: its loss is part of the damage.
        survivor = next((n for n in self._driver.nodes if n != meta), self._driver.nodes[0])
        victims = self._others(survivor)
        report.action = f"{' and '.join(victims)} killed; {survivor} left alone"
        dep = self._deployment
        key = KeyPair.generate(Prefix.USER).public_key  # a user nobody holds the seed of
        handle = f"chaoscheck-{secrets.token_hex(4)}"
        self._say(f"stop two: killing {', '.join(victims)}")
        killed_at = time.monotonic()
        for victim in victims:
            await self._kill(victim)
        connects: list[tuple[float, Outcome]] = []
        samples: dict[str, list[tuple[float, int | None]]] = {}
        status: int | None = None
        settle = killed_at + FAIL_CLOSED_SETTLE - time.monotonic()
        if settle > 0:
            await asyncio.sleep(settle)  # within the promised staleness: not judged
        lone = await self._connect(
            dep.internal, (survivor,), allow_reconnect=False, max_reconnect_attempts=0
        )
        try:
            async with self._connecting(survivor, connects), self._asking([survivor], samples):
                published = await self._publish(lone, self._ids("stop-two", 5), budget=2.0)
                self._written_user = key
                status = await self._api_write(survivor, key, handle)
                remaining = killed_at + FAIL_CLOSED_SETTLE + FAIL_CLOSED_WINDOW - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)  # the probes run meanwhile
        finally:
            await lone.close()
        self._say(f"stop two: starting {', '.join(victims)} again")
        await self._revive(*victims)
        recovery, whole = await self._recover("the cluster comes back")
        after = await self._written(key, handle) if whole else WriteAfter.UNKNOWN
        report.invariants += [
            judge_refused(
                f"connects through {survivor} are denied", survivor, [o for _, o in connects]
            ),
            judge_closed_api(
                survivor,
                [s for _, s in samples.get(survivor, [])],
                name=f"{survivor}'s API answers 503, never 2xx",
            ),
            judge_no_ack_without_quorum(survivor, published),
            judge_write(status, after),
            recovery,
        ]
        return whole

    async def _api_write(self, node: str, key: str, handle: str) -> int | None:
        """Add a user through ``node``'s API once (no retry): its status, None if no answer."""
        dep = self._deployment
        async with ApiClient(
            [dep.api_urls[node]],
            self._admin,
            ca_file=dep.ca_file,
            timeout=API_WRITE_TIMEOUT,
            retry_budget=0.0,
        ) as api:
            try:
                await api.add_user(key, handle)
            except ApiError as exc:
                return exc.status or None
            except Exception:  # noqa: BLE001 - no answer at all (a timeout mid-request)
                return None
        return 201

    def _api(self) -> ApiClient:
        dep = self._deployment
        return ApiClient(list(dep.api_urls.values()), self._admin, ca_file=dep.ca_file)

    async def _written(self, key: str, handle: str) -> WriteAfter:
        async with self._api() as api:
            try:
                user = await api.get_user(key)
            except ApiError as exc:
                return WriteAfter.ABSENT if exc.status == 404 else WriteAfter.UNKNOWN
        whole = user.handle == handle and user.status is Status.ACTIVE
        whole = whole and user.role in (None, Role.MEMBER)
        return WriteAfter.COMPLETE if whole else WriteAfter.PARTIAL

    # -- restore ----------------------------------------------------------------------------------
    async def _restore(self) -> None:
        report = PhaseReport("restore")
        self.report.phases.append(report)
        started = time.monotonic()
        # The undoing runs to its end even when the check is cancelled meanwhile (a Ctrl-C
        # during the restore): a node left frozen or stopped is the one outcome the check
        # must never have. Only the wait for health after it may be cut short.
        await _to_the_end(self._undo(report))
        self._say("restore: waiting for a healthy cluster")
        try:
            whole, seconds, problems = await self._wait_whole()
        except asyncio.CancelledError:
            report.invariants.append(
                Invariant(
                    "every node back, cluster healthy",
                    False,
                    "not waited for (interrupted); see `unibus status`",
                )
            )
            raise
        report.invariants.append(
            judge_recovery(
                "every node back, cluster healthy",
                seconds if whole else None,
                self._bound,
                problems,
            )
        )
        report.seconds = time.monotonic() - started
        if whole is not None:
            await self._clean_up()
        for invariant in report.invariants:
            mark = "ok" if invariant.held else "FAIL"
            self._say(f"restore: {mark} {invariant.name}: {invariant.figure}")

    async def _undo(self, report: PhaseReport) -> None:
        """Heal what is cut off, then start what is stopped; each node tried."""
        undone: list[str] = []
        failures: list[str] = []
        for node in list(dict.fromkeys(self._isolated)):
            try:
                await self._driver.heal(node)
                undone.append(f"{node} healed")
                self._isolated = [n for n in self._isolated if n != node]
            except Exception as exc:  # noqa: BLE001 - every node is tried; reported below
                failures.append(f"healing {node}: {exc}")
        for node in list(dict.fromkeys(self._killed)):
            try:
                await self._driver.revive(node)
                undone.append(f"{node} started")
                self._killed = [n for n in self._killed if n != node]
            except Exception as exc:  # noqa: BLE001 - every node is tried; reported below
                failures.append(f"starting {node}: {exc}")
        report.action = ", ".join(undone) or "nothing left to undo"
        if failures:
            report.invariants.append(
                Invariant(
                    "everything undone",
                    False,
                    "; ".join(failures) + ". Run `unibus chaoscheck --restore` again, or "
                    "see `unibus status` and the driver's commands in the plan",
                )
            )

    async def _clean_up(self) -> None:
        """Remove what the check wrote: its messages, and its user if the write took."""
        if self._published:
            await self._purge()
        if self._written_user is not None:
            await self._revoke(self._written_user)

    async def _purge(self) -> None:
        try:
            nc = await self._connect(self._deployment.internal)
            try:
                await nc.jetstream(timeout=5.0).purge_stream(
                    naming.MESSAGES_STREAM, subject=self._subject
                )
            finally:
                await nc.close()
            self.report.notes.append(f"the check's messages ({self._subject}) purged")
        except Exception as exc:  # noqa: BLE001 - a note for the operator, not an invariant
            self.report.notes.append(
                f"could not purge the check's messages ({self._subject}): {exc}; "
                f"`nats stream purge {naming.MESSAGES_STREAM} --subject {self._subject}` "
                "removes them"
            )

    async def _revoke(self, key: str) -> None:
        try:
            async with self._api() as api:
                try:
                    await api.get_user(key)
                except ApiError as exc:
                    if exc.status == 404:
                        return  # the refused write left nothing: nothing to undo
                    raise
                await api.revoke_user(key)
            self.report.notes.append(f"the check's user {key} was written after all; revoked")
        except Exception as exc:  # noqa: BLE001 - a note for the operator, not an invariant
            self.report.notes.append(
                f"could not revoke the check's user {key}: {exc}; `unibus user revoke` does"
            )
