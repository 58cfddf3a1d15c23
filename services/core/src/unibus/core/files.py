"""Files that hold secrets: created private from the first syscall, read only when private.

Seeds, keys, the route secret and rendered server configs all go through here, so there
is one place that decides how a secret reaches the disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from unibus.core.errors import UnibusError

PRIVATE_MODE = 0o600
_DEFAULT_MAX_SIZE = 1 << 20


class PrivateFileError(UnibusError):
    """A secret file could not be written, or is missing, unsafe or unreadable."""


def make_private_dirs(directory: Path) -> None:
    """Create missing parents one by one with mode 0700; existing ones are left alone."""
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        with contextlib.suppress(FileExistsError):
            candidate.mkdir(mode=0o700)


def _create(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL also refuses a symlink planted at the path; O_NOFOLLOW for good measure.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # some filesystems refuse opening directories; the data itself is synced
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_private(
    path: Path, data: bytes, *, mode: int = PRIVATE_MODE, overwrite: bool = False
) -> None:
    """Write ``data`` to ``path``, which has ``mode`` from the moment it exists.

    Without ``overwrite`` an existing file is refused. With it, a temporary sibling is
    written and renamed over ``path``: a crash leaves the old or the new content, never a
    torn or briefly readable file.

    Raises:
        PrivateFileError: the file exists (without ``overwrite``) or cannot be written.
    """
    path = Path(path)
    make_private_dirs(path.parent)
    try:
        if not overwrite:
            _create(path, data, mode)
        else:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                _create(tmp, data, mode)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    except FileExistsError:
        raise PrivateFileError(f"{path} already exists; pass --force to replace it") from None
    except OSError as exc:
        raise PrivateFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    _fsync_dir(path.parent)


def read_private(path: Path, *, max_size: int = _DEFAULT_MAX_SIZE) -> bytes:
    """Read a secret file after checking, on the open descriptor, that only its owner can.

    Raises:
        PrivateFileError: missing, not a regular file, group/other permissions (the
            message says which ``chmod`` fixes it), too large, or unreadable.
    """
    path = Path(path)
    # O_NONBLOCK: a FIFO planted at the path must not hang us; the S_ISREG check refuses it.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PrivateFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise PrivateFileError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise PrivateFileError(
                f"{path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= max_size:
            chunk = os.read(fd, max_size + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PrivateFileError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > max_size:
        raise PrivateFileError(f"{path} is larger than {max_size} bytes")
    return b"".join(chunks)
