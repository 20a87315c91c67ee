"""What two stores must share byte for byte when the same sweep filled them (any launcher, any number
of writers per cell): every video, spec and quality score file as bytes; records, the compute scores
and the manifest with their measured fields (times, memory, host, file times, and the `worker` that
wrote each record) left out, since those are measurements, not results."""
from __future__ import annotations

import json
from pathlib import Path

MEASURED = ("wall_seconds", "decode_seconds", "verifier_seconds", "peak_memory_mb", "fps", "host")


def _record(data: bytes) -> dict:
    record = json.loads(data)
    record.pop("worker", None)  # which writer made it: any of a cell's shards, same bytes
    record["ledger"] = {k: v for k, v in record["ledger"].items() if k not in MEASURED}
    return record


def _compute_scores(data: bytes) -> dict:
    payload = json.loads(data)
    payload["values"] = {k: v for k, v in payload["values"].items() if k not in MEASURED}
    return payload


def _manifest(data: bytes) -> dict:
    manifest = json.loads(data)
    manifest["files"] = {f: {k: v for k, v in d.items() if k != "mtime_ns"} for f, d in manifest["files"].items()
                         if not f.startswith("records/") and f != "scores/compute.json"}  # a file's time: when it was written
    return manifest


def contents(store: Path) -> dict[str, object]:
    """cells/<key>/<file> -> its bytes, or its deterministic part; status.json -> its state."""
    found = {}
    for path in sorted((store / "cells").rglob("*")):
        if not path.is_file():
            continue
        name, data = str(path.relative_to(store)), path.read_bytes()
        if path.name == "status.json":
            found[name] = json.loads(data)["state"]
        elif path.parent.name == "records":
            found[name] = _record(data)
        elif name.endswith("scores/compute.json"):
            found[name] = _compute_scores(data)
        elif path.name == "manifest.json":
            found[name] = _manifest(data)
        else:
            found[name] = data
    return found


def leftovers(store: Path) -> list[Path]:
    """Temp files and locks (the cell's, writers' and claims'), which no finished sweep may leave."""
    return [p for p in (store / "cells").rglob("*") if p.name.endswith((".tmp", ".lock")) or p.name.startswith(".lock")]


def claims_of_unrecorded_batches(store: Path) -> list[Path]:
    """Claims whose batch (one video: the tests' writers run batch_size=1) has no record yet: a writer
    killed holding one left work undone. A claim seen just after its batch's record was written, before
    its release, would leave none (Cell.tidy_claims removes such a claim)."""
    return [p for p in sorted((store / "cells").glob("*/.claims/*.lock"))
            if not (p.parent.parent / "records" / f"{p.stem}.json").exists()]


def slow_disk(folder: Path, seconds: float, barrier: int = 0) -> Path:
    """A folder whose sitecustomize.py (put it first on PYTHONPATH) makes every fsync of the Python
    processes started with it take `seconds` longer; with barrier=N, each process's first fsync also
    waits, when it writes a video, until N of them have got there (so that N writers of one cell all
    hold a batch at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"""import os, time
_sync, _first = os.fsync, [True]
def _slow(fd):
    if _first[0] and {barrier} and ".npy." in os.readlink(f"/proc/self/fd/{{fd}}"):
        _first[0] = False
        open(os.path.join({str(folder)!r}, f"at-barrier.{{os.getpid()}}"), "w").close()
        deadline = time.monotonic() + 120
        while len([n for n in os.listdir({str(folder)!r}) if n.startswith("at-barrier.")]) < {barrier} \\
                and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep({seconds})
    return _sync(fd)
os.fsync = _slow
""")
    return folder
