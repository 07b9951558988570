"""Tests for mind_recbole.data.amazon: McAuley Amazon reviews -> RecBole atomic files."""

import gzip
import html
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mind_recbole.data import amazon
from mind_recbole.data.amazon import ConversionReport, convert_amazon
from tests.conftest import BEAUTY_MINI, require_real_data

MINI = BEAUTY_MINI
requires_mini = pytest.mark.usefixtures("real_data")  # skipped without ../shared/data; a failure under CI

INTER_HEADER_NO_RATING = "user_id:token\titem_id:token\ttimestamp:float"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tbrand:token\tcategories:token_seq\tcategory:token"


def convert(tmp_path: Path, reviews: Path, dataset: str = "t", **options) -> ConversionReport:
    return convert_amazon(
        reviews, dataset, data_path=tmp_path / "out", show_progress=False, **options
    )


def write_text(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def review(user: str, item: str, time: int, **extra) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": time, **extra})


def table(path: Path) -> list[list[str]]:
    """The rows of an atomic file, header excluded."""
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def header(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def raw_records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --- the real mini data ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The mini Beauty data converted once with its metadata."""
    require_real_data()
    out = tmp_path_factory.mktemp("mini")
    report = convert_amazon(
        MINI / "reviews.json.gz",
        "amazon-beauty-mini",
        meta=MINI / "meta.json.gz",
        data_path=out,
        k_core=5,
        show_progress=False,
    )
    return report


@requires_mini
def test_mini_converts_to_the_documented_counts(mini):
    assert (mini.interactions, mini.users, mini.items) == (11_892, 1_137, 1_267)
    assert (mini.lines_read, mini.bad_line_count, mini.duplicates_removed) == (11_892, 0, 0)
    assert (mini.removed_by_k_core, mini.k_core_rounds) == (0, 0)
    assert not mini.has_rating
    assert mini.inter_path.name == "amazon-beauty-mini.inter"
    assert mini.inter_path.parent.name == "amazon-beauty-mini"
    assert header(mini.inter_path) == INTER_HEADER_NO_RATING
    rows = table(mini.inter_path)
    assert len(rows) == 11_892 and all(len(row) == 3 for row in rows)
    assert "11,892 interactions, 1,137 users, 1,267 items" in mini.summary()


@requires_mini
def test_mini_inter_keeps_each_users_file_order(mini):
    """The raw file is time-ordered per user, same-day reviews in file order: output must match."""
    expected: dict[str, list[tuple[str, str]]] = {}
    for record in raw_records(MINI / "reviews.json.gz"):
        expected.setdefault(record["reviewerID"], []).append(
            (record["asin"], str(record["unixReviewTime"]))
        )
    rows = table(mini.inter_path)
    users_in_output_order = list(dict.fromkeys(row[0] for row in rows))
    assert users_in_output_order == sorted(expected)
    got: dict[str, list[tuple[str, str]]] = {}
    for user, item, time in rows:
        got.setdefault(user, []).append((item, time))
    assert got == expected


@requires_mini
def test_mini_item_file_has_unescaped_brands(mini):
    assert mini.item_path is not None and header(mini.item_path) == ITEM_HEADER
    items = {row[0]: row for row in table(mini.item_path)}
    assert list(items) == sorted(items) and len(items) == 1_267
    assert (mini.meta_items_matched, mini.items_without_meta) == (1_267, 0)
    escaped = [r for r in raw_records(MINI / "meta.json.gz") if "&#39;" in r.get("brand", "")]
    assert escaped, "the mini metadata should contain a brand with &#39;"
    for record in escaped:
        brand = items[record["asin"]][1]
        assert brand == html.unescape(record["brand"]) and "'" in brand
    assert "&#39;" not in mini.item_path.read_text(encoding="utf-8")
    assert items["B00AUFS8I6"][1] == "L'Oreal Paris"


@requires_mini
def test_mini_categories_drop_the_root_and_keep_tokens_whole(mini):
    items = {row[0]: row for row in table(mini.item_path)}
    assert items["B003H8180I"][2:] == ["Makeup Lips Lip_Stains", "Makeup"]
    assert items["B007ML0OY2"][3] == "Tools_&_Accessories"  # raw path: ["Beauty", "", "Tools ...
    for record in raw_records(MINI / "meta.json.gz"):
        path = record["categories"][0]
        assert path[0] == "Beauty"
        # A few raw paths read ["Beauty", "", "Tools & Accessories", ...]: empty names are skipped.
        expected = [html.unescape(name).replace(" ", "_") for name in path[1:] if name]
        _, _, categories, category = items[record["asin"]]
        tokens = categories.split(" ") if categories else []
        assert tokens == list(dict.fromkeys(expected))
        assert "Beauty" not in tokens and all(token and "\t" not in token for token in tokens)
        assert category == tokens[0]


@requires_mini
def test_running_twice_gives_identical_bytes(tmp_path):
    options = {"meta": MINI / "meta.json.gz", "dataset": "mini"}
    first = convert(tmp_path, MINI / "reviews.json.gz", **options)
    before = (first.inter_path.read_bytes(), first.item_path.read_bytes())
    second = convert(tmp_path, MINI / "reviews.json.gz", **options)
    assert (second.inter_path.read_bytes(), second.item_path.read_bytes()) == before
    assert sorted(p.name for p in first.inter_path.parent.iterdir()) == ["mini.inter", "mini.item", "mini.yaml"]


@requires_mini
def test_truncated_gzip_raises_and_writes_nothing(tmp_path):
    data = (MINI / "reviews.json.gz").read_bytes()
    truncated = tmp_path / "reviews.json.gz"
    truncated.write_bytes(data[: len(data) // 2])
    message = r"reviews\.json\.gz: truncated or corrupt gzip after line \d+"
    with pytest.raises(ValueError, match=message):
        convert(tmp_path, truncated)
    assert not (tmp_path / "out").exists()


# --- input formats ---------------------------------------------------------------------------


def test_python_literal_lines_and_review_time_parse(tmp_path):
    reviews = write_text(
        tmp_path / "reviews_Beauty.json",
        [
            "{'reviewerID': 'A2', 'asin': 'B000000001', 'overall': 4.0, "
            "'unixReviewTime': 1318896000, 'reviewText': \"it's fine\", 'helpful': [0, 0]}",
            "{'reviewerID': 'A1', 'asin': 'B000000002', 'overall': 5.0, "
            "'reviewTime': '09 13, 2009'}",
            json.dumps({"reviewerID": "A1", "asin": "B000000001", "overall": 3.5,
                        "unixReviewTime": 1252800000}),
        ],
    )
    report = convert(tmp_path, reviews, k_core=0)
    assert report.bad_line_count == 0 and report.has_rating
    assert header(report.inter_path) == INTER_HEADER
    assert table(report.inter_path) == [
        ["A1", "B000000002", "5", "1252800000"],  # 2009-09-13 00:00 UTC
        ["A1", "B000000001", "3.5", "1252800000"],
        ["A2", "B000000001", "4", "1318896000"],
    ]


def test_gzip_is_recognised_by_magic_bytes_not_name(tmp_path):
    reviews = tmp_path / "reviews.data"
    reviews.write_bytes(gzip.compress((review("A1", "B000000001", 7) + "\n").encode()))
    report = convert(tmp_path, reviews, k_core=0)
    assert table(report.inter_path) == [["A1", "B000000001", "7"]]


CSV_ROWS = [  # user, item, rating, time
    ("A1YJEY40YUW4SE", "B000000001", "5.0", "1318896000"),
    ("A1YJEY40YUW4SE", "B00000000X", "4.0", "1300000000"),
    ("A3NHUQ33CFH3VM", "0123456789", "2.0", "1318896000"),
    ("A3NHUQ33CFH3VM", "B000000001", "3.0", "1318896001"),
]


@pytest.mark.parametrize("reviews_format", ["auto", "csv-2014", "csv-2018"])
def test_csv_2014_and_2018_layouts_give_the_same_inter(tmp_path, reviews_format):
    csv_2014 = write_text(tmp_path / "ratings_Beauty.csv", [",".join(r) for r in CSV_ROWS])
    csv_2018 = write_text(
        tmp_path / "Beauty.csv", [",".join((i, u, rating, t)) for u, i, rating, t in CSV_ROWS]
    )
    formats = {"csv-2014": (reviews_format, "auto"), "csv-2018": ("auto", reviews_format)}
    format_2014, format_2018 = formats.get(reviews_format, ("auto", "auto"))
    first = convert(tmp_path, csv_2014, "a", k_core=0, reviews_format=format_2014)
    second = convert(tmp_path, csv_2018, "b", k_core=0, reviews_format=format_2018)
    assert (first.reviews_format, second.reviews_format) == ("csv-2014", "csv-2018")
    assert first.inter_path.read_bytes() == second.inter_path.read_bytes()
    assert header(first.inter_path) == INTER_HEADER
    assert table(first.inter_path) == [
        ["A1YJEY40YUW4SE", "B00000000X", "4", "1300000000"],
        ["A1YJEY40YUW4SE", "B000000001", "5", "1318896000"],
        ["A3NHUQ33CFH3VM", "0123456789", "2", "1318896000"],
        ["A3NHUQ33CFH3VM", "B000000001", "3", "1318896001"],
    ]


def test_csv_layout_that_cannot_be_told_apart_asks_for_format(tmp_path):
    reviews = write_text(tmp_path / "ratings.csv", ["B000000001,B000000002,5.0,1"] * 3)
    with pytest.raises(ValueError, match=r"ratings\.csv: .*--format csv-2014.*--format csv-2018"):
        convert(tmp_path, reviews)


def test_unknown_format_is_rejected(tmp_path):
    reviews = write_text(tmp_path / "r.json", [review("A1", "B000000001", 1)])
    with pytest.raises(ValueError, match="unknown reviews format"):
        convert(tmp_path, reviews, reviews_format="tsv")


# --- bad lines and duplicates ----------------------------------------------------------------


def test_bad_lines_are_reported_with_line_numbers_and_good_lines_convert(tmp_path):
    reviews = tmp_path / "reviews.json"
    lines = [
        review("A1", "B000000001", 10).encode(),
        b'{"reviewerID": "A1", "asin": ',
        b"   ",
        json.dumps({"reviewerID": "A2", "unixReviewTime": 3}).encode(),
        review("A2", "B000000002", 20).encode(),
        json.dumps({"reviewerID": "A2", "asin": "B1", "unixReviewTime": "yesterday"}).encode(),
        b'{"reviewerID": "A\xff", "asin": "B000000003", "unixReviewTime": 1}',
        b"A3,B000000001,5.0,1",
        review("A3", "B000000001", 30).encode(),
    ]
    reviews.write_bytes(b"\n".join(lines) + b"\n")
    report = convert(tmp_path, reviews, k_core=0)
    assert report.lines_read == 9 and report.bad_line_count == 5
    assert [(name, number) for name, number, _ in report.bad_lines] == [
        (str(reviews), n) for n in (2, 4, 6, 7, 8)
    ]
    reasons = [reason for _, _, reason in report.bad_lines]
    assert "malformed" in reasons[0] and "missing asin" in reasons[1]
    assert "non-numeric unixReviewTime" in reasons[2]
    assert reasons[3] == "invalid reviewerID: 'A\ufffd' contains U+FFFD (invalid UTF-8 at byte offset 17)"
    assert [row[:2] for row in table(report.inter_path)] == [
        ["A1", "B000000001"], ["A2", "B000000002"], ["A3", "B000000001"],
    ]
    assert f"{reviews}:4: missing asin" in report.summary()


def test_bad_line_list_is_capped_and_summary_says_how_many_more(tmp_path):
    reviews = write_text(
        tmp_path / "r.json", [review("A1", "B000000001", 1)] + ["{not json"] * 30
    )
    report = convert(tmp_path, reviews, k_core=0)
    assert report.bad_line_count == 30 and len(report.bad_lines) == 20
    summary = report.summary()
    assert "... and 10 more" in summary and len(summary.splitlines()) < 30


def test_only_bad_lines_raises_naming_the_file(tmp_path):
    reviews = write_text(tmp_path / "broken.json", ["{oops", "", "[1, 2]"])
    with pytest.raises(ValueError, match=r"broken\.json: no valid interactions"):
        convert(tmp_path, reviews)
    assert not (tmp_path / "out").exists()


def test_exact_duplicates_keep_the_first_and_same_time_keeps_file_order(tmp_path):
    reviews = write_text(
        tmp_path / "r.json",
        [
            review("A1", "B00000000X", 5),
            review("A1", "B00000000Y", 5),
            review("A1", "B00000000X", 5),
            review("A1", "B00000000Z", 1),
            review("A1", "B00000000X", 6),
        ],
    )
    report = convert(tmp_path, reviews, k_core=0)
    assert report.duplicates_removed == 1
    assert [row[1:] for row in table(report.inter_path)] == [
        ["B00000000Z", "1"], ["B00000000X", "5"], ["B00000000Y", "5"], ["B00000000X", "6"],
    ]


# --- filters ---------------------------------------------------------------------------------


def test_k_core_repeats_until_stable(tmp_path):
    # k=2. Round 1 drops U5 (1 review); that leaves item C with 1 review, dropped in round 2;
    # that leaves U3 with 1 review, dropped in round 3. A single pass would keep U3 and C.
    pairs = [("U1", "A"), ("U1", "B"), ("U2", "A"), ("U2", "B"), ("U3", "B"), ("U3", "C"),
             ("U5", "C")]
    reviews = write_text(
        tmp_path / "r.json", [review(u, f"B00000000{i}", t) for t, (u, i) in enumerate(pairs)]
    )
    report = convert(tmp_path, reviews, k_core=2)
    assert (report.k_core_rounds, report.removed_by_k_core) == (3, 3)
    assert [row[:2] for row in table(report.inter_path)] == [
        ["U1", "B00000000A"], ["U1", "B00000000B"], ["U2", "B00000000A"], ["U2", "B00000000B"],
    ]
    assert convert(tmp_path, reviews, k_core=0).interactions == 7
    assert convert(tmp_path, reviews, k_core=1).interactions == 7


def test_min_rating_keeps_ratings_at_or_above_the_threshold(tmp_path):
    reviews = write_text(
        tmp_path / "r.json",
        [review("A1", f"B00000000{r}", r, overall=float(r)) for r in range(1, 6)]
        + [review("A2", "B000000004", 9, overall=3.5)],
    )
    report = convert(tmp_path, reviews, k_core=0, min_rating=4)
    assert report.removed_by_rating == 4
    assert [row[1:3] for row in table(report.inter_path)] == [
        ["B000000004", "4"], ["B000000005", "5"],
    ]
    assert "rating >= 4: 4 removed" in report.summary()


def test_min_rating_without_ratings_raises(tmp_path):
    reviews = write_text(tmp_path / "r.json", [review("A1", "B000000001", 1)])
    with pytest.raises(ValueError, match=r"r\.json: min_rating given but the file has no ratings"):
        convert(tmp_path, reviews, k_core=0, min_rating=4)
    assert not (tmp_path / "out").exists()


# --- metadata and writing --------------------------------------------------------------------


def test_item_file_covers_kept_items_and_counts_meta_mismatches(tmp_path):
    reviews = write_text(
        tmp_path / "r.json",
        [review("A1", f"B00000000{i}", t) for t, i in enumerate((1, 2, 9))],
    )
    meta = write_text(
        tmp_path / "meta.json",
        [
            json.dumps({"asin": "B000000002", "brand": " Tab\tBrand &amp; Co\n",
                        "category": ["All Beauty", "Skin  Care", "Face &amp; Body"]}),
            "{'asin': 'B000000001', 'categories': [['Beauty', 'Hair Care'], ['Beauty', 'Tools']]}",
            json.dumps({"asin": "B000000077", "brand": "Absent"}),
            json.dumps({"brand": "no asin"}),
            json.dumps({"asin": "B000000001", "brand": "later duplicate ignored"}),
        ],
    )
    report = convert(tmp_path, reviews, meta=meta, k_core=0)
    assert table(report.item_path) == [
        ["B000000001", "", "Hair_Care Tools", "Hair_Care"],
        ["B000000002", "Tab Brand & Co", "Skin_Care Face_&_Body", "Skin_Care"],
        ["B000000009", "", "", ""],
    ]
    assert (report.meta_lines_read, report.meta_bad_line_count) == (5, 1)
    assert (report.meta_items_matched, report.meta_absent_from_reviews) == (2, 1)
    assert report.items_without_meta == 1
    assert report.bad_lines == [(str(meta), 4, "missing asin")]
    # A later run without metadata must not leave the now mismatched .item behind.
    again = convert(tmp_path, reviews, k_core=0)
    assert again.item_path is None and not report.item_path.exists()


def test_failure_while_writing_leaves_old_files_and_no_temporaries(tmp_path, monkeypatch):
    reviews = write_text(tmp_path / "r.json", [review("A1", "B000000001", 1)])
    meta = write_text(tmp_path / "meta.json", [json.dumps({"asin": "B000000001"})])
    good = convert(tmp_path, reviews, meta=meta, k_core=0)
    old = {path.name: path.read_bytes() for path in good.inter_path.parent.iterdir()}
    changed = write_text(tmp_path / "r2.json", [review("A9", "B000000001", 2)])

    def failing_item_lines(kept_items, features):
        yield amazon.ITEM_HEADER_FIELDS[0] + "\n"
        raise OSError("disk full")

    monkeypatch.setattr(amazon, "_item_lines", failing_item_lines)
    message = r"t\.item: cannot write: disk full; the previous files are unchanged$"
    with pytest.raises(amazon.ConversionIOError, match=message):
        convert(tmp_path, changed, meta=meta, k_core=0)
    assert {path.name: path.read_bytes() for path in good.inter_path.parent.iterdir()} == old


# --- property --------------------------------------------------------------------------------

USERS = st.sampled_from(["A1YJEY40YUW4SE", "A2", "A10", "B3XX", "a1"])
ITEMS = st.sampled_from(["B000000001", "B000000002", "0123456789", "B00ZZZZZZZ"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(USERS, ITEMS, st.integers(0, 4)), min_size=1, max_size=25))
def test_inter_rows_are_the_deduplicated_input_sorted_per_user_by_time(rows):
    expected = sorted(dict.fromkeys(rows), key=lambda row: (row[0], row[2]))
    with tempfile.TemporaryDirectory() as folder:
        reviews = write_text(Path(folder) / "r.json", [review(*row) for row in rows])
        report = convert(Path(folder), reviews, k_core=0)
        got = [(user, item, int(time)) for user, item, time in table(report.inter_path)]
    assert got == expected
    assert report.duplicates_removed == len(rows) - len(expected)
