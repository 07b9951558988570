"""The Amazon converter at scale: a synthetic reviews file of millions of lines through convert_amazon.

Generates JSON lines in the layout of ../shared/data (``reviewerID``, ``asin``, ``overall``,
``unixReviewTime``; optionally a ``summary`` text of fixed length) with power-law user activity and
item popularity, written in blocks by numpy (no Python loop per line). Then converts it in a
child process, so that the generator's memory does not count, and reports the child's peak
resident memory (VmHWM from /proc/self/status; not getrusage's ru_maxrss, which on Linux keeps
the parent's peak across fork and exec), its memory after reading (the compact columns and the
id dictionaries), lines per second, seconds per phase and the converter's counts.

Usage:
  python benchmarks/convert_scale.py                                  # 10M lines, 1M users, 300k items
  python benchmarks/convert_scale.py --lines 1000000 --gzip --out results/convert_scale.md

Prints a Markdown table (and appends it to --out). The files go to a temporary folder (under
--workdir if given), removed at the end unless --keep.
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ALPHABET = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
USER_CHARS, ITEM_DIGITS, TIME_DIGITS = 13, 9, 10
FIRST_DAY, LAST_DAY = 11_688, 16_274  # 2002-01-01 .. 2014-07-23 in days since 1970 (10-digit seconds)
RATING_P = [0.05, 0.05, 0.10, 0.20, 0.60]
BLOCK_LINES = 500_000


# --- generating ------------------------------------------------------------------------------


def power_law_cdf(count: int, exponent: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative probabilities of ``count`` ids with weight ``rank ** -exponent``, ranks shuffled.

    Returns (cdf over ranks, id of each rank), so that popularity does not follow id order.
    """
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf, rng.permutation(count)


def user_tokens(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random reviewer ids ``A`` + 13 of [0-9A-Z], as a (count, 14) byte matrix."""
    tokens = np.empty((count, 1 + USER_CHARS), dtype=np.uint8)
    tokens[:, 0] = ord("A")
    tokens[:, 1:] = ALPHABET[rng.integers(0, len(ALPHABET), size=(count, USER_CHARS))]
    return tokens


def digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative ints, as a (len, width) byte matrix."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def item_tokens(count: int) -> np.ndarray:
    """ASIN-like ids ``B`` + 9 digits, as a (count, 10) byte matrix."""
    tokens = np.empty((count, 1 + ITEM_DIGITS), dtype=np.uint8)
    tokens[:, 0] = ord("B")
    tokens[:, 1:] = digits(np.arange(count, dtype=np.int64), ITEM_DIGITS)
    return tokens


class LineLayout:
    """A fixed-width JSON line and the byte offsets of its variable fields."""

    def __init__(self, text_chars: int):
        summary = f', "summary": "{"x" * text_chars}"' if text_chars else ""
        parts = [
            '{"reviewerID": "', "u" * (1 + USER_CHARS), '", "asin": "', "i" * (1 + ITEM_DIGITS),
            '", "overall": ', "r", ".0", summary, ', "unixReviewTime": ', "t" * TIME_DIGITS, "}\n",
        ]
        self.template = np.frombuffer("".join(parts).encode(), dtype=np.uint8)
        offsets = np.cumsum([0] + [len(part) for part in parts])
        self.user, self.item, self.rating, self.time = (int(offsets[i]) for i in (1, 3, 5, 9))
        self.summary = int(offsets[7]) + len(', "summary": "') if text_chars else None
        self.text_chars = text_chars

    @property
    def width(self) -> int:
        return len(self.template)


def generate(path: Path, lines: int, users: int, items: int, text_chars: int, compress: bool, seed: int) -> dict:
    """Write ``lines`` synthetic review lines to ``path``; return what was generated."""
    rng = np.random.default_rng(seed)
    user_cdf, user_of_rank = power_law_cdf(users, 0.8, rng)
    item_cdf, item_of_rank = power_law_cdf(items, 0.9, rng)
    user_bytes, item_bytes = user_tokens(users, rng), item_tokens(items)
    layout = LineLayout(text_chars)
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if compress else (lambda p: open(p, "wb"))
    with opener(path) as handle:
        for start in range(0, lines, BLOCK_LINES):
            count = min(BLOCK_LINES, lines - start)
            rows = np.tile(layout.template, (count, 1))
            user_ids = user_of_rank[np.searchsorted(user_cdf, rng.random(count))]
            item_ids = item_of_rank[np.searchsorted(item_cdf, rng.random(count))]
            rows[:, layout.user : layout.user + 1 + USER_CHARS] = user_bytes[user_ids]
            rows[:, layout.item : layout.item + 1 + ITEM_DIGITS] = item_bytes[item_ids]
            rows[:, layout.rating] = ord("1") + rng.choice(5, size=count, p=RATING_P)
            days = rng.integers(FIRST_DAY, LAST_DAY + 1, size=count, dtype=np.int64)
            rows[:, layout.time : layout.time + TIME_DIGITS] = digits(days * 86_400, TIME_DIGITS)
            if layout.summary is not None:
                text = ALPHABET[rng.integers(10, len(ALPHABET), size=(count, text_chars))] | 0x20
                rows[:, layout.summary : layout.summary + text_chars] = text  # lower-case letters
            handle.write(rows.tobytes())
    return {"line_bytes": layout.width, "file_bytes": path.stat().st_size}


# --- converting (child process) --------------------------------------------------------------


def memory_kib() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in KiB."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def convert_child(reviews: Path, data_path: Path, k_core: int) -> None:
    """Convert ``reviews`` in this process; print one JSON line of timings, memory and counts."""
    from mind_recbole.data import amazon

    baseline = memory_kib()["VmRSS"]
    phases: dict[str, float] = {}
    after_read: dict[str, int] = {}

    def timed(name, function, remember_memory=False):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            phases[name] = time.perf_counter() - start
            if remember_memory:
                after_read.update(memory_kib())
            return result

        return wrapper

    amazon._read_reviews = timed("read", amazon._read_reviews, remember_memory=True)
    amazon._select_rows = timed("filter_sort", amazon._select_rows)
    amazon._write_outputs = timed("write", amazon._write_outputs)
    start = time.perf_counter()
    report = amazon.convert_amazon(reviews, "scale", data_path=data_path, k_core=k_core, show_progress=False)
    seconds = time.perf_counter() - start
    counts = {
        name: getattr(report, name)
        for name in (
            "lines_read", "bad_line_count", "duplicates_removed", "removed_by_k_core",
            "k_core_rounds", "interactions", "users", "items",
        )
    }
    print(json.dumps({
        "seconds": seconds,
        "phases": phases,
        "baseline_kib": baseline,
        "after_read_kib": after_read["VmRSS"],
        "peak_kib": memory_kib()["VmHWM"],
        "inter_bytes": report.inter_path.stat().st_size,
        "counts": counts,
    }))


# --- report ----------------------------------------------------------------------------------


def markdown(args, generated: dict, generate_seconds: float, result: dict, load: tuple, command: str) -> str:
    counts = result["counts"]
    parsed = counts["lines_read"] - counts["bad_line_count"]
    mib = 1024
    rows = [
        ("command", f"`{command}`"),
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"),
        ("load average before / after (1, 5, 15 min)", f"{load[0]} / {load[1]}"),
        ("generated", f"{args.lines:,} lines, {args.users:,} users, {args.items:,} items, "
                      f"{generated['line_bytes']} bytes a line, {'gzip' if args.gzip else 'plain'}"),
        ("file size", f"{generated['file_bytes'] / 2**20:,.0f} MiB (generated in {generate_seconds:.1f} s)"),
        ("conversion", f"{result['seconds']:.1f} s = {counts['lines_read'] / result['seconds']:,.0f} lines/s"),
        ("phases", ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result["phases"].items())),
        ("peak RSS (VmHWM)", f"{result['peak_kib'] / mib:,.0f} MiB"),
        ("RSS after imports", f"{result['baseline_kib'] / mib:,.0f} MiB"),
        ("RSS after reading", f"{result['after_read_kib'] / mib:,.0f} MiB"),
        ("bytes per parsed line, after reading",
         f"{(result['after_read_kib'] - result['baseline_kib']) * 1024 / parsed:.0f}"),
        ("bytes per parsed line, at the peak",
         f"{(result['peak_kib'] - result['baseline_kib']) * 1024 / parsed:.0f}"),
        ("counts", ", ".join(f"{name} {value:,}" for name, value in counts.items())),
        (".inter size", f"{result['inter_bytes'] / 2**20:,.0f} MiB"),
    ]
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {name} | {value} |" for name, value in rows]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--text-chars", type=int, default=0, help="add a summary text of this many letters")
    parser.add_argument("--gzip", action="store_true", help="gzip the reviews (level 1)")
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the temporary folder goes (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    parser.add_argument("--convert-only", nargs=2, metavar=("REVIEWS", "DATA_PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert_only:
        convert_child(Path(args.convert_only[0]), Path(args.convert_only[1]), args.k_core)
        return
    command = " ".join(["python", "benchmarks/convert_scale.py", *sys.argv[1:]])
    folder = Path(tempfile.mkdtemp(prefix="convert-scale-", dir=args.workdir))
    try:
        reviews = folder / ("reviews.json.gz" if args.gzip else "reviews.json")
        start = time.perf_counter()
        generated = generate(reviews, args.lines, args.users, args.items, args.text_chars, args.gzip, args.seed)
        generate_seconds = time.perf_counter() - start
        load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
        child = subprocess.run(
            [sys.executable, __file__, "--convert-only", str(reviews), str(folder / "datasets"),
             "--k-core", str(args.k_core)],
            check=True, capture_output=True, text=True,
        )
        load_after = " ".join(f"{value:.2f}" for value in os.getloadavg())
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    table = markdown(args, generated, generate_seconds, result, (load_before, load_after), command)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
