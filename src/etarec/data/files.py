"""Finding raw data and reading delimited/Parquet files with one-line, actionable errors."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etarec.errors import EtarecError

REPO_ROOT = Path(__file__).resolve().parents[3]
DATA_ROOT_ENV = "ETAREC_DATA_ROOT"
DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def shared_roots() -> list[Path]:
    """Where shared raw datasets are looked for: $ETAREC_DATA_ROOT, then ../shared/data."""
    roots = []
    if os.environ.get(DATA_ROOT_ENV):
        roots.append(Path(os.environ[DATA_ROOT_ENV]))
    roots += [Path.cwd().parent / "shared" / "data", REPO_ROOT.parent / "shared" / "data"]
    return roots


def print_warning(message: str) -> None:
    """The default for warnings: one line on stderr (stdout stays the command's output)."""
    print(f"etarec: warning: {message}", file=sys.stderr)


def folder_problem(path: Path) -> str | None:
    """Why folder `path` cannot be created or used as a folder (a file in its place or above it), else None."""
    path = Path(path)
    for at in (path, *path.parents):
        if at.exists():
            if at.is_dir():
                return None
            return f"{path} is a file, not a folder" if at == path else f"{path} lies under {at}, which is a file"
    return None


def require_files(folder: Path, *names: str) -> list[Path]:
    if not folder.is_dir():
        raise EtarecError(f"{folder} is not a folder; pass the folder that holds {', '.join(names)}")
    paths = [folder / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise EtarecError(f"{folder} lacks {', '.join(missing)}; point the data path at a complete copy of the dataset")
    return paths


def read_table(path: Path, columns: list | None, numeric: tuple = (), timestamps: tuple = (),
               **csv_options) -> pd.DataFrame:
    """Read a CSV-like or Parquet file, check that `columns` exist, `numeric` ones hold numbers and
    `timestamps` (some of `numeric`) whole Unix seconds within int64 (they come back as int64).

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
    comma = path.suffix != ".parquet" and csv_options.get("sep", ",") == ","
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            hint = _delimiter_hint(str(frame.columns[0]) if len(frame.columns) else "") if comma else ""
            raise EtarecError(
                f"{path} lacks column(s) {missing} (has {list(frame.columns)}); "
                + (hint or "fix the header or the column mapping")
            )
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(bad.nonzero()[0][0])
            value = frame[column].iloc[row]
            shown = "an empty value" if pd.isna(value) else f"non-numeric value {value!r}"
            hint = _delimiter_hint(str(value)) if comma and not pd.isna(value) else ""
            raise EtarecError(
                f"{path} is malformed: column '{column}' has {shown} at data row {row + 1}; "
                + (hint or "fix or drop that row")
            )
        frame[column] = _whole_seconds(values, path, column) if column in timestamps else values
    return frame


def _delimiter_hint(text: str) -> str:
    """For a comma-separated read that found one field: a hint when `text` holds another delimiter."""
    if "," in text:
        return ""
    for delimiter, name in DELIMITERS.items():
        if delimiter in text:
            return (f"the file looks {name}-delimited ({delimiter!r} in {text[:40]!r}) but etarec reads "
                    "comma-separated files: save it with commas (or as Parquet)")
    return ""


def _whole_seconds(values: pd.Series, path: Path, column: str) -> pd.Series:
    problem = seconds_problem(values)
    if problem:
        row, text = problem
        raise EtarecError(f"{path}: column '{column}' has {text} at data row {row + 1}; "
                          "timestamps are whole Unix seconds and etarec never truncates or rounds them (that "
                          "would make ties): store whole seconds, or map the column as 'order' if it only orders events")
    return values.astype(np.int64)


def seconds_problem(values: pd.Series) -> tuple[int, str] | None:
    """(row, what is wrong) for the first value of numeric `values` that is not a whole number
    within int64 (fractional, beyond int64, infinite), else None."""
    array = values.to_numpy()
    if pd.api.types.is_signed_integer_dtype(values.dtype):
        return None
    if pd.api.types.is_unsigned_integer_dtype(values.dtype):
        outside, fractional = array > np.iinfo(np.int64).max, np.zeros(len(array), dtype=bool)
    else:
        array = array.astype(np.float64)
        # 2**63 is the first float beyond int64; -2**63 itself still fits
        outside = ~np.isfinite(array) | (array >= 2.0**63) | (array < -(2.0**63))
        fractional = ~outside & (array != np.floor(array))
    for bad, what in ((outside, "a value beyond the 64-bit integer range"), (fractional, "a fractional value")):
        if bad.any():
            row = int(bad.nonzero()[0][0])
            return row, f"{what} ({values.iloc[row]})"
    return None
