"""Serving load test: many concurrent users against one in-process ``UserTower``, counted and checked.

Each request is what ``mind-recbole retrieve`` does for one user: item tokens -> ids
(``UserTower.encode``, one ONNX Runtime call) -> exact top-``--topk`` by max over active interests
over the whole catalogue (``max_over_interests_topk``, the user's history excluded). A thread pool
of ``--threads`` workers (a closed loop: each worker takes the next request as soon as it is done)
serves ``--requests`` requests, or stops at ``--time-limit`` seconds. For each thread count it
reports requests/s, latency p50 / p95 / p99 / max (service time of one request, in the worker),
errors (any exception; must be 0) and mismatches against a single-threaded reference computed
first for every ``--verify-every``-th request (ids identical, scores within 1e-5; must be 0).

The catalogue: the export's own ``item_embeddings.npy`` and, with ``--catalogue N`` above its size,
synthetic rows appended up to ``N`` items (Gaussian, with the per-dimension mean and standard
deviation of the real rows; seeded), so that scoring costs what an ``N``-item catalogue costs. The
histories: ``--lengths`` (default 1 .. 2 x max_seq_length, uniform; longer ones are truncated by
the tower) real item tokens drawn uniformly, seeded.

The model (one of):
  --model-dir DIR        a directory written by `mind-recbole export` (no torch needed)
  --checkpoint FILE.pth  a MIND / YouTubeDNN checkpoint, exported to a temporary directory first (torch)

Usage:
  OPENBLAS_NUM_THREADS=1 python benchmarks/serving_load.py --model-dir exported/mind-beauty --catalogue 100000
  python benchmarks/serving_load.py --model-dir DIR --threads 1 8 32 --requests 5000 --time-limit 120

One BLAS thread per request is what a thread pool wants (the pool is the parallelism); the
environment's thread variables and the load average are recorded, not changed. Appends a Markdown
section to ``--out`` (default results/serving_load.md). Exit status 1 on any error or mismatch.
"""

import argparse
import datetime
import itertools
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from export.retrieval import max_over_interests_topk  # noqa: E402  (numpy only)
from export.runtime import UserTower  # noqa: E402  (onnxruntime + numpy only)
from serving import cpu_model, table, usable_cores  # noqa: E402  (benchmarks/serving.py, shared by both reports)

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")


# ---------------------------------------------------------------------------------------------- set-up
def export_checkpoint(checkpoint, out_dir):
    """``mind-recbole export`` of ``checkpoint`` into ``out_dir`` (needs torch and RecBole)."""
    from export.onnx_export import export_user_tower

    sys.argv = sys.argv[:1]  # RecBole reads sys.argv
    return export_user_tower(checkpoint, out_dir)


def build_catalogue(item_vectors, size, seed=0):
    """The export's item vectors, then synthetic rows (real per-dimension mean and std) up to ``size`` rows."""
    real = np.asarray(item_vectors, dtype=np.float32)
    if size <= len(real):
        return real
    rng = np.random.default_rng(seed)
    mean, std = real[1:].mean(axis=0), real[1:].std(axis=0)
    extra = (rng.standard_normal((size - len(real), real.shape[1])) * std + mean).astype(np.float32)
    catalogue = np.concatenate([real, extra])
    catalogue.flags.writeable = False
    return catalogue


def make_requests(tower, count, min_len, max_len, seed=1):
    """``count`` histories of real item tokens, lengths uniform in ``min_len .. max_len``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, count)
    return [[tower.item_tokens[i] for i in rng.integers(1, tower.n_items, n)] for n in lengths]


def serve(tower, catalogue, history, topk):
    """One request: encode the history, exact top-``topk`` over ``catalogue`` without the history's items."""
    seen = [tower.item_index[token] for token in history]  # one lookup serves the tower and the exclusion
    interests, mask = tower.encode_ids([seen])
    return max_over_interests_topk(interests, mask, catalogue, topk, exclude=[seen])


# ---------------------------------------------------------------------------------------------- the load
def run_load(tower, catalogue, requests, threads, topk, time_limit, reference):
    """Serve ``requests`` with ``threads`` workers (closed loop) until done or ``time_limit`` s.

    Returns a dict: ``completed``, ``seconds``, ``latencies`` (s, per request), ``errors`` (Counter of
    exception types), ``first_error`` (traceback text), ``verified``, ``mismatches``.
    """
    next_request = itertools.count()
    lock = threading.Lock()
    latencies, errors, results = [], Counter(), {}
    first_error = []
    deadline = time.perf_counter() + time_limit

    def worker():
        own_latencies, own_results = [], {}
        while time.perf_counter() < deadline:
            index = next(next_request)  # itertools.count is atomic under the GIL
            if index >= len(requests):
                break
            start = time.perf_counter()
            try:
                result = serve(tower, catalogue, requests[index], topk)
            except Exception as error:  # noqa: BLE001 - counted and reported, the load goes on
                with lock:
                    errors[type(error).__name__] += 1
                    if not first_error:
                        first_error.append(traceback.format_exc())
                continue
            own_latencies.append(time.perf_counter() - start)
            if index in reference:
                own_results[index] = result
        with lock:
            latencies.extend(own_latencies)
            results.update(own_results)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    seconds = time.perf_counter() - start
    mismatches = sum(
        not (np.array_equal(r.ids, reference[i].ids) and np.allclose(r.scores, reference[i].scores, atol=1e-5))
        for i, r in results.items()
    )
    return {
        "completed": len(latencies), "seconds": seconds, "latencies": np.asarray(latencies), "errors": errors,
        "first_error": first_error[0] if first_error else None, "verified": len(results), "mismatches": int(mismatches),
    }


def summarise(threads, outcome):
    """One table row: threads, requests, seconds, requests/s, p50, p95, p99, max (ms), errors, verified, mismatches."""
    lat = outcome["latencies"] * 1e3
    p50, p95, p99, worst = (np.percentile(lat, [50, 95, 99, 100]) if lat.size else [float("nan")] * 4)
    errors = sum(outcome["errors"].values())
    return (
        threads, outcome["completed"], outcome["seconds"], outcome["completed"] / outcome["seconds"], p50, p95, p99,
        worst, errors, outcome["verified"], outcome["mismatches"],
    )


# ---------------------------------------------------------------------------------------------- report
def uptime():
    """``uptime``'s line (the load average), or ``os.getloadavg()`` where there is no such command."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average %.2f %.2f %.2f" % os.getloadavg()


def machine_line():
    model, usable = cpu_model(), usable_cores()
    env = {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}
    return f"{model}; os.cpu_count()={os.cpu_count()}, usable cores {usable}; thread env {env or 'none set'}"


def versions():
    import onnxruntime

    return f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="a directory written by `mind-recbole export`")
    source.add_argument("--checkpoint", type=Path, help="a checkpoint to export first (needs torch)")
    parser.add_argument("--catalogue", type=int, default=100_000, help="items scored per request (default 100000)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 16, 32], help="thread-pool sizes (default 1 8 16 32)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per thread-pool size (default 5000)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per thread-pool size at most (default 120)")
    parser.add_argument("--topk", type=int, default=50)
    parser.add_argument("--lengths", type=int, nargs=2, metavar=("MIN", "MAX"), help="history lengths (default 1 .. 2 x max_seq_length)")
    parser.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1: the pool is the parallelism)")
    parser.add_argument("--verify-every", type=int, default=25, help="check every N-th request against a serial reference (default 25)")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. what else was running)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "serving_load.md")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/serving_load.py", shlex.join(sys.argv[1:] if argv is None else argv)])
    env_prefix = " ".join(f"{k}={os.environ[k]}" for k in THREAD_VARIABLES if k in os.environ)
    command = f"{env_prefix} {command}".strip()

    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model_dir
        if args.checkpoint is not None:
            model_dir = Path(folder) / "model"
            print(export_checkpoint(args.checkpoint, model_dir).summary())
        tower = UserTower(model_dir, provider="cpu", intra_op_num_threads=args.ort_threads)
        metadata = dict(tower.metadata)
    catalogue = build_catalogue(tower.item_vectors, args.catalogue)
    min_len, max_len = args.lengths or (1, 2 * tower.max_seq_length)
    requests = make_requests(tower, args.requests, min_len, max_len)

    load_before = uptime()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    check = range(0, len(requests), max(1, args.verify_every))
    t0 = time.perf_counter()
    reference = {i: serve(tower, catalogue, requests[i], args.topk) for i in check}
    reference_s = time.perf_counter() - t0
    print(f"serial reference: {len(reference)} requests in {reference_s:.1f} s", flush=True)

    rows, failures = [], []
    for threads in args.threads:
        outcome = run_load(tower, catalogue, requests, threads, args.topk, args.time_limit, reference)
        rows.append(summarise(threads, outcome))
        print(table(HEADER, rows[-1:], FORMATS).splitlines()[-1], flush=True)
        if outcome["errors"] or outcome["mismatches"]:
            failures.append((threads, dict(outcome["errors"]), outcome["mismatches"], outcome["first_error"]))
    load_after = uptime()

    synthetic = max(0, len(catalogue) - tower.n_items)
    parts = [
        f"## Serving load test, {started}",
        "",
        f"- command: `{command}`",
        f"- model: {metadata.get('model')} user tower from `{metadata.get('checkpoint') or model_dir}` "
        f"(dataset {metadata.get('dataset')}, K={tower.interest_num}, D={tower.embedding_size}, "
        f"max_seq_length={tower.max_seq_length}, {tower.n_items:,} items), ONNX Runtime CPU, "
        f"{args.ort_threads} intra-op thread(s)",
        f"- catalogue: {len(catalogue):,} items scored per request ({tower.n_items:,} exported"
        + (f" + {synthetic:,} synthetic rows with the real rows' per-dimension mean and std" if synthetic else "")
        + f"); exact top-{args.topk}, the history excluded",
        f"- requests: {args.requests:,} per pool size (time limit {args.time_limit:g} s), one user each, "
        f"histories of {min_len}..{max_len} real item tokens (uniform; longer than {tower.max_seq_length} is truncated)",
        f"- checked: every {args.verify_every}th request ({len(reference)}) against a serial reference "
        f"({reference_s:.1f} s), ids identical and scores within 1e-5",
        f"- machine: {machine_line()}; {versions()}",
        f"- `uptime` before: `{load_before}`",
        f"- `uptime` after: `{load_after}`",
    ]
    if args.note:
        parts.append(f"- note: {args.note}")
    parts += ["", table(HEADER, rows, FORMATS)]
    for threads, errors, mismatches, first in failures:
        parts += ["", f"**{threads} threads: errors {errors}, mismatches {mismatches}**", "", "```", (first or "").strip(), "```"]
    section = "\n".join(parts) + "\n"
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if args.out.exists() else "# Serving load tests (benchmarks/serving_load.py)\n\n"
    with args.out.open("a") as handle:
        handle.write(header + section + "\n")
    print(f"appended to {args.out}")
    return 1 if failures else 0


HEADER = ["threads", "requests", "seconds", "requests/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "verified", "mismatches"]
FORMATS = ["{}", "{:,}", "{:.1f}", "{:,.0f}", "{:.2f}", "{:.2f}", "{:.2f}", "{:.1f}", "{}", "{}", "{}"]


if __name__ == "__main__":
    sys.exit(main())
