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
interactions kept in compact numpy columns, not with the file size. Bad lines are counted and
reported, not fatal. It writes ``{dataset}.inter`` and, given metadata, ``{dataset}.item`` into
``{data_path}/{dataset}/``, each file atomically, and returns a :class:`ConversionReport`.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import math
import os
import re
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["ConversionReport", "convert_amazon"]

REVIEW_FORMATS = ("auto", "json", "csv-2014", "csv-2018")

# (user column, item column) of each headerless CSV layout; the rating is column 2, the time 3.
_CSV_ID_COLUMNS = {"csv-2014": (0, 1), "csv-2018": (1, 0)}
_CSV_FIELD_COUNT = 4
_ASIN = re.compile(r"[0-9A-Z]{10}")
_DETECTION_ROWS = 1000
_BAD_LINES_KEPT = 20
_GZIP_MAGIC = b"\x1f\x8b"
_INT64_LIMIT = 2**63
_WRITE_CHUNK_ROWS = 1 << 16
_WHITESPACE = re.compile(r"\s+")
_LINE_BREAK_OR_TAB = re.compile(r"[\t\r\n]")

INTER_HEADER_FIELDS = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
ITEM_HEADER_FIELDS = ("item_id:token", "brand:token", "categories:token_seq", "category:token")


@dataclass
class ConversionReport:
    """What :func:`convert_amazon` read, dropped and wrote.

    ``bad_lines`` lists the first bad lines of each input file as ``(file, line_number, reason)``;
    ``bad_line_count`` and ``meta_bad_line_count`` count them all. Of the meta lines,
    ``meta_items_matched`` described a kept item, ``meta_absent_from_reviews`` named an ASIN that
    never occurs in the reviews; ``items_without_meta`` kept items had no meta line.
    """

    dataset: str
    reviews_path: Path
    reviews_format: str
    meta_path: Path | None = None
    k_core: int = 0
    min_rating: float | None = None
    inter_path: Path | None = None
    item_path: Path | None = None
    has_rating: bool = False
    lines_read: int = 0
    bad_line_count: int = 0
    duplicates_removed: int = 0
    removed_by_rating: int = 0
    removed_by_k_core: int = 0
    k_core_rounds: int = 0
    interactions: int = 0
    users: int = 0
    items: int = 0
    meta_lines_read: int = 0
    meta_bad_line_count: int = 0
    meta_items_matched: int = 0
    meta_absent_from_reviews: int = 0
    items_without_meta: int = 0
    bad_lines: list[tuple[str, int, str]] = field(default_factory=list)

    def summary(self) -> str:
        """Return the counts and the first bad lines as a short multi-line text."""
        ratings = "with ratings" if self.has_rating else "no ratings"
        lines = [
            f"{self.dataset}: {self.interactions:,} interactions, {self.users:,} users, "
            f"{self.items:,} items ({ratings})",
            f"reviews {self.reviews_path} ({self.reviews_format}): {self.lines_read:,} lines read, "
            f"{self.bad_line_count:,} bad, {self.duplicates_removed:,} duplicates removed",
        ]
        if self.min_rating is not None:
            lines.append(f"rating >= {self.min_rating:g}: {self.removed_by_rating:,} removed")
        if self.k_core > 1:
            lines.append(
                f"{self.k_core}-core: {self.removed_by_k_core:,} removed "
                f"in {self.k_core_rounds} round(s)"
            )
        if self.meta_path is not None:
            lines.append(
                f"meta {self.meta_path}: {self.meta_lines_read:,} lines read, "
                f"{self.meta_bad_line_count:,} bad, {self.meta_items_matched:,} items matched, "
                f"{self.meta_absent_from_reviews:,} absent from reviews, "
                f"{self.items_without_meta:,} kept items without meta"
            )
        lines.extend(f"wrote {path}" for path in (self.inter_path, self.item_path) if path)
        if self.bad_lines:
            lines.append("bad lines:")
            lines.extend(f"  {name}:{number}: {reason}" for name, number, reason in self.bad_lines)
            unlisted = self.bad_line_count + self.meta_bad_line_count - len(self.bad_lines)
            if unlisted:
                lines.append(f"  ... and {unlisted:,} more")
        return "\n".join(lines)


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
    None, a ``{dataset}.item`` left by an earlier run is removed, since it would no longer match.

    Returns:
        The :class:`ConversionReport`; ``report.summary()`` is meant for the user.

    Raises:
        ValueError: unknown format, undecidable CSV layout, truncated or corrupt gzip, no valid
            interactions, or ``min_rating`` on a file without ratings. Nothing is written then.
    """
    reviews = Path(reviews)
    meta = None if meta is None else Path(meta)
    if dataset in ("", ".", "..") or Path(dataset).name != dataset:
        raise ValueError(f"invalid dataset name {dataset!r}: use a plain folder name")
    if k_core < 0:
        raise ValueError(f"k_core must be >= 0, got {k_core}")
    report = ConversionReport(
        dataset=dataset,
        reviews_path=reviews,
        reviews_format=_resolve_format(reviews, reviews_format),
        meta_path=meta,
        k_core=k_core,
        min_rating=min_rating,
    )
    table = _read_reviews(reviews, report, show_progress)
    rows = _select_rows(table, report)
    folder = Path(data_path) / dataset
    inter_path = folder / f"{dataset}.inter"
    item_path = folder / f"{dataset}.item"
    outputs = [(inter_path, _inter_lines(table, rows, report.has_rating))]
    if meta is not None:
        kept_items = sorted(table.item_tokens[i] for i in np.unique(table.items[rows]).tolist())
        features = _read_meta(meta, kept_items, set(table.item_tokens), report, show_progress)
        outputs.append((item_path, _item_lines(kept_items, features)))
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(outputs)
    if meta is None:
        item_path.unlink(missing_ok=True)
    report.inter_path = inter_path
    report.item_path = item_path if meta is not None else None
    return report


# --- reading lines ---------------------------------------------------------------------------


class _BadLine(Exception):
    """A line that cannot be used; the message is the reason shown to the user."""


class _BadLineLog:
    """Count one file's bad lines and keep the first few for the report."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.count = 0
        self.first: list[tuple[str, int, str]] = []

    def add(self, line_number: int, reason: str) -> None:
        self.count += 1
        if len(self.first) < _BAD_LINES_KEPT:
            self.first.append((self.path, line_number, reason))


class _Lines:
    """Iterate over a plain or gzip file's non-blank lines as ``(line_number, raw_bytes)``.

    ``lines_read`` counts every line, blank ones included. A damaged gzip stream raises
    ``ValueError`` naming the last line read.
    """

    def __init__(self, path: Path, show_progress: bool):
        self.path = path
        self.show_progress = show_progress
        self.lines_read = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        with _open_binary(self.path) as handle, tqdm(
            handle,
            desc=self.path.name,
            unit="lines",
            file=sys.stderr,
            mininterval=1,
            disable=not self.show_progress,
        ) as lines:
            try:
                for raw in lines:
                    self.lines_read += 1
                    if not raw.isspace():
                        yield self.lines_read, raw
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ValueError(
                    f"{self.path}: truncated or corrupt gzip after line {self.lines_read}"
                ) from error


def _open_binary(path: Path):
    """Open ``path`` for binary reading, decompressing it if it starts with the gzip magic."""
    with open(path, "rb") as probe:
        magic = probe.read(len(_GZIP_MAGIC))
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise _BadLine(f"invalid UTF-8 at byte {error.start}") from None


def _parse_record(text: str) -> dict:
    """Parse one strict-JSON or Python-literal object."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        try:
            record = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise _BadLine("malformed line: neither JSON nor a Python literal") from None
    if not isinstance(record, dict):
        raise _BadLine("not an object")
    return record


# --- choosing the reviews format -------------------------------------------------------------


def _resolve_format(path: Path, requested: str) -> str:
    """Return the concrete format of ``path``: ``json``, ``csv-2014`` or ``csv-2018``."""
    if requested not in REVIEW_FORMATS:
        raise ValueError(f"unknown reviews format {requested!r}; use one of {REVIEW_FORMATS}")
    if requested != "auto":
        return requested
    if path.name.endswith((".json", ".json.gz")):
        return "json"
    sample = _first_lines(path, _DETECTION_ROWS)
    if not sample or sample[0].startswith("{"):
        return "json"
    return _detect_csv_layout(path, sample)


def _first_lines(path: Path, count: int) -> list[str]:
    sample = []
    with closing(iter(_Lines(path, show_progress=False))) as lines:
        for _, raw in lines:
            sample.append(raw.decode("utf-8", errors="replace").strip())
            if len(sample) == count:
                break
    return sample


def _detect_csv_layout(path: Path, sample: list[str]) -> str:
    """Pick the CSV layout whose item column holds ASINs (10 of ``[0-9A-Z]``) clearly more often."""
    rows = [line.split(",") for line in sample]
    asin_counts = [
        sum(1 for row in rows if len(row) == _CSV_FIELD_COUNT and _ASIN.fullmatch(row[column]))
        for column in (0, 1)
    ]
    for layout, (_, item_column) in _CSV_ID_COLUMNS.items():
        hits, other = asin_counts[item_column], asin_counts[1 - item_column]
        if hits >= 2 * other and 2 * hits >= len(rows):
            return layout
    raise ValueError(
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
    """Growable compact columns; user and item strings are interned to ints."""

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


def _read_reviews(path: Path, report: ConversionReport, show_progress: bool) -> _Table:
    if report.reviews_format == "json":
        parse = _json_review
    else:
        parse = partial(_csv_review, id_columns=_CSV_ID_COLUMNS[report.reviews_format])
    builder = _TableBuilder()
    bad_lines = _BadLineLog(path)
    lines = _Lines(path, show_progress)
    for line_number, raw in lines:
        try:
            builder.add(*parse(_decode(raw)))
        except _BadLine as bad:
            bad_lines.add(line_number, str(bad))
    report.lines_read = lines.lines_read
    report.bad_line_count = bad_lines.count
    report.bad_lines.extend(bad_lines.first)
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
    if value is None:
        raise _BadLine(f"missing {name}")
    if not isinstance(value, str) or not value.strip() or _LINE_BREAK_OR_TAB.search(value):
        raise _BadLine(f"invalid {name}: {value!r:.40}")
    return value.strip()


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
    if len(table.users) == 0:
        raise ValueError(
            f"{source}: no valid interactions ({report.lines_read:,} lines read, "
            f"{report.bad_line_count:,} bad)"
        )
    report.has_rating = not bool(np.isnan(table.ratings).all())
    keep = _first_occurrences(table.users, table.items, table.times)
    report.duplicates_removed = len(keep) - int(keep.sum())
    if report.min_rating is not None:
        if not report.has_rating:
            raise ValueError(f"{source}: min_rating given but the file has no ratings")
        passing = keep & (table.ratings >= report.min_rating)
        report.removed_by_rating = int(keep.sum()) - int(passing.sum())
        keep = passing
    before_k_core = int(keep.sum())
    keep, report.k_core_rounds = _k_core(table, keep, report.k_core)
    report.removed_by_k_core = before_k_core - int(keep.sum())
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ValueError(f"{source}: no interactions left after the rating and k-core filters")
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
    show_progress: bool,
) -> dict[str, tuple[str, str, str]]:
    """Map each kept item with a meta line to (brand, categories, category); the first line wins."""
    wanted = set(kept_items)
    features: dict[str, tuple[str, str, str]] = {}
    bad_lines = _BadLineLog(path)
    lines = _Lines(path, show_progress)
    for line_number, raw in lines:
        try:
            record = _parse_record(_decode(raw))
            asin = _token(record.get("asin"), "asin")
            if asin not in review_items:
                report.meta_absent_from_reviews += 1
            elif asin in wanted and asin not in features:
                features[asin] = _item_features(record)
        except _BadLine as bad:
            bad_lines.add(line_number, str(bad))
    report.meta_lines_read = lines.lines_read
    report.meta_bad_line_count = bad_lines.count
    report.bad_lines.extend(bad_lines.first)
    report.meta_items_matched = len(features)
    report.items_without_meta = len(wanted) - len(features)
    return features


def _item_features(record: dict) -> tuple[str, str, str]:
    """(brand, categories token_seq, top-level category) of one meta record.

    Category names below the root, distinct, in first-seen order; the top-level category is the
    first of them in the first path. Empty names (a few 2014 paths read ``["Beauty", "", ...]``)
    are skipped.
    """
    brand = record.get("brand")
    paths = [[_category_token(name) for name in path[1:]] for path in _category_paths(record)]
    categories = " ".join(dict.fromkeys(name for path in paths for name in path if name))
    category = next((name for name in paths[0] if name), "") if paths else ""
    return ("" if brand is None else _clean_text(brand)), categories, category


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


def _clean_text(value) -> str:
    """Unescape HTML entities, collapse whitespace to single spaces, strip.

    Double quotes become single quotes: RecBole reads atomic files with pandas, for which a
    field starting with ``"`` is quoted and could swallow the following lines.
    """
    text = _WHITESPACE.sub(" ", html.unescape(str(value))).strip()
    return text.replace('"', "'")


def _category_token(name) -> str:
    """A category name as one token of a space-separated ``token_seq``."""
    return _clean_text(name).replace(" ", "_")


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


def _write_atomically(outputs: list[tuple[Path, Iterable[str]]]) -> None:
    """Write every file to a temporary name beside it, then move them all into place.

    On any error the temporary files are removed and no target file is touched.
    """
    temporaries: list[Path] = []
    try:
        for path, lines in outputs:
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temporaries.append(temporary)
            with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
                handle.writelines(lines)
        for temporary, (path, _) in zip(temporaries, outputs):
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        raise
