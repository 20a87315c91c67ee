"""What two stores must share byte for byte when the same sweep filled them (any launcher, any process):
every video, spec and quality score file as bytes; records, the compute scores and the manifest with
their measured fields (times, memory, host, file times) left out, since those are measurements, not results."""
from __future__ import annotations

import json
from pathlib import Path

MEASURED = ("wall_seconds", "decode_seconds", "verifier_seconds", "peak_memory_mb", "fps", "host")


def _record(data: bytes) -> dict:
    record = json.loads(data)
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
    """Temp files and locks, which no finished sweep may leave."""
    return [p for p in (store / "cells").rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".lock")]
