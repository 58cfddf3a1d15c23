"""Helpers for integration tests: started stacks, polling with a deadline, bounds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from unibus.client.profile import read_stack_info
from unibus.core import naming
from unibus.core.connect import NatsTarget, connect
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import EpochRef, Role, RoomRecord, Status, UserRecord
from unibus.stack.launcher import LocalStack
from unibus.stack.layout import StackLayout, StackSpec

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``until(result)`` holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            if until(last):
                return last
        except Exception as exc:  # noqa: BLE001 - the probe may fail while the cluster settles
            last_error = exc
        await asyncio.sleep(interval)
    pytest.fail(f"{what} did not hold within {timeout}s (last={last!r}, error={last_error!r})")


class StackFactory:
    """Makes started stacks and stops every one of them at teardown."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._stacks: list[LocalStack] = []
        self._connections: list[NATS] = []

    async def start(
        self,
        *,
        nodes: int = 3,
        environ: dict[str, str] | None = None,
        provision: bool = True,
        replicas: int | None = None,
        services: bool = False,
    ) -> LocalStack:
        directory = self._root / f"stack{len(self._stacks)}"
        stack = LocalStack(
            StackLayout.at(directory), StackSpec.with_free_ports(nodes), environ=environ or {}
        )
        self._stacks.append(stack)
        stack.start()
        await stack.wait_ready(budget=60.0)
        if provision:
            await stack.provision(replicas=replicas)
        if services:
            stack.start_services()
            await stack.wait_services_ready()
        return stack

    async def connect(
        self, stack: LocalStack, identity: str = "internal", **kwargs: object
    ) -> NATS:
        nc = await connect(stack.target(identity, **kwargs), name="unibus-test")  # type: ignore[arg-type]
        self._connections.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self._connections:
            if not nc.is_closed:
                await nc.close()
        for stack in self._stacks:
            stack.stop()


@asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[None]:
    """Fail (instead of hanging the suite) if the block outlives ``seconds``."""
    async with asyncio.timeout(seconds):
        yield


@asynccontextmanager
async def probing(
    attempt: Callable[[], Awaitable[object]], *, every: float = 0.2
) -> AsyncIterator[list[tuple[float, BaseException | None]]]:
    """Run ``attempt`` every ``every`` seconds while the block runs, as an outside probe
    would; yields the outcomes as (start time, the exception or None)."""
    outcomes: list[tuple[float, BaseException | None]] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                await attempt()
                outcomes.append((began, None))
            except Exception as exc:  # noqa: BLE001 - the outcome is what is asserted
                outcomes.append((began, exc))
            await asyncio.sleep(max(0.0, every - (time.monotonic() - began)))

    task = asyncio.create_task(probe())
    try:
        yield outcomes
    finally:
        stop.set()
        await task


async def connect_once(
    target: NatsTarget, *, connect_timeout: float = 5.0, refused_passes: bool = False
) -> None:
    """One fresh connection to ``target``, admitted and closed, with no retry of a node.

    Admitted means the server answered the CONNECT's PING with a PONG, which it does
    only once the callout allowed the client. nats-py's connect waits for that answer but
    also returns, unconnected, when the server closed the socket instead (a refusal whose
    -ERR was lost in the close), so the state right after it is what tells.

    The nodes are tried in order, each once. One that cannot be reached (stopped, or hung
    past ``connect_timeout``) passes to the next, as a client with a pool does. One that
    refuses or drops the connection fails the attempt at once, unless ``refused_passes``:
    then it passes to the next too, and only a pass in which no node admits fails. That
    is what a pool client sees of a node being restarted, which may refuse for the
    moment before the callout serves it again. nats-py's own pool would retry a refusing
    node and hide the refusal either way. The default timeout outlasts the server's wait
    for a callout answer, so a slow answer is not taken for a dead node.
    """
    failures: list[str] = []
    for url in target.urls:
        try:
            nc = await connect(
                dataclasses.replace(target, urls=(url,)),
                name="unibus-test-probe",
                connect_timeout=connect_timeout,
                allow_reconnect=False,
            )
        except (ConnectionRefusedError, TimeoutError) as exc:
            failures.append(f"{url} unreachable: {exc!r}")
            continue
        except nats.errors.Error as exc:
            if not refused_passes:
                raise
            failures.append(f"{url} refused: {exc!r}")
            continue
        admitted = nc.is_connected  # before any await: the read loop has not run yet
        await nc.close()
        if admitted:
            return
        if not refused_passes:
            raise ConnectionError(f"{url} closed the connection instead of admitting it")
        failures.append(f"{url} closed the connection instead of admitting it")
    raise ConnectionError(f"no node admitted the client: {failures}")


def admin_target(root: Path) -> NatsTarget:
    """The first admin of the stack ``unibus up --dir root`` runs, over every node."""
    info = read_stack_info(root)
    return NatsTarget(
        urls=tuple(info.nats_urls),
        ca_file=Path(info.ca_file),
        identity_file=Path(info.admin_seed_file),
    )


async def run_cli(*args: str, timeout: float = 120.0) -> tuple[int, str, str]:
    """Run the ``unibus`` command in a child process; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unibus.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def rotate_with_rollouts(verb: str, root: Path) -> list[str]:
    """``unibus VERB stage``, ``switch`` and ``retire`` on the stack at ``root``, each
    followed by a rollout, while a client connects as the first admin every 200 ms. Fails
    on any refused connect; returns the phase each step reported."""
    phases = []
    target = admin_target(root)
    async with (
        bounded(1100),
        probing(lambda: connect_once(target, refused_passes=True), every=0.2) as outcomes,
    ):
        for step in ("stage", "switch", "retire"):
            code, out, err = await run_cli(verb, step, "--dir", str(root), "--json")
            assert code == 0, err
            phases.append(json.loads(out)["phase"])
            code, _, err = await run_cli("rollout", "--dir", str(root), timeout=600)
            assert code == 0, f"rollout after {verb} {step}: {err[-2000:]}"
    refused = [repr(e) for _, e in outcomes if e is not None]
    assert len(outcomes) > 50, "the probe barely ran"
    assert refused == [], f"connects refused during the {verb} rotation: {refused[:5]}"
    return phases


@asynccontextmanager
async def running_up(
    root: Path, *args: str, ready_within: float = 120.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``unibus up --dir root`` on free ports (``args``: more options), until its stack
    file is written; stopped (``unibus down``, then by its PID) when the block ends."""
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unibus.cli",
        "up",
        "--dir",
        str(root),
        "--base-port",
        str(free_port_block(60)),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    layout = StackLayout.at(root)
    try:

        async def stack_file_written() -> bool:
            if up.returncode is not None:
                raise AssertionError(f"unibus up exited early ({up.returncode})")
            return layout.stack_file.exists()

        await eventually(stack_file_written, until=bool, timeout=ready_within, what="stack.json")
        yield up
    finally:
        await run_cli("down", "--dir", str(root))
        if up.returncode is None:
            up.kill()
        await up.wait()


def free_port_block(size: int, *, attempts: int = 50) -> int:
    """A base port such that ``base .. base+size-1`` are all free right now."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 60000 - size)
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    pytest.fail(f"no block of {size} free ports found")


# -- records written straight into the store (bypassing the API's signed chain) -------------------
def user_record(key: str, handle: str, role: Role = Role.MEMBER) -> UserRecord:
    now = time.time()
    return UserRecord(
        key=key, handle=handle, role=role, status=Status.ACTIVE, created_at=now, updated_at=now
    )


def room_record(owner: str, *members: str, epoch: int = 1, key_id: str = "k1") -> RoomRecord:
    now = time.time()
    return RoomRecord(
        room_id=naming.new_room_id(),
        owner=owner,
        members=tuple(sorted({owner, *members})),
        epochs=(EpochRef(epoch=epoch, key_id=key_id),),
        created_at=now,
        updated_at=now,
    )


async def create_room(store: JetStreamStore, owner: str, *members: str) -> str:
    room = room_record(owner, *members)
    await store.create_room(room, members=(), sealed_keys=())
    return room.room_id


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")
