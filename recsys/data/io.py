"""Reading and writing channel tables with pyarrow.

A SageMaker channel is a directory holding one or many data files, possibly in
sub-directories. Each file's format comes from its extension (``.csv``, ``.tsv``,
``.parquet``/``.pq``, ``.jsonl``/``.json`` as JSON Lines), optionally followed by ``.gz``.
Hidden files and directories (``.DS_Store``, ``.ipynb_checkpoints``) and bookkeeping files
starting with ``_`` (``_SUCCESS``) are skipped. Formats may be mixed in one channel, and so may
a column's types across files (see ``read_table`` and ``ChannelScan`` for how they are
reconciled). Every problem with the files themselves is a ``DataError`` whose message names the
channel, the path and what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from recsys.errors import DataError

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "SUPPORTED_EXTENSIONS",
    "ChannelScan",
    "list_data_files",
    "open_channel",
    "open_path",
    "read_table",
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
    """Cast the named columns that ``table`` has to ``string``: ids (opaque text), and columns
    whose types differ between files in ways that do not promote."""
    for name in string_columns:
        index = table.schema.get_field_index(name)
        if index < 0 or table.schema.field(index).type == pa.string():
            continue
        cast = _cast_ids_to_string(table.column(index), name, path, channel=channel)
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


def _promoted(types: Sequence[pa.DataType]) -> pa.DataType | None:
    """The type that ``types`` promote to (int64 and double give double), or None."""
    try:
        schemas = [pa.schema([pa.field("column", data_type)]) for data_type in types]
        return pa.unify_schemas(schemas, promote_options="permissive").field(0).type
    except (pa.ArrowException, ValueError, TypeError):
        return None


def _readable_as_text(data_type: pa.DataType) -> bool:
    try:
        pc.cast(pa.array([], data_type), pa.string())
    except (pa.ArrowException, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class _UnifiedSchema:
    """The channel's columns with one type each, and how the files' types were reconciled."""

    schema: pa.Schema
    # Columns whose types do not promote (int64 in one file, string in another) -> those types
    # and their files, for the log: ``read_table`` reads them as text in every file.
    as_text: dict[str, str]
    # Columns that are nested (a list, a record) in some file and cannot be reconciled with the
    # others, each with the DataError message naming two such files; null in ``schema``.
    conflicts: dict[str, str]


def _unify_schemas(schemas: Sequence[pa.Schema], paths: Sequence[Path], *, channel: str) -> _UnifiedSchema:
    """One type per column over the files: promoted where Arrow promotes, else text, else a conflict."""
    try:
        return _UnifiedSchema(pa.unify_schemas(list(schemas), promote_options="permissive"), {}, {})
    except (pa.ArrowException, ValueError, TypeError):
        pass  # some column's types do not promote: settle each column on its own
    typed_by_column: dict[str, list[tuple[int, pa.DataType]]] = {}
    for index, schema in enumerate(schemas):
        for field in schema:
            typed_by_column.setdefault(field.name, []).append((index, field.type))
    fields: list[pa.Field] = []
    as_text: dict[str, str] = {}
    conflicts: dict[str, str] = {}
    for name, typed in typed_by_column.items():
        distinct = list(dict.fromkeys(data_type for _, data_type in typed))
        promoted = _promoted(distinct)
        if promoted is None:
            nested_types = {data_type for data_type in distinct if not _readable_as_text(data_type)}
            nested = next((entry for entry in typed if entry[1] in nested_types), None)
            if nested is not None:
                conflicts[name] = _conflict_message(name, nested, typed, paths, channel=channel)
                promoted = pa.null()
            else:
                as_text[name] = _types_text(typed, paths)
                promoted = pa.string()
        fields.append(pa.field(name, promoted))
    return _UnifiedSchema(pa.schema(fields), as_text, conflicts)


def _types_text(typed: Sequence[tuple[int, pa.DataType]], paths: Sequence[Path]) -> str:
    """Each distinct type with the first file that has it: "int64 in a.csv, string in b.jsonl"."""
    first_file: dict[pa.DataType, int] = {}
    for index, data_type in typed:
        first_file.setdefault(data_type, index)
    return ", ".join(f"{data_type} in {paths[index]}" for data_type, index in first_file.items())


def _conflict_message(
    name: str,
    nested: tuple[int, pa.DataType],
    typed: Sequence[tuple[int, pa.DataType]],
    paths: Sequence[Path],
    *,
    channel: str,
) -> str:
    """The error for a column that is nested in one file and cannot be reconciled with another."""
    index, data_type = nested
    other = next(
        (entry for entry in typed if entry[0] != index and _promoted([data_type, entry[1]]) is None),
        next(entry for entry in typed if entry[1] != data_type),  # some type differs, or all would promote
    )
    (first, first_type), (second, second_type) = sorted([nested, other], key=lambda entry: entry[0])
    return (
        f"channel '{channel}': files {paths[first]} and {paths[second]} disagree on column '{name}' "
        f"({first_type} vs {second_type}); a column that holds nested values (lists, records) in "
        "one file must hold the same kind of values in every file."
    )


@dataclass(frozen=True)
class _DataFile:
    path: Path
    file_format: FileFormat
    gzipped: bool

    @property
    def label(self) -> str:
        return f"{_FORMAT_LABEL[self.file_format]}{' (gzip)' if self.gzipped else ''}"


def _data_files(directory: Path, *, channel: str) -> list[_DataFile]:
    """The channel's data files in path order; every problem with the directory is a DataError."""
    if not directory.exists():
        raise DataError(f"channel '{channel}': directory {directory} does not exist.")
    if not directory.is_dir():
        raise DataError(f"channel '{channel}': {directory} is a file, but a channel must be a directory.")

    paths = list_data_files(directory)
    if not paths:
        raise DataError(
            f"channel '{channel}': directory {directory} holds no data file; "
            f"supported extensions: {_SUPPORTED_TEXT}."
        )
    files: list[_DataFile] = []
    for path in paths:
        detected = _file_format(path)
        if detected is None:
            raise DataError(
                f"channel '{channel}': file {path} has an unsupported extension; "
                f"supported extensions: {_SUPPORTED_TEXT}. "
                "Remove the file, or prefix its name with '_' or '.' to skip it."
            )
        files.append(_DataFile(path, *detected))
    return files


# How many empty files a "no rows" error names before it only counts the rest.
_NAMED_EMPTY_FILES = 3


def _no_rows(directory: Path, files: Sequence[_DataFile], *, channel: str) -> DataError:
    """The error for a channel whose files are all empty, naming them: "no rows" alone sent people
    looking for the file that a failed upload (a header, nothing after it) had left."""
    if len(files) == 1:
        (file,) = files
        header = " (only a header)" if file.file_format in ("csv", "tsv") else ""
        return DataError(
            f"channel '{channel}': file {file.path} holds no rows{header}, and it is the only data file "
            f"in {directory}."
        )
    named = ", ".join(str(file.path) for file in files[:_NAMED_EMPTY_FILES])
    more = len(files) - _NAMED_EMPTY_FILES
    return DataError(
        f"channel '{channel}': directory {directory} holds no rows ({len(files)} files read, all "
        f"empty): {named}{f' and {more} more' if more > 0 else ''}."
    )


def read_table(directory: Path, *, channel: str, string_columns: Collection[str] = ()) -> pa.Table:
    """Read every data file of a channel directory into one table.

    Column types are inferred, except that the columns named in ``string_columns`` are always
    text (an id "007" stays "007"). Files are concatenated in ``list_data_files`` order; a
    column missing from some files is filled with nulls there. Where the files' types of a
    column differ, they are promoted where Arrow promotes them (int64 and double give double,
    timestamp units give the finest); a column whose types do not promote (int64 in a Parquet
    file, string in a CSV file; epoch seconds in one, ISO 8601 text in another) is read as text
    in every file. For tables too large to hold whole, see ``open_channel``.

    Raises ``DataError`` when the directory is missing, holds no data file, holds a file with
    an unsupported extension or one that cannot be parsed, when a column holds nested values
    (lists, records) in one file and values of another kind in another, or when the channel
    holds no rows at all.
    """
    files = _data_files(directory, channel=channel)
    tables = [
        _read_file(file.path, file.file_format, file.gzipped, string_columns, channel=channel)
        for file in files
    ]
    if len(tables) == 1:
        table = tables[0]
    else:
        unified = _unify_schemas([t.schema for t in tables], [f.path for f in files], channel=channel)
        if unified.conflicts:
            raise DataError(next(iter(unified.conflicts.values())))
        for name, types in unified.as_text.items():
            logger.warning(
                "channel '%s': column '%s' has types that do not promote (%s); it is read as text "
                "in every file",
                channel,
                name,
                types,
            )
        if unified.as_text:
            tables = [
                _cast_to_string(t, unified.as_text, channel=channel, path=file.path)
                for t, file in zip(tables, files, strict=True)
            ]
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowException, ValueError, TypeError) as error:
            raise DataError(
                f"channel '{channel}': the files in {directory} cannot be combined into one "
                f"table ({_first_line(error)}); every file must use the same columns and types."
            ) from error

    if table.num_rows == 0:
        raise _no_rows(directory, files, channel=channel)
    logger.info(
        "channel '%s': read %d rows, %d columns from %d file(s) in %s",
        channel,
        table.num_rows,
        table.num_columns,
        len(files),
        directory,
    )
    return table


# Rows per record batch when streaming a channel: large enough that per-batch work (dictionary
# merges, numpy calls) is amortised, small enough that a batch of a wide table stays ~100 MB.
DEFAULT_BATCH_ROWS = 1 << 20
# CSV is parsed in blocks of this many bytes; a block is a record batch (about 500k short rows).
_CSV_BLOCK_BYTES = 16 << 20
# Batches read ahead per file: the scan's memory grows with it, and one is enough to overlap
# decoding with the consumer on two cores.
_READAHEAD_BATCHES = 2
# What pyarrow's CSV reader turns into null in a non-text column ("", "NA", "null", ...).
_CSV_NULL_VALUES: tuple[str, ...] = tuple(pa_csv.ConvertOptions().null_values)


def _is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


@dataclass(frozen=True)
class ChannelScan:
    """A channel opened for streaming: its files checked, their schemas unified, nothing read yet.

    ``batches`` reads record batches file by file in path order, so memory holds one batch (and
    ``_READAHEAD_BATCHES`` more), never the table. Parquet and CSV/TSV (gzip too) go through
    ``pyarrow.dataset``; JSON Lines and gzip-compressed Parquet are read one whole file at a time.

    Each file's batches keep that file's own types: the files of a channel need not agree (epoch
    seconds in a Parquet part, ISO 8601 text in a JSON Lines part), and the caller converts batch
    by batch, as the interaction reader does.
    """

    channel: str
    directory: Path  # or the one file that ``open_path`` opened
    files: tuple[_DataFile, ...]
    file_schemas: tuple[pa.Schema, ...]
    string_columns: tuple[str, ...]
    # The types ``read_table`` would give: promoted over the files, string where the files' types
    # do not promote, ``string_columns`` as string, null for a column in ``conflicts``.
    schema: pa.Schema
    # Columns nested in one file that cannot be reconciled with another -> the error; raised only
    # when such a column is read, so that a column nobody reads never stops a job.
    conflicts: Mapping[str, str]

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def batches(
        self, columns: Sequence[str], *, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Record batches holding exactly ``columns`` (each must be in ``schema``), in file order.

        A column absent from a file is null there. The ``string_columns`` come as string or
        dictionary<string> (Parquet's dictionary pages are kept: no string per row). From CSV/TSV
        every other column comes as text, with pyarrow's null spellings ("", "NA", ...) as null:
        pyarrow's streaming CSV reader would infer each column's type from the first block only
        and fail on a "3.5" after a million "4"s, so the caller converts, as ``read_table`` would.
        Other formats give each column the type the file stores (Parquet) or pyarrow infers (JSON).
        """
        for _, batch in self.batches_with_paths(columns, batch_rows=batch_rows):
            yield batch

    def batches_with_paths(
        self, columns: Sequence[str], *, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[tuple[Path, pa.RecordBatch]]:
        """``batches``, each with the path of its file: for errors that name the file of a value."""
        unknown = [name for name in columns if name not in self.schema.names]
        if unknown:
            raise ValueError(f"columns {unknown} are not in channel '{self.channel}'")
        for name in columns:
            if name in self.conflicts:
                raise DataError(self.conflicts[name])
        for file, file_schema in zip(self.files, self.file_schemas, strict=True):
            present = [name for name in columns if name in file_schema.names]
            try:
                for batch in self._file_batches(file, present, batch_rows):
                    if batch.num_rows:
                        yield file.path, self._conform(batch, columns, file)
            except (pa.ArrowException, OSError) as error:
                raise _read_error(file, error, channel=self.channel) from error

    def _file_batches(self, file: _DataFile, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        ids = [name for name in columns if name in self.string_columns]
        if file.file_format == "jsonl":
            table = _read_file(file.path, "jsonl", file.gzipped, self.string_columns, channel=self.channel)
            yield from table.select(columns).to_batches(max_chunksize=batch_rows)
        elif file.file_format == "parquet" and file.gzipped:
            with pa.input_stream(file.path, compression="gzip") as stream:
                reader = pq.ParquetFile(pa.BufferReader(stream.read()), read_dictionary=ids)
            yield from reader.iter_batches(batch_size=batch_rows, columns=columns)
        else:
            dataset = ds.dataset(file.path, format=_dataset_format(file, columns, ids))
            yield from dataset.to_batches(
                columns=columns, batch_size=batch_rows, batch_readahead=_READAHEAD_BATCHES
            )

    def _conform(self, batch: pa.RecordBatch, columns: Sequence[str], file: _DataFile) -> pa.RecordBatch:
        arrays: list[pa.Array] = []
        for name in columns:
            index = batch.schema.get_field_index(name)
            if index < 0:
                target = self.schema.field(name).type
                arrays.append(pa.nulls(batch.num_rows, pa.string() if pa.types.is_null(target) else target))
                continue
            array = batch.column(index)
            if name in self.string_columns:
                if not _is_text(array.type):
                    array = _cast_ids_to_string(array, name, file.path, channel=self.channel)
            elif file.file_format in ("csv", "tsv") and _is_text(array.type):
                array = pc.if_else(pc.is_in(array, value_set=pa.array(_CSV_NULL_VALUES)), None, array)
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _dataset_format(file: _DataFile, columns: Sequence[str], ids: Sequence[str]) -> ds.FileFormat:
    if file.file_format == "parquet":
        return ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(ids)))
    return ds.CsvFileFormat(
        parse_options=pa_csv.ParseOptions(delimiter="\t" if file.file_format == "tsv" else ","),
        convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in (*columns, *ids)}),
        read_options=pa_csv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
    )


def _read_error(file: _DataFile, error: BaseException, *, channel: str) -> DataError:
    hint = " JSON files must hold one object per line (JSON Lines)." if file.file_format == "jsonl" else ""
    return DataError(
        f"channel '{channel}': cannot read {file.path} as {file.label}: {_first_line(error)}.{hint}"
    )


def _cast_ids_to_string(array: pa.Array, name: str, path: Path, *, channel: str) -> pa.Array:
    try:
        return pc.cast(array, pa.string())
    except (pa.ArrowException, ValueError, TypeError) as error:
        raise DataError(
            f"channel '{channel}': column '{name}' in {path} has type {array.type}, "
            f"which cannot be read as text ({_first_line(error)})."
        ) from error


def _file_schema(
    file: _DataFile, string_columns: Collection[str], *, channel: str, count_rows: bool
) -> tuple[pa.Schema, bool]:
    """A file's schema (``string_columns`` as string) and, with ``count_rows``, whether it holds a
    row; reads the first block of a CSV file, the footer of a Parquet file."""
    try:
        if file.file_format == "jsonl":
            table = _read_file(file.path, "jsonl", file.gzipped, string_columns, channel=channel)
            schema, has_rows = table.schema, table.num_rows > 0
        elif file.file_format == "parquet" and file.gzipped:
            with pa.input_stream(file.path, compression="gzip") as stream:
                metadata = pq.read_metadata(pa.BufferReader(stream.read()))
            schema, has_rows = metadata.schema.to_arrow_schema(), metadata.num_rows > 0
        else:
            dataset = ds.dataset(file.path, format=_dataset_format(file, [], list(string_columns)))
            schema = dataset.schema
            if not count_rows:
                has_rows = False
            elif file.file_format == "parquet":
                has_rows = dataset.count_rows() > 0  # from the footer
            else:
                # As text: with the first block's inferred types, the reader's read-ahead could hit
                # a conversion error further on ("3.5" in an int column) before head() returns.
                as_text = _dataset_format(file, schema.names, [])
                has_rows = ds.dataset(file.path, format=as_text).head(1).num_rows > 0
    except (pa.ArrowException, OSError) as error:
        raise _read_error(file, error, channel=channel) from error
    for name in string_columns:
        index = schema.get_field_index(name)
        if index < 0 or _is_text(schema.field(index).type):
            continue
        _cast_ids_to_string(pa.array([], schema.field(index).type), name, file.path, channel=channel)
    fields = [pa.field(f.name, pa.string()) if f.name in string_columns else f for f in schema]
    return pa.schema(fields), has_rows


def open_channel(directory: Path, *, channel: str, string_columns: Collection[str] = ()) -> ChannelScan:
    """Check a channel's files and schemas for streaming, reading only their first blocks.

    The same errors as ``read_table``, in the same order (the directory, the extensions, a file
    that cannot be parsed, no rows at all), except that a column whose types cannot be
    reconciled (nested in one file, not in another) is an error only when ``batches`` reads it;
    a parse error deeper in a file is raised while its batches are read.
    """
    files = _data_files(directory, channel=channel)
    schemas: list[pa.Schema] = []
    any_rows = False
    for file in files:
        # Rows are looked for only until one is found: usually in the first block of the first file.
        schema, has_rows = _file_schema(file, string_columns, channel=channel, count_rows=not any_rows)
        schemas.append(schema)
        any_rows = any_rows or has_rows
    unified = _unify_schemas(schemas, [f.path for f in files], channel=channel)
    if not any_rows:
        raise _no_rows(directory, files, channel=channel)
    return ChannelScan(
        channel,
        directory,
        tuple(files),
        tuple(schemas),
        tuple(string_columns),
        unified.schema,
        unified.conflicts,
    )


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


def _single_file(path: Path, *, channel: str) -> _DataFile:
    detected = _file_format(path)
    if detected is None:
        raise DataError(
            f"{channel}: file {path} has an unsupported extension; supported extensions: {_SUPPORTED_TEXT}."
        )
    return _DataFile(path, *detected)


def _empty_file(path: Path, *, channel: str) -> DataError:
    return DataError(f"{channel}: file {path} holds no rows.")


def read_path(
    path: Path, *, channel: str, string_columns: Collection[str] = (), allow_empty: bool = False
) -> pa.Table:
    """Read a single data file, or every data file of a directory (for command-line use).

    ``allow_empty``: a file without rows is an empty table, not an error (one part of many)."""
    if not path.is_file():
        return read_table(path, channel=channel, string_columns=string_columns)
    file = _single_file(path, channel=channel)
    table = _read_file(path, file.file_format, file.gzipped, string_columns, channel=channel)
    if table.num_rows == 0 and not allow_empty:
        raise _empty_file(path, channel=channel)
    return table


def open_path(path: Path, *, channel: str, string_columns: Collection[str] = ()) -> ChannelScan:
    """``open_channel`` for a single data file too, or a directory (for command-line use).

    A file gets the errors that ``read_path`` gives it; a directory is a channel's."""
    if not path.is_file():
        return open_channel(path, channel=channel, string_columns=string_columns)
    file = _single_file(path, channel=channel)
    schema, has_rows = _file_schema(file, string_columns, channel=channel, count_rows=True)
    if not has_rows:
        raise _empty_file(path, channel=channel)
    return ChannelScan(channel, path, (file,), (schema,), tuple(string_columns), schema, {})
