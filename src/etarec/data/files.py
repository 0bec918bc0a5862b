"""Finding raw data and reading delimited/Parquet files with one-line, actionable errors."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etarec.errors import EtarecError

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLED = {"ml-latest-small": REPO_ROOT / "data" / "ml-latest-small"}
# folder names of the datasets under a shared data root
SHARED_NAMES = {
    "ml-latest-small": "movielens-latest-small",
    "ml-1m": "movielens-1m",
    "ml-100k": "movielens-100k",
    "taobao": "taobao-userbehavior-samples",
}
DATA_ROOT_ENV = "ETAREC_DATA_ROOT"


def shared_roots() -> list[Path]:
    """Where shared raw datasets are looked for: $ETAREC_DATA_ROOT, then ../shared/data."""
    roots = []
    if os.environ.get(DATA_ROOT_ENV):
        roots.append(Path(os.environ[DATA_ROOT_ENV]))
    roots += [Path.cwd().parent / "shared" / "data", REPO_ROOT.parent / "shared" / "data"]
    return roots


def resolve_raw_path(dataset: str, path: str | None) -> Path:
    """The raw data location: an explicit path, else $ETAREC_DATA_ROOT/<name>, else ../shared/data/<name>,
    else the bundled copy (ml-latest-small only)."""
    if path:
        resolved = Path(path).expanduser()
        if not resolved.exists():
            raise EtarecError(f"data path {resolved} does not exist; pass the folder or file that holds the {dataset} data")
        return resolved
    candidates = []
    if dataset in BUNDLED:
        candidates.append(BUNDLED[dataset])
    if dataset in SHARED_NAMES:
        candidates += [root / SHARED_NAMES[dataset] for root in shared_roots()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if dataset in ("events", "longctr"):
        raise EtarecError(f"dataset '{dataset}' needs data.path (a file or folder); set it in the config or with --path")
    raise EtarecError(
        f"no {dataset} data found (looked in {', '.join(str(c) for c in candidates)}); "
        f"pass --path DIR or set {DATA_ROOT_ENV} to the folder that holds {SHARED_NAMES.get(dataset, dataset)}/"
    )


def require_files(folder: Path, *names: str) -> list[Path]:
    if not folder.is_dir():
        raise EtarecError(f"{folder} is not a folder; pass the folder that holds {', '.join(names)}")
    paths = [folder / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise EtarecError(f"{folder} lacks {', '.join(missing)}; point the data path at a complete copy of the dataset")
    return paths


def read_table(path: Path, columns: list | None, numeric: tuple = (), **csv_options) -> pd.DataFrame:
    """Read a CSV-like or Parquet file, check that `columns` exist and `numeric` ones hold numbers.

    With csv_options sep="::" (MovieLens .dat files), pandas' python engine is used.
    """
    try:
        if path.suffix == ".parquet":
            frame = pq.read_table(path).to_pandas()
        else:
            engine = "python" if len(csv_options.get("sep", ",")) > 1 else "c"
            frame = pd.read_csv(path, engine=engine, **csv_options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, pa.ArrowInvalid, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EtarecError(f"{path} is malformed ({detail}); check the file or re-download it") from None
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise EtarecError(
                f"{path} lacks column(s) {missing} (has {list(frame.columns)}); fix the header or the column mapping"
            )
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(bad.nonzero()[0][0])
            value = frame[column].iloc[row]
            shown = "an empty value" if pd.isna(value) else f"non-numeric value {value!r}"
            raise EtarecError(
                f"{path} is malformed: column '{column}' has {shown} at data row {row + 1}; fix or drop that row"
            )
        frame[column] = values
    return frame
