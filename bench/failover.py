"""What a node loss costs the users of the other two nodes, beside a static nkey anchor.

    uv run python bench/failover.py [--stacks local,compose]
                                    [--events stop-leader,kill-leader,stop-idle,kill-idle]
                                    [--render]

On each stack (the launcher's local processes, then the repository's ``compose.yaml`` with
the images of ``./scripts/containers``) starts 3 nodes (provisioned, R3, services on), adds
a member through the admin API and gives it a room. Then, for each event, every 200 ms, four
probes run side by side against the two nodes that stay up, none of them retried:

* **member connect** — a fresh TLS + nkey connection of the allowlisted member, decided by
  the callout (connect, flush, close);
* **static connect** — the same for the internal identity, a static nkey user in the server
  config that the callout never sees: the anchor, what nats-server alone would refuse;
* **API write** — one signed ``POST /v1/users`` (add a user) to a surviving node's API,
  no client retry;
* **publish** — one acknowledged publish by the member into its room (the history stream),
  on a connection that was open before the event, 2 s for the ack.

The events: a planned stop, a bare SIGTERM and a SIGKILL, of the node made to lead ``UNIBUS_users``,
``UNIBUS_rooms`` and ``UNIBUS_nonces`` (by leader step-down with a preferred placement) and
of a node leading no stream and not the meta group. A planned stop is the launcher's
``stop_node`` (lame duck with SIGUSR2, then SIGTERM once the leaderships are handed over)
or ``docker compose stop`` (whose stop signal is SIGUSR2); a bare SIGTERM skips the
hand-over (nats-server then steps its leaders down as it exits); a SIGKILL is ``kill -9`` or
``docker compose kill``. Beside the probes, the *election time*: from the signal until each
stream the node led reports a new leader. After each event the node is started again and
the next event waits until every asset has a leader and two current followers.

Writes ``bench/results/failover.json`` and ``bench/results/failover.md`` (``--render``
rewrites the report from the JSON alone). Loopback only; every process it starts is
stopped by its handle. About 4 minutes per stack. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

# common.py sits beside this script; under ``python -m bench.failover`` its directory is
# not on the path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SCRIPT: Final = Path(__file__).resolve()
RESULTS: Final = SCRIPT.parent / "results"
PROBE_EVERY: Final = 0.2
BEFORE: Final = 3.0
"""Seconds probed before the event, so a window that starts early shows."""
AFTER: Final = 20.0
"""Seconds probed after the event: well past an election (4-9 s after a SIGKILL)."""
PROBES: Final = ("member_connect", "static_connect", "api_write", "publish")
EVENTS: Final = ("stop-leader", "term-leader", "kill-leader", "stop-idle", "kill-idle")
"""stop: the planned stop of the tooling (lame duck, then exit); term: a bare SIGTERM that
skips the hand-over; kill: SIGKILL."""
STACKS: Final = ("local", "compose")
DOCKER_STATE: Final = "/var/tmp/unibus-docker"  # noqa: S108 - where scripts/containers keeps it
LED_STREAMS: Final = ("KV_UNIBUS_users", "KV_UNIBUS_rooms", "KV_UNIBUS_nonces")


@dataclass
class ProbeRecord:
    outcomes: list[tuple[float, bool]] = field(default_factory=list)
    """(seconds since the event, succeeded)"""

    @property
    def failed(self) -> int:
        return sum(1 for _, ok in self.outcomes if not ok)

    @property
    def window(self) -> float:
        """First to last failed probe, plus one probe interval; 0 when none failed."""
        failed = [t for t, ok in self.outcomes if not ok]
        return (failed[-1] - failed[0] + PROBE_EVERY) if failed else 0.0


@dataclass
class EventResult:
    event: str
    node: str
    led: list[str]
    election_s: float | None
    """Signal to the last of ``LED_STREAMS`` the node led answering with a new leader."""
    elections_s: dict[str, float]
    """The same, per stream."""
    probes: dict[str, dict[str, Any]]


async def _probe_forever(
    name: str,
    attempt: Callable[[], Awaitable[None]],
    record: ProbeRecord,
    start: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        began = time.monotonic()
        try:
            async with asyncio.timeout(3.0):
                await attempt()
            ok = True
        except Exception:  # noqa: BLE001 - any failure is what the probe counts
            ok = False
        record.outcomes.append((round(began - start, 3), ok))
        await asyncio.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - began)))


class LocalHandle:
    """The launcher's stack: a planned stop is ``stop_node`` (lame duck, then SIGTERM)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.stack = common.new_stack(root)
        self.names: tuple[str, ...] = self.stack.spec.node_names

    async def start(self) -> Any:
        await common.start_stack(self.stack)
        return self.stack.info()

    def stop_node(self, node: str, how: str) -> None:
        self.stack.stop_node(node, kill=how == "kill", hand_over=how == "stop")

    async def start_node(self, node: str) -> None:
        self.stack.start_node(node)
        await self.stack.wait_ready(budget=60.0)

    def close(self) -> None:
        self.stack.stop()


class ComposeHandle:
    """The repository's compose.yaml on free loopback ports, under a project of its own:
    a planned stop is ``docker compose stop`` (its stop signal, SIGUSR2: lame duck), an
    unplanned one ``docker compose kill`` (SIGKILL)."""

    kind = "compose"

    def __init__(self, root: Path) -> None:
        import secrets

        from unibus.stack.compose import NODE_NAMES

        self.directory = root / "compose"
        self.project = f"unibus-bench-{secrets.token_hex(4)}"
        self.names = tuple(NODE_NAMES)

    def compose(self, *args: str, timeout: float = 300.0) -> None:
        import shutil
        import subprocess

        env = dict(os.environ)
        state = Path(env.get("UNIBUS_DOCKER_STATE", DOCKER_STATE))
        env.setdefault("DOCKER_CONFIG", str(state / "docker-config"))
        base = state / "python-base"
        if "UNIBUS_PYTHON_BASE" not in env and base.is_file():
            env["UNIBUS_PYTHON_BASE"] = base.read_text().strip()
        repo = SCRIPT.parents[1]
        command = [
            shutil.which("docker") or "docker",
            "compose",
            "--project-directory",
            str(repo),
            "-f",
            str(repo / "compose.yaml"),
            "-p",
            self.project,
            "--env-file",
            str(self.directory / "compose.env"),
            *args,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"docker compose {args[0]} failed: {done.stderr[-2000:]}")

    async def start(self) -> Any:
        from unibus.client.profile import read_stack_info
        from unibus.stack.compose import ComposeSpec, render_compose_dir
        from unibus.stack.layout import free_ports
        from unibus.stack.natsconf import NatsToggles

        ports = free_ports(6)
        spec = ComposeSpec(nats_ports=tuple(ports[:3]), api_ports=tuple(ports[3:]))
        render_compose_dir(self.directory, spec, toggles=NatsToggles())
        await asyncio.to_thread(
            self.compose, "up", "-d", "--no-build", "--wait", "--wait-timeout", "240"
        )
        return read_stack_info(self.directory)

    def stop_node(self, node: str, how: str) -> None:
        if how == "kill":
            self.compose("kill", node)
        elif how == "term":
            self.compose("kill", "--signal", "SIGTERM", node)
        else:
            self.compose("stop", node)  # waits for the lame-duck exit (about 32 s)

    async def start_node(self, node: str) -> None:
        await asyncio.to_thread(self.compose, "start", node)

    def close(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10")


class Bench:
    def __init__(self, handle: LocalHandle | ComposeHandle, info: Any, root: Path) -> None:
        self.handle = handle
        self.info = info
        self.root = root
        self.names = handle.names

    def client_url(self, node: str) -> str:
        return str(self.info.nats_urls[self.names.index(node)])

    def api_url(self, node: str) -> str:
        return str(self.info.api_urls[self.names.index(node)])

    def target(self, identity_file: str | Path, nodes: tuple[str, ...] = ()) -> Any:
        from unibus.core.connect import NatsTarget

        return NatsTarget(
            urls=tuple(self.client_url(n) for n in (nodes or self.names)),
            ca_file=self.ca_file,
            identity_file=Path(identity_file),
        )

    async def setup(self) -> None:
        from unibus.client.api import ApiClient
        from unibus.client.sdk import Client
        from unibus.core.connect import connect
        from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file

        info = self.info
        self.ca_file = Path(info.ca_file)
        self.admin_key = read_seed_file(Path(info.admin_seed_file))
        self.member = KeyPair.generate(Prefix.USER)
        self.member_file = self.root / "member.nk"
        write_seed_file(self.member_file, self.member.seed)
        api_urls = [self.api_url(n) for n in self.names]
        async with ApiClient(api_urls, self.admin_key, ca_file=self.ca_file) as admin:
            await admin.add_user(self.member.public_key, "failover-member")
        async with await Client.open(
            identity=self.member,
            nats_urls=[self.client_url(n) for n in self.names],
            api_urls=api_urls,
            ca_file=self.ca_file,
        ) as client:
            room = await client.create_room([])
            self.room_id = room.room_id
        self.internal = await connect(self.target(info.internal_id_file), name="bench-failover")
        self.system = await connect(self.target(info.sys_id_file), name="bench-failover-sys")

    async def close(self) -> None:
        await self.internal.close()
        await self.system.close()

    # -- leadership -------------------------------------------------------------------------------
    async def newly_led(self, streams: list[str], excluding: str) -> set[str]:
        from unibus.stack.leadership import leaders

        found = await leaders(self.internal, streams, timeout=0.3)
        return {s for s, leader in found.items() if leader not in (None, excluding)}

    async def wait_current(self) -> None:
        """Every asset led, at R3, with its followers current: the cluster is whole again."""
        if not await common.wait_whole(self.internal):
            raise RuntimeError("the cluster did not become whole again within 120 s")

    # -- probes -----------------------------------------------------------------------------------
    async def run_event(self, event: str) -> EventResult:
        from unibus.client.api import ApiClient
        from unibus.core import naming
        from unibus.core.connect import NatsTarget, connect
        from unibus.core.nkeys import KeyPair, Prefix
        from unibus.core.provisioning import ASSETS
        from unibus.stack.leadership import (
            leaders,
            meta_leader,
            move_leaders,
            move_meta_leader,
        )

        kind, role = event.split("-")
        await self.wait_current()
        streams = [asset.stream for asset in ASSETS]
        if role == "leader":
            node = self.names[0]
            await move_leaders(self.internal, LED_STREAMS, to=node)
        else:
            node = self.names[-1]
            await move_leaders(self.internal, streams, away_from=node)
            await move_meta_leader(self.system, away_from=node)
        led = [s for s, who in (await leaders(self.internal, streams)).items() if who == node]
        if await meta_leader(self.system) == node:
            led.append("meta")
        survivors = tuple(n for n in self.names if n != node)
        member_target = self.target(self.member_file, survivors)
        static_target = self.target(self.info.internal_id_file, survivors)
        publisher = await connect(
            member_target,
            name="bench-failover-publisher",
            inbox_prefix=naming.inbox_prefix(self.member.public_key),
        )
        api = ApiClient(
            [self.api_url(n) for n in survivors],
            self.admin_key,
            ca_file=self.ca_file,
            timeout=3.0,
            retry_budget=0.0,
        )
        subject = naming.room_subject(self.room_id)
        counter = iter(range(10**9))

        async def fresh_connect(target: NatsTarget) -> None:
            nc = await connect(target, name="bench-probe", allow_reconnect=False)
            try:
                await nc.flush(timeout=2.0)
            finally:
                await nc.close()

        async def api_write() -> None:
            await api.add_user(KeyPair.generate(Prefix.USER).public_key, "probe")

        async def publish() -> None:
            msg_id = f"failover-{os.getpid()}-{next(counter)}"
            reply = await publisher.request(
                subject, b"probe", timeout=2.0, headers={"Nats-Msg-Id": msg_id}
            )
            if b'"error"' in reply.data:
                raise RuntimeError(reply.data.decode())

        attempts: dict[str, Callable[[], Awaitable[None]]] = {
            "member_connect": lambda: fresh_connect(member_target),
            "static_connect": lambda: fresh_connect(static_target),
            "api_write": api_write,
            "publish": publish,
        }
        records = {name: ProbeRecord() for name in PROBES}
        stop = asyncio.Event()
        start = time.monotonic() + BEFORE
        tasks = [
            asyncio.create_task(_probe_forever(n, attempts[n], records[n], start, stop))
            for n in PROBES
        ]
        waiting = [s for s in LED_STREAMS if s in led]
        elections: dict[str, float] = {}
        try:
            await asyncio.sleep(BEFORE)
            signalled = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(self.handle.stop_node, node, kind))
            while time.monotonic() - signalled < AFTER:
                if len(elections) < len(waiting):
                    for stream in await self.newly_led(waiting, excluding=node):
                        elections.setdefault(stream, round(time.monotonic() - signalled, 2))
                await asyncio.sleep(0.05)
            await stopping
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await api.aclose()
            await publisher.close()
        await self.handle.start_node(node)
        probes = {
            name: {
                "attempts": len(r.outcomes),
                "failed": r.failed,
                "window_s": round(r.window, 2),
                "failed_at": [t for t, ok in r.outcomes if not ok],
            }
            for name, r in records.items()
        }
        election = max(elections.values()) if len(elections) == len(waiting) and waiting else None
        return EventResult(event, node, led, election, elections, probes)


async def _bench_on(kind: str, events: tuple[str, ...], root: Path) -> list[EventResult]:
    handle = LocalHandle(root) if kind == "local" else ComposeHandle(root)
    results: list[EventResult] = []
    try:
        bench = Bench(handle, await handle.start(), root)
        await bench.setup()
        for event in events:
            result = await bench.run_event(event)
            results.append(result)
            summary = ", ".join(
                f"{name} {p['failed']}/{p['attempts']} ({p['window_s']} s)"
                for name, p in result.probes.items()
            )
            print(
                f"{kind:7} {event:12} {result.node} led {result.led or 'nothing'}; "
                f"election {result.election_s} s; {summary}",
                flush=True,
            )
        await bench.close()
    finally:
        handle.close()
    return results


async def _bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    runs = {}
    for kind in args.stacks:
        results = await _bench_on(kind, args.events, root / kind)
        runs[kind] = [asdict(r) for r in results]
    return {
        "probe_every_s": PROBE_EVERY,
        "probed_after_s": AFTER,
        "stacks": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }


def _render(data: dict[str, Any]) -> str:
    lines = [
        "# Failover: what a node loss costs the other two nodes' users",
        "",
        "Produced by `bench/failover.py` (the method is in its docstring): probes every "
        f"{data['probe_every_s']} s against the two nodes that stay up, none retried, for "
        f"{data['probed_after_s']:g} s after the signal. A window runs from the first to the "
        "last failed probe. The static connect is the anchor: the internal identity, a static "
        "nkey user that nats-server decides without the callout. The election is the time "
        "from the signal until each stream the node led answers with a new leader.",
        "",
        f"Run on {data['date']}, {data['machine']['cpus']} CPUs, "
        f"Python {data['machine']['python']}.",
    ]
    for kind, events in data["stacks"].items():
        lines += [
            "",
            f"## {kind} stack",
            "",
            "| event | node led | election | member connects refused | static connects refused "
            "| API writes failed | publishes failed |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_row(event) for event in events]
    return "\n".join(lines) + "\n"


def _row(event: dict[str, Any]) -> str:
    cells = []
    for name in PROBES:
        p = event["probes"][name]
        cells.append(f"{p['window_s']} s ({p['failed']} of {p['attempts']})")
    led = ", ".join(s.removeprefix("KV_") for s in event["led"]) or "nothing"
    per_stream = ", ".join(
        f"{stream.removeprefix('KV_UNIBUS_')} {seconds} s"
        for stream, seconds in sorted(event.get("elections_s", {}).items())
    )
    election = "—" if event["election_s"] is None else f"{event['election_s']} s"
    if per_stream:
        election += f" ({per_stream})"
    return f"| {event['event']} {event['node']} | {led} | {election} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_list_option(parser, "--events", EVENTS, "comma-separated, from {}")
    common.add_list_option(
        parser,
        "--stacks",
        STACKS,
        "comma-separated, from {} (compose needs ./scripts/containers first)",
    )
    parser.add_argument("--render", action="store_true", help="rewrite the report from the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    args = parser.parse_args()
    for what, given, known in (("event", args.events, EVENTS), ("stack", args.stacks, STACKS)):
        for name in given:
            if name not in known:
                parser.error(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    json_path = args.out / "failover.json"
    if not args.render:
        with tempfile.TemporaryDirectory(prefix="unibus-failover-") as tmp:
            data = asyncio.run(_bench(args, Path(tmp)))
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
    data = json.loads(json_path.read_text())
    (args.out / "failover.md").write_text(_render(data))
    print(f"wrote {json_path} and {args.out / 'failover.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
