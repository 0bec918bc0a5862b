"""What a prepared dataset was made from, so that stale data is never reused silently.

meta.json records two things, and `ensure_prepared` reuses a folder only when both match:

* "fingerprint": the data config (all of it but `prepared_dir`) with the raw path resolved;
* "inputs": one entry per raw file the reader reads: path, size, mtime_ns and a SHA-256. Files
  up to FULL_HASH_BYTES are hashed whole (a few tens of ms for ML-1M); larger ones by their size,
  first and last MiB ("hashed": "ends"). A file matches when its path, size and hash are equal; a
  file hashed by its ends must also keep its mtime_ns, since an edit in its middle changes only
  that. So any change to a small file is caught (even with its size and mtime restored), and a
  large file counts as changed when it was written to (a new mtime) or resized.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from etarec.config import DataConfig

FULL_HASH_BYTES = 64 << 20
END_BYTES = 1 << 20


def config_fingerprint(data: DataConfig, raw_path: Path) -> dict:
    """The config part: every data key but prepared_dir, the path resolved."""
    fields = data.model_dump(mode="json", exclude={"prepared_dir"})
    fields["path"] = str(Path(raw_path).resolve())
    return fields


def file_fingerprint(path: Path) -> dict:
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if stat.st_size <= FULL_HASH_BYTES:
            hashed = "all"
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
        else:
            hashed = "ends"
            digest.update(str(stat.st_size).encode())
            digest.update(handle.read(END_BYTES))
            handle.seek(stat.st_size - END_BYTES)
            digest.update(handle.read(END_BYTES))
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": digest.hexdigest(), "hashed": hashed}


def inputs_fingerprint(files: list[Path]) -> list[dict]:
    """The fingerprints of the raw files that exist (a missing one is the reader's error to report)."""
    return [file_fingerprint(f) for f in files if Path(f).is_file()]


def inputs_change(recorded, current: list[dict]) -> str | None:
    """How the raw files differ from those a dataset was made from (one phrase), None when they match."""
    if not isinstance(recorded, list):
        return "its meta.json records no input files (an older etarec)"
    before = {entry.get("path"): entry for entry in recorded if isinstance(entry, dict)}
    now = {entry["path"]: entry for entry in current}
    for path in sorted(before.keys() - now.keys()):
        return f"{path} is gone"
    for path in sorted(now.keys() - before.keys()):
        return f"{path} was not among its inputs"
    for path, entry in now.items():
        old = before[path]
        if old.get("size") != entry["size"]:
            return f"{path} changed (size {old.get('size')} -> {entry['size']} bytes)"
        if old.get("sha256") != entry["sha256"] or old.get("hashed") != entry["hashed"]:
            return f"{path} changed (its content differs)"
        if entry["hashed"] != "all" and old.get("mtime_ns") != entry["mtime_ns"]:
            return f"{path} changed (modified since)"
    return None
