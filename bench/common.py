"""Helpers the benchmark scripts of ``bench/`` share: statistics, CPU sampling, child
processes, the local stack, the run's metadata and the result files.

Imported as ``common``: each script puts its own directory on ``sys.path`` first, so this
works both for ``uv run python bench/<name>.py`` and for ``python -m bench.<name>``.
Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from nats.aio.client import Client as NATS

    from unibus.client.api import ApiClient
    from unibus.stack.launcher import LocalStack

T = TypeVar("T")

FIRM: Final = 0.1
"""A median ratio closer than this to its goal is no firm verdict on this shared machine."""
WHOLE_BUDGET: Final = 120.0
"""Seconds a cluster may take to be whole again after a node came back."""
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


# -- statistics ------------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    """0.0 for no values: a mode that did not run still renders in the report."""
    return statistics.median(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank value at ``q`` (0..1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rotated(modes: Sequence[str], run: int) -> list[str]:
    """``modes`` starting at a different one each run, so that none always runs first (on a
    fresh cluster) or last (after the others warmed it)."""
    turn = run % len(modes)
    return [*modes[turn:], *modes[:turn]]


def verdict(met: bool, ratio: float, goal: float) -> str:
    text = "met" if met else "**missed**"
    if abs(ratio - goal) < FIRM:
        text += " (within the noise)"
    return text


# -- CPU -------------------------------------------------------------------------------------------
def own_cpu() -> float:
    """CPU seconds (user + system) this process has spent."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have spent; a gone one counts 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


# -- child processes -------------------------------------------------------------------------------
def quiet_logs() -> None:
    """Warnings only: the services' info lines would drown the benchmark's progress."""
    from unibus.core.log import configure_logging

    configure_logging(json=False, level="warning")


async def spawn_child(
    script: Path, spec: DataclassInstance, log: Path, *, stdin: int
) -> asyncio.subprocess.Process:
    """``script --child <spec as JSON>``, its stdout piped, its stderr appended to ``log``."""
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "--child",
            json.dumps(asdict(spec)),
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL if it is still there 10 s later."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- the stack -------------------------------------------------------------------------------------
def new_stack(root: Path, nodes: int = 3) -> LocalStack:
    """A launcher stack under ``root / "stack"`` on free ports, not started yet: the caller
    holds it before starting, so that a start that fails halfway is still stopped."""
    from unibus.stack.launcher import LocalStack
    from unibus.stack.layout import StackLayout, StackSpec

    return LocalStack(StackLayout.at(root / "stack"), StackSpec.with_free_ports(nodes))


async def start_stack(stack: LocalStack, *, services: bool = True) -> None:
    """Nodes up and provisioned (R3), then the services (callouts, APIs) unless not wanted."""
    stack.start()
    await stack.wait_ready(budget=60.0)
    await stack.provision()
    if services:
        stack.start_services()
        await stack.wait_services_ready()


def admin_client(stack: LocalStack) -> ApiClient:
    """The admin's API client on every node of ``stack``: how the benchmarks add users."""
    from unibus.client.api import ApiClient
    from unibus.core.nkeys import read_seed_file

    return ApiClient(
        [stack.api_url(n) for n in stack.spec.node_names],
        read_seed_file(stack.layout.identity("admin")),
        ca_file=stack.layout.certs.client_ca_cert,
    )


async def wait_whole(nc: NATS, budget: float = WHOLE_BUDGET) -> bool:
    """Whether every asset came to be led, at R3, with its followers current, in time."""
    from unibus.core.provisioning import ASSETS, asset_status

    js = nc.jetstream(timeout=2.0)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not yet
            statuses = [await asset_status(js, a, cluster_size=3) for a in ASSETS]
            if all(st.leader and not st.degraded for st in statuses):
                return True
        await asyncio.sleep(0.5)
    return False


# -- the run ---------------------------------------------------------------------------------------
def comma_list(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def add_list_option(
    parser: argparse.ArgumentParser, flag: str, choices: tuple[str, ...], help_text: str
) -> None:
    """``flag``: a comma-separated subset of ``choices`` (all by default); ``{}`` in
    ``help_text`` lists them."""
    parser.add_argument(
        flag, type=comma_list, default=choices, help=help_text.format(", ".join(choices))
    )


def run_in_scratch(
    name: str, bench: Callable[[Path], Coroutine[Any, Any, T]], *, keep: bool = False
) -> T:
    """``bench`` on a fresh temporary directory, removed afterwards unless ``keep``; after a
    failure it stays, since the stack's and the children's logs are in it."""
    root = Path(tempfile.mkdtemp(prefix=f"unibus-bench-{name}-"))
    try:
        result = asyncio.run(bench(root))
    except BaseException:
        print(f"kept {root} for its logs", file=sys.stderr)
        raise
    if keep:
        print(f"kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return result


def versions() -> dict[str, str]:
    from importlib.metadata import version

    from unibus.stack.launcher import nats_server_binary

    found = subprocess.run(
        [str(nats_server_binary()), "--version"], capture_output=True, text=True, check=False
    )
    return {
        "nats-server": found.stdout.strip().rpartition(" ")[2],
        "nats-py": version("nats-py"),
        "pynacl": version("pynacl"),
    }


def machine_meta(started: float, loadavg_before: float, loads: Sequence[float]) -> dict[str, Any]:
    """How busy the machine was around the run (``loads``: per timed run) and what ran."""
    return {
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg()[0],
        "loadavg_min": min(loads),
        "loadavg_max": max(loads),
        "seconds": time.monotonic() - started,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "versions": versions(),
    }


def machine_text(meta: dict[str, Any]) -> str:
    """``machine_meta`` as the report's header states it."""
    software = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    return (
        f"{software}; loadavg1 {meta['loadavg_before']:.1f} → {meta['loadavg_after']:.1f} "
        f"(per run {meta['loadavg_min']:.1f}-{meta['loadavg_max']:.1f}) on {meta['cpus']} "
        f"cores; total {meta['seconds']:.0f} s"
    )


def write_report(out: Path | None, name: str, result: dict[str, Any], markdown: str) -> None:
    """``<name>.json`` and ``<name>.md`` into ``out`` unless None; the markdown printed."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{name}.md").write_text(markdown)
    print(markdown)
