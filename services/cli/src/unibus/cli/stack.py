"""``unibus up|down|status|scale``: the local stack and the replication of its assets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unibus.cli._common import (
    Subparsers,
    add_json_arg,
    add_target_args,
    print_json,
    progress,
    resolve_target,
)
from unibus.core.connect import connect
from unibus.core.errors import StackError, UnibusError
from unibus.core.log import configure_logging
from unibus.core.provisioning import scale
from unibus.stack.chaos import PHASES, ChaosCheck, Deployment
from unibus.stack.clusterstate import observe, operator_connections
from unibus.stack.drivers import LocalDriver
from unibus.stack.launcher import LocalStack, stop_stack
from unibus.stack.layout import DEFAULT_BASE_PORT, DEFAULT_DIR, StackLayout, StackSpec
from unibus.stack.replace import replace
from unibus.stack.rollout import rollout
from unibus.stack.supervise import (
    KINDS,
    Request,
    RequestLog,
    Result,
    cancel_requested,
    read_request,
    write_result,
)


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    up = verbs.add_parser(
        "up",
        help="start the whole stack as local processes (foreground; Ctrl-C stops it)",
        description="Start a real nats-server cluster with route TLS and callout auth, "
        "provision every asset (R3 with three nodes) and write DIR/stack.json. State "
        "survives restarts. Ctrl-C stops everything this command started.",
    )
    up.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"state directory ({DEFAULT_DIR})"
    )
    up.add_argument("--nodes", type=int, choices=(1, 3), default=3, help="cluster size (3)")
    up.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"client ports start here; routes at +10, monitoring at +20 ({DEFAULT_BASE_PORT})",
    )
    up.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1); a LAN address exposes the stack, with "
        "TLS and enforced auth as always",
    )
    up.set_defaults(handler=_up)

    down = verbs.add_parser(
        "down",
        help="stop a running local stack",
        description="Stop the `unibus up` of DIR and any of its nodes still running (by PID).",
    )
    down.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"state directory ({DEFAULT_DIR})"
    )
    down.set_defaults(handler=_down)

    status = verbs.add_parser(
        "status",
        help="nodes (routes, JetStream meta leader) and asset replication",
        description="Per node: routes up (and over TLS), JetStream meta leader. Per asset: "
        "replicas, leader, followers current, messages; `degraded` below R3 in a cluster. "
        "Exit status 2 when something is degraded or missing.",
    )
    add_target_args(status)
    status.add_argument(
        "--sys-identity",
        type=Path,
        default=None,
        help="system-account seed file for node status (default: the stack's)",
    )
    add_json_arg(status)
    status.set_defaults(handler=_status)

    scale_parser = verbs.add_parser(
        "scale",
        help="change the replicas of every bucket, the history stream and the object store",
        description="Raise every asset to N replicas in place (R1 -> R3 keeps all data).",
    )
    add_target_args(scale_parser)
    scale_parser.add_argument("--replicas", type=int, required=True, help="1..5 (3 for HA)")
    add_json_arg(scale_parser)
    scale_parser.set_defaults(handler=_scale)


# -- up / down ---------------------------------------------------------------------------------
def _up(args: argparse.Namespace) -> int:
    configure_logging(json=False)
    spec = StackSpec.from_base_port(args.nodes, args.base_port, args.bind)
    layout = StackLayout.at(args.dir)
    layout.ensure()
    if layout.up_pid.exists():
        pid = layout.up_pid.read_text().strip()
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            raise StackError(
                f"a stack is already running from {layout.root} (pid {pid}); "
                f"stop it with `unibus down --dir {args.dir}`"
            )
    layout.up_pid.write_text(f"{os.getpid()}\n")
    try:
        return asyncio.run(_run_foreground(LocalStack(layout, spec)))
    finally:
        layout.up_pid.unlink(missing_ok=True)


async def _run_foreground(stack: LocalStack) -> int:
    stop = asyncio.Event()
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # `unibus rollout --dir` and `unibus chaoscheck --dir` ask (and cancel) through SIGHUP
    # (unibus.stack.supervise).
    loop.add_signal_handler(signal.SIGHUP, wake.set)
    progress(f"starting {stack.spec.size} node(s) in {stack.layout.root} ...")
    info = await stack.up(progress=progress)
    try:
        print(f"unibus is up: {len(info.nodes)} node(s), assets at R{info.replicas}")
        for node, api_url in zip(info.nodes, info.api_urls, strict=True):
            print(f"  {node.name}  {node.client_url}  API {api_url}")
        print(f"  CA        {info.ca_file}")
        print(f"  admin key {info.admin_key} (seed: {info.admin_seed_file})")
        print(f"  stack     {stack.layout.stack_file}")
        print("Ctrl-C (or `unibus down`) stops everything.", flush=True)
        while not stop.is_set():
            if wake.is_set():
                wake.clear()
                # A node the request stops is not a node that died: the watch below
                # resumes only once the request is over.
                while not stop.is_set() and (request := read_request(stack.layout)):
                    await _serve_until_done(stack, request, stop, wake)
                continue
            try:
                async with asyncio.timeout(1.0):
                    await _either(stop, wake)
            except TimeoutError:
                if dead := stack.exited():
                    progress(f"node(s) exited unexpectedly: {', '.join(dead)}; stopping")
                    return 1
        return 0
    finally:
        progress("stopping ...")
        stack.stop()


async def _either(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _serve_until_done(
    stack: LocalStack, request: Request, stop: asyncio.Event, wake: asyncio.Event
) -> None:
    """Serve ``request``; cancel it when its requester asks or when `unibus up` stops.

    A cancelled request undoes its work before it answers (the chaos check thaws and
    starts what it stopped), so it is awaited, not abandoned.
    """
    task = asyncio.create_task(_serve_request(stack, request))
    while not task.done():
        await _either_or(task, stop, wake)
        if stop.is_set():
            # Cancelled again and again: the chaos check still undoes what it did (that
            # part ignores cancellation), but need not wait for health; all stops next.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        if wake.is_set():
            wake.clear()
            if cancel_requested(stack.layout, request.id):
                progress(f"{request.kind}: cancelled by its requester; undoing")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _either_or(task: asyncio.Task[None], *events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait([task, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _serve_request(stack: LocalStack, request: Request) -> None:
    log = RequestLog(stack.layout)

    def say(message: str) -> None:
        log(message)
        progress(f"{request.kind}: {message}")

    if request.kind not in KINDS:
        error = f"`unibus up` does not know {request.kind!r} requests: restart it on this version"
        write_result(stack.layout, Result(id=request.id, ok=False, error=error))
        return
    check: ChaosCheck | None = None
    try:
        if request.kind == "chaoscheck":
            check = _chaos_check(stack, request, say)
            run = check.restore_everything() if request.options.get("restore") else check.run()
            report = (await run).to_json()
        elif request.kind == "replace":
            report = await _replace(stack, request, say)
        elif request.kind == "reload":
            report = {"reloaded": stack.reload_nodes()}
            say(f"reloaded {', '.join(report['reloaded'])}")
        else:
            report = await _rollout(stack, request, say)
    except asyncio.CancelledError:
        say("interrupted")
        write_result(
            stack.layout,
            Result(
                id=request.id,
                ok=False,
                interrupted=True,
                error=f"the {request.kind} was interrupted",
                report=check.report.to_json() if check is not None else None,
            ),
        )
        raise
    except UnibusError as exc:
        say(f"failed: {exc}")
        write_result(stack.layout, Result(id=request.id, ok=False, error=str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the requester, then `up` goes on
        say(f"failed: {type(exc).__name__}: {exc}")
        write_result(
            stack.layout,
            Result(id=request.id, ok=False, error=f"{type(exc).__name__}: {exc}"),
        )
        return
    write_result(stack.layout, Result(id=request.id, ok=True, report=report))


async def _rollout(
    stack: LocalStack, request: Request, say: Callable[[str], None]
) -> dict[str, Any]:
    targets = stack.target(), stack.target("system")
    async with operator_connections(*targets, name="unibus-rollout") as (nc, sys_nc):
        report = await rollout(
            LocalDriver(stack), nc, sys_nc, node_bound=request.node_bound, progress=say
        )
    return report.to_json()


async def _replace(
    stack: LocalStack, request: Request, say: Callable[[str], None]
) -> dict[str, Any]:
    targets = stack.target(), stack.target("system")
    async with operator_connections(*targets, name="unibus-replace") as (nc, sys_nc):
        replaced = await replace(
            LocalDriver(stack),
            str(request.options.get("node", "")),
            nc,
            sys_nc,
            wipe=bool(request.options.get("wipe")),
            node_bound=request.node_bound,
            progress=say,
        )
    return replaced.to_json()


def _chaos_check(stack: LocalStack, request: Request, say: Callable[[str], None]) -> ChaosCheck:
    phases = request.options.get("phases") or list(PHASES)
    return ChaosCheck(
        LocalDriver(stack),
        Deployment.from_stack_info(stack.info()),
        phases=[str(p) for p in phases],
        bound=request.node_bound,
        progress=say,
    )


def _down(args: argparse.Namespace) -> int:
    stopped = stop_stack(StackLayout.at(args.dir))
    for what in stopped:
        print(f"stopped {what}")
    if not stopped:
        print(f"nothing was running from {StackLayout.at(args.dir).root}")
    return 0


# -- status / scale ----------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    return asyncio.run(_status_async(args))


async def _status_async(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    sys_target = resolve_target(args, identity="system")
    if args.sys_identity is not None:
        sys_target = dataclasses.replace(sys_target, identity_file=args.sys_identity)
    expected = len(target.urls)
    sys_nc = await connect(sys_target, name="unibus-status", max_reconnect_attempts=3)
    try:
        nc = await connect(target, name="unibus-status", max_reconnect_attempts=3)
        try:
            state = await observe(nc, sys_nc, expected=expected)
        finally:
            await nc.close()
    finally:
        await sys_nc.close()
    nodes, assets = state.nodes, state.assets
    unhealthy = not state.healthy
    if args.json:
        print_json(state.to_json())
    else:
        print(f"nodes ({len(nodes)}/{expected} answering):")
        now = time.time()
        for n in nodes:
            days = n.certificate_days_left(now)
            print(
                f"  {n.name}: routes={n.routes}/{expected - 1} "
                f"route_tls={'mutual' if n.route_tls else 'OFF'} "
                f"meta_leader={n.meta_leader or '-'} jetstream={'on' if n.jetstream else 'off'} "
                f"tls={'on' if n.tls_required else 'off'} "
                f"auth={'on' if n.auth_required else 'off'} nats-server={n.version} "
                f"certificate={'-' if days is None else f'{days:.0f}d'}"
            )
        print("assets:")
        for a in assets:
            print(f"  {a.summary()}")
        for problem in state.problems():
            print(f"problem: {problem}", file=sys.stderr)
        for warning in state.warnings():
            print(f"warning: {warning}", file=sys.stderr)
        print("healthy" if not unhealthy else "DEGRADED", file=sys.stderr)
    return 2 if unhealthy else 0


def _scale(args: argparse.Namespace) -> int:
    return asyncio.run(_scale_async(args))


async def _scale_async(args: argparse.Namespace) -> int:
    nc = await connect(resolve_target(args), name="unibus-scale", max_reconnect_attempts=3)
    try:
        changed = await scale(
            nc.jetstream(timeout=5.0),
            args.replicas,
            progress=None if args.json else progress,
        )
    finally:
        await nc.close()
    if args.json:
        print_json({"replicas": args.replicas, "changed": changed})
    else:
        print(f"{len(changed)} asset(s) changed to R{args.replicas}")
    return 0
