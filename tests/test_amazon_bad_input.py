"""The Amazon converter on bad input, failing disks and killed runs, plus properties (hypothesis).

Every bad line must be reported with its file and line number, never silently dropped; every
failure must name the file; a failed or killed run must leave the previous outputs intact.
"""

import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mind_recbole import cli
from mind_recbole.data import amazon
from mind_recbole.data.amazon import ConversionError, ConversionIOError, convert_amazon

from .test_amazon_convert import ITEM_HEADER, convert, header, review, table, write_text

GOOD_1 = review("A1", "B000000001", 10).encode()
GOOD_3 = review("A3", "B000000003", 30).encode()
KEPT_ROWS = [["A1", "B000000001", "10"], ["A3", "B000000003", "30"]]


def write_bytes(path: Path, lines: list[bytes], ending: bytes = b"\n") -> Path:
    path.write_bytes(b"".join(line + ending for line in lines))
    return path


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (temporaries included) by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def logged(report) -> list[tuple[int, str]]:
    """(line number, reason) of every entry of the report's bad-lines file."""
    if report.bad_lines_path is None:
        return []
    entries = []
    for line in report.bad_lines_path.read_text(encoding="utf-8").splitlines():
        name, number, reason = line.split(":", 2)
        assert name == str(report.reviews_path) or name == str(report.meta_path)
        entries.append((int(number), reason.strip()))
    return entries


# --- the bad input matrix --------------------------------------------------------------------

BAD_REVIEW_LINES = {  # bad middle line -> the exact reason reported for it
    "malformed JSON": (
        b'{"reviewerID": "A2", "asin": ',
        "malformed line: neither JSON nor a Python literal: '{\"reviewerID\": \"A2\", \"asin\":'",
    ),
    "not an object": (b"[1, 2]", "not an object: '[1, 2]'"),
    "missing reviewerID": (
        json.dumps({"asin": "B000000002", "unixReviewTime": 20}).encode(),
        "missing reviewerID",
    ),
    "missing asin": (
        json.dumps({"reviewerID": "A2", "unixReviewTime": 20}).encode(),
        "missing asin",
    ),
    "missing time": (
        json.dumps({"reviewerID": "A2", "asin": "B000000002", "overall": 5.0}).encode(),
        "missing unixReviewTime and reviewTime",
    ),
    "non-numeric time": (
        review("A2", "B000000002", "yesterday").encode(),
        "non-numeric unixReviewTime: 'yesterday'",
    ),
    "unparseable reviewTime": (
        json.dumps({"reviewerID": "A2", "asin": "B000000002", "reviewTime": "13 45, 2009"})
        .encode(),
        "unparseable reviewTime: '13 45, 2009'",
    ),
    "non-numeric rating": (
        review("A2", "B000000002", 20, overall="five").encode(),
        "non-numeric overall: 'five'",
    ),
    "non-finite rating": (
        b'{"reviewerID": "A2", "asin": "B000000002", "unixReviewTime": 20, "overall": NaN}',
        "non-finite overall: nan",
    ),
    "empty reviewerID": (review("  ", "B000000002", 20).encode(), "invalid reviewerID: '  '"),
    "tab in an id": (
        review("A\t2", "B000000002", 20).encode(),
        "invalid reviewerID: 'A\\t2' contains U+0009",
    ),
    "double quote in an id": (
        review('"A2', "B000000002", 20).encode(),
        "invalid reviewerID: '\"A2' contains U+0022",
    ),
    "surrogate escape in an id": (
        b'{"reviewerID": "A2", "asin": "B\\udc80", "unixReviewTime": 20}',
        "invalid asin: 'B\\udc80' contains U+DC80",
    ),
    "non-UTF-8 byte in an id": (
        b'{"reviewerID": "A\xff", "asin": "B000000002", "unixReviewTime": 20}',
        "invalid reviewerID: 'A\ufffd' contains U+FFFD (invalid UTF-8 at byte offset 17)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REVIEW_LINES))
def test_each_kind_of_bad_line_is_reported_with_file_line_and_reason(tmp_path, case):
    bad_line, reason = BAD_REVIEW_LINES[case]
    reviews = write_bytes(tmp_path / "reviews.json", [GOOD_1, bad_line, GOOD_3])
    report = convert(tmp_path, reviews, k_core=0)
    assert table(report.inter_path) == KEPT_ROWS
    assert (report.lines_read, report.bad_line_count, report.interactions) == (3, 1, 2)
    assert report.bad_lines == [(str(reviews), 2, reason)]
    assert report.bad_lines_path.name == "t.bad_lines.txt"
    assert report.bad_lines_path.read_text(encoding="utf-8") == f"{reviews}:2: {reason}\n"
    assert f"{reviews}:2: {reason}" in report.summary()


def test_csv_bad_lines_name_the_csv_field(tmp_path):
    reviews = write_text(
        tmp_path / "ratings.csv",
        ["A1,B000000001,5.0,10", "A2,B000000002,five,20", "A2,B000000002,5.0", "A3,B000000003,1,x"],
    )
    report = convert(tmp_path, reviews, k_core=0, reviews_format="csv-2014")
    assert report.bad_lines == [
        (str(reviews), 2, "non-numeric rating: 'five'"),
        (str(reviews), 3, "expected 4 comma-separated fields, found 3"),
        (str(reviews), 4, "non-numeric timestamp: 'x'"),
    ]
    assert table(report.inter_path) == [["A1", "B000000001", "5", "10"]]


def test_line_longer_than_the_limit_is_reported_without_being_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(amazon, "_MAX_LINE_BYTES", 100)
    monkeypatch.setattr(amazon, "_SKIP_CHUNK_BYTES", 7)
    long_line = review("A2", "B000000002", 20, reviewText="x" * 300).encode()
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1, long_line, GOOD_3])
    report = convert(tmp_path, reviews, k_core=0)
    assert report.bad_lines == [(str(reviews), 2, "line longer than 100 bytes")]
    assert table(report.inter_path) == KEPT_ROWS and report.lines_read == 3


def test_bad_lines_file_of_an_earlier_run_is_removed_by_a_clean_run(tmp_path):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1, b"{oops", GOOD_3])
    first = convert(tmp_path, reviews, k_core=0)
    assert first.bad_lines_path.read_text(encoding="utf-8") == (
        f"{reviews}:2: malformed line: neither JSON nor a Python literal: '{{oops'\n"
    )
    write_bytes(reviews, [GOOD_1, GOOD_3])
    second = convert(tmp_path, reviews, k_core=0)
    assert second.bad_lines_path is None and not first.bad_lines_path.exists()
    assert "bad lines (skipped)" not in second.summary()
    assert f"removed {first.bad_lines_path}: an earlier run's list of bad lines; this run found none" in second.summary()


def test_python_literal_lines_of_the_2014_release_parse(tmp_path):
    reviews = write_text(
        tmp_path / "reviews_Beauty.json",
        [
            "{'reviewerID': 'A1', 'asin': 'B000000001', 'reviewerName': u'J\\xf6rg', "
            "'helpful': [2, 3], 'reviewText': \"it's \\\"great\\\"\", 'overall': 5.0, "
            "'summary': u'Five Stars', 'unixReviewTime': 1318896000, 'reviewTime': '10 18, 2011'}",
            "{'reviewerID': 'A2', 'asin': 'B000000001', 'overall': 4.0, 'verified': True, "
            "'vote': None, 'reviewTime': '01 2, 2014'}",
        ],
    )
    report = convert(tmp_path, reviews, k_core=0)
    assert report.bad_line_count == 0
    assert table(report.inter_path) == [
        ["A1", "B000000001", "5", "1318896000"],
        ["A2", "B000000001", "4", "1388620800"],  # 2014-01-02 00:00 UTC
    ]


def test_html_entities_in_brand_and_categories_are_unescaped(tmp_path):
    reviews = write_text(tmp_path / "r.json", [review("A1", "B000000001", 1)])
    meta = write_text(
        tmp_path / "meta.json",
        [
            json.dumps({
                "asin": "B000000001",
                "brand": "L&#39;Or&eacute;al &amp; Co &quot;Paris&quot;",
                "categories": [["Beauty", "Skin Care", "Face &amp; Body"], ["Beauty", "Men&#39;s"]],
            })
        ],
    )
    report = convert(tmp_path, reviews, meta=meta, k_core=0)
    assert table(report.item_path) == [
        ["B000000001", "L'Oréal & Co 'Paris'", "Skin_Care Face_&_Body Men's", "Skin_Care"]
    ]


def test_control_characters_in_meta_text_become_spaces_and_surrogates_make_the_line_bad(tmp_path):
    reviews = write_text(
        tmp_path / "r.json", [review("A1", "B000000001", 1), review("A1", "B000000002", 2)]
    )
    meta = write_bytes(
        tmp_path / "meta.json",
        [
            b'{"asin": "B000000001", "brand": "Ac\\u0000me\\u0007 Inc", '
            b'"category": ["All", "A\\u0085B"]}',
            b'{"asin": "B000000002", "brand": "Bad \\udc80 Brand"}',
        ],
    )
    report = convert(tmp_path, reviews, meta=meta, k_core=0)
    assert table(report.item_path) == [
        ["B000000001", "Ac me Inc", "A_B", "A_B"],
        ["B000000002", "", "", ""],
    ]
    assert report.bad_lines == [
        (str(meta), 2, "brand 'Bad \\udc80 Brand' holds an unpaired surrogate escape")
    ]


def test_non_utf8_bytes_outside_ids_are_replaced_and_the_line_kept_and_listed(tmp_path):
    reviews = write_bytes(
        tmp_path / "r.json",
        [
            GOOD_1,
            b'{"reviewerID": "A2", "asin": "B000000002", "summary": "caf\xe9", '
            b'"unixReviewTime": 20}',
        ],
    )
    meta = write_bytes(
        tmp_path / "meta.json",
        [b'{"asin": "B000000002", "brand": "Caf\xe9 Beaut\xc3\xa9"}', b'{"asin": "B000000001"}'],
    )
    report = convert(tmp_path, reviews, meta=meta, k_core=0)
    assert table(report.inter_path) == [["A1", "B000000001", "10"], ["A2", "B000000002", "20"]]
    assert table(report.item_path) == [
        ["B000000001", "", "", ""], ["B000000002", "Caf\ufffd Beauté", "", ""],
    ]
    kept = "invalid UTF-8 at byte offset {} replaced by U+FFFD (line kept)"
    assert report.repaired_lines == [
        (str(reviews), 2, kept.format(58)), (str(meta), 1, kept.format(36)),
    ]
    assert (report.repaired_line_count, report.meta_repaired_line_count) == (1, 1)
    assert (report.bad_line_count, report.meta_bad_line_count) == (0, 0)
    assert report.bad_lines_path.read_text(encoding="utf-8").splitlines() == [
        f"{reviews}:2: {kept.format(58)}",
        f"{meta}:1: {kept.format(36)}",
    ]
    summary = report.summary()
    assert "1 with invalid UTF-8 kept" in summary and f"{reviews}:2: {kept.format(58)}" in summary


def test_a_utf8_byte_order_mark_is_ignored(tmp_path):
    reviews = write_bytes(tmp_path / "ratings.csv", [b"\xef\xbb\xbfA1,B000000001,5.0,10"])
    report = convert(tmp_path, reviews, k_core=0)
    assert report.reviews_format == "csv-2014" and report.bad_line_count == 0
    assert table(report.inter_path) == [["A1", "B000000001", "5", "10"]]


def test_format_detection_is_not_fooled_by_a_bad_first_line(tmp_path):
    reviews = write_bytes(tmp_path / "reviews.data", [b"garbage", GOOD_1, GOOD_3])
    report = convert(tmp_path, reviews, k_core=0)
    assert report.reviews_format == "json" and table(report.inter_path) == KEPT_ROWS
    assert report.bad_lines == [
        (str(reviews), 1, "malformed line: neither JSON nor a Python literal: 'garbage'")
    ]


@pytest.mark.parametrize("content", [b"", gzip.compress(b"")], ids=["plain", "gzip"])
def test_empty_reviews_file_is_an_error_naming_it(tmp_path, content):
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_bytes(content)
    with pytest.raises(ConversionError, match=r"reviews\.json\.gz: empty file$"):
        convert(tmp_path, reviews)
    assert not (tmp_path / "out").exists()


def test_only_blank_and_bad_lines_is_an_error_listing_the_first_bad_lines(tmp_path):
    reviews = write_bytes(tmp_path / "r.json", [b"", b"  ", b"{oops", b"[1]"])
    message = (
        "r.json: no valid interactions (4 lines read, 2 blank, 2 bad; line 3: malformed line: "
        "neither JSON nor a Python literal: '{oops'; line 4: not an object: '[1]')"
    )
    with pytest.raises(ConversionError) as raised:
        convert(tmp_path, reviews)
    assert str(raised.value) == f"{tmp_path}/{message}"
    assert not (tmp_path / "out").exists()


def test_empty_meta_file_writes_items_without_features(tmp_path):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1, GOOD_3])
    meta = write_bytes(tmp_path / "meta.json", [])
    report = convert(tmp_path, reviews, meta=meta, k_core=0)
    assert (report.meta_lines_read, report.items_without_meta) == (0, 2)
    assert report.meta_items_matched == 0
    assert header(report.item_path) == ITEM_HEADER
    assert table(report.item_path) == [["B000000001", "", "", ""], ["B000000003", "", "", ""]]


def test_meta_and_reviews_mismatch_both_ways_is_counted_line_by_line(tmp_path):
    # k=2: U1 and U2 each rate B1 and B2 (kept); U3 rates B3 once (removed by the 2-core).
    pairs = [("U1", "B1"), ("U1", "B2"), ("U2", "B1"), ("U2", "B2"), ("U3", "B3")]
    reviews = write_text(
        tmp_path / "r.json", [review(u, f"B00000000{i[1]}", t) for t, (u, i) in enumerate(pairs)]
    )
    meta = write_text(
        tmp_path / "meta.json",
        [
            json.dumps({"asin": "B000000001", "brand": "One"}),  # matched
            json.dumps({"asin": "B000000003", "brand": "Three"}),  # item removed by the 2-core
            json.dumps({"asin": "B000000009", "brand": "Nine"}),  # absent from reviews
            "",
            json.dumps({"asin": "B000000001", "brand": "Again"}),  # repeated
            json.dumps({"asin": "B000000009"}),  # absent again
            "{bad",
        ],
    )
    report = convert(tmp_path, reviews, meta=meta, k_core=2)
    assert table(report.item_path) == [["B000000001", "One", "", ""], ["B000000002", "", "", ""]]
    counts = (
        report.meta_lines_read, report.meta_blank_lines, report.meta_bad_line_count,
        report.meta_items_matched, report.meta_duplicates, report.meta_filtered_out,
        report.meta_absent_from_reviews, report.items_without_meta,
    )
    assert counts == (7, 1, 1, 1, 1, 1, 2, 1)
    assert report.meta_lines_read == sum(counts[1:7])
    assert (
        f"meta {meta}: 7 lines read, 1 bad, 1 blank, 1 items matched, 1 repeated, "
        "1 of filtered-out items, 2 absent from reviews, 1 kept items without meta"
    ) in report.summary()


def gzip_lines(count: int) -> bytes:
    lines = (review(f"A{n}", "B000000001", n).encode() + b"\n" for n in range(count))
    return gzip.compress(b"".join(lines))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_reviews_raise_naming_the_file_and_keep_old_outputs(tmp_path, damage):
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_bytes(gzip_lines(5))
    old = folder_bytes(convert(tmp_path, reviews, k_core=0).inter_path.parent)
    data = gzip_lines(20_000)
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # a flipped byte in the deflate stream
        data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    reviews.write_bytes(data)
    message = r"reviews\.json\.gz: truncated or corrupt gzip after line \d+$"
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path, reviews, k_core=0)
    assert folder_bytes(tmp_path / "out" / "t") == old


def test_truncated_gzip_meta_raises_naming_the_meta_file(tmp_path):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    meta = tmp_path / "meta.json.gz"
    lines = (json.dumps({"asin": f"B{n:09d}"}).encode() + b"\n" for n in range(20_000))
    data = gzip.compress(b"".join(lines))
    meta.write_bytes(data[: len(data) // 2])
    message = r"meta\.json\.gz: truncated or corrupt gzip after line \d+$"
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path, reviews, meta=meta, k_core=0)
    assert not (tmp_path / "out").exists()


# --- files that cannot be read or written ----------------------------------------------------


def test_missing_meta_is_reported_before_the_reviews_are_read(tmp_path, monkeypatch):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    monkeypatch.setattr(amazon, "_read_reviews", lambda *args: pytest.fail("reviews were read"))
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        convert(tmp_path, reviews, meta=tmp_path / "nope.json")


def test_a_folder_given_as_reviews_is_a_clear_error(tmp_path):
    with pytest.raises(ConversionIOError) as raised:
        convert(tmp_path, tmp_path)
    assert str(raised.value) == f"{tmp_path}: cannot read: Is a directory (EISDIR)"


def test_output_path_under_a_file_fails_before_reading_and_names_it(tmp_path):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    blocker = write_text(tmp_path / "datasets", ["not a folder"])
    with pytest.raises(ConversionIOError) as raised:
        convert_amazon(reviews, "t", data_path=blocker, show_progress=False)
    assert str(raised.value) == (
        f"{blocker}: cannot create the output folder {blocker}/t: Not a directory (ENOTDIR)"
    )
    assert raised.value.errno == errno.ENOTDIR and blocker.read_text() == "not a folder\n"


class _FullDisk:
    """A text file whose writes fail with ENOSPC once ``capacity`` characters are written."""

    def __init__(self, handle, capacity: int):
        self.handle, self.capacity, self.written = handle, capacity, 0

    def write(self, text: str) -> int:
        room = self.capacity - self.written
        if len(text) > room:
            self.handle.write(text[:room])
            self.written = self.capacity
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(text)
        return self.handle.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()


def fail_writes(monkeypatch, error: OSError | None = None, capacity: int = 100) -> None:
    """Make the converter's output files fail: with ``error`` when opened, else ENOSPC when full."""
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        if "w" not in mode:
            return real_open(file, mode, *args, **kwargs)
        if error is not None:
            raise error
        return _FullDisk(real_open(file, mode, *args, **kwargs), capacity)

    monkeypatch.setattr(amazon, "open", fake_open, raising=False)


def reviews_and_old_outputs(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """A reviews file converted once (the old outputs), then replaced by a bigger one."""
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    old = folder_bytes(convert(tmp_path, reviews, k_core=0).inter_path.parent)
    write_bytes(reviews, [review(f"A{n}", "B000000001", n).encode() for n in range(50)])
    return reviews, tmp_path / "out" / "t", old


def test_disk_full_names_the_file_keeps_old_outputs_and_the_input(tmp_path, monkeypatch):
    reviews, folder, old = reviews_and_old_outputs(tmp_path)
    before = checksum(reviews)
    fail_writes(monkeypatch)
    with pytest.raises(ConversionIOError) as raised:
        convert(tmp_path, reviews, k_core=0)
    assert str(raised.value) == (
        f"{folder}/t.inter: cannot write: No space left on device (ENOSPC); "
        "the previous files are unchanged"
    )
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, ValueError)
    assert folder_bytes(folder) == old  # no temporary left either
    assert checksum(reviews) == before


def test_disk_full_through_the_command_line_is_one_clear_line(tmp_path, monkeypatch, capsys):
    reviews, folder, old = reviews_and_old_outputs(tmp_path)
    fail_writes(monkeypatch)
    status = cli.main([
        "prepare", "amazon", "--reviews", str(reviews), "--dataset", "t",
        "--data-path", str(tmp_path / "out"), "--k-core", "0", "--no-progress",
    ])
    assert status == 2
    assert capsys.readouterr().err == (
        f"mind-recbole prepare: error: {folder}/t.inter: cannot write: No space left on device "
        "(ENOSPC); the previous files are unchanged\n"
    )
    assert folder_bytes(folder) == old


def test_permission_denied_on_write_names_the_file(tmp_path, monkeypatch):
    reviews, folder, old = reviews_and_old_outputs(tmp_path)
    fail_writes(monkeypatch, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    with pytest.raises(ConversionIOError) as raised:
        convert(tmp_path, reviews, k_core=0)
    assert str(raised.value) == (
        f"{folder}/t.inter: cannot write: Permission denied (EACCES); "
        "the previous files are unchanged"
    )
    assert folder_bytes(folder) == old


def test_read_only_output_folder_fails_before_reading_the_input(tmp_path, monkeypatch):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    data_path = tmp_path / "out"
    data_path.mkdir()
    data_path.chmod(0o555)
    try:
        if os.access(data_path, os.W_OK):
            pytest.skip(
                "running as root (or with CAP_DAC_OVERRIDE): chmod does not stop writing; "
                "test_permission_denied_on_write_names_the_file simulates it instead"
            )
        monkeypatch.setattr(amazon, "_read_reviews", lambda *args: pytest.fail("input was read"))
        with pytest.raises(ConversionIOError) as raised:
            convert(tmp_path, reviews)
        assert str(raised.value) == (
            f"{data_path}: cannot create {data_path}/t in it: Permission denied (EACCES)"
        )
    finally:
        data_path.chmod(0o755)


def test_exception_mid_write_leaves_old_files_and_no_temporaries(tmp_path, monkeypatch):
    reviews, folder, old = reviews_and_old_outputs(tmp_path)
    real_lines = amazon._inter_lines

    def interrupted_lines(*args):
        for number, line in enumerate(real_lines(*args)):
            if number == 10:
                raise KeyboardInterrupt
            yield line

    monkeypatch.setattr(amazon, "_inter_lines", interrupted_lines)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path, reviews, k_core=0)
    assert folder_bytes(folder) == old


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mind_recbole.data import amazon

    reviews, data_path, marker = sys.argv[1:4]
    real_lines = amazon._inter_lines

    def stalling_lines(*args):
        for number, line in enumerate(real_lines(*args)):
            yield line
            if number == 3:
                Path(marker).write_text("writing")
                time.sleep(600)

    amazon._inter_lines = stalling_lines
    amazon.convert_amazon(reviews, "t", data_path=data_path, k_core=0, show_progress=False)
    """
)


def start_and_kill_mid_write(reviews: Path, data_path: Path, marker: Path) -> int:
    """Run a conversion in a child process, SIGKILL it while it writes the .inter; its pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(reviews), str(data_path), str(marker)],
        stderr=subprocess.PIPE,
    )
    try:
        give_up = time.monotonic() + 120
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > give_up:
                pytest.fail(f"the child never started writing: {child.stderr.read().decode()}")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return child.pid


@pytest.mark.parametrize("earlier_run", [True, False], ids=["old-outputs", "first-run"])
def test_run_killed_mid_write_keeps_old_outputs_and_a_rerun_completes(tmp_path, earlier_run):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    folder = tmp_path / "out" / "t"
    old = {}
    if earlier_run:
        old = folder_bytes(convert(tmp_path, reviews, k_core=0).inter_path.parent)
    rows = [review(f"A{n:02d}", "B000000001", n).encode() for n in range(30)]
    write_bytes(reviews, rows)

    pid = start_and_kill_mid_write(reviews, tmp_path / "out", tmp_path / "marker")
    temporary = f".t.inter.tmp-{pid}"
    assert sorted(folder_bytes(folder)) == sorted([*old, temporary])  # a stray, partial temporary
    assert {name: data for name, data in folder_bytes(folder).items() if name != temporary} == old

    report = convert(tmp_path, reviews, k_core=0)
    assert sorted(folder_bytes(folder)) == ["t.inter", "t.yaml"]  # the temporary is gone
    assert table(report.inter_path) == [[f"A{n:02d}", "B000000001", str(n)] for n in range(30)]


def test_temporaries_of_running_processes_are_left_alone(tmp_path):
    reviews = write_bytes(tmp_path / "r.json", [GOOD_1])
    folder = tmp_path / "out" / "t"
    folder.mkdir(parents=True)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    (folder / f".t.inter.tmp-{finished.pid}").write_text("partial")
    (folder / ".t.inter.tmp-1").write_text("pid 1 is alive")
    (folder / ".other.inter.tmp-99999999").write_text("another dataset's")
    convert(tmp_path, reviews, k_core=0)
    left = [".other.inter.tmp-99999999", ".t.inter.tmp-1", "t.inter", "t.yaml"]
    assert sorted(folder_bytes(folder)) == left


# --- properties ------------------------------------------------------------------------------

USERS = st.sampled_from(["A1YJEY40YUW4SE", "A2", "A10", "B3XX", "a1", "Z"])
ITEMS = st.sampled_from(["B000000001", "B000000002", "0123456789", "B00ZZZZZZZ", "B000000005"])
TIMES = st.integers(0, 4)
ROWS = st.tuples(USERS, ITEMS, TIMES)

BAD_KINDS = {  # kind -> (line, start of the reason)
    "malformed": (b'{"reviewerID": "A1", "asin"', "malformed line"),
    "list": (b"[1, 2]", "not an object"),
    "no user": (b'{"asin": "B000000001", "unixReviewTime": 1}', "missing reviewerID"),
    "no item": (b'{"reviewerID": "A1", "unixReviewTime": 1}', "missing asin"),
    "no time": (b'{"reviewerID": "A1", "asin": "B000000001"}', "missing unixReviewTime"),
    "text time": (
        b'{"reviewerID": "A1", "asin": "B000000001", "unixReviewTime": "x"}',
        "non-numeric unixReviewTime",
    ),
    "text rating": (
        b'{"reviewerID": "A1", "asin": "B000000001", "unixReviewTime": 1, "overall": "x"}',
        "non-numeric overall",
    ),
    "bad byte in id": (
        b'{"reviewerID": "A\xfe", "asin": "B000000001", "unixReviewTime": 1}',
        "invalid reviewerID",
    ),
}
LINES = st.one_of(
    ROWS.map(lambda row: ("good", row)),
    ROWS.map(lambda row: ("repaired", row)),
    st.sampled_from(sorted(BAD_KINDS)).map(lambda kind: ("bad", kind)),
    st.just(("blank", None)),
)


def encode_line(kind: str, value) -> bytes:
    if kind == "good":
        return review(*value).encode()
    if kind == "repaired":  # an invalid byte in a field the converter does not use
        return review(*value, summary="@").encode().replace(b"@", b"\xff")
    if kind == "bad":
        return BAD_KINDS[value][0]
    return b"   "


def accounted(report) -> int:
    return (
        report.blank_lines + report.bad_line_count + report.duplicates_removed
        + report.removed_by_rating + report.removed_by_k_core + report.interactions
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=40))
def test_good_lines_all_convert_and_every_bad_line_number_is_reported(lines):
    rows = [value for kind, value in lines if kind in ("good", "repaired")]
    bad = [(n, BAD_KINDS[value][1]) for n, (kind, value) in enumerate(lines, 1) if kind == "bad"]
    repaired = [n for n, (kind, _) in enumerate(lines, 1) if kind == "repaired"]
    with tempfile.TemporaryDirectory() as folder:
        reviews = write_bytes(Path(folder) / "r.json", [encode_line(*line) for line in lines])
        if not rows:
            with pytest.raises(ConversionError, match="no valid interactions"):
                convert(Path(folder), reviews, k_core=0)
            return
        report = convert(Path(folder), reviews, k_core=0)
        got = [(user, item, int(time)) for user, item, time in table(report.inter_path)]
        entries = logged(report)
    assert got == sorted(dict.fromkeys(rows), key=lambda row: (row[0], row[2]))
    logged_bad = [(n, reason) for n, reason in entries if not reason.endswith("(line kept)")]
    assert [n for n, _ in logged_bad] == [n for n, _ in bad]
    assert all(reason.startswith(start) for (_, reason), (_, start) in zip(logged_bad, bad))
    assert [n for n, reason in entries if reason.endswith("(line kept)")] == repaired
    assert report.bad_line_count == len(bad) and report.repaired_line_count == len(repaired)
    assert [n for _, n, _ in report.bad_lines] == [n for n, _ in bad][:20]
    assert report.lines_read == len(lines) == accounted(report)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(USERS, ITEMS, TIMES, st.sampled_from([None, 1.0, 4.5, 5.0])),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([1, 2, 3, 7]),
)
def test_output_does_not_depend_on_write_chunks_compression_or_line_endings(rows, chunk_rows):
    lines = [
        review(user, item, time, **({} if rating is None else {"overall": rating})).encode()
        for user, item, time, rating in rows
    ]
    meta_lines = [
        json.dumps({"asin": item, "brand": f"brand of {item}"}).encode()
        for item in sorted({row[1] for row in rows})
    ]
    outputs = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        meta = write_bytes(root / "meta.json", meta_lines)
        plain = write_bytes(root / "plain.json", lines)
        crlf = write_bytes(root / "crlf.json", lines, ending=b"\r\n")
        packed = root / "packed.json.gz"
        packed.write_bytes(gzip.compress(plain.read_bytes()))
        runs = [("a", plain, None), ("b", plain, chunk_rows), ("c", crlf, chunk_rows),
                ("d", packed, None)]
        for name, reviews, chunk in runs:
            with pytest.MonkeyPatch.context() as patch:
                if chunk is not None:
                    patch.setattr(amazon, "_WRITE_CHUNK_ROWS", chunk)
                report = convert(root, reviews, name, meta=meta, k_core=0)
            outputs.append((report.inter_path.read_bytes(), report.item_path.read_bytes()))
    assert outputs[1:] == outputs[:1] * 3


def reference_k_core(rows: list[tuple], k: int) -> set[tuple]:
    """The k-core by its definition: drop users and items with fewer than k rows until stable."""
    rows = list(dict.fromkeys(rows))
    while True:
        users, items = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            return set(kept)
        rows = kept


@settings(max_examples=40, deadline=None)
@given(st.lists(ROWS, min_size=1, max_size=60), st.integers(2, 4))
def test_k_core_is_the_largest_subset_where_every_user_and_item_has_k_rows(rows, k):
    expected = reference_k_core(rows, k)
    with tempfile.TemporaryDirectory() as folder:
        reviews = write_bytes(Path(folder) / "r.json", [review(*row).encode() for row in rows])
        if not expected:
            with pytest.raises(ConversionError, match="no interactions left after"):
                convert(Path(folder), reviews, k_core=k)
            return
        report = convert(Path(folder), reviews, k_core=k)
        got = [(user, item, int(time)) for user, item, time in table(report.inter_path)]
        again = write_bytes(Path(folder) / "again.json", [review(*row).encode() for row in got])
        rerun = convert(Path(folder), again, "again", k_core=k)
    assert set(got) == expected and len(got) == len(expected)
    assert min(Counter(r[0] for r in got).values()) >= k
    assert min(Counter(r[1] for r in got).values()) >= k
    assert (report.users, report.items) == (len({r[0] for r in got}), len({r[1] for r in got}))
    assert report.lines_read == accounted(report)
    assert (rerun.removed_by_k_core, rerun.interactions) == (0, len(got))


META_ITEMS = st.sampled_from(["B000000001", "B000000002", "B000000003", "B000000008", "B000000009"])
META_LINES = st.one_of(
    st.tuples(META_ITEMS, st.sampled_from(["x", "y"])).map(
        lambda pair: json.dumps({"asin": pair[0], "brand": pair[1]})
    ),
    st.sampled_from(["", "{bad", json.dumps({"brand": "no asin"})]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(META_LINES, max_size=25))
def test_every_meta_line_is_counted_once_and_the_first_line_of_an_item_wins(meta_lines):
    # B1, B2 kept; B3 in the reviews but dropped by the 2-core; B8, B9 never reviewed.
    pairs = [("U1", 1), ("U1", 2), ("U2", 1), ("U2", 2), ("U3", 3)]
    with tempfile.TemporaryDirectory() as folder:
        review_lines = [review(u, f"B00000000{i}", t) for t, (u, i) in enumerate(pairs)]
        reviews = write_text(Path(folder) / "r.json", review_lines)
        meta = write_text(Path(folder) / "meta.json", meta_lines)
        report = convert(Path(folder), reviews, meta=meta, k_core=2)
        items = table(report.item_path)
    first_brand = {}
    for line in meta_lines:
        record = json.loads(line) if line.startswith('{"') else {}
        first_brand.setdefault(record.get("asin"), record.get("brand"))
    kept = ("B000000001", "B000000002")
    assert items == [[item, first_brand.get(item) or "", "", ""] for item in kept]
    assert report.meta_lines_read == len(meta_lines) == (
        report.meta_blank_lines + report.meta_bad_line_count + report.meta_items_matched
        + report.meta_duplicates + report.meta_filtered_out + report.meta_absent_from_reviews
    )
    assert report.meta_items_matched + report.items_without_meta == 2
