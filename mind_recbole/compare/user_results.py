"""Each test user's metric values of one run: ``MODEL-GROUP-seedSEED.users.npz`` beside its JSON.

The comparison's tables average every metric over test users; a paired test between two models
(:mod:`mind_recbole.compare.significance`) needs the values user by user. A finished run writes,
for each protocol it scored (``full``, ``sampled``, ``multi_interest``), the test users and one
array per metric, each user's value as the protocol computed it (stored as float32: the mean of an
array is the number in the run's JSON, to RecBole's 4-decimal rounding). Users are stored as
pseudonyms, the first 8 bytes of a BLAKE2b digest of their token (:func:`pseudonyms`), never the
dataset's tokens: the files are committed beside the runs' JSON, so a clean clone's report has its
paired tests, and they hold no copy of the data. Files written before pseudonyms hold tokens; they
are read, and paired, as their pseudonyms. The file also holds the run's config hash and data
fingerprint: a file left by an earlier training under the same name is never paired with a newer
run's results. Runs written before per-user results existed have no file; their paired tests read
"n/a" until ``compare --rerun`` (or a new run) writes one.

Only numpy: the report reads these files without torch or RecBole.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mind_recbole.atomic_write import atomic_open

PREDATES = "run predates per-user results"  # why a run written by older code has no paired test


def pseudonyms(tokens):
    """``[U]`` uint64 pseudonyms of ``[U]`` user tokens: the first 8 bytes of each token's BLAKE2b
    digest (a collision among 10^6 users has probability about 3e-8)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(token).encode(), digest_size=8).digest(), "little")
                     for token in tokens], dtype=np.uint64)


@dataclass
class UserValues:
    """One protocol's per-user values: ``users`` ``[U]`` uint64 pseudonyms (tokens given here are
    turned into their :func:`pseudonyms`), ``metrics`` name -> ``[U]`` floats."""

    users: np.ndarray
    metrics: dict

    def __post_init__(self):
        users = np.asarray(self.users)
        self.users = users.astype(np.uint64) if users.dtype.kind in "iu" else pseudonyms(users)
        self.metrics = {name: np.asarray(values, dtype=np.float64) for name, values in self.metrics.items()}
        wrong = {name: len(values) for name, values in self.metrics.items() if len(values) != len(self.users)}
        if wrong:
            raise ValueError(f"per-user values: {len(self.users)} users but metric lengths {wrong}")


def user_results_path(run_path):
    """``X.users.npz`` beside the run's result ``X.json``."""
    run_path = Path(run_path)
    return run_path.with_name(f"{run_path.stem}.users.npz")


def write_user_results(path, by_protocol, config_hash, data_fingerprint):
    """Write ``by_protocol`` (protocol -> :class:`UserValues`) of the run with this hash and
    fingerprint to ``path``, atomically; return the path."""
    arrays = {"config_hash": np.array(config_hash), "data_fingerprint": np.array(data_fingerprint)}
    for protocol, values in by_protocol.items():
        arrays[f"{protocol}.users"] = values.users
        arrays.update({f"{protocol}.{name}": column.astype(np.float32) for name, column in values.metrics.items()})
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return Path(path)


def read_user_results(path, config_hash, data_fingerprint):
    """``({protocol: UserValues}, None)`` for the run with this hash and fingerprint, else
    ``(None, why not)``."""
    path = Path(path)
    if not path.is_file():
        return None, PREDATES
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return None, f"{path.name} is unreadable ({error})"
    if str(arrays.pop("config_hash", "")) != config_hash or str(arrays.pop("data_fingerprint", "")) != data_fingerprint:
        return None, f"{path.name} belongs to another training of this run"
    by_protocol = {}
    for protocol in sorted({name.split(".", 1)[0] for name in arrays}):
        metrics = {name.split(".", 1)[1]: column for name, column in arrays.items()
                   if name.startswith(f"{protocol}.") and name != f"{protocol}.users"}
        users = arrays.get(f"{protocol}.users")
        if users is None or any(len(column) != len(users) for column in metrics.values()):
            return None, f"{path.name} is unreadable (protocol {protocol}: users and values do not match)"
        by_protocol[protocol] = UserValues(users, metrics)
    return by_protocol, None
