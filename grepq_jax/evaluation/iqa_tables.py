"""The score files of IQA datasets, read as tables and checked cell by cell:
CSV, Excel (openpyxl, on demand) and MATLAB .mat files. Every error is an
IqaLayoutError naming the file and row (`where`).
"""
import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io

from grepq_jax import errors


class IqaLayoutError(errors.InputError):
    """A dataset file that does not match its layout; names file and row."""



def number_cell(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise IqaLayoutError(f"{where}: {what} {text!r} is not a number") \
            from None
    if not math.isfinite(value):
        raise IqaLayoutError(f"{where}: {what} is {text!r}, not a finite "
                             "number")
    return value


def std_cell(text: str, where: str) -> float | None:
    """A standard deviation cell: None when empty or NaN, else >= 0."""
    if text.strip().lower() in ("", "nan"):
        return None
    value = number_cell(text, where, "std")
    if value < 0:
        raise IqaLayoutError(f"{where}: std {text!r} is negative")
    return value


# A table is a list of (where, cells): where names the file and row.
Table = list[tuple[str, list[str]]]


def read_csv_table(path: Path) -> Table:
    table = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            for cells in reader:
                table.append((f"{path}, line {reader.line_num}", cells))
    except UnicodeDecodeError as error:
        raise IqaLayoutError(f"{path}: not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise IqaLayoutError(f"{path}, line {len(table) + 1}: {error}") \
            from None
    return table


def cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # Excel stores CSIQ's image "1600" as 1600.0.
    return str(value)


def read_xlsx_table(path: Path, sheet: str | None) -> Table:
    try:
        import openpyxl  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ImportError(
            f"reading {path} needs openpyxl (pip install openpyxl); or save "
            f"{'its sheet ' + repr(sheet) if sheet else 'its first sheet'} "
            f"as CSV, as {path.with_suffix('.csv')}") from None
    try:
        workbook = openpyxl.load_workbook(path, read_only=True,
                                          data_only=True)
    except Exception as error:  # openpyxl raises many types on bad files.
        raise IqaLayoutError(f"{path}: cannot read as .xlsx ({error})") \
            from None
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise IqaLayoutError(f"{path}: no sheet {sheet!r} (has "
                                 f"{workbook.sheetnames})")
        worksheet = workbook[sheet] if sheet else workbook.worksheets[0]
        return [(f"{path}, row {number}", [cell_text(v) for v in values])
                for number, values in enumerate(
                    worksheet.iter_rows(values_only=True), start=1)]
    finally:
        workbook.close()


def read_records(path: Path, required: Sequence[str],
                  optional: Sequence[str] = (), *, sheet: str | None = None,
                  ) -> list[tuple[str, dict[str, str]]]:
    """Rows after the header of a .csv or .xlsx table as (where, record).

    The header is the first row holding every `required` column name
    (case-insensitive), so title rows above it are skipped. A record maps
    the lower-cased names found among required + optional to stripped cell
    text. Blank rows are skipped; in a CSV every other row must have as many
    cells as the header.
    """
    is_csv = path.suffix.lower() != ".xlsx"
    table = read_csv_table(path) if is_csv else read_xlsx_table(path, sheet)
    wanted = [name.lower() for name in (*required, *optional)]
    for index, (_, cells) in enumerate(table):
        header = [cell.strip().lower() for cell in cells]
        if all(name.lower() in header for name in required):
            break
    else:
        first = table[0][1] if table else "none: the file is empty"
        raise IqaLayoutError(f"{path}: no header row with the columns "
                             f"{list(required)} (first row: {first})")
    columns = {name: header.index(name) for name in wanted if name in header}
    records = []
    for where, cells in table[index + 1:]:
        if not any(cell.strip() for cell in cells):
            continue
        if is_csv and len(cells) != len(header):
            raise IqaLayoutError(f"{where}: {len(cells)} columns, but the "
                                 f"header has {len(header)}")
        cells = cells + [""] * (len(header) - len(cells))
        records.append((where, {name: cells[i].strip()
                                for name, i in columns.items()}))
    return records


def read_fields(path: Path, count: int) -> list[tuple[str, list[str]]]:
    """Whitespace-separated lines of a text file, each with `count` fields."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise IqaLayoutError(f"{path}: not UTF-8 text ({error})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != count:
            raise IqaLayoutError(f"{path}, line {number}: {len(fields)} "
                                 f"fields, expected {count}")
        rows.append((f"{path}, line {number}", fields))
    return rows


def mat_variable(path: Path, key: str) -> np.ndarray:
    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises many types on bad files.
        raise IqaLayoutError(f"{path}: cannot read as a MATLAB .mat file "
                             f"({type(error).__name__}: {error})") from None
    if key not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise IqaLayoutError(f"{path}: no variable {key!r} (has {found})")
    return contents[key]


def mat_numbers(path: Path, key: str) -> np.ndarray:
    """A numeric .mat variable as a flat float64 vector."""
    try:
        return np.asarray(mat_variable(path, key), np.float64).ravel()
    except (TypeError, ValueError):
        raise IqaLayoutError(f"{path}: variable {key!r} is not numeric") \
            from None


def mat_strings(path: Path, key: str) -> list[str]:
    """A .mat cell array of strings (any shape) as a flat list."""
    strings = []
    for number, cell in enumerate(
            np.asarray(mat_variable(path, key), dtype=object).ravel(), 1):
        while isinstance(cell, np.ndarray):  # Cells nest 1-element arrays.
            if cell.size != 1:
                raise IqaLayoutError(f"{path}, entry {number} of {key!r}: "
                                     "not a single string")
            cell = cell.ravel()[0]
        strings.append(str(cell))
    return strings


def same_length(vectors: dict[str, Sequence], expected: int | None = None):
    """Raises unless every vector (keyed by 'file: variable') is as long."""
    lengths = {where: len(vector) for where, vector in vectors.items()}
    if len(set(lengths.values())) > 1 or (
            expected is not None and set(lengths.values()) != {expected}):
        wanted = f" (expected {expected} each)" if expected else ""
        raise IqaLayoutError(f"entry counts differ: {lengths}{wanted}")
