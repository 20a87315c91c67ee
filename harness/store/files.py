"""Files readers can trust: atomic writes, the one canonical JSON, sha256 content digests.

Every write goes to a temp file in the target's own folder (so the rename never crosses file
systems), is flushed to disk and renamed over the target: a process killed at any moment leaves
the old file or the new one, never half of one. Temp names are `.<name>.<host>.<pid>.<8 hex>.tmp`
(host: 8 hex of a digest of the host's name): host, pid and a random part keep concurrent writers
(also on other hosts) apart, and `TEMP_NAME` lets the next holder of a folder's lease recognise and
remove what a killed writer left behind; folders without a lease (a store's `.plans/`, a report's
folder) are swept by lease.remove_stale_temp_files, which spares every temp file a writer may still own.

A write the file system refuses (full, over quota, read-only, not permitted) is a `WriteRefused`:
one line naming the file, what the file system said and the fix, never a traceback.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from harness.errors import UsageError

TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")  # what temp_path names (and named before host tags)
TEMP_PARTS = re.compile(r"\..+\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")

_FULL_FIX = ("free space there or point the command at a folder with room (paths.store, paths.reports), then "
             "rerun it: what is finished is kept")
_LOCKED_FIX = "point the command at a writable folder (paths.store, paths.reports), or make this one writable"
_REFUSALS = {  # errno -> what it says about the file system, and the fix
    errno.ENOSPC: ("its file system is full", _FULL_FIX),
    errno.EDQUOT: ("the quota of its file system is used up", _FULL_FIX),
    errno.EROFS: ("its file system is read-only", _LOCKED_FIX),
    errno.EACCES: ("its folder is not writable", _LOCKED_FIX),
    errno.EPERM: ("its folder is not writable", _LOCKED_FIX),
}


class WriteRefused(UsageError):
    """The file system refused a write (full, over quota, read-only, not permitted); the message is one line."""


@contextmanager
def refusing_writes(path: str | Path) -> Iterator[None]:
    """An OSError inside the block that says the file system refused to write `path` becomes a
    WriteRefused naming the file, what the file system said and the fix."""
    try:
        yield
    except OSError as e:
        if isinstance(e, WriteRefused) or e.errno not in _REFUSALS:
            raise
        what, fix = _REFUSALS[e.errno]
        raise WriteRefused(f"cannot write {path}: {what} ({e.strerror or os.strerror(e.errno)}); {fix}") from e


def host_tag(host: str | None = None) -> str:
    """8 hex characters naming a host in temp names."""
    return sha256_hex(host or socket.gethostname())[:8]


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` writes the new content to tmp, which then replaces path (module docstring)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with refusing_writes(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            with open(tmp, "rb+") as f:  # writers that close their own file (torch, safetensors) flush it here
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_file_bytes(obj))


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A temp folder path beside `target` for the block to fill; renamed to `target` when the block
    ends, removed (with whatever it holds) when it raises."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        with refusing_writes(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp  # the block's own writes say what they could not write
        with refusing_writes(target):
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of obj: sorted keys, no whitespace, no NaN, so equal values hash equally
    (cell keys are digests of it). Raises TypeError or ValueError for a value JSON cannot spell."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_file_bytes(obj: Any) -> bytes:
    """How a JSON file is stored: sorted keys, one space of indent, a final newline."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def read_json(path: str | Path, fix: str = "rerun the command that wrote it") -> Any:
    """Load a JSON file; a corrupt one is a UsageError naming it and the fix, not a parser traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser's stack
        raise UsageError(f"{path} is corrupt ({type(e).__name__}: {str(e)[:80]}); {fix}") from None


def sha256_hex(data: bytes | str | Iterable[bytes | str]) -> str:
    """The hex sha256 of data, or of a sequence of chunks in turn (str as UTF-8). Chunks are read one
    at a time, so a large source (a model's tensors, a file) is never held whole."""
    h = hashlib.sha256()
    for chunk in (data,) if isinstance(data, (bytes, str)) else data:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def file_chunks(path: str | Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def file_sha256(path: str | Path) -> str:
    return sha256_hex(file_chunks(path))
