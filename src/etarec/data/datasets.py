"""The dataset registry: every dataset etarec can prepare, by its config name (`data.dataset`).

A Dataset says how to read it (into RawEvents, or, for LongCTR, straight into the prepared
tables), which files it reads (for the stale-data fingerprint), and where it is found without an
explicit `data.path`: the bundled copy, then `<shared data root>/<folder>`. The CLI's choices, the
config check and the path lookup all come from here; adding a dataset is one entry.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from etarec.config import DataConfig
from etarec.data.events import read_events
from etarec.data.files import DATA_ROOT_ENV, REPO_ROOT, shared_roots
from etarec.data.longctr import FILES as LONGCTR_FILES
from etarec.data.longctr import read_longctr
from etarec.data.movielens import read_latest_small, read_ml1m, read_ml100k
from etarec.data.schema import RawEvents
from etarec.data import synth
from etarec.data.taobao import read_taobao, taobao_files
from etarec.data.writer import Tables
from etarec.errors import EtarecError


def _in_folder(*names: str) -> Callable[[Path], list[Path]]:
    return lambda path: [path / name for name in names]


@dataclass(frozen=True)
class Dataset:
    name: str
    read: Callable[[Path, DataConfig], RawEvents | Tables]  # (raw path, data config) -> events or tables
    inputs: Callable[[Path], list[Path]]  # the files `read` reads from the raw path
    protocol: str  # how samples are made (protocol.py); "label column" decides for own events
    folder: str | None = None  # folder name under a shared data root
    bundled: Path | None = None  # a copy inside the repository
    # why the events carry no real times (model.use_time then sees gaps of 0), None when they do
    missing_times: Callable[[DataConfig], str | None] = lambda data: None


DATASETS = {dataset.name: dataset for dataset in [
    Dataset("ml-latest-small", lambda path, data: read_latest_small(path), _in_folder("ratings.csv", "movies.csv"),
            "rating", folder="movielens-latest-small", bundled=REPO_ROOT / "data" / "ml-latest-small"),
    Dataset("ml-1m", lambda path, data: read_ml1m(path),
            _in_folder("ml-1m.train.rating", "ml-1m.test.rating", "movies.dat", "ncf_item_to_movie_id.csv", "users.dat"),
            "rating", folder="movielens-1m"),
    Dataset("ml-100k", lambda path, data: read_ml100k(path), _in_folder("u.data", "u.item", "u.genre", "u.user"),
            "rating", folder="movielens-100k"),
    Dataset("taobao", lambda path, data: read_taobao(path), taobao_files, "last_behaviour",
            folder="taobao-userbehavior-samples"),
    Dataset("events", lambda path, data: read_events(path, data.columns), lambda path: [path],
            "rating with a label column, else last_behaviour",
            missing_times=lambda data: None if data.columns.timestamp else "data.columns.timestamp is not mapped"),
    Dataset("longctr", lambda path, data: read_longctr(path), _in_folder(*LONGCTR_FILES), "longctr",
            missing_times=lambda data: "the LongCTR layout has none"),
    # generated, not read: the "raw input" is the generator's source (a changed generator prepares
    # again); its knobs are data.synth, its seed data.seed
    Dataset(synth.NAME, synth.read_synth, lambda path: [path], "synthetic", bundled=Path(synth.__file__)),
]}


def dataset_names() -> list[str]:
    return list(DATASETS)


def get_dataset(name: str) -> Dataset:
    """The registry entry of `name`; one line naming the valid names (and the nearest) otherwise."""
    if name in DATASETS:
        return DATASETS[name]
    nearest = difflib.get_close_matches(str(name), DATASETS, n=1, cutoff=0.5)
    hint = f"did you mean '{nearest[0]}'? " if nearest else ""
    raise EtarecError(f"invalid config value for 'data.dataset': unknown dataset '{name}'; {hint}"
                      f"choose one of {', '.join(DATASETS)}")


def default_prepared_dir(data: DataConfig) -> Path:
    return Path(data.prepared_dir or Path("prepared") / data.dataset)


def resolve_raw_path(data: DataConfig) -> Path:
    """The raw data location: data.path, else the bundled copy, else $ETAREC_DATA_ROOT/<folder>,
    else ../shared/data/<folder>."""
    dataset = get_dataset(data.dataset)
    if data.path:
        resolved = Path(data.path).expanduser()
        if not resolved.exists():
            raise EtarecError(f"data path {resolved} does not exist; pass the folder or file that holds the {dataset.name} data")
        return resolved
    candidates = [dataset.bundled] if dataset.bundled else []
    if dataset.folder:
        candidates += [root / dataset.folder for root in shared_roots()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if not candidates:
        raise EtarecError(f"dataset '{dataset.name}' needs data.path (a file or folder); set it in the config or with --path")
    raise EtarecError(
        f"no {dataset.name} data found (looked in {', '.join(str(c) for c in candidates)}); "
        f"pass --path DIR or set {DATA_ROOT_ENV} to the folder that holds {dataset.folder}/"
    )
