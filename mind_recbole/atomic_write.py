"""Files written whole or not at all: each is written under a temporary name beside the target,
then renamed onto it in one step, so a stop or a failure while writing keeps the previous file.

Every writer of the package uses these, except the Amazon converter, which switches several
files together (:mod:`mind_recbole.data.amazon`).
"""

import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def replaced_on_success(path):
    """A temporary path beside ``path`` (same suffix, so tools that read the format off the name
    still can) that replaces ``path`` when the block succeeds and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


@contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
    """``open(path, mode)`` whose file replaces ``path`` only when the block succeeds."""
    with replaced_on_success(path) as temporary:
        with open(temporary, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle


def write_text(path, text):
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path, payload):
    """Write ``payload`` as indented JSON to ``path`` atomically; return the path."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")
