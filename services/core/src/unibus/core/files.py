"""Files that hold secrets: created private from the first syscall, read only when private.

Seeds, keys, the route secret and rendered server configs all go through here, so there
is one place that decides how a secret reaches the disk.

Symlink policy:

* **Writing never follows a symlink.** A new file is opened with ``O_CREAT | O_EXCL |
  O_NOFOLLOW``, so a link planted at the path (dangling or not) is refused as an existing
  file; an overwrite renames a fresh temporary file over the path, which replaces a link
  itself rather than writing through it.
* **Reading follows symlinks.** Kubernetes mounts secrets as links into a ``..data``
  directory, so refusing links would refuse every mounted seed. What is checked is what
  is read: the mode and type come from ``fstat`` on the open descriptor of the target.

Every :class:`PrivateFileError` message starts with the path, so a caller can put a noun in
front of it (``NkeyError(f"seed file {exc}")``) and keep the hint it ends with.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from unibus.core.errors import UnibusError

__all__ = ["PRIVATE_MODE", "PrivateFileError", "make_private_dirs", "read_private", "write_private"]

PRIVATE_MODE = 0o600
_DIR_MODE = 0o700
_DEFAULT_MAX_SIZE = 1 << 20


class PrivateFileError(UnibusError):
    """A secret file could not be written, or is missing, unsafe or unreadable.

    ``str(error)`` is ``f"{path} {problem}"``; the problem never quotes file contents.
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def make_private_dirs(directory: Path) -> None:
    """Create missing parents one by one with mode 0700; existing ones are left alone.

    (``os.makedirs`` would apply the mode to the last directory only.)

    Raises:
        PrivateFileError: a missing directory cannot be created.
    """
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            candidate.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise PrivateFileError(
                candidate, f"cannot be created as a directory: {_why(exc)}"
            ) from None


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
    path: Path,
    data: bytes,
    *,
    mode: int = PRIVATE_MODE,
    overwrite: bool = False,
    parents: bool = True,
) -> None:
    """Write ``data`` to ``path``, which has ``mode`` from the moment it exists.

    The mode is passed to ``open(2)`` (the umask can only narrow it); nothing is
    chmodded afterwards, so there is no moment at which the file is more open.

    Without ``overwrite`` an existing file (or any symlink) is refused. With it, a
    temporary sibling is written and renamed over ``path``: a crash leaves the old or the
    new content, never a torn or briefly readable file, and no temporary file is left.
    With ``parents`` missing parent directories are created 0700 (see
    :func:`make_private_dirs`); without it a missing parent is an error.

    Raises:
        PrivateFileError: the file exists (without ``overwrite``) or cannot be written.
    """
    path = Path(path)
    if parents:
        try:
            make_private_dirs(path.parent)
        except PrivateFileError as exc:
            raise PrivateFileError(path, f"cannot be written: {exc}") from None
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
        raise PrivateFileError(
            path, "already exists; remove it or pass --force to replace it"
        ) from None
    except OSError as exc:
        raise PrivateFileError(path, f"cannot be written: {_why(exc)}") from None
    _fsync_dir(path.parent)


def read_private(path: Path, *, max_size: int = _DEFAULT_MAX_SIZE) -> bytes:
    """Read a secret file after checking, on the open descriptor, that only its owner can.

    Symlinks are followed (see the module docstring); the checks apply to the file read.

    Raises:
        PrivateFileError: missing, not a regular file (a FIFO is refused without
            blocking), group/other permissions (the message says which ``chmod`` fixes
            it), larger than ``max_size`` bytes, or unreadable.
    """
    path = Path(path)
    # O_NONBLOCK: a FIFO planted at the path must not hang us; the S_ISREG check refuses it.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PrivateFileError(path, "does not exist") from None
    except OSError as exc:
        raise PrivateFileError(path, f"cannot be opened: {_why(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(path, "is not a regular file")
        if info.st_mode & 0o077:
            raise PrivateFileError(
                path,
                f"is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run `chmod 600 {path}`",
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
        raise PrivateFileError(path, f"cannot be read: {_why(exc)}") from None
    finally:
        os.close(fd)
    if size > max_size:
        raise PrivateFileError(path, f"is too large (more than {max_size} bytes)")
    return b"".join(chunks)
