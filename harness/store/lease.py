"""Leases: exclusive locks that also work across the hosts of a shared file system.

A lease is a lock file created exclusively (O_EXCL, atomic on local file systems and on NFS v3+)
holding its holder's host, PID, SLURM job (when there is one), a random token and the time it was
taken. Its heartbeat is the file's modification time, which a thread of the holder sets every
HEARTBEAT_S. Touching never replaces the file, so a holder that lost its lease can never overwrite
its successor's lock file.

A waiter judges a holder by the heartbeats it sees, on this host's monotonic clock, never by the
file's time alone (another host's clock may be hours off): it takes a lease over once the lock file
(its bytes and its time) has not changed for LEASE_S while it watched, wherever the holder ran (it
died, or its node did); after 2 * HEARTBEAT_S of watched silence already when the file's time is
also older than LEASE_S (a lock left long ago); and at once when the holder ran on this host and its
PID is gone. A holder whose heartbeat moves is waited for, whatever time its file shows. The waiter
prints one line when it takes over, and one line naming the holder it waits for. Cell.state(), one
look without watching, reads the file's time (Holder.gone).
"""
from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from harness.errors import UsageError
from harness.store.files import TEMP_NAME, TEMP_PARTS, host_tag, refusing_writes

LEASE_S = 60.0
HEARTBEAT_S = 10.0  # six heartbeats per lease: a holder stalled by load or a slow file server keeps it
_POLL_S = 0.2
TEMP_STALE_S = 3600.0  # a temp file of another host (or named before host tags) this old has lost its writer


class LockTimeout(UsageError):
    """lease(timeout=...) gave up waiting for another holder."""


class LeaseLost(RuntimeError):
    """The holder's heartbeat lapsed and another process took its lease over."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Holder:
    """What a lock file says about its holder, read in one open (NFS revalidates on open)."""

    text: str
    info: dict
    heartbeat: float  # the file's modification time

    @property
    def token(self) -> str | None:
        return self.info.get("token")

    def age(self) -> float:
        return time.time() - self.heartbeat

    def gone(self) -> bool:
        """Provably not holding any more: heartbeat older than the lease, or a dead PID of this host."""
        return self.age() > LEASE_S or self.dead_here()

    def dead_here(self) -> bool:
        """Held by a process of this host that is gone."""
        pid = self.info.get("pid")
        return self.info.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    def silence_allowed(self) -> float:
        """Seconds of watched silence after which the holder is gone (module docstring)."""
        return 2 * HEARTBEAT_S if self.age() > LEASE_S else LEASE_S

    def silent(self, watched: float) -> bool:
        """Gone, judged by `watched`: the seconds this host has seen the lock file unchanged."""
        return self.dead_here() or watched >= self.silence_allowed()

    def same_as(self, other: Holder) -> bool:
        """The same lock file content and heartbeat: no beat came in between."""
        return (self.text, self.heartbeat) == (other.text, other.heartbeat)

    def describe(self) -> str:
        if not self.info:
            return "a holder that has not named itself yet"
        job = f" (SLURM job {self.info['job']})" if self.info.get("job") else ""
        since = self.info.get("since")
        return (f"{self.info.get('host')} pid {self.info.get('pid')}{job}"
                f"{f', holding it since {iso(since)}' if isinstance(since, (int, float)) else ''}")


def read_holder(path: Path) -> Holder | None:
    try:
        with open(path, "rb") as f:
            text, mtime = f.read().decode(errors="replace"), os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:  # created but not yet filled (microseconds), or damaged by hand
        info = {}
    return Holder(text, info if isinstance(info, dict) else {}, mtime)


class Watch:
    """How long a lock file has stayed unchanged, as this host's monotonic clock sees it."""

    def __init__(self) -> None:
        self._seen: Holder | None = None
        self._since = 0.0

    def silence(self, holder: Holder) -> float:
        """Seconds since `holder` (this content and heartbeat) was first seen; 0 for a new one."""
        if self._seen is None or not holder.same_as(self._seen):
            self._seen, self._since = holder, time.monotonic()
        return time.monotonic() - self._since


class Lease:
    """The holder's side: a daemon thread keeps the heartbeat fresh until release()."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        self.lost_to: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {path}")

    def start(self) -> None:
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = read_holder(self.path)
            if holder is None or holder.token != self.owner["token"]:
                self.lost_to = holder.describe() if holder else "a process that removed the lock"
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # released or taken over in between (the next beat finds out which), or read-only now

    def check(self) -> None:
        """Raise LeaseLost when another process took this lease over; call before every write."""
        if self.lost_to is not None:
            raise LeaseLost(f"{self.path}: this process's heartbeat lapsed for over {LEASE_S:.0f} s and "
                            f"{self.lost_to} took the lease over; this process stopped writing")

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.owner["token"]:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass  # a file system gone read-only: the lock is left, and is gone once this pid is (Holder.gone)


_HELD: dict[Path, Lease] = {}  # leases this process holds: taking one again is a no-op (re-entrant)
_WATCHES: dict[Path, Watch] = {}  # claims (try_lease) this process has found held, watched across its calls


@contextmanager
def lease(path: Path, label: str, timeout: float | None = None,
          on_acquire: Callable[[], None] | None = None) -> Iterator[Lease]:
    """Hold the lock file `path` (label names it in messages). on_acquire runs once the lease is
    held, before its heartbeat starts."""
    if path in _HELD:
        yield _HELD[path]
        return
    with refusing_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = None  # the holder last named in a waiting line
    watch, guard_watch = Watch(), Watch()
    while not _try_create(path, owner):
        holder = read_holder(path)
        if holder is None:
            continue  # released between our attempt and the read
        watched = watch.silence(holder)
        if holder.silent(watched):
            if _take_over(path, holder, guard_watch):
                say(f"{label}: taking over the lock of {holder.describe()} "
                    f"({_silence_words(holder, watched)}; a lease lasts {LEASE_S:.0f} s)")
                continue
        elif holder.text != announced:
            announced = holder.text
            say(f"{label}: waiting for {holder.describe()} (taken over if no heartbeat is seen for "
                f"{holder.silence_allowed():.0f} s)")
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(f"{path} is held by {holder.describe()}; wait for it to finish, or for its "
                              f"lease to lapse ({LEASE_S:.0f} s without a heartbeat) if it is gone")
        time.sleep(_POLL_S * random.uniform(0.5, 1.5))  # jitter keeps waiters from polling in lockstep
    with _hold(path, owner, on_acquire) as held:
        yield held


@contextmanager
def try_lease(path: Path, label: str) -> Iterator[Lease | None]:
    """Hold the lock file `path` if no live holder has it, else yield None at once, silently: the
    claim of one share of a cell's work (Cell.claim), which a writer skips while another holds it.
    A holder that is gone is taken over (one line, as lease() says it)."""
    if path in _HELD:
        yield _HELD[path]
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    # a claim is polled again and again (a writer waits for its cell's other batches): its watches
    # live across calls, so a holder's silence is judged on this host's clock, as lease() judges it
    watch, guard_watch = (_WATCHES.setdefault(p, Watch()) for p in (path, path.with_name(path.name + ".break")))
    while not _try_create(path, owner):
        holder = read_holder(path)
        if holder is None:
            continue  # released between our attempt and the read
        watched = watch.silence(holder)
        if not (holder.silent(watched) and _take_over(path, holder, guard_watch)):
            yield None
            return
        say(f"{label}: taking over the lock of {holder.describe()} "
            f"({_silence_words(holder, watched)}; a lease lasts {LEASE_S:.0f} s)")
    with _hold(path, owner, None) as held:
        yield held


@contextmanager
def _hold(path: Path, owner: dict, on_acquire: Callable[[], None] | None) -> Iterator[Lease]:
    """The lock file `path`, just created for `owner`: heartbeat until the block ends, then release."""
    held = Lease(path, owner)
    try:
        if on_acquire is not None:
            on_acquire()
        held.start()
        _HELD[path] = held
        yield held
    finally:
        _HELD.pop(path, None)
        held.release()


def _silence_words(holder: Holder, watched: float) -> str:
    if holder.dead_here():
        return "its process is gone"
    return f"no heartbeat seen for {watched:.0f} s"


def say(line: str) -> None:
    """One line for the user on stderr: what the store is waiting for or doing, not a result."""
    print(line, file=sys.stderr, flush=True)


def slurm_job() -> str | None:
    """This process's SLURM job as scancel names it: ARRAY_TASK for an array task, else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": slurm_job(), "token": uuid.uuid4().hex,
            "since": time.time()}


def _try_create(path: Path, owner: dict) -> bool:
    with refusing_writes(path):
        fd = None
        while fd is None:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except FileNotFoundError:  # made by the caller, but removed since, once empty, by a writer
                path.parent.mkdir(parents=True, exist_ok=True)  # that finished the cell (Cell.tidy_claims)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(owner))
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # a full disk: an unnamed lock would hold off every waiter for a whole lease
            path.unlink(missing_ok=True)
            raise
    return True


def _take_over(path: Path, stale: Holder, guard_watch: Watch) -> bool:
    """Remove a lock whose holder is gone; False when another process got there first."""
    # Two waiters may both find the lock stale; if one removed it and took a fresh lease before the
    # other acted, a plain unlink would delete the fresh one. Breakers therefore take turns under a
    # guard file, and remove the lock only if it still holds the stale holder, still gone.
    guard = path.with_name(path.name + ".break")
    if not _try_create(guard, _owner()):
        other = read_holder(guard)
        if other is not None and other.silent(guard_watch.silence(other)):  # a breaker killed in these few lines
            guard.unlink(missing_ok=True)
        return False
    try:
        current = read_holder(path)
        if current is None or not current.same_as(stale):  # it beat, or another waiter took it, meanwhile
            return False
        path.unlink()
        return True
    finally:
        guard.unlink(missing_ok=True)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files (harness.store.files.TEMP_NAME) in `folder` whose writers are gone: this
    host's whose pid is dead, and any older than TEMP_STALE_S (another host's pid cannot be checked
    from here), so that a temp file a live writer may still rename is never removed. For folders
    without a lease (a store's .plans/, a report's folder). Returns the removed paths."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed, here = [], host_tag()
    for name in filter(TEMP_NAME.fullmatch, names):
        path, parts = folder / name, TEMP_PARTS.fullmatch(name)
        try:
            dead_here = parts is not None and parts["host"] == here and not pid_alive(int(parts["pid"]))
            if dead_here or time.time() - path.lstat().st_mtime > TEMP_STALE_S:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass  # renamed or removed by its writer meanwhile
    return removed


def pid_alive(pid: int) -> bool:
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
