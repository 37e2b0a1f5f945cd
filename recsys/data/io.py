"""Reading and writing channel tables with pyarrow.

A SageMaker channel is a directory holding one or many data files, possibly in
sub-directories. Each file's format comes from its extension (``.csv``, ``.tsv``,
``.parquet``/``.pq``, ``.jsonl``/``.json`` as JSON Lines), optionally followed by ``.gz``.
Hidden files and directories (``.DS_Store``, ``.ipynb_checkpoints``) and bookkeeping files
starting with ``_`` (``_SUCCESS``) are skipped. Every problem with the files themselves is a
``DataError`` whose message names the channel, the path and what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from recsys.errors import DataError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "list_data_files",
    "read_table",
    "require_columns",
    "write_table",
]

logger = logging.getLogger(__name__)

FileFormat = Literal["csv", "tsv", "parquet", "jsonl"]

# Extension (lower case, without ".gz") -> format.
_FORMAT_BY_EXTENSION: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
_GZIP_SUFFIX = ".gz"

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMAT_BY_EXTENSION) + tuple(
    ext + _GZIP_SUFFIX for ext in _FORMAT_BY_EXTENSION
)
_SUPPORTED_TEXT = ", ".join(_FORMAT_BY_EXTENSION) + " (each optionally followed by .gz)"

_FORMAT_LABEL: dict[FileFormat, str] = {
    "csv": "CSV",
    "tsv": "TSV",
    "parquet": "Parquet",
    "jsonl": "JSON Lines",
}


def _file_format(path: Path) -> tuple[FileFormat, bool] | None:
    """The format of ``path`` and whether it is gzip-compressed, or None for an unknown extension."""
    name = path.name.lower()
    gzipped = name.endswith(_GZIP_SUFFIX)
    if gzipped:
        name = name[: -len(_GZIP_SUFFIX)]
    file_format = _FORMAT_BY_EXTENSION.get(Path(name).suffix)
    return None if file_format is None else (file_format, gzipped)


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def list_data_files(directory: Path) -> list[Path]:
    """Every visible file under ``directory`` (recursively), sorted by path.

    Files and directories whose name starts with ``.`` or ``_`` are skipped. Extensions are
    not checked here: ``read_table`` reports files it cannot read. Raises
    ``NotADirectoryError`` when ``directory`` is not a directory.
    """
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    files: list[Path] = []
    visited: set[str] = set()
    for root, dir_names, file_names in os.walk(directory, followlinks=True):
        real_root = os.path.realpath(root)
        if real_root in visited:  # a symlink cycle: walk each real directory once
            dir_names[:] = []
            continue
        visited.add(real_root)
        dir_names[:] = sorted(name for name in dir_names if not _is_hidden(name))
        root_path = Path(root)
        files.extend(
            root_path / name for name in file_names if not _is_hidden(name) and (root_path / name).is_file()
        )
    return sorted(files, key=lambda path: path.relative_to(directory).parts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(". ") if text else type(error).__name__


def _cast_to_string(
    table: pa.Table, string_columns: Collection[str], *, channel: str, path: Path
) -> pa.Table:
    """Cast the named columns that ``table`` has to ``string``; ids are opaque text."""
    for name in string_columns:
        index = table.schema.get_field_index(name)
        if index < 0 or table.schema.field(index).type == pa.string():
            continue
        column = table.column(index)
        try:
            cast = pc.cast(column, pa.string())
        except (pa.ArrowException, ValueError, TypeError) as error:
            raise DataError(
                f"channel '{channel}': column '{name}' in {path} has type {column.type}, "
                f"which cannot be read as text ({_first_line(error)})."
            ) from error
        table = table.set_column(index, pa.field(name, pa.string()), cast)
    return table


def _read_file(
    path: Path,
    file_format: FileFormat,
    gzipped: bool,
    string_columns: Collection[str],
    *,
    channel: str,
) -> pa.Table:
    compression = "gzip" if gzipped else None
    try:
        if file_format in ("csv", "tsv"):
            with pa.input_stream(path, compression=compression) as stream:
                table = pa_csv.read_csv(
                    stream,
                    parse_options=pa_csv.ParseOptions(delimiter="\t" if file_format == "tsv" else ","),
                    # Columns missing from this file are ignored by pyarrow.
                    convert_options=pa_csv.ConvertOptions(
                        column_types={name: pa.string() for name in string_columns}
                    ),
                )
        elif file_format == "parquet":
            if gzipped:  # Parquet needs random access: decompress into memory first.
                with pa.input_stream(path, compression=compression) as stream:
                    table = pq.read_table(pa.BufferReader(stream.read()))
            else:
                table = pq.read_table(path)
        else:
            with pa.input_stream(path, compression=compression) as stream:
                table = pa_json.read_json(stream)
    except (pa.ArrowException, OSError) as error:
        hint = " JSON files must hold one object per line (JSON Lines)." if file_format == "jsonl" else ""
        raise DataError(
            f"channel '{channel}': cannot read {path} as {_FORMAT_LABEL[file_format]}"
            f"{' (gzip)' if gzipped else ''}: {_first_line(error)}.{hint}"
        ) from error
    return _cast_to_string(table, string_columns, channel=channel, path=path)


def _column_conflict(earlier: pa.Schema, later: pa.Schema) -> str | None:
    """Name of a column whose types in the two schemas cannot be unified, if any."""
    for field in later:
        index = earlier.get_field_index(field.name)
        if index < 0:
            continue
        try:
            pa.unify_schemas(
                [pa.schema([earlier.field(index)]), pa.schema([field])], promote_options="permissive"
            )
        except (pa.ArrowException, ValueError, TypeError):
            return str(field.name)
    return None


def _check_schemas_agree(tables: Sequence[pa.Table], paths: Sequence[Path], *, channel: str) -> None:
    """Raise a DataError naming the first two files whose column types cannot be unified."""
    unified = tables[0].schema
    for later_index in range(1, len(tables)):
        later = tables[later_index].schema
        try:
            unified = pa.unify_schemas([unified, later], promote_options="permissive")
            continue
        except (pa.ArrowException, ValueError, TypeError) as error:
            reason = _first_line(error)
        for earlier_index in range(later_index):
            earlier = tables[earlier_index].schema
            column = _column_conflict(earlier, later)
            if column is not None:
                raise DataError(
                    f"channel '{channel}': files {paths[earlier_index]} and {paths[later_index]} "
                    f"disagree on column '{column}' ({earlier.field(column).type} vs "
                    f"{later.field(column).type}); every file in a channel must use the same "
                    "columns and types."
                )
        raise DataError(
            f"channel '{channel}': the columns of {paths[later_index]} disagree with the files "
            f"before it ({reason}); every file in a channel must use the same columns and types."
        )


def read_table(directory: Path, *, channel: str, string_columns: Collection[str] = ()) -> pa.Table:
    """Read every data file of a channel directory into one table.

    Column types are inferred, except that the columns named in ``string_columns`` are always
    text (an id "007" stays "007"). Files are concatenated in ``list_data_files`` order; a
    column missing from some files is filled with nulls there, and numeric types are promoted
    (int64 and double give double).

    Raises ``DataError`` when the directory is missing, holds no data file, holds a file with
    an unsupported extension or one that cannot be parsed, when two files disagree on a
    column's type, or when the channel holds no rows at all.
    """
    if not directory.exists():
        raise DataError(f"channel '{channel}': directory {directory} does not exist.")
    if not directory.is_dir():
        raise DataError(f"channel '{channel}': {directory} is a file, but a channel must be a directory.")

    files = list_data_files(directory)
    if not files:
        raise DataError(
            f"channel '{channel}': directory {directory} holds no data file; "
            f"supported extensions: {_SUPPORTED_TEXT}."
        )
    formats: list[tuple[FileFormat, bool]] = []
    for path in files:
        detected = _file_format(path)
        if detected is None:
            raise DataError(
                f"channel '{channel}': file {path} has an unsupported extension; "
                f"supported extensions: {_SUPPORTED_TEXT}. "
                "Remove the file, or prefix its name with '_' or '.' to skip it."
            )
        formats.append(detected)

    tables = [
        _read_file(path, file_format, gzipped, string_columns, channel=channel)
        for path, (file_format, gzipped) in zip(files, formats, strict=True)
    ]
    if len(tables) == 1:
        table = tables[0]
    else:
        _check_schemas_agree(tables, files, channel=channel)
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowException, ValueError, TypeError) as error:
            raise DataError(
                f"channel '{channel}': the files in {directory} cannot be combined into one "
                f"table ({_first_line(error)}); every file must use the same columns and types."
            ) from error

    if table.num_rows == 0:
        raise DataError(
            f"channel '{channel}': directory {directory} holds no rows "
            f"({len(files)} file{'s' if len(files) != 1 else ''} read, all empty)."
        )
    logger.info(
        "channel '%s': read %d rows, %d columns from %d file(s) in %s",
        channel,
        table.num_rows,
        table.num_columns,
        len(files),
        directory,
    )
    return table


def require_columns(table: pa.Table, columns: Sequence[str], *, channel: str, hint: str) -> None:
    """Raise a ``DataError`` naming the columns of ``columns`` that ``table`` lacks.

    ``hint`` is the last sentence of the message: what the user should change.
    """
    present = list(table.column_names)
    missing = [name for name in columns if name not in present]
    if not missing:
        return
    quoted = ", ".join(f"'{name}'" for name in missing)
    noun = "column" if len(missing) == 1 else "columns"
    message = (
        f"channel '{channel}': {noun} {quoted} not found; "
        f"columns present: {', '.join(present) if present else '(none)'}."
    )
    if hint:
        message += f" {hint}"
    raise DataError(message)


def _json_default(value: Any) -> Any:
    return str(value)


def write_table(table: pa.Table | pd.DataFrame, path: Path) -> None:
    """Write ``table`` to ``path`` in the format its extension names (gzip when it ends in ``.gz``).

    Parent directories are created. JSON files are written as JSON Lines. Raises
    ``ValueError`` for an unsupported extension.
    """
    detected = _file_format(path)
    if detected is None:
        raise ValueError(f"cannot write {path}: unsupported extension; supported: {_SUPPORTED_TEXT}")
    file_format, gzipped = detected
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.output_stream(path, compression="gzip" if gzipped else None) as sink:
        if file_format in ("csv", "tsv"):
            delimiter = "\t" if file_format == "tsv" else ","
            pa_csv.write_csv(table, sink, write_options=pa_csv.WriteOptions(delimiter=delimiter))
        elif file_format == "parquet":
            pq.write_table(table, sink)
        else:
            for batch in table.to_batches():
                lines = (
                    json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"
                    for row in batch.to_pylist()
                )
                sink.write("".join(lines).encode("utf-8"))


def read_path(path: Path, *, channel: str, string_columns: Collection[str] = ()) -> pa.Table:
    """Read a single data file, or every data file of a directory (for command-line use)."""
    if not path.is_file():
        return read_table(path, channel=channel, string_columns=string_columns)
    detected = _file_format(path)
    if detected is None:
        raise DataError(
            f"{channel}: file {path} has an unsupported extension; supported extensions: {_SUPPORTED_TEXT}."
        )
    table = _read_file(path, detected[0], detected[1], string_columns, channel=channel)
    if table.num_rows == 0:
        raise DataError(f"{channel}: file {path} holds no rows.")
    return table
