"""Writes that a kill at any instant leaves either old or new, never half: a temp file beside the
target, then one rename."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file_path) on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
