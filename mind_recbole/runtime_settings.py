"""Thread and allocator settings for training on small CPU machines.

Two settings, both read from the RecBole config (defaults in ``properties/overall.yaml``) and
applied by :func:`mind_recbole.run_recbole`:

``torch_threads``
    Intra-op threads. ``~`` (default) means ``OMP_NUM_THREADS`` when the environment sets it,
    else one per usable core (torch's own default). Two threads beat one on an idle 2-core
    machine; beside another busy process they are only safe because OpenMP's threads sleep
    instead of spinning while they wait (:mod:`mind_recbole.threads`); ``results/epoch_speed.md``
    has the measurements.
``malloc_tuning``
    glibc returns freed blocks above ``M_MMAP_THRESHOLD`` to the kernel at once and trims the heap
    above ``M_TRIM_THRESHOLD``, so every training step page-faults its activation buffers in
    afresh. Raising both (the same as exporting ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` before start) keeps that memory in the heap for reuse. Costs: the
    process keeps up to ``TRIM_THRESHOLD`` of freed memory. No effect on non-glibc systems.

``benchmarks/epoch_speed.py`` measures seconds per epoch with and without these settings.
"""

import ctypes
import ctypes.util
import logging
import os

import torch

from mind_recbole.threads import thread_count_from_environment

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

logger = logging.getLogger(__name__)


def default_thread_count(cpu_count=None, environ=None):
    """``OMP_NUM_THREADS`` when set, else one intra-op thread per usable core (the cores this
    process may run on)."""
    from_environment = thread_count_from_environment(environ)
    if from_environment is not None:
        return from_environment
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpu_count)


def set_torch_threads(threads=None):
    """Set torch's intra-op thread count (``None``: :func:`default_thread_count`); return it."""
    threads = int(threads) if threads else default_thread_count()
    if threads < 1:
        raise ValueError(f"torch_threads must be >= 1 or ~ (automatic), got {threads}")
    torch.set_num_threads(threads)
    return threads


def tune_malloc():
    """Raise glibc's mmap and trim thresholds via ``mallopt``; return True where it took effect."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def apply_runtime_settings(config):
    """Apply ``torch_threads`` and ``malloc_tuning`` from a RecBole config; log what was set."""
    threads = set_torch_threads(config["torch_threads"])
    malloc_tuned = tune_malloc() if config["malloc_tuning"] else False
    logger.info("torch threads: %d, malloc tuning: %s", threads, "on" if malloc_tuned else "off")
    return threads, malloc_tuned
