"""A small synthetic data set in the McAuley Amazon format, for tests that need Amazon-format input
but not the real logs (a plain clone has no ``../shared/data``).

Users favour two of six top-level categories and review items of those mostly, so there is
structure to learn; every user has at least 8 reviews, and items are drawn so that nearly every
one is reviewed at least 5 times (the converter's 5-core filter removes the rest).
"""

import gzip
import json
from pathlib import Path

import numpy as np

TOP_CATEGORIES = ("Makeup", "Skin Care", "Hair Care", "Fragrance", "Tools & Accessories", "Bath & Body")
START_TIME = 1_300_000_000  # 2011-03-13
DAY = 86_400


def asin(item):
    return f"B{item:09d}"


def write_synthetic_amazon(folder, users=240, items=180, seed=0):
    """Write ``reviews.json.gz`` and ``meta.json.gz`` into ``folder``; return their paths."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    category_of = np.arange(items) % len(TOP_CATEGORIES)
    popularity = rng.zipf(1.6, items).clip(max=30).astype(float)
    reviews = []
    for user in range(users):
        favourites = rng.choice(len(TOP_CATEGORIES), size=2, replace=False)
        in_favourites = np.isin(category_of, favourites)
        weights = popularity * np.where(in_favourites, 8.0, 1.0)
        count = int(rng.integers(8, 16))
        chosen = rng.choice(items, size=count, replace=False, p=weights / weights.sum())
        day = int(rng.integers(0, 2_000))
        for item in chosen.tolist():
            day += int(rng.integers(0, 40))
            reviews.append({"reviewerID": f"A{user:07d}SYN", "asin": asin(item), "unixReviewTime": START_TIME + day * DAY})
    reviews.sort(key=lambda r: (r["reviewerID"], r["unixReviewTime"]))
    reviews_path = folder / "reviews.json.gz"
    with gzip.open(reviews_path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(review) + "\n" for review in reviews)
    meta_path = folder / "meta.json.gz"
    with gzip.open(meta_path, "wt", encoding="utf-8") as handle:
        for item in range(items):
            record = {
                "asin": asin(item),
                "categories": [["Beauty", TOP_CATEGORIES[category_of[item]], f"Line {item % 4}"]],
            }
            if item % 7:  # some items have no known brand, as in the real metadata
                record["brand"] = f"Brand {item % 13}"
            handle.write(json.dumps(record) + "\n")
    return reviews_path, meta_path
