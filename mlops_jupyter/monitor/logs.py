"""Reading a serving package's prediction log (the Parquet files its predlog.py writes) and its labels.

Imports pyarrow and numpy only: `mlops serve generate` copies it into the package (logs.py) beside drift.py, for
the drift gauges its /metrics exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

META = ("timestamp", "request_id", "row", "endpoint", "status", "latency_ms", "model_name", "model_version",
        "model_uri", "prediction")


@dataclass
class Log:
    """The rows of a prediction log since a time, as one Arrow table, and the files that could not be read."""

    folder: Path
    table: object  # pyarrow.Table
    files: int = 0
    skipped: list = field(default_factory=list)  # [(file name, why)]
    labels: object = None  # pyarrow.Table of request_id, row, label, or None

    @property
    def rows(self) -> int:
        return self.table.num_rows


def _read_all(folder: Path, pattern: str, since: datetime | None, skipped: list,
              newest: int | None = None) -> tuple[object, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables, count, rows = [], 0, 0
    paths = sorted(folder.glob(pattern))  # names begin with the time a file was opened
    for path in reversed(paths) if newest else paths:
        if newest and rows >= newest:
            break
        try:
            if since is not None and path.stat().st_mtime < since.timestamp():
                continue  # closed before ``since``: every row in it is older
        except OSError:  # removed meanwhile (the disk cap)
            continue
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:  # a server killed mid-write leaves a file with no footer
            skipped.append((path.name, str(exc).splitlines()[0][:200]))
            continue
        count += 1
        if since is not None and "timestamp" in table.column_names:
            table = table.filter(pc.greater_equal(table["timestamp"], pa.scalar(since, table["timestamp"].type)))
        if table.num_rows:
            tables.append(table)
            rows += table.num_rows
    if not tables:
        return None, count
    if newest:
        tables.reverse()
    return pa.concat_tables(tables, promote_options="permissive"), count


def read(folder: Path, since: datetime | None = None, newest: int | None = None, labels: bool = True) -> Log:
    """The log's rows (answered requests and refusals) at or after ``since`` (UTC), every readable file; with
    ``newest``, only the newest files that hold that many rows (a busy server logs millions an hour)."""
    import pyarrow as pa

    skipped: list = []
    table, files = _read_all(folder, "predictions-*.parquet", since, skipped, newest)
    if table is None:  # nothing logged yet: the log's own columns, typed as predlog.py writes them
        types = {"timestamp": pa.timestamp("us", "UTC"), "row": pa.int64(), "status": pa.int64(),
                 "latency_ms": pa.float64()}
        table = pa.table({name: pa.array([], types.get(name, pa.string())) for name in META})
    found, _ = _read_all(folder, "labels-*.parquet", None, skipped) if labels else (None, 0)
    return Log(folder, table, files, skipped, found)


def answered(table):
    """The rows of answered requests (status 200): a refusal has no features and no prediction."""
    import pyarrow.compute as pc

    return table.filter(pc.equal(table["status"], 200)) if "status" in table.column_names else table


def stamps(table):
    """The rows' timestamps as int64 microseconds since the epoch (UTC)."""
    import pyarrow as pa

    return table["timestamp"].cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def features(ok, names: list[str]) -> dict:
    """Feature columns (as the log names them) of answered rows ``ok``, as numpy arrays."""
    import numpy as np

    out = {}
    for name in names:
        column = f"feature.{name}" if name in META else name
        if column in ok.column_names:
            out[name] = _numpy(ok[column], np)
    return out


def _numpy(column, np):
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.to_numpy(zero_copy_only=False).astype(float) if column.null_count or \
            pa.types.is_boolean(kind) else column.to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        # through the dictionary: fixed-width text, not a Python object per row (a million rows per column)
        coded = (column if pa.types.is_dictionary(kind) else column.dictionary_encode()).combine_chunks()
        names = np.asarray(coded.dictionary.to_pylist() or [""], dtype=str)
        if coded.null_count:
            return np.asarray(coded.to_pylist(), dtype=object)
        return names[coded.indices.to_numpy(zero_copy_only=False)]
    return np.asarray(column.to_pylist(), dtype=object)


def predictions(ok):
    import numpy as np

    return _numpy(ok["prediction"], np)


def current(ref_columns: dict, table) -> dict:
    """Answered rows (see ``answered``) as the columns of a reference profile (features, and the prediction)."""
    names = [n for n in ref_columns if n != "prediction"]
    cols = features(table, names)
    if "prediction" in ref_columns and "prediction" in table.column_names:
        cols["prediction"] = predictions(table)
    return cols
