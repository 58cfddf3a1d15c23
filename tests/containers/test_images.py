"""The images: the nats stand-in (or the official image) and the one unibus image."""

from __future__ import annotations

from testcontainers.core.container import DockerContainer

from tests.containers.harness import NATS_IMAGE, UNIBUS_IMAGE


def _run(image: str, *command: str, entrypoint: str | None = None) -> tuple[int, str]:
    """Run one command to completion in a fresh container; (exit status, output)."""
    container = DockerContainer(image).with_command(list(command))
    if entrypoint is not None:
        container = container.with_kwargs(entrypoint=entrypoint)
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        status = wrapped.wait(timeout=60)["StatusCode"]
        output = wrapped.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.stop()
    return int(status), output


def test_nats_image_runs_and_reports_the_pinned_release() -> None:
    """compose.yaml's nats:2.15.1 runs the binary at /nats-server, like the official image."""
    status, output = _run(NATS_IMAGE, "--version")
    assert status == 0, output
    assert "v2.15.1" in output


def test_unibus_image_starts_every_entrypoint() -> None:
    """Each service's command imports its whole dependency tree and answers.

    The two services take no flags: started without settings they must stop with the
    configuration error naming the variable (exit 2), which proves they imported.
    """
    status, output = _run(UNIBUS_IMAGE, "unibus", "--help")
    assert status == 0, output
    assert "compose" in output
    assert "provision" in output
    status, output = _run(UNIBUS_IMAGE, "python", "-m", "unibus.migrate", "--help")
    assert status == 0, output
    assert "--db" in output
    for service in ("authcallout", "controlplane"):
        status, output = _run(UNIBUS_IMAGE, "python", "-m", f"unibus.{service}")
        assert status == 2, output
        assert "configuration error" in output
        assert "UNIBUS_NATS_URLS" in output


def test_unibus_image_runs_as_non_root_without_build_tools() -> None:
    """The service image holds the venv only: no compiler, no pip, no wheels, no caches."""
    probe = (
        "import os, shutil, importlib.util as u;"
        "print(os.getuid(), os.getgid());"
        "print([t for t in ('gcc', 'cc', 'make', 'pip', 'pip3', 'uv') if shutil.which(t)]);"
        "print(u.find_spec('pip') is not None, os.path.exists('/wheels'),"
        " os.path.exists('/root/.cache/pip'))"
    )
    status, output = _run(UNIBUS_IMAGE, "python", "-c", probe)
    assert status == 0, output
    ids, tools, leftovers = output.strip().splitlines()[-3:]
    assert ids == "10001 10001"
    assert tools == "[]"
    assert leftovers == "False False False"
