"""OpenMP settings that keep torch fast on a machine shared with other work.

torch's intra-op thread pool is OpenMP (libgomp in the Linux wheels). Left to its defaults, a
worker thread that runs out of work spins for a while before it sleeps (libgomp: 300,000 spins
when ``OMP_WAIT_POLICY`` is unset). On a machine whose cores are all busy (2 threads here beside
one other busy process on 2 cores) the spinning threads hold the core the thread with the work
needs, and every parallel region waits for a time slice: a small training step ran 35x slower
beside another training (11 against 375 steps per second idle; 347 with PASSIVE,
``results/epoch_speed.md``). ``OMP_WAIT_POLICY=PASSIVE`` makes
waiting threads sleep at once, which costs little on an idle machine.

libgomp reads these variables once, when it is loaded by ``import torch``, so
:func:`configure_openmp` must run before torch is imported: the ``mind-recbole`` command calls it
first thing, :func:`mind_recbole.run_recbole` and :func:`mind_recbole.load_data_and_model` before
they apply the compatibility shims (which import torch), and the benchmarks before their imports. A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left as it is.
This module imports nothing heavy.
"""

import logging
import os
import sys

# Set when the user's environment sets neither these nor :data:`USER_WAIT_SETTINGS`.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
# Variables by which a user has already chosen how OpenMP threads wait.
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

logger = logging.getLogger(__name__)


def configure_openmp(environ=None):
    """Put :data:`OPENMP_DEFAULTS` into ``environ`` (default ``os.environ``) unless the user chose a
    wait policy; return the variables set. Warns when torch is already imported (too late for
    this process; its child processes still inherit the setting)."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_WAIT_SETTINGS):
        return {}
    environ.update(OPENMP_DEFAULTS)
    if environ is os.environ and "torch" in sys.modules:
        logger.warning(
            "torch was imported before mind_recbole set OMP_WAIT_POLICY=PASSIVE: this process keeps "
            "OpenMP's spinning threads, which can slow training many times over on a busy machine. "
            "Export OMP_WAIT_POLICY=PASSIVE before starting Python, or import mind_recbole first"
        )
    return dict(OPENMP_DEFAULTS)


def thread_count_from_environment(environ=None):
    """``OMP_NUM_THREADS`` as a positive int, or None when it is unset or not a positive integer
    (OpenMP itself also accepts a list such as ``4,2``: its first entry counts)."""
    environ = os.environ if environ is None else environ
    text = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None
