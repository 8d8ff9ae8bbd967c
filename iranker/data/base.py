"""What every adapter shares: the error type, strict readers of delimited files, parameters, splits and hashing.

Every problem in a source file raises `DataError` naming the file, the line (or column) and what was expected, so a
user can open the file at that spot. Readers never guess: a missing column, a short row or a wrong separator stop the
ingest before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A source file does not have the expected format; the message names the file, the line and the field."""


def where(path: Path | str, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def _open_text(path: Path, encoding: str):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (expected a header line and data)")
    return path.open(encoding=encoding, newline="")


def read_delimited(path: Path, columns: Sequence[str], sep: str = "\t", encoding: str = "utf-8",
                   strip_types: bool = True, optional: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: value}) of a delimited text file with a header line.

    `columns` must all be in the header (RecBole headers carry type suffixes such as `user_id:token`; they are
    stripped when `strip_types`). Extra header columns are ignored; `optional` columns are returned when present.
    A short or long row, a missing column or a different separator raise DataError naming the line.
    """
    seps = {"\t": "tab", ",": "comma", " ": "space"}
    with _open_text(path, encoding) as f:
        header_line = f.readline().rstrip("\r\n")
        header = [h.split(":")[0] if strip_types else h for h in header_line.split(sep)]
        if len(header) == 1 and len(columns) > 1:
            other = next((s for s in seps if s != sep and s in header_line), None)
            hint = f" (the header looks {seps[other]}-separated)" if other else ""
            raise DataError(f"{path}:1: expected a {seps.get(sep, repr(sep))}-separated header with columns "
                            f"{', '.join(columns)}; found one column{hint}")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}; the header has "
                            f"{', '.join(header)}")
        idx = {c: header.index(c) for c in list(columns) + [o for o in optional if o in header]}
        for n, line in enumerate(f, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(sep)
            if len(parts) != len(header):
                raise DataError(f"{path}:{n}: expected {len(header)} {seps.get(sep, repr(sep))}-separated fields "
                                f"({', '.join(header)}), got {len(parts)}"
                                + (" (truncated file?)" if len(parts) < len(header) else ""))
            yield n, {c: parts[i] for c, i in idx.items()}


def read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A comma-separated file with quoted fields: (header, iterator of (line number, row))."""
    csv.field_size_limit(1 << 30)
    f = _open_text(path, "utf-8")
    reader = csv.reader(f)
    header = next(reader)
    missing = [c for c in required if c not in header]
    if missing:
        f.close()
        one = len(header) == 1
        hint = f"; found one column{' — wrong separator? expected commas' if one else ''}"
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}{hint}"
                        + ("" if one else f" (the header has {len(header)} columns)"))

    def rows() -> Iterator[tuple[int, list[str]]]:
        with f:
            start = reader.line_num + 1
            for row in reader:
                if row and len(row) != len(header):
                    raise DataError(f"{path}:{start}: expected {len(header)} comma-separated fields, got "
                                    f"{len(row)}" + (" (truncated file?)" if len(row) < len(header) else ""))
                if row:
                    yield start, row
                start = reader.line_num + 1
    return header, rows()


def to_float(path: Path, line: int, column: str, value: str, allow_empty: bool = False) -> float | None:
    if value.strip() == "" and allow_empty:
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column}: expected a number, got {value[:40]!r}") from None


# ---------------------------------------------------------------------------------------------------- parameters

def parse_params(cls: type, pairs: dict[str, str] | None, source: str) -> Any:
    """Build a parameter dataclass from `key=value` strings (the CLI's --param), naming unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in (pairs or {}).items():
        if key not in fields:
            raise DataError(f"--param {key}: unknown parameter for source {source!r}; known: {', '.join(fields)}")
        default = fields[key].default
        kind = type(default) if default is not None and default is not dataclasses.MISSING else str
        try:
            if isinstance(raw, str) and kind is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = raw.lower() in ("true", "1", "yes")
            elif isinstance(raw, str) and kind in (int, float):
                value = kind(raw)
            else:
                value = raw
        except ValueError:
            raise DataError(f"--param {key}={raw}: expected a {kind.__name__}") from None
        kwargs[key] = value
    params = cls(**kwargs)
    check = getattr(params, "check", None)
    if check:
        check()
    return params


def parse_split(spec: str) -> list[tuple[str, float]]:
    """'train:0.8,validation:0.1,test:0.1' -> [(split, fraction)], fractions summing to 1."""
    out = []
    for part in spec.split(","):
        name, _, frac = part.partition(":")
        name = name.strip()
        if name not in ("train", "validation", "test"):
            raise DataError(f"--param split={spec}: unknown split {name!r}; use train, validation, test")
        try:
            out.append((name, float(frac)))
        except ValueError:
            raise DataError(f"--param split={spec}: expected name:fraction pairs, e.g. train:0.8,test:0.2") from None
    total = sum(f for _, f in out)
    if abs(total - 1.0) > 1e-6 or any(f < 0 for _, f in out):
        raise DataError(f"--param split={spec}: fractions must be >= 0 and sum to 1 (they sum to {total:g})")
    return out


def _unit_hash(group: str, seed: int) -> float:
    """A group's seeded hash, uniform in [0, 1): the same for a group whatever else the data holds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big") / 2**64


def assign_split(group: str, seed: int, fractions: Sequence[tuple[str, float]]) -> str:
    """The split of a group (a user or a query) on its own: its seeded hash, cut at the cumulative fractions.

    Used by the recommendation (`recbole`, `llmrank`: per user) and routing (`routerbench`: per prompt) adapters.
    A group keeps its split when the data grows (new users or queries never move an old one), which is what a
    growing interaction log or benchmark needs; the price is that the fractions hold only in expectation: with
    a few dozen groups they can be far off (43 queries at 0.4/0.2/0.4 give 13/7/23). For a small, fixed query
    set, see `assign_splits_exact`.
    """
    h = _unit_hash(group, seed)
    acc = 0.0
    for name, frac in fractions:
        acc += frac
        if h < acc:
            return name
    return fractions[-1][0]


def assign_splits_exact(groups: Iterable[str], seed: int,
                        fractions: Sequence[tuple[str, float]]) -> dict[str, str]:
    """{group: split} for a whole set of groups, with each split's size within one group of fraction x count.

    The groups are ordered by their seeded hash (the one `assign_split` uses; ties by name) and cut at the rounded
    cumulative fractions: deterministic for a given set and seed, independent of the input order, and a group
    still lands in one split only. Used by the passage adapter (`trec-dl`): a TREC collection is a small, closed
    query set (43 queries for DL19, 53 for DL21, 21 for NovelEval) where a per-query hash misses the requested
    fractions by far, and a set that never grows gains nothing from per-query stability. The price: adding or
    removing queries can move others across a cut, so this is for fixed collections, not growing logs (those use
    `assign_split`).
    """
    ordered = sorted(set(groups), key=lambda g: (_unit_hash(g, seed), g))
    n = len(ordered)
    out: dict[str, str] = {}
    start, acc = 0, 0.0
    for k, (name, frac) in enumerate(fractions):
        acc += frac
        # the last cut is the end: floating sums (0.4 + 0.2 + 0.4) must not drop or add a group
        end = n if k == len(fractions) - 1 else min(n, math.floor(acc * n + 0.5))
        for g in ordered[start:end]:
            out[g] = name
        start = max(start, end)
    return out


def md5_file(path: Path) -> str:
    """The hash DVC records for a file (md5 of its bytes)."""
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
