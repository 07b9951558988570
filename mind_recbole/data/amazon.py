"""Convert the McAuley Amazon review data into RecBole atomic files.

The data is the Amazon product review collection of J. McAuley's group at UCSD:

* 2014 release: J. McAuley, C. Targett, Q. Shi, A. van den Hengel, "Image-based recommendations
  on styles and substitutes", SIGIR 2015; R. He, J. McAuley, "Ups and downs: modeling the visual
  evolution of fashion trends with one-class collaborative filtering", WWW 2016.
* 2018 release: J. Ni, J. Li, J. McAuley, "Justifying recommendations using distantly-labeled
  reviews and fine-grained aspects", EMNLP 2019.

Accepted inputs, plain or gzip-compressed (recognised by its magic bytes, whatever the name):

* reviews as JSON lines, one object per line, either strict JSON or the Python-literal lines of
  the 2014 release (``{'reviewerID': 'A..', ...}``), with ``reviewerID``, ``asin``, a time
  (``unixReviewTime`` in seconds, else ``reviewTime`` as ``"09 13, 2009"``) and optionally the
  rating ``overall``;
* headerless ratings-only CSVs: 2014 ``user,item,rating,timestamp``, 2018
  ``item,user,rating,timestamp``;
* metadata as JSON lines (strict or Python literal) with ``asin``, ``brand`` and either the 2014
  ``categories`` (a list of category paths, root first) or the 2018 ``category`` (one path).

:func:`convert_amazon` streams the files line by line, so memory grows with the number of
interactions kept in compact numpy columns (and the number of distinct users and items), not with
the file size. Bad lines are skipped and reported, never fatal and never silent: the report counts
them, lists the first ones, and ``{dataset}.bad_lines.txt`` lists them all with file and line
number. Invalid UTF-8 bytes are decoded as U+FFFD and the line kept (and listed), unless they fall
inside an id. It writes ``{dataset}.inter`` and, given metadata, ``{dataset}.item`` into
``{data_path}/{dataset}/``, each file atomically, and returns a :class:`ConversionReport`. Input
problems raise :class:`ConversionError`, operating-system failures (disk full, permission denied)
:class:`ConversionIOError`; both are ``ValueError``\\ s whose message names the file.
"""

from __future__ import annotations

import ast
import errno
import glob
import gzip
import html
import json
import math
import os
import re
import shutil
import sys
import tempfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["ConversionError", "ConversionIOError", "ConversionReport", "convert_amazon"]

REVIEW_FORMATS = ("auto", "json", "csv-2014", "csv-2018")
_FORMAT_NAMES = {
    "json": "JSON lines (json)",
    "csv-2014": "a 2014 ratings CSV, user,item,rating,time (csv-2014)",
    "csv-2018": "a 2018 ratings CSV, item,user,rating,time (csv-2018)",
}

# (user column, item column) of each headerless CSV layout; the rating is column 2, the time 3.
_CSV_ID_COLUMNS = {"csv-2014": (0, 1), "csv-2018": (1, 0)}
_CSV_FIELD_COUNT = 4
_ASIN = re.compile(r"[0-9A-Z]{10}")
_DETECTION_ROWS = 1000
_BAD_LINES_KEPT = 20
_ERROR_EXAMPLES = 3
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_MAX_LINE_BYTES = 16 << 20
_SKIP_CHUNK_BYTES = 1 << 20
_LOG_SPOOL_BYTES = 1 << 20
_INT64_LIMIT = 2**63
_WRITE_CHUNK_ROWS = 1 << 16
_SPACE_OR_CONTROL = re.compile("[\\s\x00-\x1f\x7f-\x9f]+")  # runs of whitespace and control characters
_SURROGATE = re.compile("[\ud800-\udfff]")
# Not allowed in an id: controls (tabs and line breaks split atomic-file lines), a double quote
# (pandas, which RecBole reads atomic files with, takes it for CSV quoting), lone surrogates (not
# writable as UTF-8) and U+FFFD (where undecodable bytes stood: distinct ids could merge).
_BAD_ID_CHARACTER = re.compile('[\x00-\x1f\x7f-\x9f"\u2028\u2029\ud800-\udfff\ufffd]')

INTER_HEADER_FIELDS = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
ITEM_HEADER_FIELDS = ("item_id:token", "brand:token", "categories:token_seq", "category:token")
BAD_LINES_SUFFIX = "bad_lines.txt"
CONFIG_SUFFIX = "yaml"
# Why an output of an earlier run is removed, by suffix (reported in the summary).
_REMOVAL_REASONS = {
    "item": "an earlier run's item features, which no longer match these interactions (give --meta to keep item features)",
    BAD_LINES_SUFFIX: "an earlier run's list of bad lines; this run found none",
}


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file (and the lines at fault).

    Nothing is written when it is raised. It is a ``ValueError``, which the ``mind-recbole``
    command reports as ``mind-recbole prepare: error: ...``.
    """


class ConversionIOError(OSError, ConversionError):
    """Reading an input or writing an output failed in the operating system (disk full, ...).

    Both an ``OSError`` (``errno`` and ``filename`` of the failure) and a :class:`ConversionError`;
    ``str()`` is one line naming the file, the failure and what became of the previous outputs.
    """

    def __init__(self, path: str | os.PathLike, action: str, cause: OSError, note: str = ""):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.message = f"{path}: {action}: {_os_reason(cause)}" + (f"; {note}" if note else "")

    def __str__(self) -> str:
        return self.message


def _os_reason(error: OSError) -> str:
    """``No space left on device (ENOSPC)``, or the error's text when it has no errno."""
    if error.errno is None:
        return str(error)
    name = errno.errorcode.get(error.errno, str(error.errno))
    return f"{error.strerror or os.strerror(error.errno)} ({name})"


@dataclass
class ConversionReport:
    """What :func:`convert_amazon` read, dropped and wrote.

    Every line is accounted for. Reviews: ``lines_read = blank_lines + bad_line_count +
    duplicates_removed + removed_by_rating + removed_by_k_core + interactions``. Meta:
    ``meta_lines_read = meta_blank_lines + meta_bad_line_count + meta_items_matched +
    meta_duplicates + meta_filtered_out + meta_absent_from_reviews``, where a matched line is the
    first one of a kept item, a duplicate a later one, a filtered-out line names an item of the
    reviews that the rating or k-core filter removed, an absent one an ASIN the reviews never name;
    ``items_without_meta`` kept items had no meta line.

    ``bad_lines`` lists the first bad lines of each input file as ``(file, line_number, reason)``,
    ``repaired_lines`` the first kept lines whose invalid UTF-8 bytes were replaced by U+FFFD
    (counted in ``repaired_line_count`` and ``meta_repaired_line_count``); ``bad_lines_path``, when
    there are any, lists all of both.
    """

    dataset: str
    reviews_path: Path
    reviews_format: str
    meta_path: Path | None = None
    k_core: int = 0
    min_rating: float | None = None
    inter_path: Path | None = None
    item_path: Path | None = None
    bad_lines_path: Path | None = None
    config_path: Path | None = None
    removed_paths: list[Path] = field(default_factory=list)
    has_rating: bool = False
    lines_read: int = 0
    blank_lines: int = 0
    bad_line_count: int = 0
    repaired_line_count: int = 0
    duplicates_removed: int = 0
    removed_by_rating: int = 0
    removed_by_k_core: int = 0
    k_core_rounds: int = 0
    interactions: int = 0
    users: int = 0
    items: int = 0
    meta_lines_read: int = 0
    meta_blank_lines: int = 0
    meta_bad_line_count: int = 0
    meta_repaired_line_count: int = 0
    meta_items_matched: int = 0
    meta_duplicates: int = 0
    meta_filtered_out: int = 0
    meta_absent_from_reviews: int = 0
    items_without_meta: int = 0
    bad_lines: list[tuple[str, int, str]] = field(default_factory=list)
    repaired_lines: list[tuple[str, int, str]] = field(default_factory=list)

    def summary(self) -> str:
        """Return the counts and the first bad and repaired lines as a short multi-line text."""
        ratings = "with ratings" if self.has_rating else "no ratings"
        lines = [
            f"{self.dataset}: {self.interactions:,} interactions, {self.users:,} users, "
            f"{self.items:,} items ({ratings})",
            f"reviews {self.reviews_path} ({self.reviews_format}): "
            + _line_counts(
                self.lines_read, self.blank_lines, self.bad_line_count, self.repaired_line_count
            )
            + f", {self.duplicates_removed:,} duplicates removed",
        ]
        if self.min_rating is not None:
            lines.append(f"rating >= {self.min_rating:g}: {self.removed_by_rating:,} removed")
        if self.k_core > 1:
            lines.append(
                f"{self.k_core}-core: {self.removed_by_k_core:,} removed "
                f"in {self.k_core_rounds} round(s)"
            )
        if self.meta_path is not None:
            counts = _line_counts(
                self.meta_lines_read,
                self.meta_blank_lines,
                self.meta_bad_line_count,
                self.meta_repaired_line_count,
            )
            lines.append(
                f"meta {self.meta_path}: {counts}, {self.meta_items_matched:,} items matched, "
                f"{self.meta_duplicates:,} repeated, {self.meta_filtered_out:,} of filtered-out "
                f"items, {self.meta_absent_from_reviews:,} absent from reviews, "
                f"{self.items_without_meta:,} kept items without meta"
            )
        lines.extend(f"wrote {path}" for path in (self.inter_path, self.item_path) if path)
        if self.config_path is not None:
            lines.append(f"wrote {self.config_path} (its fields for RecBole: train and compare read it)")
        lines.extend(f"removed {path}: {_REMOVAL_REASONS[path.name.split('.', 1)[1]]}" for path in self.removed_paths)
        bad_total = self.bad_line_count + self.meta_bad_line_count
        repaired_total = self.repaired_line_count + self.meta_repaired_line_count
        lines += _listing("bad lines (skipped):", self.bad_lines, bad_total)
        lines += _listing("lines with invalid UTF-8 (kept):", self.repaired_lines, repaired_total)
        if self.bad_lines_path is not None:
            lines.append(f"all bad and repaired lines: {self.bad_lines_path}")
        return "\n".join(lines)


def _line_counts(read: int, blank: int, bad: int, repaired: int) -> str:
    text = f"{read:,} lines read, {bad:,} bad"
    if blank:
        text += f", {blank:,} blank"
    if repaired:
        text += f", {repaired:,} with invalid UTF-8 kept"
    return text


def _listing(title: str, entries: list[tuple[str, int, str]], total: int) -> list[str]:
    if not entries:
        return []
    lines = [title] + [f"  {name}:{number}: {reason}" for name, number, reason in entries]
    if total > len(entries):
        lines.append(f"  ... and {total - len(entries):,} more")
    return lines


def convert_amazon(
    reviews: str | os.PathLike,
    dataset: str,
    meta: str | os.PathLike | None = None,
    data_path: str | os.PathLike = "datasets",
    k_core: int = 5,
    min_rating: float | None = None,
    reviews_format: str = "auto",
    show_progress: bool = True,
) -> ConversionReport:
    """Convert Amazon reviews (and optionally metadata) into RecBole atomic files.

    Args:
        reviews: JSON-lines reviews or a headerless ratings-only CSV, plain or gzip.
        dataset: dataset name, used for the folder and the file names.
        meta: optional JSON-lines metadata; if given, ``{dataset}.item`` is written.
        data_path: folder that receives ``{dataset}/`` (RecBole's ``data_path``).
        k_core: keep only users and items with at least this many interactions, applied
            repeatedly until stable; 0 or 1 disables it.
        min_rating: keep only interactions rated at least this; needs ratings in the file.
        reviews_format: ``"auto"``, ``"json"``, ``"csv-2014"`` (user,item,rating,timestamp) or
            ``"csv-2018"`` (item,user,rating,timestamp).
        show_progress: show a tqdm line counter on stderr.

    The ``rating`` column is written when any line has a rating (an empty field where a line
    has none). Exact duplicate (user, item, time) rows keep their first occurrence. Interactions are
    written sorted by user token, then time, same-time reviews in file order. When ``meta`` is
    None, a ``{dataset}.item`` left by an earlier run is removed, since it would no longer match;
    so is an earlier ``{dataset}.bad_lines.txt`` when this run found no bad or repaired lines.

    Returns:
        The :class:`ConversionReport`; ``report.summary()`` is meant for the user.

    Raises:
        ConversionError: unknown format, undecidable CSV layout, truncated or corrupt gzip, an
            empty file, no valid interactions, or ``min_rating`` on a file without ratings.
            Nothing is written then.
        ConversionIOError: an input cannot be read, or the output folder or a file in it cannot
            be written (disk full, permission denied); the previous output files are unchanged.
        FileNotFoundError: ``reviews`` or ``meta`` does not exist (checked before any work).
    """
    reviews = Path(reviews)
    meta = None if meta is None else Path(meta)
    _check_arguments(dataset, k_core)
    for path in (reviews, meta):
        if path is not None:
            _check_readable(path)
    folder = Path(data_path) / dataset
    _check_writable(folder)
    report = ConversionReport(
        dataset=dataset,
        reviews_path=reviews,
        reviews_format=_resolve_format(reviews, reviews_format),
        meta_path=meta,
        k_core=k_core,
        min_rating=min_rating,
    )
    suffixes = ("inter", "item", BAD_LINES_SUFFIX, CONFIG_SUFFIX)
    paths = {suffix: folder / f"{dataset}.{suffix}" for suffix in suffixes}
    with closing(_LineLog()) as log:
        table = _read_reviews(reviews, report, log, show_progress)
        rows = _select_rows(table, report)
        outputs = {paths["inter"]: _inter_lines(table, rows, report.has_rating)}
        if meta is not None:
            kept_items = sorted(table.item_tokens[i] for i in np.unique(table.items[rows]).tolist())
            features = _read_meta(
                meta, kept_items, set(table.item_tokens), report, log, show_progress
            )
            outputs[paths["item"]] = _item_lines(kept_items, features)
        if log.entries:
            outputs[paths[BAD_LINES_SUFFIX]] = log.lines()
        outputs[paths[CONFIG_SUFFIX]] = _config_lines(report.has_rating, with_items=meta is not None)
        stale = [path for path in paths.values() if path not in outputs]
        report.removed_paths = _write_outputs(folder, outputs, stale)
    report.config_path = paths[CONFIG_SUFFIX]
    report.inter_path = paths["inter"]
    report.item_path = paths["item"] if meta is not None else None
    report.bad_lines_path = paths[BAD_LINES_SUFFIX] if log.entries else None
    return report


def _check_arguments(dataset: str, k_core: int) -> None:
    if dataset in ("", ".", "..") or Path(dataset).name != dataset:
        raise ConversionError(f"invalid dataset name {dataset!r}: use a plain folder name")
    if k_core < 0:
        raise ConversionError(f"k_core must be >= 0, got {k_core}")


def _check_readable(path: Path) -> None:
    """Fail before any work when ``path`` cannot be opened (``FileNotFoundError`` if missing)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ConversionIOError(path, "cannot read", error) from error


def _check_writable(folder: Path) -> None:
    """Fail before reading any input when ``folder`` clearly cannot be created or written to.

    Looks at ``folder`` or, when it does not exist yet, the nearest existing folder above it. (A
    process that may write anywhere, such as root's, passes; the write itself then reports.)
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        cause = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        raise ConversionIOError(existing, f"cannot create the output folder {folder}", cause)
    if not os.access(existing, os.W_OK | os.X_OK):
        cause = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        action = "cannot write" if existing == folder else f"cannot create {folder} in it"
        raise ConversionIOError(existing, action, cause)


# --- reading lines ---------------------------------------------------------------------------


class _BadLine(Exception):
    """A line that cannot be used; the message is the reason shown to the user."""


class _LineLog:
    """All bad and repaired lines of every input file, for ``{dataset}.bad_lines.txt``.

    Entries are spooled (in memory up to 1 MiB, then in a temporary file), so memory stays
    bounded whatever the number of bad lines.
    """

    def __init__(self):
        self.spool = tempfile.SpooledTemporaryFile(
            max_size=_LOG_SPOOL_BYTES, mode="w+", encoding="utf-8", errors="backslashreplace"
        )
        self.entries = 0

    def add(self, path: str, line_number: int, reason: str) -> None:
        self.spool.write(f"{path}:{line_number}: {reason}\n")
        self.entries += 1

    def lines(self) -> Iterator[str]:
        """Every entry as a ``file:line: reason`` text line, in the order found."""
        self.spool.seek(0)
        yield from self.spool

    def close(self) -> None:
        self.spool.close()


class _FileLog:
    """Count one input file's bad and repaired lines and keep the first few for the report."""

    def __init__(self, path: Path, log: _LineLog):
        self.path = str(path)
        self.log = log
        self.bad_count = 0
        self.repaired_count = 0
        self.first_bad: list[tuple[str, int, str]] = []
        self.first_repaired: list[tuple[str, int, str]] = []

    def bad(self, line_number: int, reason: str) -> None:
        self.bad_count += 1
        self._record(self.first_bad, line_number, reason)

    def repaired(self, line_number: int, reason: str) -> None:
        self.repaired_count += 1
        self._record(self.first_repaired, line_number, reason)

    def _record(self, first: list, line_number: int, reason: str) -> None:
        if len(first) < _BAD_LINES_KEPT:
            first.append((self.path, line_number, reason))
        self.log.add(self.path, line_number, reason)


class _Lines:
    """Iterate over a plain or gzip file's non-blank lines as ``(line_number, raw_bytes)``.

    ``raw_bytes`` is None for a line longer than ``_MAX_LINE_BYTES``, which is skipped without
    being held in memory. A UTF-8 byte-order mark starting the file is dropped. ``lines_read``
    counts every line, ``blank_lines`` the blank ones. A damaged gzip stream raises
    :class:`ConversionError`, a read failure :class:`ConversionIOError`, both naming the last
    line read.
    """

    def __init__(self, path: Path, show_progress: bool):
        self.path = path
        self.show_progress = show_progress
        self.lines_read = 0
        self.blank_lines = 0

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        try:
            handle = _open_binary(self.path)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise ConversionIOError(self.path, "cannot read", error) from error
        with handle, tqdm(
            _bounded_lines(handle),
            desc=self.path.name,
            unit="lines",
            file=sys.stderr,
            mininterval=1,
            disable=not self.show_progress,
        ) as lines:
            try:
                for raw in lines:
                    self.lines_read += 1
                    if raw is not None and self.lines_read == 1 and raw.startswith(_UTF8_BOM):
                        raw = raw[len(_UTF8_BOM) :]
                    if raw is not None and (not raw or raw.isspace()):
                        self.blank_lines += 1
                        continue
                    yield self.lines_read, raw
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ConversionError(
                    f"{self.path}: truncated or corrupt gzip after line {self.lines_read}"
                ) from error
            except OSError as error:
                raise ConversionIOError(
                    self.path, f"read error after line {self.lines_read}", error
                ) from error


def _bounded_lines(handle) -> Iterator[bytes | None]:
    """The lines of a binary file; None in place of a line longer than ``_MAX_LINE_BYTES``."""
    while raw := handle.readline(_MAX_LINE_BYTES + 1):
        if len(raw) <= _MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := handle.readline(_SKIP_CHUNK_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _open_binary(path: Path):
    """Open ``path`` for binary reading, decompressing it if it starts with the gzip magic."""
    with open(path, "rb") as probe:
        magic = probe.read(len(_GZIP_MAGIC))
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def _decode(raw: bytes) -> tuple[str, int | None]:
    """The line as stripped text, and the offset of its first invalid UTF-8 byte (None if valid).

    Invalid bytes are decoded as U+FFFD.
    """
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError as error:
        return raw.decode("utf-8", errors="replace").strip(), error.start


def _parsed_lines(lines: _Lines, parse: Callable[[str], object], log: _FileLog) -> Iterator:
    """Yield ``parse(text)`` of each good line; log bad lines and kept lines with invalid UTF-8."""
    for line_number, raw in lines:
        if raw is None:
            log.bad(line_number, f"line longer than {_MAX_LINE_BYTES:,} bytes")
            continue
        text, invalid_at = _decode(raw)
        try:
            parsed = parse(text)
        except _BadLine as bad:
            note = "" if invalid_at is None else f" (invalid UTF-8 at byte offset {invalid_at})"
            log.bad(line_number, f"{bad}{note}")
            continue
        if invalid_at is not None:
            reason = f"invalid UTF-8 at byte offset {invalid_at} replaced by U+FFFD (line kept)"
            log.repaired(line_number, reason)
        yield parsed


def _parse_record(text: str) -> dict:
    """Parse one strict-JSON or Python-literal object."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        try:
            record = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            reason = f"malformed line: neither JSON nor a Python literal: {text!r:.40}"
            raise _BadLine(reason) from None
    if not isinstance(record, dict):
        raise _BadLine(f"not an object: {text!r:.40}")
    return record


# --- choosing the reviews format -------------------------------------------------------------


def _resolve_format(path: Path, requested: str) -> str:
    """Return the concrete format of ``path``: ``json``, ``csv-2014`` or ``csv-2018``.

    ``auto`` means JSON for a ``.json`` or ``.json.gz`` name, or when at least half of the first
    lines start with ``{``; else the CSV layout is guessed. An explicit format that the first lines
    plainly contradict (JSON named a CSV, a 2018 CSV named a 2014 one: users and items would be
    swapped) is a :class:`ConversionError`.
    """
    if requested not in REVIEW_FORMATS:
        raise ConversionError(f"unknown reviews format {requested!r}; use one of {REVIEW_FORMATS}")
    if requested == "auto" and path.name.endswith((".json", ".json.gz")):
        return "json"
    sample = _first_lines(path, _DETECTION_ROWS)
    looks_json = 2 * sum(line.startswith("{") for line in sample) >= len(sample)
    if requested == "auto":
        return "json" if looks_json else _detect_csv_layout(path, sample)
    plainly = "json" if looks_json else _plain_csv_layout(sample)
    if plainly is not None and plainly != requested and sample:
        raise ConversionError(
            f"{path}: --format {requested} contradicts the file, which is plainly {_FORMAT_NAMES[plainly]} "
            f"(judged from its first {len(sample):,} lines); pass --format {plainly}, or --format auto"
        )
    return requested


def _first_lines(path: Path, count: int) -> list[str]:
    sample = []
    with closing(iter(_Lines(path, show_progress=False))) as lines:
        for _, raw in lines:
            if raw is None:
                continue
            sample.append(raw.decode("utf-8", errors="replace").strip())
            if len(sample) == count:
                break
    return sample


def _asin_counts(sample: list[str]) -> list[int]:
    """How many 4-field CSV rows of ``sample`` hold an ASIN (10 of ``[0-9A-Z]``) in column 1, in column 2."""
    rows = [line.split(",") for line in sample]
    return [
        sum(1 for row in rows if len(row) == _CSV_FIELD_COUNT and _ASIN.fullmatch(row[column]))
        for column in (0, 1)
    ]


def _plain_csv_layout(sample: list[str]) -> str | None:
    """The CSV layout whose item column holds ASINs clearly more often, or None if unclear."""
    asin_counts = _asin_counts(sample)
    for layout, (_, item_column) in _CSV_ID_COLUMNS.items():
        hits, other = asin_counts[item_column], asin_counts[1 - item_column]
        if hits >= 2 * other and 2 * hits >= len(sample):
            return layout
    return None


def _detect_csv_layout(path: Path, sample: list[str]) -> str:
    """:func:`_plain_csv_layout`, or a :class:`ConversionError` asking for ``--format``."""
    layout = _plain_csv_layout(sample)
    if layout is not None:
        return layout
    asin_counts, rows = _asin_counts(sample), sample
    raise ConversionError(
        f"{path}: cannot tell the CSV column order (ASIN-like values in column 1: "
        f"{asin_counts[0]}, column 2: {asin_counts[1]}, of {len(rows)} rows); pass "
        "--format csv-2014 (user,item,rating,timestamp) or --format csv-2018 "
        "(item,user,rating,timestamp)"
    )


# --- reading reviews -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """All valid review lines in file order, users and items as indices into the token lists."""

    user_tokens: list[str]
    item_tokens: list[str]
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    ratings: np.ndarray


class _TableBuilder:
    """Growable compact columns (20 bytes a row); user and item strings are interned to ints."""

    def __init__(self):
        self.user_ids: dict[str, int] = {}
        self.item_ids: dict[str, int] = {}
        self.users = array("i")
        self.items = array("i")
        self.times = array("q")
        self.ratings = array("f")

    def add(self, user: str, item: str, time: int, rating: float) -> None:
        self.users.append(self.user_ids.setdefault(user, len(self.user_ids)))
        self.items.append(self.item_ids.setdefault(item, len(self.item_ids)))
        self.times.append(time)
        self.ratings.append(rating)

    def build(self) -> _Table:
        return _Table(
            user_tokens=list(self.user_ids),
            item_tokens=list(self.item_ids),
            users=np.frombuffer(self.users, dtype=self.users.typecode),
            items=np.frombuffer(self.items, dtype=self.items.typecode),
            times=np.frombuffer(self.times, dtype=self.times.typecode),
            ratings=np.frombuffer(self.ratings, dtype=self.ratings.typecode),
        )


def _read_reviews(
    path: Path, report: ConversionReport, log: _LineLog, show_progress: bool
) -> _Table:
    if report.reviews_format == "json":
        parse = _json_review
    else:
        parse = partial(_csv_review, id_columns=_CSV_ID_COLUMNS[report.reviews_format])
    builder = _TableBuilder()
    file_log = _FileLog(path, log)
    lines = _Lines(path, show_progress)
    for row in _parsed_lines(lines, parse, file_log):
        builder.add(*row)
    report.lines_read, report.blank_lines = lines.lines_read, lines.blank_lines
    report.bad_line_count, report.repaired_line_count = file_log.bad_count, file_log.repaired_count
    report.bad_lines.extend(file_log.first_bad)
    report.repaired_lines.extend(file_log.first_repaired)
    return builder.build()


def _json_review(text: str) -> tuple[str, str, int, float]:
    record = _parse_record(text)
    return (
        _token(record.get("reviewerID"), "reviewerID"),
        _token(record.get("asin"), "asin"),
        _review_time(record),
        _rating(record.get("overall"), "overall"),
    )


def _csv_review(text: str, id_columns: tuple[int, int]) -> tuple[str, str, int, float]:
    fields = text.split(",")
    if len(fields) != _CSV_FIELD_COUNT:
        raise _BadLine(f"expected {_CSV_FIELD_COUNT} comma-separated fields, found {len(fields)}")
    user_column, item_column = id_columns
    return (
        _token(fields[user_column], "user"),
        _token(fields[item_column], "item"),
        _timestamp(fields[3], "timestamp"),
        _rating(fields[2], "rating"),
    )


def _token(value, name: str) -> str:
    """A user or item id: a non-empty string without characters that would corrupt the output."""
    if value is None:
        raise _BadLine(f"missing {name}")
    token = value.strip() if isinstance(value, str) else ""
    if not token:
        raise _BadLine(f"invalid {name}: {value!r:.40}")
    if token.isalnum():  # the usual case, and never holds a character of _BAD_ID_CHARACTER
        return token
    bad = _BAD_ID_CHARACTER.search(token)
    if bad:
        raise _BadLine(f"invalid {name}: {token!r:.40} contains U+{ord(bad.group()):04X}")
    return token


def _review_time(record: dict) -> int:
    if "unixReviewTime" in record:
        return _timestamp(record["unixReviewTime"], "unixReviewTime")
    if "reviewTime" in record:
        try:
            moment = datetime.strptime(str(record["reviewTime"]).strip(), "%m %d, %Y")
        except ValueError:
            raise _BadLine(f"unparseable reviewTime: {record['reviewTime']!r:.40}") from None
        return int(moment.replace(tzinfo=timezone.utc).timestamp())
    raise _BadLine("missing unixReviewTime and reviewTime")


def _timestamp(value, name: str) -> int:
    """Whole seconds from an int, a float or a numeric string."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = value if isinstance(value, int) else float(value)
    except (TypeError, ValueError):
        raise _BadLine(f"non-numeric {name}: {value!r:.40}") from None
    if not math.isfinite(number) or abs(number) >= _INT64_LIMIT:
        raise _BadLine(f"{name} out of range: {value!r:.40}")
    return int(number)


def _rating(value, name: str) -> float:
    """The rating as a float, NaN when absent."""
    if value is None:
        return math.nan
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise _BadLine(f"non-numeric {name}: {value!r:.40}") from None
    if not math.isfinite(number):
        raise _BadLine(f"non-finite {name}: {value!r:.40}")
    return number


# --- filtering and ordering ------------------------------------------------------------------


def _select_rows(table: _Table, report: ConversionReport) -> np.ndarray:
    """Deduplicate and filter; return the kept row indices in output order; fill the counts."""
    source = report.reviews_path
    if report.lines_read == 0:
        raise ConversionError(f"{source}: empty file")
    if len(table.users) == 0:
        raise ConversionError(
            f"{source}: no valid interactions ({report.lines_read:,} lines read, "
            f"{report.blank_lines:,} blank, {report.bad_line_count:,} bad"
            + "".join(
                f"; line {number}: {reason}"
                for _, number, reason in report.bad_lines[:_ERROR_EXAMPLES]
            )
            + ")"
        )
    report.has_rating = not bool(np.isnan(table.ratings).all())
    keep = _first_occurrences(table.users, table.items, table.times)
    report.duplicates_removed = len(keep) - int(keep.sum())
    if report.min_rating is not None:
        if not report.has_rating:
            raise ConversionError(f"{source}: min_rating given but the file has no ratings")
        passing = keep & (table.ratings >= report.min_rating)
        report.removed_by_rating = int(keep.sum()) - int(passing.sum())
        keep = passing
    before_k_core = int(keep.sum())
    keep, report.k_core_rounds = _k_core(table, keep, report.k_core)
    report.removed_by_k_core = before_k_core - int(keep.sum())
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ConversionError(
            f"{source}: no interactions left after the rating and k-core filters "
            f"({before_k_core:,} before the {report.k_core}-core)"
        )
    user_rank = _string_ranks(table.user_tokens)
    rows = rows[np.lexsort((table.times[rows], user_rank[table.users[rows]]))]
    report.interactions = len(rows)
    report.users = len(np.unique(table.users[rows]))
    report.items = len(np.unique(table.items[rows]))
    return rows


def _first_occurrences(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Mask that is False on every repeat of an earlier (user, item, time) row."""
    order = np.lexsort((times, items, users))  # stable: equal rows stay in file order
    users, items, times = users[order], items[order], times[order]
    repeat = (users[1:] == users[:-1]) & (items[1:] == items[:-1]) & (times[1:] == times[:-1])
    keep = np.ones(len(order), dtype=bool)
    keep[order[1:][repeat]] = False
    return keep


def _k_core(table: _Table, keep: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Drop rows of users or items with fewer than ``k`` kept rows until none is left.

    Returns the new mask and the number of rounds that removed something.
    """
    rounds = 0
    if k <= 1:
        return keep, rounds
    while True:
        user_counts = np.bincount(table.users[keep], minlength=len(table.user_tokens))
        item_counts = np.bincount(table.items[keep], minlength=len(table.item_tokens))
        too_rare = keep & ((user_counts[table.users] < k) | (item_counts[table.items] < k))
        if not too_rare.any():
            return keep, rounds
        keep = keep & ~too_rare
        rounds += 1


def _string_ranks(tokens: list[str]) -> np.ndarray:
    """Rank of each token in sorted order."""
    order = sorted(range(len(tokens)), key=tokens.__getitem__)
    ranks = np.empty(len(tokens), dtype=np.int64)
    ranks[np.array(order, dtype=np.int64)] = np.arange(len(tokens), dtype=np.int64)
    return ranks


# --- metadata --------------------------------------------------------------------------------


def _read_meta(
    path: Path,
    kept_items: list[str],
    review_items: set[str],
    report: ConversionReport,
    log: _LineLog,
    show_progress: bool,
) -> dict[str, tuple[str, str, str]]:
    """Map each kept item with a meta line to (brand, categories, category); the first line wins.

    Every line is parsed and checked, whether its item is kept or not, and counted once (see
    :class:`ConversionReport`).
    """
    wanted = set(kept_items)
    features: dict[str, tuple[str, str, str]] = {}
    file_log = _FileLog(path, log)
    lines = _Lines(path, show_progress)
    for asin, item_features in _parsed_lines(lines, _meta_line, file_log):
        if asin in features:
            report.meta_duplicates += 1
        elif asin in wanted:
            features[asin] = item_features
        elif asin in review_items:
            report.meta_filtered_out += 1
        else:
            report.meta_absent_from_reviews += 1
    report.meta_lines_read, report.meta_blank_lines = lines.lines_read, lines.blank_lines
    report.meta_bad_line_count = file_log.bad_count
    report.meta_repaired_line_count = file_log.repaired_count
    report.bad_lines.extend(file_log.first_bad)
    report.repaired_lines.extend(file_log.first_repaired)
    report.meta_items_matched = len(features)
    report.items_without_meta = len(wanted) - len(features)
    return features


def _meta_line(text: str) -> tuple[str, tuple[str, str, str]]:
    record = _parse_record(text)
    return _token(record.get("asin"), "asin"), _item_features(record)


def _item_features(record: dict) -> tuple[str, str, str]:
    """(brand, categories token_seq, top-level category) of one meta record.

    Category names below the root, distinct, in first-seen order; the top-level category is the
    first of them in the first path. Empty names (a few 2014 paths read ``["Beauty", "", ...]``)
    are skipped.
    """
    brand = record.get("brand")
    paths = [
        [_category_token(name) for name in path[1:]] for path in _category_paths(record)
    ]
    categories = " ".join(dict.fromkeys(name for path in paths for name in path if name))
    category = next((name for name in paths[0] if name), "") if paths else ""
    return ("" if brand is None else _clean_text(brand, "brand")), categories, category


def _category_paths(record: dict) -> list[list]:
    """2014 ``categories`` (list of paths) or 2018 ``category`` (one path); roots first."""
    if "categories" in record:
        paths = record["categories"]
        if not isinstance(paths, list) or not all(isinstance(path, list) for path in paths):
            raise _BadLine("categories is not a list of category paths")
        return paths
    category = record.get("category")
    if category is None:
        return []
    if not isinstance(category, list):
        raise _BadLine("category is not a list")
    return [category]


def _clean_text(value, name: str) -> str:
    """Unescape HTML entities, turn control characters and whitespace runs into one space, strip.

    Double quotes become single quotes: RecBole reads atomic files with pandas, for which a
    field starting with ``"`` is quoted and could swallow the following lines. An unpaired
    surrogate (a ``\\udXXX`` escape that is no character) makes the line bad.
    """
    text = html.unescape(str(value))
    if _SURROGATE.search(text):
        raise _BadLine(f"{name} {text!r:.40} holds an unpaired surrogate escape")
    text = _SPACE_OR_CONTROL.sub(" ", text).strip()
    return text.replace('"', "'")


def _category_token(name) -> str:
    """A category name as one token of a space-separated ``token_seq``."""
    return _clean_text(name, "category").replace(" ", "_")


# --- writing ---------------------------------------------------------------------------------


def _inter_lines(table: _Table, rows: np.ndarray, has_rating: bool) -> Iterator[str]:
    header = [name for name in INTER_HEADER_FIELDS if has_rating or name != "rating:float"]
    yield "\t".join(header) + "\n"
    for start in range(0, len(rows), _WRITE_CHUNK_ROWS):
        chunk = rows[start : start + _WRITE_CHUNK_ROWS]
        columns = [
            [table.user_tokens[user] for user in table.users[chunk].tolist()],
            [table.item_tokens[item] for item in table.items[chunk].tolist()],
        ]
        if has_rating:
            columns.append([_format_rating(rating) for rating in table.ratings[chunk].tolist()])
        columns.append([str(time) for time in table.times[chunk].tolist()])
        for fields in zip(*columns):
            yield "\t".join(fields) + "\n"


def _format_rating(rating: float) -> str:
    """Shortest readable form (``5``, ``4.5``); empty for a line without rating."""
    return "" if math.isnan(rating) else f"{rating:g}"


def _item_lines(kept_items: list[str], features: dict[str, tuple[str, str, str]]) -> Iterator[str]:
    yield "\t".join(ITEM_HEADER_FIELDS) + "\n"
    for asin in kept_items:
        yield "\t".join((asin, *features.get(asin, ("", "", "")))) + "\n"


def _config_lines(has_rating: bool, with_items: bool) -> Iterator[str]:
    """``NAME.yaml``: what RecBole must know to read these files and split them by time.

    ``mind-recbole train`` and ``compare`` read it when there is no ``configs/NAME.yaml``, so that
    ``prepare`` then ``train`` work in a row; ``configs/amazon-beauty.yaml`` is the documented
    template with metrics and training settings.
    """
    inter = [name.split(":")[0] for name in INTER_HEADER_FIELDS if has_rating or name != "rating:float"]
    items = [name.split(":")[0] for name in ITEM_HEADER_FIELDS]
    yield "# Written by `mind-recbole prepare amazon` with the atomic files beside it.\n"
    yield "USER_ID_FIELD: user_id          # (str) User token column of the .inter file.\n"
    yield "ITEM_ID_FIELD: item_id          # (str) Item token column (the ASIN).\n"
    if has_rating:
        yield "RATING_FIELD: rating           # (str) Star rating column.\n"
    yield "TIME_FIELD: timestamp           # (str) Review time in seconds; orders each user's history.\n"
    yield "load_col:                       # (dict) Columns read from the atomic files.\n"
    yield f"  inter: [{', '.join(inter)}]\n"
    if with_items:
        yield f"  item: [{', '.join(items)}]\n"
        yield "item_side_fields: [brand, categories]  # (list) MIND / YouTubeDNN pool these with the item id embedding.\n"
    yield "eval_args:                      # (dict) Leave-one-out by time: each user's last item is the test target.\n"
    yield "  split: {'LS': 'valid_and_test'}\n"
    yield "  group_by: user\n"
    yield "  order: TO\n"
    yield "  mode: full\n"
    yield "train_neg_sample_args: ~        # (dict) No negatives from RecBole's loader: MIND samples its own, CE models need none.\n"


def _write_outputs(folder: Path, outputs: dict[Path, Iterable[str]], stale: list[Path]) -> list[Path]:
    """Create ``folder``, write ``outputs`` and remove the ``stale`` files, all or nothing; return
    the stale files that existed (now removed).

    Temporaries that an earlier, killed run left beside these files are removed first.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConversionIOError(folder, "cannot create the output folder", error) from error
    _remove_stale_temporaries(folder, [*outputs, *stale])
    removed = [path for path in stale if path.exists()]
    _write_atomically(outputs, removed)
    return removed


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_atomically(outputs: dict[Path, Iterable[str]], removals: Iterable[Path] = ()) -> None:
    """Write every file to a temporary name beside it and sync it; then switch them all into place
    and remove ``removals``, as one step that is undone if any part of it fails.

    The previous version of each target is kept under a backup name (a hard link) until every
    rename succeeded; after a failure every target is restored as it was, so an old ``.item``
    never stands beside a new ``.inter``. An ``OSError`` becomes a :class:`ConversionIOError`
    naming the file, with the previous files unchanged.
    """
    temporaries: list[Path] = []
    backups: dict[Path, Path] = {}  # target -> its previous version
    switched: list[Path] = []
    path = None
    try:
        for path, lines in outputs.items():
            temporary = _temporary_path(path)
            temporaries.append(temporary)
            with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
        for path in [*outputs, *removals]:
            if path.exists():
                backups[path] = _backup_path(path)
                _keep_copy(path, backups[path])
        for temporary, path in zip(temporaries, outputs):
            switched.append(path)
            os.replace(temporary, path)
        for path in removals:
            switched.append(path)
            path.unlink()
    except BaseException as error:
        _restore(switched, backups)
        for temporary in [*temporaries, *backups.values()]:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, ConversionIOError):
            raise ConversionIOError(path, "cannot write", error, "the previous files are unchanged") from error
        raise
    for backup in backups.values():
        with suppress(OSError):
            backup.unlink()
    if path is not None:
        _sync_folder(path.parent)


def _keep_copy(path: Path, backup: Path) -> None:
    """``backup`` holds ``path``'s content: a hard link, or a copy where links are not supported."""
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)


def _backup_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{os.getpid()}")


def _restore(switched: list[Path], backups: dict[Path, Path]) -> None:
    """Put back the previous version of each ``switched`` target (remove it where there was none)."""
    for path in reversed(switched):
        with suppress(OSError):
            if path in backups:
                os.replace(backups[path], path)
            else:
                path.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """fsync ``folder`` so the renames survive a power cut (best effort: not every system can)."""
    if os.name != "posix":
        return
    with suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove_stale_temporaries(folder: Path, paths: list[Path]) -> None:
    """Remove the temporaries and backups of ``paths`` whose writing process is gone (killed mid-write)."""
    for path in paths:
        for pattern in (".tmp-*", ".old-*"):
            for temporary in folder.glob(f".{glob.escape(path.name)}{pattern}"):
                pid = temporary.name.rpartition("-")[2]
                if pid.isdigit() and not _process_alive(int(pid)):
                    with suppress(OSError):
                        temporary.unlink()


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (always True where that cannot be asked safely)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True
