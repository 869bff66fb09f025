"""Owner-only modes for what keygate keeps on disk.

Without KEYGATE_SECRET_KEY the SQLite file holds every pool key in plain text, so the data
directory is 0700 and every file in it 0600 — also when they already exist with wider modes from
an older version or a careless copy. Only what keygate owns is tightened: files and folders of
the current user, never a home directory or a shared sticky folder such as /tmp.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
DATA_FILE_NAME = "keygate.db"  # the store's name inside KEYGATE_DATA_DIR


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with the new folder itself 0700; tighten an existing
    `path` when it is keygate's (see `_ours`)."""
    if not path.exists():
        path.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask: be exact
        return
    _tighten(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Make an existing file of ours 0600 (a missing one is left alone)."""
    _tighten(path, FILE_MODE)


def create_private(path: Path) -> None:
    """Create an empty `path` as 0600 before anything else opens it, so there is no moment in
    which a new file holding secrets is readable by others; an existing file is tightened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        private_file(path)
        return
    os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (0600) through a temporary file and a rename: readers never see a
    half-written file, and the permissions are right before the first byte lands."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tighten(path: Path, mode: int) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if not _ours(path, st):
        return
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077 | (mode & 0o700))


def _ours(path: Path, st: os.stat_result) -> bool:
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return False
    if stat.S_ISDIR(st.st_mode):
        if st.st_mode & stat.S_ISVTX:  # /tmp and friends are shared by design
            return False
        resolved = path.resolve()
        if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
            return False
    return True
