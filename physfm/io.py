"""Small file utilities shared by every stage: atomic writes, hashing, canonical JSON.

Every artefact physfm writes goes through :func:`atomic_path` (write to a temporary name in the
same directory, fsync, rename) or :func:`atomic_dir`, so a crash never leaves a file or directory
that looks complete. Temporary names say which process owns them, ``.NAME.HOST-PID.XXXXXXXX.partial``,
so the next writer of NAME removes what a killed one left (:func:`remove_stale_partials`) and never
what a live one is writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _owner() -> str:
    """``HOST-PID`` of this process, as put in its temporary names."""
    return f"{_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _owned_temp(path: Path, *, directory: bool = False) -> Path:
    """A new temporary file (or directory) beside ``path`` named ``.NAME.HOST-PID.XXXXXXXX.partial``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"prefix": f".{path.name}.{_owner()}.", "suffix": ".partial", "dir": path.parent}
    if directory:
        return Path(tempfile.mkdtemp(**kw))
    fd, tmp = tempfile.mkstemp(**kw)
    os.close(fd)
    return Path(tmp)


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Remove what a killed writer of ``path`` left beside it; return the removed paths.

    Only this module's temporary names (``.NAME.HOST-PID.XXXXXXXX.partial``) are considered, and
    only when HOST is this machine and PID is no longer running: a live writer's files and another
    host's (on a shared file system) are left alone. A previous version of ``path`` moved aside by a
    swap that was killed half-way (``.NAME.HOST-PID.old.partial``) is put back when ``path`` is missing.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.(?P<tag>[a-z0-9_]+)\.partial"
    )
    host, removed = _host(), []
    for p in sorted(path.parent.iterdir(), key=lambda q: not q.name.endswith(".old.partial")):  # restores first
        m = pattern.fullmatch(p.name)
        if m is None or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        if m["tag"] == "old" and not path.exists():
            os.replace(p, path)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def temp_path_beside(path: str | Path) -> Path:
    """A new, empty temporary file in ``path``'s directory, to be renamed onto it by :func:`commit_path`."""
    return _owned_temp(Path(path))


def commit_path(tmp: Path, path: str | Path) -> None:
    """fsync ``tmp`` and rename it onto ``path`` (the second half of :func:`atomic_path`).

    Safe to call from a background thread, so the fsync overlaps other work.
    """
    path = Path(path)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    tmp_path = temp_path_beside(path)
    try:
        yield tmp_path
        commit_path(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place when complete.

    Yields an empty directory ``.NAME.HOST-PID.XXXXXXXX.partial`` beside ``path``; when the block
    ends without an exception it is fsynced and renamed onto ``path`` (an existing ``path`` is
    replaced only then). First removes the stale temporaries of ``path`` (:func:`remove_stale_partials`).
    A SIGKILL at any moment leaves ``path`` as it was, or complete.
    """
    path = Path(path)
    remove_stale_partials(path)
    tmp = _owned_temp(path, directory=True)
    old = path.with_name(f".{path.name}.{_owner()}.old.partial")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        _fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
