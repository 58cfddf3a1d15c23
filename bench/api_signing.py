"""What request signing costs the control-plane API: signed vs signature checking off.

    uv run python bench/api_signing.py [--runs 5] [--quick]

Starts a 3-node stack with the launcher (provisioned, R3 buckets, no services), then two
API servers as child processes, each the real ``unibus.controlplane`` app on Hypercorn
over HTTPS with the production Hypercorn config, on one NATS connection pair like
``python -m unibus.controlplane``:

* **signed**: the app exactly as shipped;
* **unsigned**: the same app, but in that process only ``authenticate`` is replaced by a
  stub that returns the admin as the caller (no signature verification, no caller
  lookup, no nonce claim). There is no production switch for this: the bench patches the
  module attribute in its own child process.

This process drives both with httpx (async, N keep-alive connections) and sends the very
same pre-signed requests to both (signing happens before the timed window, so the client
does identical work for each). Per route, per concurrency (1 and 32), each run measures
the unsigned and the signed server back to back (order alternating); the medians of
``--runs`` runs are reported with ratios. Then it measures, sequentially, the pieces of
the signed path (Ed25519 verify, the caller lookup with its quorum barrier, the nonce
claim) against the same cluster, and the CPU each server process and the nats-servers
spent per request, to say where the time goes.

Writes ``bench/results/api_signing.json`` and ``bench/results/api_signing.md``. Loopback
only; every process it starts is stopped by its handle at the end. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.signing import body_digest, sign_request

# common.py sits beside this script; under ``python -m bench.api_signing`` its directory is
# not on the path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_THROUGHPUT = 0.5  # signed >= 0.5x unsigned req/s
GOAL_P99 = 2.0  # signed p99 <= 2x unsigned p99
CONCURRENCY = (1, 32)


# -- the server child ---------------------------------------------------------------------------
async def _serve(config: dict[str, Any]) -> None:
    """One API server, set up like ``unibus.controlplane.__main__`` (no metrics listener)."""
    from hypercorn.asyncio import serve

    from unibus.controlplane import app as app_module
    from unibus.controlplane.__main__ import _hypercorn_config
    from unibus.controlplane.auth import Caller
    from unibus.controlplane.metrics import ApiMetrics
    from unibus.controlplane.settings import Settings
    from unibus.core.connect import NatsTarget, connect
    from unibus.core.kvstore import JetStreamStore
    from unibus.core.log import configure_logging
    from unibus.core.signing import HEADER_CONTENT_SHA256, VerifiedRequest

    configure_logging(json=True)
    settings = Settings(
        nats_urls=tuple(config["nats_urls"]),
        ca_file=Path(config["ca_file"]),
        internal_seed=Path(config["internal_seed"]),
        system_seed=Path(config["system_seed"]),
        host="127.0.0.1",
        port=int(config["port"]),
        tls_cert=Path(config["tls_cert"]),
        tls_key=Path(config["tls_key"]),
        cluster_size=len(config["nats_urls"]),
    )

    def target(seed: Path) -> NatsTarget:
        return NatsTarget(urls=settings.nats_urls, ca_file=settings.ca_file, identity_file=seed)

    nc = await connect(target(settings.internal_seed), name="bench-api", randomize=False)
    sys_nc = await connect(target(settings.system_seed), name="bench-api-sys", randomize=False)
    store = await JetStreamStore.open(
        nc, op_timeout=settings.op_timeout, quorum_max_age=settings.quorum_max_age
    )
    context = app_module.Context(
        settings=settings, store=store, nc=nc, sys_nc=sys_nc, metrics=ApiMetrics()
    )
    if config["mode"] == "unsigned":
        admin = (await store.get_user(config["admin_key"])).value

        async def no_signature(request: Any, store: Any, *, skew: float) -> Caller:
            # The body digest is still checked by the handlers against the declared one.
            declared = request.headers.get(HEADER_CONTENT_SHA256, "")
            verified = VerifiedRequest(
                caller=admin.key,
                nonce="bench-unsigned-nonce",
                timestamp=int(time.time()),
                content_sha256=declared,
            )
            return Caller(user=admin, request=verified)

        # This child process only; the signed server runs the module untouched.
        app_module.authenticate = no_signature  # type: ignore[attr-defined]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(
            app_module.build_app(context),
            _hypercorn_config(settings),
            shutdown_trigger=stop.wait,
        )
    finally:
        await nc.close()
        await sys_nc.close()


# -- load -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # as sent: also what is signed
    kind: str  # read / write
    status: int
    what: str
    body: Callable[[int], bytes] | None = None


@dataclass(frozen=True)
class Prepared:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Run:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float  # API server process CPU per request
    nats_cpu_us: float  # all nats-servers' CPU per request
    client_cpu_us: float  # this process's CPU per request


def _presign(route: Route, who: KeyPair, count: int) -> list[Prepared]:
    prepared = []
    for i in range(count):
        body = route.body(i) if route.body is not None else b""
        headers = sign_request(who, route.method, route.path, "", body_digest(body))
        if body:
            headers["Content-Type"] = "application/json"
        prepared.append(Prepared(route.method, route.path, headers, body))
    return prepared


async def _run(
    base_url: str,
    ca: ssl.SSLContext,
    requests: list[Prepared],
    concurrency: int,
    expect: int,
    server_pid: int,
    nats_pids: Sequence[int],
    duration: float | None = None,
) -> Run:
    """Send ``requests`` over ``concurrency`` connections, until sent or ``duration`` is up."""
    # One client per connection: httpcore's pool scans every connection on every request,
    # which at 32 connections costs the load generator more than the server's work.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as clients:
        connections = [
            await clients.enter_async_context(
                httpx.AsyncClient(base_url=base_url, verify=ca, limits=limits, timeout=30.0)
            )
            for _ in range(concurrency)
        ]
        # Open every connection (TLS handshake) before the timed window.
        await asyncio.gather(*(client.get("/openapi.json") for client in connections))
        latencies: list[float] = []
        errors = 0
        position = 0

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal position, errors
            while position < len(requests) and time.perf_counter() < deadline:
                item = requests[position]
                position += 1
                started = time.perf_counter()
                response = await client.request(
                    item.method, item.path, headers=item.headers, content=item.body
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != expect:
                    errors += 1
                    if errors <= 3:
                        print(f"    unexpected {response.status_code}: {response.text[:200]}")

        server_before = common.cpu_seconds([server_pid])
        nats_before = common.cpu_seconds(nats_pids)
        client_before = time.process_time()
        started = time.perf_counter()
        deadline = started + duration if duration is not None else float("inf")
        await asyncio.gather(*(worker(client) for client in connections))
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        server_cpu = common.cpu_seconds([server_pid]) - server_before
        nats_cpu = common.cpu_seconds(nats_pids) - nats_before
    count = len(latencies)
    return Run(
        requests=count,
        seconds=seconds,
        rps=count / seconds,
        p50_ms=common.percentile(latencies, 0.50) * 1e3,
        p99_ms=common.percentile(latencies, 0.99) * 1e3,
        errors=errors,
        server_cpu_us=server_cpu / count * 1e6,
        nats_cpu_us=nats_cpu / count * 1e6,
        client_cpu_us=client_cpu / count * 1e6,
    )


# -- where the time goes ------------------------------------------------------------------------
async def _timed(what: Callable[[int], Awaitable[object]], count: int) -> dict[str, float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await what(i)
        samples.append(time.perf_counter() - started)
    return {
        "p50_us": common.percentile(samples, 0.5) * 1e6,
        "p99_us": common.percentile(samples, 0.99) * 1e6,
    }


async def _components(stack: Any, admin: KeyPair, count: int) -> dict[str, dict[str, float]]:
    """The signed path's pieces, one at a time, against the same cluster."""
    from unibus.core.connect import connect
    from unibus.core.kvstore import JetStreamStore
    from unibus.core.signing import verify_request

    digest = body_digest(b"")
    headers = [sign_request(admin, "GET", "/v1/rooms", "", digest) for _ in range(count)]
    nonces = [secrets.token_urlsafe(24) for _ in range(count)]

    async def sign(i: int) -> object:
        return sign_request(admin, "GET", "/v1/rooms", "", digest)

    async def verify(i: int) -> object:
        return verify_request("GET", "/v1/rooms", "", headers[i], now=time.time())

    nc = await connect(stack.target("internal"), name="bench-components", randomize=False)
    try:
        store = await JetStreamStore.open(nc)
        found = {
            "client: sign_request (Ed25519 sign)": await _timed(sign, count),
            "verify_request (Ed25519 verify)": await _timed(verify, count),
            "caller lookup: authorize_user (R3 barrier write + get)": await _timed(
                lambda i: store.authorize_user(admin.public_key), count
            ),
            "  of which get_user (one KV get)": await _timed(
                lambda i: store.get_user(admin.public_key), count
            ),
            "claim_nonce (R3 create-only write)": await _timed(
                lambda i: store.claim_nonce(admin.public_key, nonces[i]), count
            ),
            "handler of GET /v1/rooms: rooms_of (KV watch scan)": await _timed(
                lambda i: store.rooms_of(admin.public_key), count // 4
            ),
        }
    finally:
        await nc.close()
    return found


# -- orchestration ------------------------------------------------------------------------------
def _routes(admin: KeyPair) -> list[Route]:
    def new_user(i: int) -> bytes:
        key = KeyPair.generate(Prefix.USER).public_key
        return msgspec.json.encode({"key": key, "handle": f"bench-{key[-8:]}"})

    return [
        Route(
            "GET /v1/users/{key}",
            "GET",
            f"/v1/users/{admin.public_key}",
            "read",
            200,
            "one KV get",
        ),
        Route("GET /v1/rooms", "GET", "/v1/rooms", "read", 200, "KV watch scan of the index"),
        Route(
            "POST /v1/room-ids",
            "POST",
            "/v1/room-ids",
            "write",
            201,
            "no store write in the handler",
            body=lambda i: b"{}",
        ),
        Route(
            "POST /v1/users",
            "POST",
            "/v1/users",
            "write",
            201,
            "one R3 create-only write",
            body=new_user,
        ),
    ]


@dataclass
class Pair:
    route: str
    kind: str
    concurrency: int
    unsigned: list[Run] = field(default_factory=list)
    signed: list[Run] = field(default_factory=list)


def _median(runs: list[Run], name: str) -> float:
    return float(statistics.median(getattr(run, name) for run in runs))


def _summary(pair: Pair) -> dict[str, Any]:
    ratios = [s.rps / u.rps for s, u in zip(pair.signed, pair.unsigned, strict=True)]
    p99_ratios = [s.p99_ms / u.p99_ms for s, u in zip(pair.signed, pair.unsigned, strict=True)]
    summary: dict[str, Any] = {"route": pair.route, "kind": pair.kind, "conns": pair.concurrency}
    for mode, runs in (("unsigned", pair.unsigned), ("signed", pair.signed)):
        summary[mode] = {
            name: _median(runs, name)
            for name in ("rps", "p50_ms", "p99_ms", "server_cpu_us", "nats_cpu_us", "client_cpu_us")
        }
        summary[mode]["rps_min"] = min(r.rps for r in runs)
        summary[mode]["rps_max"] = max(r.rps for r in runs)
        summary[mode]["errors"] = sum(r.errors for r in runs)
    summary["throughput_ratio"] = statistics.median(ratios)
    summary["throughput_ratio_range"] = [min(ratios), max(ratios)]
    summary["p99_ratio"] = statistics.median(p99_ratios)
    summary["p99_ratio_range"] = [min(p99_ratios), max(p99_ratios)]
    summary["goal_met"] = (
        summary["throughput_ratio"] >= GOAL_THROUGHPUT and summary["p99_ratio"] <= GOAL_P99
    )
    return summary


def _start_server(config: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_http(url: str, ca: ssl.SSLContext, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"API server exited ({proc.returncode}); see {log}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/openapi.json", verify=ca, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"API server at {url} not up within 60 s; see {log}")


async def _make_rooms(url: str, ca_file: Path, admin: KeyPair, count: int) -> None:
    from unibus.client.api import ApiClient
    from unibus.client.changes import genesis

    async with ApiClient([url], admin, ca_file=ca_file) as client:
        for _ in range(count):
            room_id = await client.new_room_id()
            sealed = {admin.public_key: b"sealed"}
            await client.create_room(genesis(admin, room_id, sealed_by_member=sealed))


async def _bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from unibus.stack.layout import free_ports

    stack = common.new_stack(root, args.nodes)
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        await common.start_stack(stack, services=False)
        certs = stack.layout.certs
        admin = read_seed_file(stack.layout.identity("admin"))
        ca = ssl.create_default_context(cafile=str(certs.client_ca_cert))
        urls: dict[str, str] = {}
        for mode, port in zip(("unsigned", "signed"), free_ports(2), strict=True):
            config = {
                "mode": mode,
                "port": port,
                "nats_urls": [stack.client_url(n) for n in stack.spec.node_names],
                "ca_file": str(certs.client_ca_cert),
                "internal_seed": str(stack.layout.identity("internal")),
                "system_seed": str(stack.layout.identity("system")),
                "tls_cert": str(certs.server_cert(stack.spec.node_names[0])),
                "tls_key": str(certs.server_key(stack.spec.node_names[0])),
                "admin_key": admin.public_key,
            }
            servers[mode] = _start_server(config, root / f"api-{mode}.log")
            urls[mode] = f"https://127.0.0.1:{port}"
            _wait_http(urls[mode], ca, servers[mode], root / f"api-{mode}.log")
        await _make_rooms(urls["signed"], certs.client_ca_cert, admin, 3)

        nats_pids = [pid for n in stack.spec.node_names if (pid := stack.pid(n)) is not None]
        durations = {1: args.seconds_1, 32: args.seconds_32}
        routes = _routes(admin)
        pairs = {(r.name, c): Pair(r.name, r.kind, c) for r in routes for c in CONCURRENCY}
        # Warm both servers up on every route, and learn how many requests a timed run
        # needs (each run sends for a fixed time from a pool signed beforehand).
        rate: dict[tuple[str, str, int], float] = {}
        for route in routes:
            for mode in ("unsigned", "signed"):
                for conns in CONCURRENCY:
                    warm = _presign(route, admin, args.warmup * (4 if conns > 1 else 1))
                    run = await _run(
                        urls[mode], ca, warm, conns, route.status, servers[mode].pid, nats_pids
                    )
                    rate[(route.name, mode, conns)] = run.rps

        for index in range(args.runs):
            for route in routes:
                for conns in CONCURRENCY:
                    pair = pairs[(route.name, conns)]
                    order = ("unsigned", "signed") if index % 2 == 0 else ("signed", "unsigned")
                    for mode in order:
                        key = (route.name, mode, conns)
                        pool = int(rate[key] * durations[conns] * 1.5) + 4 * conns
                        run = await _run(
                            urls[mode],
                            ca,
                            _presign(route, admin, pool),
                            conns,
                            route.status,
                            servers[mode].pid,
                            nats_pids,
                            duration=durations[conns],
                        )
                        rate[key] = max(rate[key], run.rps)
                        getattr(pair, mode).append(run)
                        print(
                            f"run {index + 1}/{args.runs} {route.name:22} c={conns:<2} "
                            f"{mode:8} {run.rps:7.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                            f"p99 {run.p99_ms:6.2f} ms  errors {run.errors}",
                            flush=True,
                        )

        components = await _components(stack, admin, args.component_samples)
        return {
            "routes": {
                r.name: {"kind": r.kind, "handler": r.what, "status": r.status} for r in routes
            },
            "summaries": [_summary(pair) for pair in pairs.values()],
            "runs": [
                {
                    "route": pair.route,
                    "conns": pair.concurrency,
                    "unsigned": [asdict(r) for r in pair.unsigned],
                    "signed": [asdict(r) for r in pair.signed],
                }
                for pair in pairs.values()
            ],
            "components": components,
        }
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        stack.stop()


def _markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# API request signing: signed vs signature checking off",
        "",
        f"_{meta['runs']} runs, {meta['date']}; {meta['nodes']}-node stack on loopback, R3 "
        f"buckets; loadavg1 {meta['loadavg_before']:.1f} → {meta['loadavg_after']:.1f}; "
        f"total {meta['seconds']:.0f} s_",
        "",
        "Same code, two API server processes (Hypercorn, TLS, production config) on the "
        "same cluster; the unsigned one has `authenticate` replaced by a stub returning "
        "the admin. Both get the same kind of requests, signed before each timed run "
        f"(runs of {meta['seconds_per_run']['1']} s at 1 connection and "
        f"{meta['seconds_per_run']['32']} s at 32; load from httpx in a separate "
        "process, one client per keep-alive connection). Medians of the runs; the "
        "ratios are medians of the per-run ratios (signed and unsigned measured back to "
        f"back, order alternating). Goal: signed >= {GOAL_THROUGHPUT}x unsigned req/s and "
        f"p99 <= {GOAL_P99}x unsigned p99.",
        "",
        "| route | handler | conns | unsigned req/s | signed req/s | signed/unsigned "
        "(range) | unsigned p50 / p99 ms | signed p50 / p99 ms | p99 ratio (range) | goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summaries"]:
        u, g = s["unsigned"], s["signed"]
        lo, hi = s["throughput_ratio_range"]
        plo, phi = s["p99_ratio_range"]
        lines.append(
            f"| {s['route']} | {result['routes'][s['route']]['handler']} | {s['conns']} "
            f"| {u['rps']:,.0f} | {g['rps']:,.0f} | {s['throughput_ratio']:.2f} "
            f"({lo:.2f}-{hi:.2f}) | {u['p50_ms']:.2f} / {u['p99_ms']:.2f} "
            f"| {g['p50_ms']:.2f} / {g['p99_ms']:.2f} | {s['p99_ratio']:.2f} "
            f"({plo:.2f}-{phi:.2f}) | {'met' if s['goal_met'] else '**missed**'} |"
        )
    lines += [
        "",
        "CPU per request (medians, µs): the API server process, the three nats-servers "
        "together, and the load generator.",
        "",
        "| route | conns | server unsigned | server signed | nats unsigned | nats signed "
        "| client |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["summaries"]:
        u, g = s["unsigned"], s["signed"]
        lines.append(
            f"| {s['route']} | {s['conns']} | {u['server_cpu_us']:,.0f} "
            f"| {g['server_cpu_us']:,.0f} | {u['nats_cpu_us']:,.0f} | {g['nats_cpu_us']:,.0f} "
            f"| {g['client_cpu_us']:,.0f} |"
        )
    lines += [
        "",
        "Pieces of the signed path, measured one at a time (sequential, same cluster):",
        "",
        "| piece | p50 µs | p99 µs |",
        "|---|---|---|",
    ]
    for name, figures in result["components"].items():
        lines.append(f"| {name} | {figures['p50_us']:,.0f} | {figures['p99_us']:,.0f} |")
    lines += ["", "## Where the time goes", "", *result["analysis"], ""]
    return "\n".join(lines)


def _analysis(result: dict[str, Any]) -> list[str]:
    c = result["components"]

    def p50(name: str) -> float:
        return float(next(v["p50_us"] for k, v in c.items() if k.startswith(name)))

    verify, lookup, nonce = p50("verify_request"), p50("caller lookup"), p50("claim_nonce")
    auth = verify + lookup + nonce
    notes = [
        f"- Authentication adds, per request, in sequence: Ed25519 verify ≈ {verify:,.0f} µs "
        f"of CPU; the caller lookup ≈ {lookup:,.0f} µs when it commits a quorum barrier "
        f"(an R3 write) before reading the user (the read alone ≈ "
        f"{p50('  of which'):,.0f} µs); the nonce claim ≈ {nonce:,.0f} µs (an R3 "
        f"create-only write). Every node runs `sync_interval: always`, so each write waits "
        f"for an fsync on a quorum. Measured alone, with a barrier each time: "
        f"≈ {auth / 1000:.1f} ms p50, the signature ≈ {verify / auth:.0%} of it. The API "
        f"itself reuses a barrier for up to `UNIBUS_API_QUORUM_MAX_AGE` (0.5 s) and shares "
        f"one in flight among concurrent requests, so a served request pays the read and "
        f"the nonce write, and a barrier now and then.",
        "- So on a read route the signed/unsigned comparison mostly measures those two "
        "writes: an unsigned read does no write at all. The cheaper the handler, the lower "
        "the ratio: POST /v1/room-ids does no store work, so it shows the cost of "
        "authentication alone.",
    ]
    meta = result.get("meta", {})
    busiest = max(meta.get("loadavg_before", 0.0), meta.get("loadavg_after", 0.0))
    if busiest > (meta.get("cpus") or 2):
        notes.append(
            f"- The machine was busy during this run (loadavg1 up to {busiest:.1f} on "
            f"{meta.get('cpus')} cores; this benchmark's own five processes account for "
            "about 2-3 of it): per-run ratios spread "
            "widely (see the ranges), so read single figures with care; the structural "
            "costs above do not depend on it."
        )
    for s in result["summaries"]:
        u, g = s["unsigned"], s["signed"]
        verdict = "met" if s["goal_met"] else "**missed**"
        head = (
            f"- {s['route']}, {s['conns']} conn(s): goal {verdict} "
            f"(throughput {s['throughput_ratio']:.2f}x, p99 {s['p99_ratio']:.2f}x). "
        )
        if s["conns"] == 1:
            added = g["p50_ms"] - u["p50_ms"]
            notes.append(
                head + f"One request at a time, so latency bounds it: signed adds "
                f"{added:.1f} ms to the p50 (the sequential pieces above: "
                f"≈ {auth / 1000:.1f} ms)."
            )
        else:
            cost = {
                mode: v["server_cpu_us"] + v["nats_cpu_us"] + v["client_cpu_us"]
                for mode, v in (("unsigned", u), ("signed", g))
            }
            notes.append(
                head + "32 connections saturate the 2 cores, so CPU bounds it. CPU per "
                f"request, API server + nats-servers + load generator: unsigned "
                f"{u['server_cpu_us']:,.0f} + {u['nats_cpu_us']:,.0f} + "
                f"{u['client_cpu_us']:,.0f} µs, signed {g['server_cpu_us']:,.0f} + "
                f"{g['nats_cpu_us']:,.0f} + {g['client_cpu_us']:,.0f} µs, a ratio of "
                f"{cost['unsigned'] / cost['signed']:.2f} (the throughput ratio if CPU "
                "alone bounded it). "
                "The extra API-server CPU is the verify plus three JetStream round trips; "
                "the extra nats-server CPU is replicating and fsyncing two writes."
            )
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3, choices=(1, 3))
    parser.add_argument("--seconds-1", type=float, default=1.2, help="per run, 1 connection")
    parser.add_argument("--seconds-32", type=float, default=2.0, help="per run, 32 conns")
    parser.add_argument("--warmup", type=int, default=40, help="requests (x4 at 32 conns)")
    parser.add_argument("--component-samples", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="1 run, small sizes (smoke test)")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS} (none with --quick)")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(json.loads(args.serve)))
        return 0
    if args.quick:
        args.runs, args.seconds_1, args.seconds_32, args.warmup = 1, 0.4, 0.6, 16
        args.component_samples = 40

    started = time.monotonic()
    loadavg_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="unibus-bench-api-"))
    try:
        result = asyncio.run(_bench(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": args.runs,
        "nodes": args.nodes,
        "seconds_per_run": {"1": args.seconds_1, "32": args.seconds_32},
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg()[0],
        "seconds": time.monotonic() - started,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    result["analysis"] = _analysis(result)
    out = args.out or (None if args.quick else RESULTS)
    common.write_report(out, "api_signing", result, _markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
