"""The results store: one directory per cell, atomic writes, leases, manifests, resumable runs.

Layout under the root folder::

    cells/<key>/spec.json             frozen run spec, written once; its canonical JSON hashes to <key>
    cells/<key>/status.json           state (running | complete | failed), host, pid, SLURM job, time,
                                      error, and the command that resumes the cell
    cells/<key>/videos/<i:05d>.<ext>  uint8 (F, H, W, 3) frames in the format the spec records
                                      (harness/store/video_format.py): .npy where it records none,
                                      .mkv (FFV1, lossless), .mp4 (H.264)
    cells/<key>/records/<i:05d>.json  per-video record, written after its video: its presence
                                      means the video is complete
    cells/<key>/scores/<metric>.json  per-video values of one metric, in video-index order
    cells/<key>/manifest.json         sha256, size and modification time of every video, record and
                                      score file, written last when the cell completes and again when
                                      a score file is written: a complete cell can always be checked
                                      in full (Cell.damage, `refinery verify`), and is recognised as
                                      unchanged by size and time alone (Cell.damage(full=False): what
                                      `run` and `report` check, opening no video, as make and rsync do)
    cells/<key>/.lock                 lease of the process changing the cell's spec, status, manifest or
                                      scores (harness/store/lease.py), held for those writes only
    cells/<key>/.writers/<host>.<pid>.lock  lease of each process generating the cell's videos
    cells/<key>/.claims/<i:05d>.lock  lease of the writer generating the rollout batch that starts at
                                      video i: writers of one cell share its batches (Cell.claim)

Every file is written to a temp file in its own directory and renamed over the target (harness.store.files), so a
process killed at any moment leaves either the old file or the new one, never half of one, and
many processes (joblib workers, SLURM array jobs on a shared file system) can share one store.
Every write into a cell happens under its lease, or for videos and records under the claim of their
batch; the next holder of the cell's lease removes the temp files that a killed writer left behind
when no other writer of the cell is alive.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UsageError
from harness.store.files import TEMP_NAME, atomic_write_bytes, atomic_write_json, canonical_json, json_file_bytes, read_json, sha256_hex
from harness.store.lease import Holder, Lease, LockTimeout, lease, read_holder, say, slurm_job, try_lease
from harness.store.video_format import VideoFormat, format_of_spec, format_of_suffix, stored_problem

__all__ = ["LockTimeout", "Store", "Cell", "Damage", "cell_key"]

STATES = ("running", "complete", "failed")  # what status.json says; Cell.state() adds the rest
_SCORE_KEYS = ("metric", "version", "higher_is_better", "values", "videos")
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_INDEX_RE = re.compile(r"(\d+)\.json")
_WRITTEN = ("", "videos", "records", "scores")  # the cell's folders that writers write into
_RERUN = "rerun the `refinery run` or `sweep` that made the cell to regenerate it"
_RESCORE = "rerun `refinery score` (or the sweep) with the cell's settings to rewrite it"


def _spec_json(spec: dict) -> str:
    try:
        return canonical_json(spec)
    except (TypeError, ValueError) as e:
        raise UsageError(f"run spec is not plain JSON ({e}); resolve it to JSON values") from e


def cell_key(spec: dict) -> str:
    """16 hex characters of sha256 over the canonical JSON of spec."""
    return sha256_hex(_spec_json(spec))[:16]


# Lower bounds of the small files' sizes (a toy cell's are 400 B per record, 130 B per manifest entry,
# 20 B or more per score value; a spec, status or .plans entry is a few hundred bytes).
_RECORD_BYTES, _MANIFEST_ENTRY_BYTES, _SCORE_VALUE_BYTES, _SMALL_FILE_BYTES = 300, 100, 16, 200
_NPY_HEADER_BYTES = 128


def cell_bytes(videos: int, video_bytes: int, metrics: int, block: int) -> int:
    """At least the disk space a complete cell takes on a file system of `block`-byte blocks: every
    video and record, the spec, status and manifest, one score file per metric and the store's .plans
    entry, each rounded up to whole blocks, and the temp copy that rewriting the manifest (after each
    score file) needs beside the old one."""
    def on_disk(size: int) -> int:
        return -(-size // block) * block

    manifest = on_disk((2 * videos + metrics) * _MANIFEST_ENTRY_BYTES)
    return (videos * (on_disk(video_bytes + _NPY_HEADER_BYTES) + on_disk(_RECORD_BYTES))
            + metrics * on_disk(videos * _SCORE_VALUE_BYTES) + 3 * on_disk(_SMALL_FILE_BYTES) + 2 * manifest)


def file_digest(path: Path) -> dict[str, Any]:
    """A manifest entry: the sha256 and size of a file's bytes, and its modification time (ns), by which
    a later check that opens nothing recognises it as unchanged."""
    data = path.read_bytes()
    return {"sha256": sha256_hex(data), "size": len(data), "mtime_ns": path.stat().st_mtime_ns}


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


@dataclass(frozen=True)
class Damage:
    """One unusable file of a cell: its path relative to the cell's folder and what is wrong with it
    (a predicate: "is missing", "differs from the manifest (sha256)")."""

    cell: str
    file: str
    problem: str


class Cell:
    """One run of one configuration over a prompt suite and seeds. Files appear lazily; every write
    into the cell happens under its lease (Cell.lock)."""

    def __init__(self, key: str, path: Path):
        self.key = key
        self.path = path
        self._format: VideoFormat | None = None  # from the spec, once it is written

    def __repr__(self) -> str:
        return f"Cell({self.key!r}, {str(self.path)!r})"

    # -- spec and status ------------------------------------------------------------------------

    def spec(self) -> dict | None:
        """The frozen spec, None before it is written; an unreadable one is a UsageError with the fix
        (damage() also checks that it hashes to the cell's key)."""
        path = self.path / "spec.json"
        return read_json(path, fix=self.fix("spec.json")) if path.exists() else None

    def _spec_problem(self) -> str | None:
        try:
            spec = json.loads((self.path / "spec.json").read_bytes())
        except FileNotFoundError:
            return "is missing"
        except ValueError as e:
            return f"is not JSON ({e})"
        try:
            if isinstance(spec, dict) and cell_key(spec) == self.key:
                return None
        except UsageError:  # NaN or infinity: never written by write_spec
            pass
        return "is not this cell's spec (its hash is not the cell's key)"

    def write_spec(self, spec: dict) -> None:
        """Freeze the spec; repeating it is a no-op, a different one is refused, a damaged one (one that
        does not hash to the cell's key, which spec does) is rewritten."""
        try:
            old = read_json(self.path / "spec.json")
        except (FileNotFoundError, UsageError):
            old = None
        if old is not None and _spec_json(old) == _spec_json(spec):
            return
        if old is not None and not (cell_key(spec) == self.key != _key_or_none(old)):
            raise UsageError(f"cell {self.path} already holds a different spec; "
                             "delete that folder if its results are no longer wanted")
        atomic_write_json(self.path / "spec.json", spec)

    def status(self) -> dict | None:
        """status.json, None before it is written; a damaged one is a UsageError with the fix."""
        path = self.path / "status.json"
        if not path.exists():
            return None
        status = read_json(path, fix=self.fix("status.json"))
        problem = _status_problem(status)
        if problem:
            raise self._damaged("status.json", problem)
        return status

    def _status_quietly(self) -> dict | None:
        try:
            return self.status()
        except UsageError:
            return None

    def set_status(self, state: str, error: str | None = None, resume: str | None = None) -> None:
        """resume: the command that finishes this cell if its process dies."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        atomic_write_json(self.path / "status.json", {
            "state": state, "host": socket.gethostname(), "pid": os.getpid(), "job": slurm_job(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "error": error, "resume": resume,
        })

    def is_complete(self) -> bool:
        status = self._status_quietly()
        return status is not None and status["state"] == "complete"

    def state(self) -> str:
        """missing | running | interrupted (its holder is gone) | failed | complete | damaged."""
        status = self._status_quietly()
        if status is None:
            return "damaged" if (self.path / "status.json").exists() else "missing"
        if status["state"] == "running" and not self.live_writers():
            return "interrupted"
        return status["state"]

    def resume_command(self) -> str | None:
        """The command that finishes or repairs this cell: its last writer's, pointed at the store the cell
        is in now (stores get moved and copied)."""
        resume = (self._status_quietly() or {}).get("resume")
        if not resume:
            return None
        words = [w for w in shlex.split(resume) if not w.startswith("paths.store=")]
        return shlex.join([*words, f"paths.store={self.path.parent.parent}"])

    # -- videos and records ---------------------------------------------------------------------

    def video_format(self) -> VideoFormat:
        """How the cell stores its videos, as its spec records (npy for a spec without a "video" entry)."""
        if self._format is None:
            try:
                spec = self.spec()
            except UsageError:  # a damaged spec (damage() lists it): the manifest's file names say the format
                names = [f for f in (self.manifest() or {"files": {}})["files"] if f.startswith("videos/")]
                return format_of_suffix(Path(names[0]).suffix if names else ".npy")
            if spec is None:
                return format_of_spec(None)
            self._format = format_of_spec(spec)
        return self._format

    def video_file(self, i: int) -> str:
        """Video i's path relative to the cell's folder."""
        return f"videos/{i:05d}{self.video_format().suffix}"

    def video_path(self, i: int) -> Path:
        return self.path / self.video_file(i)

    def has_record(self, i: int) -> bool:
        return (self.path / _record_file(i)).exists()

    def write_video(self, i: int, video: np.ndarray, record: dict | None = None) -> None:
        """Store video i, then its record (when given): a record is the mark that its video is complete."""
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"video must be uint8 (F, H, W, 3), got {video.dtype} {video.shape}")
        self.video_format().write(self.video_path(i), video)
        if record is not None:
            self.write_record(i, record)

    def write_record(self, i: int, record: dict) -> None:
        atomic_write_json(self.path / _record_file(i), record)

    def read_video(self, i: int) -> np.ndarray:
        self._check_recorded(i)
        file = self.video_file(i)
        if not self.video_path(i).exists():
            raise self._damaged(file, "is missing")
        try:
            return self.video_format().read(self.video_path(i))
        except (ValueError, EOFError) as e:
            raise self._damaged(file, f"is corrupt ({e})") from e

    def read_record(self, i: int) -> dict:
        self._check_recorded(i)
        return read_json(self.path / _record_file(i), fix=self.fix(_record_file(i)))

    def _check_recorded(self, i: int) -> None:
        if not self.has_record(i):
            raise UsageError(f"cell {self.path} has no complete video {i}; rerun the cell")

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
        (one per video, in video-index order) and videos (their count). The manifest of a complete
        cell vouches for the new file at once."""
        if not _KEY_RE.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        missing = [k for k in _SCORE_KEYS if k not in payload]
        if missing:
            raise ValueError(f"scores for {name!r} lack {missing}")
        for output, values in payload["values"].items():
            if len(values) != payload["videos"]:
                raise ValueError(f"{name}.{output} has {len(values)} values for "
                                 f"{payload['videos']} videos")
        data, file = json_file_bytes(payload), f"scores/{name}.json"
        with self.lock():
            atomic_write_bytes(self.path / file, data)
            manifest = self.manifest()
            if manifest is not None:
                manifest["files"][file] = file_digest(self.path / file)
                atomic_write_json(self.path / "manifest.json", manifest)

    def read_scores(self) -> dict[str, dict]:
        """The score files the manifest vouches for and that are intact; the others are stale (see
        write_manifest) or damaged, and `score` computes them again. A cell without a manifest (written
        before manifests, or by hand) has every score file read, as it is."""
        manifest = self.manifest()
        if manifest is None:
            folder = self.path / "scores"
            files = sorted(f"scores/{p.name}" for p in folder.glob("*.json")) if folder.is_dir() else []
            return {Path(f).stem: read_json(self.path / f, fix=self.fix(f)) for f in files
                    if not Path(f).name.startswith(".")}
        return {Path(f).stem: read_json(self.path / f) for f, digest in sorted(manifest["files"].items())
                if f.startswith("scores/") and not self._file_problem(f, digest)}

    # -- manifest and damage --------------------------------------------------------------------

    def manifest(self) -> dict | None:
        """manifest.json, None when absent or unreadable (damage() says which)."""
        try:
            manifest = json.loads((self.path / "manifest.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
        return manifest if ok and isinstance(manifest.get("videos"), int) else None

    def write_manifest(self, videos: int) -> None:
        """Record the digests of videos 0 .. videos - 1 and their records: the last write of a cell.

        Score files stay vouched for only when no video or record changed: a repair that reproduced
        every byte keeps its scores; one that rewrote a record (whose ledger times are measured anew)
        leaves them stale, to be recomputed by `score`."""
        old = (self.manifest() or {"files": {}})["files"]
        files = {f: file_digest(self.path / f) for i in range(videos) for f in (self.video_file(i), _record_file(i))}
        changed = [f for f, digest in files.items() if f in old and _content(old[f]) != _content(digest)]
        for f in changed:
            if f.startswith("videos/"):
                say(f"cell {self.key}: {f} was regenerated with other bytes than before (another torch build "
                    "or CPU kind than the original's?); the cell's scores will be recomputed")
        if not changed:
            files.update({f: d for f, d in old.items() if f.startswith("scores/") and not self._file_problem(f, d)})
        atomic_write_json(self.path / "manifest.json", {"videos": videos, "files": files})

    def stamp_times(self) -> bool:
        """Add the modification times a manifest written before 2026-12-07 lacks, so that run and report
        recognise the cell by size and time; only after a full check found no damage. Returns whether
        it stamped; a cell held by a writer, or in a store this process cannot write, is left as it is."""
        manifest = self.manifest()
        if manifest is None or all("mtime_ns" in e for e in manifest["files"].values()):
            return False
        try:
            with self.lock(timeout=0):
                manifest = self.manifest()  # as it is now that the cell is ours
                if manifest is None or self.damage():
                    return False
                for file, entry in manifest["files"].items():
                    entry.setdefault("mtime_ns", (self.path / file).stat().st_mtime_ns)
                atomic_write_json(self.path / "manifest.json", manifest)
        except (LockTimeout, OSError):
            return False
        return True

    def damage(self, full: bool = True) -> list[Damage]:
        """Every damaged or missing file of the cell. A cell still being written is checked for its spec
        and status only: its videos are checked when it completes. full=False trusts a file whose size
        and modification time are the manifest's without opening it (a changed time still hashes it)."""
        if not self.path.is_dir():
            return []
        has_manifest = (self.path / "manifest.json").exists()
        problems = {"spec.json": self._spec_problem()}
        if problems["spec.json"] == "is missing" and not (has_manifest or (self.path / "status.json").exists()):
            problems["spec.json"] = None  # a cell whose first writer has not got that far
        problems["status.json"] = self._status_file_problem()
        manifest = self.manifest()
        if manifest is not None:
            files = manifest["files"]
            expected = [f for i in range(manifest["videos"]) for f in (self.video_file(i), _record_file(i))]
            problems.update({f: "is not in the manifest" for f in expected if f not in files})
            problems.update({f: self._file_problem(f, digest, full) for f, digest in sorted(files.items())})
        elif has_manifest:
            problems["manifest.json"] = "is not a manifest (not JSON, or without files)"
        elif self.is_complete():
            problems["manifest.json"] = "is missing, though the cell is complete"
        return [Damage(self.key, f, p) for f, p in problems.items() if p]

    def refuse_damage(self, scores: bool = True, full: bool = True) -> None:
        """A UsageError naming the first damaged file (a score file too, when scores) and its fix;
        full=False: checked by size and time (damage)."""
        found = [d for d in self.damage(full) if scores or not d.file.startswith("scores/")]
        if found:
            more = f" (and {len(found) - 1} more: `refinery verify` lists them)" if len(found) > 1 else ""
            raise self._damaged(found[0].file, found[0].problem + more)

    def unusable(self, indices: list[int]) -> dict[int, set[str]]:
        """Which files of each video ("video", "record") must be (re)written: missing, unlike the
        manifest, or, where the manifest has no entry (a cell still being written), not parsing."""
        files = (self.manifest() or {"files": {}})["files"]
        found = {}
        for i in indices:
            parts = {part for part, f in (("video", self.video_file(i)), ("record", _record_file(i)))
                     if self._file_problem(f, files.get(f))}
            if parts:
                found[i] = parts
        return found

    def fix(self, file: str) -> str:
        """How to repair a damaged file of this cell."""
        if file.startswith("scores/"):
            return _RESCORE
        resume = self.resume_command() if file != "status.json" else None
        return f"rerun `{resume}` to regenerate it" if resume else _RERUN

    def _damaged(self, file: str, problem: str) -> UsageError:
        return UsageError(f"{self.path / file} {problem}; {self.fix(file)}")

    def _status_file_problem(self) -> str | None:
        try:
            return _status_problem(json.loads((self.path / "status.json").read_bytes()))
        except FileNotFoundError:
            return None
        except ValueError as e:
            return f"is not JSON ({e})"

    def _file_problem(self, file: str, entry: dict | None, full: bool = True) -> str | None:
        """Why a video, record or score file is unusable, or None. Against its manifest entry when it has
        one (size, then sha256; without full, a file of the entry's size and modification time passes
        unopened), else it must parse."""
        if not full and entry is not None and "mtime_ns" in entry:
            try:
                stat = (self.path / file).stat()
            except FileNotFoundError:
                return "is missing"
            if (stat.st_size, stat.st_mtime_ns) == (entry.get("size"), entry["mtime_ns"]):
                return None
        try:
            data = (self.path / file).read_bytes()
        except FileNotFoundError:
            return "is missing"
        if entry is None:
            return _parse_problem(file, data)
        if len(data) != entry.get("size"):
            return f"has {len(data)} bytes where the manifest says {entry.get('size')}"
        if sha256_hex(data) != entry.get("sha256"):
            return "differs from the manifest (sha256)"
        return None

    # -- locking --------------------------------------------------------------------------------

    def lock(self, timeout: float | None = None) -> AbstractContextManager[Lease]:
        """Exclusive access to this cell across processes and hosts: a lease (harness/store/lease.py) that
        is taken over when its holder is gone. Re-entrant within one process. The new holder first
        removes the temp files a killed writer left in the cell."""
        return lease(self.path / ".lock", f"cell {self.key}", timeout, on_acquire=self._remove_temp_files)

    def writer(self) -> AbstractContextManager[Lease]:
        """This process's lease as one of the cell's writers, held while it generates: the cell is
        running (not interrupted) while any writer's lease lives."""
        return lease(self.path / ".writers" / f"{socket.gethostname()}.{os.getpid()}.lock", f"cell {self.key}")

    def claim(self, first: int) -> AbstractContextManager[Lease | None]:
        """The claim of the rollout batch that starts at video `first`, or None while another live
        writer holds it; a dead writer's claim is taken over."""
        return try_lease(self.path / ".claims" / f"{first:05d}.lock", f"cell {self.key} videos from {first}")

    def live_writers(self, other_than_me: bool = False) -> list[Holder]:
        """The holders of the cell's lease, writer leases and claims that are alive (other_than_me:
        those of other processes)."""
        paths = [self.path / ".lock", *(p for folder in (".writers", ".claims")
                                        for p in sorted((self.path / folder).glob("*.lock")))]
        holders = [h for h in map(read_holder, paths) if h is not None and not h.gone()]
        me = (socket.gethostname(), os.getpid())
        return [h for h in holders if not (other_than_me and (h.info.get("host"), h.info.get("pid")) == me)]

    def tidy_claims(self) -> None:
        """Once the cell is complete: remove the writer leases and claims of writers that are gone (a
        writer killed after its batch's last record, before it released the claim, leaves one that no
        later writer needs to take over), then their folders if nothing else is in them."""
        for path in [*(self.path / ".writers").glob("*.lock"), *(self.path / ".claims").glob("*.lock")]:
            holder = read_holder(path)
            if holder is not None and holder.gone():
                path.unlink(missing_ok=True)
        for folder in (".claims", ".writers"):
            try:
                (self.path / folder).rmdir()
            except OSError:
                pass  # absent, or a writer still there

    def _remove_temp_files(self) -> None:
        if self.live_writers(other_than_me=True):
            return  # their temp files are writes in progress; the last holder removes what is left
        for folder in _WRITTEN:
            try:
                names = os.listdir(self.path / folder)
            except FileNotFoundError:
                continue
            for name in names:
                if TEMP_NAME.fullmatch(name):
                    (self.path / folder / name).unlink(missing_ok=True)


def _record_file(i: int) -> str:
    return f"records/{i:05d}.json"


def _key_or_none(spec: Any) -> str | None:
    try:
        return cell_key(spec) if isinstance(spec, dict) else None
    except UsageError:
        return None


def _status_problem(status: Any) -> str | None:
    if isinstance(status, dict) and status.get("state") in STATES:
        return None
    return f"is not a status object (a dict whose state is one of {', '.join(STATES)})"


def _content(entry: dict) -> tuple[Any, Any]:
    """What a manifest entry says of a file's bytes (its time says when they were written)."""
    return entry.get("sha256"), entry.get("size")


def _parse_problem(file: str, data: bytes) -> str | None:
    if file.startswith("videos/"):
        return stored_problem(Path(file).suffix, data)
    try:
        json.loads(data)
    except ValueError as e:
        return f"is not readable ({e})"
    return None


@dataclass
class CellRef:
    key: str
    labels: dict[str, str] = field(default_factory=dict)  # the swept settings, e.g. {"steps": "8"}

    def name(self, label_keys: list[str] | None = None) -> str:
        """The row's name in figures and galleries: its labels, or its key when it has none."""
        keys = self.labels if label_keys is None else label_keys
        return ", ".join(f"{k}={self.labels.get(k, '—')}" for k in keys) or self.key
