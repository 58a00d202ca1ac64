"""Reading a data file into named numpy columns, for ``lossdsl advise`` and ``lossdsl compare``.

``read_table(path, columns=None)`` gives ``{name: numpy.ndarray}`` with the rows on the first axis:

- ``.csv`` (and ``.tsv``, ``.txt``: the delimiter is sniffed): a header row, then one 1-D column per
  header name. A column whose every cell is a whole number is int64; one whose every cell is a number
  (or empty, ``NA``, ``NaN``: NaN) is float64; anything else stays text (a numpy string array), so
  the caller can say which column is not numeric. Read with the stdlib ``csv`` module (no pandas
  needed; the same columns whatever is installed).
- ``.parquet``: one column per field, through pyarrow (a clear error when it is not installed).
- ``.npy``: one entry named after the file's stem (``masks.npy`` -> ``masks``), of any shape.
- ``.npz``: one entry per stored array, under its name.

Every problem with the file (missing, empty, unreadable, no such column, a missing library) is a
``DataError`` with a one-line message naming the file; the commands print it and exit 2.
numpy is imported inside the functions: ``import lossdsl`` stays as fast as before.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy

#: Cells read as a missing number (NaN) in a numeric CSV column, as pandas reads them by default.
MISSING_CELLS = frozenset({"", "na", "nan", "n/a", "null", "none", "-nan", "#n/a"})

CSV_SUFFIXES = (".csv", ".tsv", ".txt")


class DataError(ValueError):
    """A data file (or array) that cannot serve: the message is one line, meant for the user."""


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> dict[str, numpy.ndarray]:
    """The file's columns by name (only ``columns``, in that order, when given); see the module doc."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        table = _read_csv(path)
    elif suffix == ".parquet":
        table = _read_parquet(path, columns)
    elif suffix == ".npy":
        table = _read_npy(path)
    elif suffix == ".npz":
        table = _read_npz(path)
    else:
        raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; "
                        "expected .csv, .tsv, .parquet, .npy or .npz")
    if not table:
        raise DataError(f"{path}: the file holds no columns")
    return select_columns(table, columns, str(path))


def select_columns(table: dict[str, numpy.ndarray], columns: Sequence[str] | None,
                   where: str = "the data") -> dict[str, numpy.ndarray]:
    """``table`` restricted to ``columns`` (in their order); a missing one is a DataError naming the
    columns there are, with a did-you-mean."""
    if columns is None:
        return table
    missing = [name for name in columns if name not in table]
    if missing:
        import difflib

        close = difflib.get_close_matches(missing[0], list(table), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        there = ", ".join(list(table)[:20]) + (", ..." if len(table) > 20 else "")
        raise DataError(f"{where}: no column {missing[0]!r}{hint} (columns: {there})")
    return {name: table[name] for name in columns}


def column_from_cells(cells: Sequence[str]) -> numpy.ndarray:
    """One CSV column: int64 when every cell is a whole number, float64 when every cell is a number
    or missing, else the text itself (stripped)."""
    import numpy as np

    # numpy converts each cell with int() or float(), which allow surrounding spaces.
    try:
        return np.array(cells, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    stripped = [cell.strip() for cell in cells]
    values = []
    for cell in stripped:
        if cell.lower() in MISSING_CELLS:
            values.append(float("nan"))
            continue
        try:
            values.append(float(cell))
        except ValueError:
            return np.array(stripped, dtype=str)
    return np.array(values, dtype=np.float64)


def _read_csv(path: Path) -> dict[str, numpy.ndarray]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(text)
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [name.strip() for name in next(rows)]
    if len(set(header)) != len(header):
        duplicate = next(name for name in header if header.count(name) > 1)
        raise DataError(f"{path}: the header names column {duplicate!r} twice")
    body = [row for row in rows if row]  # the csv module gives [] for a blank line
    if not body:
        raise DataError(f"{path}: the file has a header but no rows")
    if set(map(len, body)) != {len(header)}:
        number, row = next((n, r) for n, r in enumerate(body, start=2) if len(r) != len(header))
        raise DataError(f"{path}: row {number} has {len(row)} cells, the header {len(header)}")
    return {name: column_from_cells(cells) for name, cells in zip(header, zip(*body))}


def _sniff_delimiter(text: str) -> str:
    first = text.splitlines()[0]
    counts = {sep: first.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _read_parquet(path: Path, columns: Sequence[str] | None) -> dict[str, numpy.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                        "or save the data as CSV or .npz") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors are many and untyped: any of them means "not readable"
        raise DataError(f"{path}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _read_npy(path: Path) -> dict[str, numpy.ndarray]:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)  # never unpickle: a data file is not code either
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file: {exc}") from None
    if array.ndim == 0 or array.shape[0] == 0:
        raise DataError(f"{path}: the array is empty (shape {array.shape})")
    return {path.stem: array}


def _read_npz(path: Path) -> dict[str, numpy.ndarray]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            table = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file: {exc}") from None
    for name, array in table.items():
        if array.ndim == 0 or array.shape[0] == 0:
            raise DataError(f"{path}: array {name!r} is empty (shape {array.shape})")
    return table
