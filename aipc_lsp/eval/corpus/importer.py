"""Importing rows of a CSV file as typed records."""

import csv
import io

from schema import Field, coerce, field_map, missing_fields

PRODUCT = [Field("sku", "str"), Field("price", "float"), Field("stock", "int", required=False, default=0),
           Field("active", "bool", required=False, default=True)]


def parse_row(row, fields):
    """One row (column -> text) as a typed record; ValueError names the bad column."""
    absent = missing_fields(row, fields)
    if absent:
        raise ValueError(f"missing: {', '.join(absent)}")
    record = {}
    for name, spec in field_map(fields).items():
        raw = row.get(name, "")
        if not raw.strip():
            record[name] = spec.default
            continue
        try:
            record[name] = coerce(raw, spec.kind)
        except ValueError:
            raise ValueError(f"{name}: {raw!r} is not a {spec.kind}") from None
    return record


def import_csv(text, fields=PRODUCT):
    """Records and errors (line number, message) of a CSV text with a header row."""
    records, errors = [], []
    reader = csv.DictReader(io.StringIO(text))
    for line_number, row in enumerate(reader, start=2):
        try:
            records.append(parse_row(row, fields))
        except ValueError as error:
            errors.append((line_number, str(error)))
    return records, errors


def unknown_columns(header, fields):
    known = field_map(fields)
    return [column for column in header if column not in known]
