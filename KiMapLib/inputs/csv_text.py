"""CSV tables read safely: UTF-8 only (a byte-order mark is dropped), bounded lines and fields, one error per problem.

Encoding: a table is read as UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped. Bytes that are not
UTF-8 (a latin-1 or cp1252 export) are refused naming the line and the byte: guessing another encoding could change
patient or biopsy identifiers silently, and re-saving as UTF-8 is one step for the user.

Bounds (so that a huge line or field is refused before it is held in memory): a line may hold at most
:data:`MAX_LINE_BYTES` bytes, read in pieces of at most that size; a field (quoted fields may span lines) at most
:data:`MAX_FIELD_CHARS` characters; the whole table must fit the memory budget (:mod:`KiMapLib.limits`, estimated
from the file size). Every row must have as many fields as the header (a shifted row would put a value under the
wrong column); blank lines are skipped.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path

from KiMapLib.errors import KiMapError
from KiMapLib.limits import check_memory

#: Longest line accepted, in bytes: a cohort table of 4 sequences x 93 features has lines of about 10 KiB.
MAX_LINE_BYTES = 2**20
#: Longest field accepted, in characters (the csv module's default).
MAX_FIELD_CHARS = 2**17
#: Bytes of Python objects per byte of CSV text once read (strings, dicts; measured about 5 on cohort tables).
OBJECT_BYTES_PER_CSV_BYTE = 10
UTF8_HINT = "save it as UTF-8 (in Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8)"


@contextlib.contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _lines(handle, path: Path, input_name: str, first_line: list[int]) -> Iterator[str]:
    """Decoded lines (line endings kept), each at most :data:`MAX_LINE_BYTES`; ``first_line[0]`` is the number of
    the line last read (for messages)."""
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        first_line[0] = number
        if len(raw) > MAX_LINE_BYTES:
            raise KiMapError(f"{path.name} line {number} is longer than {MAX_LINE_BYTES} bytes", input_name=input_name,
                             hint="give a CSV table with one row per line (is it the right file?)")
        if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise KiMapError(f"{path.name} is UTF-16 text", input_name=input_name, hint=UTF8_HINT)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            column = len(raw[:error.start].decode("utf-8", errors="replace")) + 1
            raise KiMapError(f"{path.name} line {number}, character {column}: byte 0x{raw[error.start]:02x} is not "
                             "UTF-8 text", input_name=input_name, hint=UTF8_HINT) from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def read_csv_records(path: str | Path, input_name: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header (stripped column names) and the rows as ``(line number, {column: stripped text})``.

    Raises :class:`KiMapError` naming the file and line for: a missing file, an empty file, bytes that are not
    UTF-8, a line or field beyond the bounds, duplicated column names, rows with another number of fields. Columns
    without a name (a trailing comma in the header) are left out of the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise KiMapError(f"file not found: {path}", input_name=input_name)
    check_memory(path.stat().st_size * OBJECT_BYTES_PER_CSV_BYTE, f"the table {path.name}", input_name,
                 hint="give a smaller table")
    line = [0]
    records: list[tuple[int, dict[str, str]]] = []
    with path.open("rb") as handle, _field_limit(MAX_FIELD_CHARS):
        reader = csv.reader(_lines(handle, path, input_name, line))
        try:
            header = next(reader, None)
            if header is None:
                raise KiMapError(f"{path.name} is empty", input_name=input_name, hint="give a CSV table with a header")
            columns = [name.strip() for name in header]
            _check_header(columns, path, input_name)
            start = line[0] + 1
            for fields in reader:
                if fields and any(field.strip() for field in fields):
                    if len(fields) != len(columns):
                        raise KiMapError(f"{path.name} line {start} has {len(fields)} fields but the header has "
                                         f"{len(columns)}", input_name=input_name,
                                         hint="quote fields that contain commas; every row needs every column")
                    records.append((start, {c: f.strip() for c, f in zip(columns, fields, strict=True) if c}))
                start = line[0] + 1
        except csv.Error as error:
            raise KiMapError(f"{path.name} line {line[0]}: {error}", input_name=input_name,
                             hint="check the file is a comma-separated table") from None
    return columns, records


def _check_header(columns: list[str], path: Path, input_name: str) -> None:
    seen: set[str] = set()
    for name in filter(None, columns):  # columns without a name (a trailing comma) are ignored
        if name in seen:
            raise KiMapError(f"{path.name} header: column '{name}' appears twice", input_name=input_name,
                             hint="give each column once")
        seen.add(name)
