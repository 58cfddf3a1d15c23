"""Secret files: private from creation, replaced atomically, read only when private."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unibus.core.files import PrivateFileError, make_private_dirs, read_private, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(params=[0o000, 0o022], ids=["umask-000", "umask-022"])
def any_umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Modes must come out as asked both when the umask trims nothing and as usual."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


# -- writing ------------------------------------------------------------------------------


@pytest.mark.usefixtures("any_umask")
def test_a_new_file_is_0600_and_holds_the_data(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_private(path, b"s3cret\n")
    assert path.read_bytes() == b"s3cret\n"
    assert _mode(path) == 0o600


@pytest.mark.usefixtures("any_umask")
def test_no_byte_reaches_a_file_before_it_is_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes_at_first_write: list[int] = []
    real_write = os.write

    def checking_write(fd: int, data: Any) -> int:
        modes_at_first_write.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a chmod after creation leaves a window with a readable secret")

    monkeypatch.setattr(os, "write", checking_write)
    for name in ("chmod", "fchmod", "lchmod"):
        monkeypatch.setattr(os, name, refuse, raising=False)
    write_private(tmp_path / "a", b"one")
    write_private(tmp_path / "a", b"two", overwrite=True)
    assert modes_at_first_write
    assert set(modes_at_first_write) == {0o600}


@pytest.mark.usefixtures("any_umask")
def test_a_public_mode_can_be_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    write_private(path, b"cert", mode=0o644)
    assert _mode(path) == 0o644


def test_an_existing_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"keep me")
    with pytest.raises(PrivateFileError, match="pass --force") as info:
        write_private(path, b"new")
    assert str(info.value).startswith(str(path))
    assert info.value.path == path
    assert path.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_writing_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "secret"
    link.symlink_to(target)
    with pytest.raises(PrivateFileError, match="already exists"):
        write_private(link, b"new")  # dangling link
    assert not target.exists()
    target.write_bytes(b"untouched")
    write_private(link, b"new", overwrite=True)
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"
    assert target.read_bytes() == b"untouched"


@pytest.mark.usefixtures("any_umask")
def test_overwrite_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_failed_overwrite_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a-dir"
    target.mkdir()  # a file cannot be renamed over a directory
    with pytest.raises(PrivateFileError, match="cannot be written"):
        write_private(target, b"x", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir"]
    assert list(target.iterdir()) == []


@pytest.mark.usefixtures("any_umask")
def test_missing_parents_are_created_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret"
    write_private(path, b"x")
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(path) == 0o600


def test_without_parents_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "secret"
    for overwrite in (False, True):
        with pytest.raises(PrivateFileError, match="cannot be written") as info:
            write_private(path, b"x", overwrite=overwrite, parents=False)
        assert str(path) in str(info.value)
    assert not (tmp_path / "missing").exists()


def test_an_uncreatable_parent_is_a_private_file_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(PrivateFileError, match="cannot be written"):
        write_private(blocker / "sub" / "secret", b"x")


# -- directories --------------------------------------------------------------------------


@pytest.mark.usefixtures("any_umask")
def test_make_private_dirs_creates_every_missing_level_0700_and_keeps_existing(
    tmp_path: Path,
) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    make_private_dirs(existing / "x" / "y" / "z")
    assert _mode(existing) == 0o755
    for directory in (existing / "x", existing / "x" / "y", existing / "x" / "y" / "z"):
        assert _mode(directory) == 0o700
    make_private_dirs(existing / "x" / "y" / "z")  # idempotent


def test_make_private_dirs_reports_what_it_could_not_create(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(PrivateFileError, match="cannot be created as a directory"):
        make_private_dirs(blocker / "sub")


# -- reading ------------------------------------------------------------------------------


def test_read_returns_the_bytes_of_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_private(path, b"\x00binary\xff")
    assert read_private(path) == b"\x00binary\xff"
    path.chmod(0o400)
    assert read_private(path) == b"\x00binary\xff"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_read_refuses_group_or_other_access_with_the_chmod_hint(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"SECRET-CONTENT")
    path.chmod(mode)
    with pytest.raises(PrivateFileError, match="group or others") as info:
        read_private(path)
    assert f"run `chmod 600 {path}`" in str(info.value)
    assert f"{mode:04o}" in str(info.value)
    assert "SECRET-CONTENT" not in str(info.value)


def test_read_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            read_private(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "reading a FIFO blocked waiting for a writer"
    assert len(outcome) == 1
    assert isinstance(outcome[0], PrivateFileError)
    assert "not a regular file" in str(outcome[0])


def test_read_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(PrivateFileError, match="not a regular file"):
        read_private(directory)


def test_read_refuses_an_oversized_file_and_accepts_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_private(path, b"x" * 101)
    with pytest.raises(PrivateFileError, match="too large"):
        read_private(path, max_size=100)
    assert read_private(path, max_size=101) == b"x" * 101


def test_read_of_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(PrivateFileError, match="does not exist") as info:
        read_private(path)
    assert str(info.value) == f"{path} does not exist"


def test_read_follows_a_symlink_and_checks_its_target(tmp_path: Path) -> None:
    # Kubernetes mounts secrets as links into a ``..data`` directory.
    data = tmp_path / "..data"
    data.mkdir()
    target = data / "seed"
    write_private(target, b"seed")
    link = tmp_path / "seed"
    link.symlink_to(Path("..data") / "seed")
    assert read_private(link) == b"seed"
    target.chmod(0o644)
    with pytest.raises(PrivateFileError, match="chmod 600"):
        read_private(link)
