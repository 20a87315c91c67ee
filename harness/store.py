"""The results store: one directory per cell, atomic writes, resumable runs.

Layout under the root folder::

    cells/<key>/spec.json             frozen run spec, written once when the cell is created
    cells/<key>/status.json           state (running | complete | failed), host, pid, time, error
    cells/<key>/videos/<i:05d>.npy    uint8 (F, H, W, 3)
    cells/<key>/records/<i:05d>.json  per-video record, written after its video: its presence
                                      means the video is complete
    cells/<key>/scores/<metric>.json  per-video values of one metric, in video-index order
    cells/<key>/.lock                 exclusive lock (see Cell.lock)

Every file is written to a temp file in its own directory and renamed over the target, so a
process killed at any moment leaves either the old file or the new one, never half of one, and
many processes (joblib workers, SLURM array jobs on a shared file system) can share one store.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UsageError

STATES = ("running", "complete", "failed")
_SCORE_KEYS = ("metric", "version", "higher_is_better", "values", "videos")
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_INDEX_RE = re.compile(r"(\d+)\.json")
_POLL_S = 0.2
# A lock file is created empty and then filled; one still unreadable after this long belongs to
# a writer that died in between.
_UNREADABLE_LOCK_GRACE_S = 30.0


class LockTimeout(UsageError):
    """Cell.lock(timeout=...) gave up waiting for another holder."""


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of obj: sorted keys, no whitespace, so equal specs hash equally."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UsageError(f"run spec is not plain JSON ({e}); resolve it to JSON values") from e


def cell_key(spec: dict) -> str:
    """16 hex characters of sha256 over the canonical JSON of spec."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file lives in the target's folder so the rename never crosses file systems;
    # pid and a random part keep concurrent writers (also on other hosts) apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    """Load a JSON file; a corrupt one is a UsageError naming it rather than a parser traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except ValueError as e:
        raise UsageError(f"{path} is corrupt ({e}); delete it and rerun to rewrite it") from e


def read_npy(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise UsageError(f"{path} is corrupt ({e}); delete it and rerun to rewrite it") from e


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        _check_writable(self.root)

    def cell(self, key: str) -> Cell:
        if not _KEY_RE.fullmatch(key):
            raise UsageError(f"bad cell key {key!r}; keys are letters, digits, '_', '-' and '.'")
        return Cell(key, self.root / "cells" / key)

    def cells(self) -> list[Cell]:
        return [Cell(p.name, p) for p in sorted((self.root / "cells").iterdir())
                if p.is_dir() and _KEY_RE.fullmatch(p.name)]


def _check_writable(root: Path) -> None:
    fix = "set paths.store to a writable folder"
    try:
        (root / "cells").mkdir(parents=True, exist_ok=True)
        probe = root / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UsageError(f"store folder {root} is not writable ({reason}); {fix}") from e


class Cell:
    """One run of one configuration over a prompt suite and seeds. Files appear lazily."""

    def __init__(self, key: str, path: Path):
        self.key = key
        self.path = path

    def __repr__(self) -> str:
        return f"Cell({self.key!r}, {str(self.path)!r})"

    # -- spec and status ------------------------------------------------------------------------

    def spec(self) -> dict | None:
        path = self.path / "spec.json"
        return read_json(path) if path.exists() else None

    def write_spec(self, spec: dict) -> None:
        """Freeze the spec; repeating the same spec is a no-op, a different one is refused."""
        old = self.spec()
        if old is None:
            atomic_write_json(self.path / "spec.json", spec)
        elif canonical_json(old) != canonical_json(spec):
            raise UsageError(f"cell {self.path} already holds a different spec; "
                             "delete that folder if its results are no longer wanted")

    def status(self) -> dict | None:
        path = self.path / "status.json"
        return read_json(path) if path.exists() else None

    def set_status(self, state: str, error: str | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        atomic_write_json(self.path / "status.json", {
            "state": state, "host": socket.gethostname(), "pid": os.getpid(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "error": error,
        })

    def is_complete(self) -> bool:
        status = self.status()
        return status is not None and status.get("state") == "complete"

    # -- videos and records ---------------------------------------------------------------------

    def video_path(self, i: int) -> Path:
        return self.path / "videos" / f"{i:05d}.npy"

    def _record_path(self, i: int) -> Path:
        return self.path / "records" / f"{i:05d}.json"

    def has_record(self, i: int) -> bool:
        return self._record_path(i).exists()

    def write_video(self, i: int, video: np.ndarray, record: dict) -> None:
        """Store video i, then its record: a record is the mark that its video is complete."""
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"video must be uint8 (F, H, W, 3), got {video.dtype} {video.shape}")
        atomic_save_npy(self.video_path(i), video)
        atomic_write_json(self._record_path(i), record)

    def read_video(self, i: int) -> np.ndarray:
        if not self.has_record(i):
            raise UsageError(f"cell {self.path} has no complete video {i}; rerun the cell")
        return read_npy(self.video_path(i))

    def read_record(self, i: int) -> dict:
        if not self.has_record(i):
            raise UsageError(f"cell {self.path} has no complete video {i}; rerun the cell")
        return read_json(self._record_path(i))

    def video_indices(self) -> list[int]:
        """Indices of complete videos (those with a record), ascending."""
        folder = self.path / "records"
        if not folder.is_dir():
            return []
        found = (_INDEX_RE.fullmatch(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def records(self) -> list[dict]:
        return [self.read_record(i) for i in self.video_indices()]

    # -- scores ---------------------------------------------------------------------------------

    def write_scores(self, name: str, payload: dict) -> None:
        """payload: metric, version, higher_is_better {output: bool}, values {output: [float]}
        (one per video, in video-index order) and videos (their count)."""
        if not _KEY_RE.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        missing = [k for k in _SCORE_KEYS if k not in payload]
        if missing:
            raise ValueError(f"scores for {name!r} lack {missing}")
        for output, values in payload["values"].items():
            if len(values) != payload["videos"]:
                raise ValueError(f"{name}.{output} has {len(values)} values for "
                                 f"{payload['videos']} videos")
        atomic_write_json(self.path / "scores" / f"{name}.json", payload)

    def read_scores(self) -> dict[str, dict]:
        folder = self.path / "scores"
        if not folder.is_dir():
            return {}
        return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))
                if not p.name.startswith(".")}

    # -- locking --------------------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Exclusive access to this cell across processes, also on a shared file system.

        Not re-entrant. A lock left by a killed process is broken only when that process ran on
        this host (its pid can be checked); one left on another host must be deleted by hand.
        """
        path = self.path / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not _try_create(path):
            stale = _stale_content(path)
            if stale is not None and _break(path, stale):
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"{path} is held by {_holder(path)}; if that process is gone, "
                                  "delete the file and rerun")
            # jitter keeps waiters from polling in lockstep
            time.sleep(_POLL_S * random.uniform(0.5, 1.5))
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _owner() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "token": uuid.uuid4().hex, "since": time.time()})


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(_owner())
        f.flush()
        os.fsync(f.fileno())
    return True


def _holder(path: Path) -> str:
    try:
        return path.read_text() or "a writer that has not named itself yet"
    except OSError:
        return "nobody now"


def _stale_content(path: Path) -> str | None:
    """The lock's content if its holder is provably gone, else None."""
    try:
        text, age = path.read_text(), time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return text if age > _UNREADABLE_LOCK_GRACE_S else None
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
        return text
    return None


def _break(path: Path, stale: str) -> bool:
    """Remove a stale lock; False when another breaker is at work, so the caller waits a poll."""
    # Two waiters may both find the lock stale; if one broke it and took a fresh lock before the
    # other acted, a plain unlink would delete the fresh one. Breakers therefore take turns under
    # a guard file and only delete the lock if it still holds the stale content.
    guard = path.with_name(path.name + ".break")
    if not _try_create(guard):
        if _stale_content(guard) is not None:
            guard.unlink(missing_ok=True)
        return False
    try:
        if path.read_text() == stale:
            path.unlink()
        return True
    except FileNotFoundError:
        return True
    finally:
        guard.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child stays a zombie until its parent reaps it; it holds nothing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
