"""A service process's life (``unibus.core.process.run_service``): a stop signal always
ends it, its configuration error exits 2 and its runtime error 1, each in one line.

Each case runs a small service in a child process (signals need a process of their
own); none of them opens a socket.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from unibus.core.process import SHUTDOWN_GRACE

_SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from dataclasses import dataclass
    from unibus.core.errors import ConfigError, UnibusError
    from unibus.core.process import run_service, unless_stopped

    @dataclass
    class Settings:
        log_json: bool = False

    def load(environ):
        if environ.get("BAD_SETTING"):
            raise ConfigError("BAD_SETTING: not a number; set it to a number of seconds")
        return Settings()

    async def serve(settings, stop):
        print("serving", flush=True)
        mode = sys.argv[1]
        if mode == "stuck":
            # What a first connect to a cluster that is down does: retry, never looking at stop.
            while True:
                await asyncio.sleep(0.05)
        if mode == "starting":
            # A start that retries for as long as no node answers, wrapped as services do.
            async def forever():
                while True:
                    await asyncio.sleep(0.05)
            try:
                await unless_stopped(stop, forever())
            finally:
                print("start abandoned", file=sys.stderr, flush=True)
        if mode == "started":
            async def quick():
                return "ready"
            print(await unless_stopped(stop, quick()), flush=True)
            await stop.wait()
            print("drained", file=sys.stderr, flush=True)
        if mode == "fails":
            raise UnibusError("the store is unreachable: start the cluster first")
        if mode == "fails-naming-a-subject":
            raise UnibusError("no responders on unibus.room.k3q9z0m1x7w2v8u4t5s6.msg")
        if mode == "crashes":
            raise RuntimeError("refused on unibus.room.k3q9z0m1x7w2v8u4t5s6.msg")
        await stop.wait()

    sys.exit(run_service("test-service", load, serve))
    """
)


def _start(mode: str, **env: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVICE, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert process.stdout is not None
    if not env:
        assert process.stdout.readline().strip() == "serving"
    return process


def _stop(process: subprocess.Popen[str], *, within: float) -> tuple[int, float, str]:
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"still running {within:g}s after SIGTERM") from None
    return process.returncode, time.monotonic() - began, err


def test_a_service_that_watches_its_stop_event_exits_0_at_once_on_sigterm() -> None:
    code, seconds, _ = _stop(_start("serves"), within=SHUTDOWN_GRACE)
    assert code == 0
    assert seconds < SHUTDOWN_GRACE


def test_a_service_stuck_before_serving_is_cancelled_after_the_grace_and_exits_0() -> None:
    code, seconds, err = _stop(_start("stuck"), within=SHUTDOWN_GRACE + 10)
    assert code == 0
    assert seconds >= SHUTDOWN_GRACE - 0.5
    assert "still not stopped; cancelling" in err


def test_a_stop_during_a_guarded_start_exits_0_without_waiting_out_the_grace() -> None:
    code, _, err = _stop(_start("starting"), within=SHUTDOWN_GRACE + 10)
    assert code == 0
    assert "start abandoned" in err
    assert "still not stopped; cancelling" not in err
    assert "Traceback" not in err


def test_a_guarded_start_that_finishes_hands_back_its_result_and_serves_until_the_stop() -> None:
    process = _start("started")
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    code, _, err = _stop(process, within=SHUTDOWN_GRACE + 10)
    assert code == 0
    assert "drained" in err
    assert "still not stopped; cancelling" not in err


def test_a_runtime_error_exits_1_with_one_line_and_no_traceback() -> None:
    process = _start("fails")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "test-service: the store is unreachable: start the cluster first"
    )
    assert "Traceback" not in err


def test_a_runtime_error_naming_a_subject_prints_it_redacted() -> None:
    process = _start("fails-naming-a-subject")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1] == "test-service: no responders on unibus.room.[redacted]"


def test_a_bug_exits_1_with_its_traceback_logged_and_redacted() -> None:
    process = _start("crashes")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "stopped by an unexpected error" in err
    assert "RuntimeError: refused on unibus.room.[redacted]" in err
    assert "k3q9z0m1x7w2v8u4t5s6" not in err


def test_a_configuration_error_exits_2_naming_the_setting() -> None:
    process = _start("serves", BAD_SETTING="x")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.strip() == (
        "test-service: configuration error: BAD_SETTING: not a number; set it to a number "
        "of seconds"
    )
