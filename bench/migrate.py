"""Migration rows per second: 100 000 sealed keys from a legacy file into a 3-node R3 cluster.

Run: ``uv run python bench/migrate.py [--keys N]``; writes bench/results/migrate.{json,md}.
The fixture is built with plain SQL (tests/fixtures/legacy.py); the cluster is a local
3-node stack (route TLS, client TLS, sync_interval always) started by the same launcher
as ``unibus up``.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.legacy import build_legacy_db
from tests.integration.harness import StackFactory
from unibus.migrate.job import MigrationOptions, migrate

RESULTS = Path(__file__).resolve().parent / "results"


async def run(keys: int) -> dict[str, object]:
    members = 40
    phases = _Phases()
    rooms = max(1, round(keys / (members * 2)))
    with tempfile.TemporaryDirectory() as tmp:
        fixture = build_legacy_db(
            Path(tmp) / "bench.db", users=200, rooms=rooms, members_per_room=members
        )
        stacks = StackFactory(Path(tmp))
        try:
            stack = await stacks.start(nodes=3)
            options = MigrationOptions(db=fixture.path, target=stack.target("internal"))
            load_before = os.getloadavg()[0]
            started = time.monotonic()
            report = await migrate(options, phases.progress)
            elapsed = time.monotonic() - started
            load_after = os.getloadavg()[0]
            again_started = time.monotonic()
            again = await migrate(options)
            again_elapsed = time.monotonic() - again_started
        finally:
            await stacks.close()
    return {
        "benchmark": "migrate",
        "sealed_keys": fixture.sealed_keys,
        "records_written": report.written,
        "seconds_total": round(elapsed, 2),
        "records_per_s": round(report.written / elapsed, 1),
        "sealed_keys_per_s": round(fixture.sealed_keys / elapsed, 1),
        "import_seconds": phases.span("plan:", "progress:"),
        "index_rebuild_seconds": phases.span("progress:", "index:"),
        "idempotent_rerun_seconds": round(again_elapsed, 2),
        "idempotent_rerun_written": again.written,
        "parity": report.parity,
        "cluster": "3 nodes, R3, local loopback, TLS",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg1_before_after": [round(load_before, 2), round(load_after, 2)],
    }


class _Phases:
    """Progress lines to stderr, and when the last line of each kind was seen."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def progress(self, message: str) -> None:
        self._seen[message.split(" ", 1)[0]] = time.monotonic()
        print(message, file=sys.stderr, flush=True)

    def span(self, start: str, end: str) -> float | None:
        if start not in self._seen or end not in self._seen:
            return None
        return round(self._seen[end] - self._seen[start], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    result = asyncio.run(run(args.keys))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "migrate.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "migrate.md").write_text(
        "# migration rows per second\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in result.items())
        + "\n\nTotal time includes backup, export of both sides, the reverse-index rebuild and"
        " the parity re-export. `import_seconds`: from the plan to the last acknowledged"
        " record; `index_rebuild_seconds`: from there to the rebuilt reverse index (its two"
        " scans included). The machine may be shared: `loadavg1_before_after` says how busy"
        " it was.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
