"""Serving speed: the ONNX user tower vs PyTorch eager, exact max-over-K top-k, faiss ANN.

Measured in one run, on this machine:

1. user tower, ONNX Runtime (CPU) vs PyTorch eager (``torch.inference_mode``), at batch 1 and
   256 users with ``seq_len`` 50 (full histories): ms per call, users/s, and the ratio. The tower
   is a **randomly initialised MIND** (MIND.yaml defaults: K=4, D=64, ReLU tower [256],
   ``--tower-items`` items) unless ``--checkpoint`` names a trained one; speed does not depend on
   the weights. It is exported with the same code as ``mind-recbole export`` and served through
   ``export.runtime.UserTower``.
2. exact top-50 by ``max over active k of e_i . v_u^k`` (``export.retrieval.max_over_interests_topk``)
   over 100k and 1M random items (D=64, K=4, 1 to K active interests per user): users/s, next to
   the machine's SGEMM rate measured here for the same shapes (numpy ``[B*K, D] @ [D, chunk]`` over
   the catalogue: GFLOP/s and users/s if scoring were only that matmul).
3. faiss HNSW over the same items (skipped without faiss): build time, users/s, speed-up over
   exact and recall@50 against exact. Random Gaussian items have no cluster structure, a hard
   case for ANN: recall on trained embeddings is usually higher.

Usage (the defaults are the full run; a few minutes and ~1 GB of memory at 1M items):
  python benchmarks/serving.py
  python benchmarks/serving.py --checkpoint saved/MIND-....pth
  python benchmarks/serving.py --items 20000 --tower-items 5000 --users 64 --out /tmp/serving.md   # quick check

Appends a Markdown section (command, machine, date, tables) to ``--out`` (results/serving.md).
Run with nothing else busy; OPENBLAS_CORETYPE and thread variables are recorded, not changed.
"""

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


# ---------------------------------------------------------------------------------------------- timing
def timeit(function, min_time=1.0, min_repeats=3, warmup=1):
    """Median seconds per call of ``function()`` over at least ``min_repeats`` calls and ``min_time`` s."""
    for _ in range(warmup):
        function()
    times, start = [], time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------- tower
class _RandomCatalogue:
    """The little of a RecBole dataset that MIND's constructor reads, for a random model."""

    def __init__(self, n_items, seed=0):
        import torch

        self.n_items = n_items
        generator = torch.Generator().manual_seed(seed)
        self.inter_feat = {"item_id": torch.randint(1, n_items, (10 * n_items,), generator=generator)}
        self.dataset_name = "random"

    def num(self, field):
        return self.n_items


def random_mind(n_items, max_seq_length, seed=0):
    """A randomly initialised MIND with MIND.yaml's defaults (no dataset needed)."""
    import torch
    import yaml

    from mind_recbole import compat

    compat.apply()  # among others: importing RecBole's models turns anomaly detection on (10-100x slower)
    from mind_recbole.model.mind import MIND

    config = yaml.safe_load((PROJECT_ROOT / "mind_recbole" / "properties" / "model" / "MIND.yaml").read_text())
    config.update(
        {
            "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
            "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": max_seq_length,
            "device": torch.device("cpu"),
        }
    )
    torch.manual_seed(seed)
    return MIND(config, _RandomCatalogue(n_items, seed)).eval()


def write_model_dir(model, out_dir, dataset_name):
    """Export ``model`` like ``mind-recbole export`` (tokens ``item<i>``); returns the parity report."""
    import json

    import torch

    from export import artifacts
    from export.onnx_export import build_metadata, check_parity, export_graph, save_onnx, set_metadata

    proto, exporter = export_graph(model)
    set_metadata(proto, build_metadata(model, dataset_name, exporter))
    save_onnx(proto, out_dir / artifacts.ONNX_FILE)
    with torch.no_grad():
        np.save(out_dir / artifacts.ITEM_EMBEDDINGS_FILE, model.all_item_vectors().numpy().astype(np.float32))
    tokens = [artifacts.PAD_TOKEN] + [f"item{i}" for i in range(1, model.n_items)]
    (out_dir / artifacts.ITEM_TOKENS_FILE).write_text(json.dumps(tokens))
    return check_parity(out_dir / artifacts.ONNX_FILE, model, batch_sizes=(1, 3), atol=1e-4)


def bench_tower(args, rows):
    import torch

    from export.runtime import UserTower

    if args.checkpoint:
        from mind_recbole import load_data_and_model

        sys.argv = sys.argv[:1]
        _, model, dataset, *_ = load_data_and_model(str(args.checkpoint))
        model = model.to("cpu").eval()
        source = f"trained {type(model).__name__} from {args.checkpoint.name}"
        dataset_name = dataset.dataset_name
    else:
        model = random_mind(args.tower_items, args.seq_len)
        source = "randomly initialised MIND (MIND.yaml defaults)"
        dataset_name = "random"
    seq_len = min(args.seq_len, model.max_seq_length)
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder)
        parity = write_model_dir(model, model_dir, dataset_name)
        tower = UserTower(model_dir, provider="cpu", intra_op_num_threads=threads)
        rng = np.random.default_rng(0)
        for batch in args.tower_batches:
            seq = rng.integers(1, model.n_items, (batch, seq_len)).astype(np.int64)
            lengths = np.full(batch, seq_len, np.int64)
            ort_s = timeit(lambda: tower.run(seq, lengths), args.min_time)
            seq_t, len_t = torch.from_numpy(seq), torch.from_numpy(lengths)

            def eager():
                with torch.inference_mode():
                    model(seq_t, len_t)

            torch_s = timeit(eager, args.min_time)
            rows.append((batch, seq_len, torch_s * 1e3, ort_s * 1e3, batch / torch_s, batch / ort_s, torch_s / ort_s))
    info = (
        f"{source}: K={model.interest_num}, D={model.embedding_size}, {model.n_items:,} items, "
        f"max_seq_length={model.max_seq_length}; {threads} thread(s) for torch and for ONNX Runtime; parity max abs diff {parity.max_abs_diff['interests']:.2g}"
    )
    return info


# ---------------------------------------------------------------------------------------------- scoring
def random_users(rng, users, k, dim):
    interests = rng.standard_normal((users, k, dim)).astype(np.float32)
    active = rng.integers(1, k + 1, users)
    mask = np.arange(k)[None, :] < active[:, None]
    return interests, mask


def sgemm_rate(interests, items, chunk_size, min_time):
    """Seconds and GFLOP/s of the bare ``[B*K, D] @ [D, chunk]`` products over the catalogue."""
    flat = interests.reshape(-1, interests.shape[-1])
    chunks = [np.ascontiguousarray(items[s : s + chunk_size]) for s in range(0, len(items), chunk_size)]

    def matmuls():
        for chunk in chunks:
            flat @ chunk.T

    seconds = timeit(matmuls, min_time)
    return seconds, 2.0 * flat.shape[0] * flat.shape[1] * len(items) / seconds / 1e9


def bench_scoring(args, exact_rows, ann_rows):
    from export.retrieval import ann_topk, build_index, default_chunk_size, max_over_interests_topk, recall_at_n

    rng = np.random.default_rng(1)
    interests, mask = random_users(rng, args.users, args.interests, args.dim)
    have_faiss = not args.no_ann
    if have_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            have_faiss = False
            print("faiss not installed: ANN skipped (pip install mind-recbole[faiss])", file=sys.stderr)
    for n_items in args.items:
        items = rng.standard_normal((n_items, args.dim)).astype(np.float32)
        chunk = args.chunk_size or default_chunk_size(args.users, args.interests)
        exact_s = timeit(lambda: max_over_interests_topk(interests, mask, items, args.topk, chunk_size=chunk), args.min_time)
        gemm_s, gflops = sgemm_rate(interests, items, chunk, args.min_time)
        exact_rows.append((n_items, args.users, chunk, args.users / exact_s, exact_s * 1e3, gflops, args.users / gemm_s, gemm_s / exact_s))
        if have_faiss:
            exact = max_over_interests_topk(interests, mask, items, args.topk, chunk_size=chunk)
            start = time.perf_counter()
            index = build_index(
                items, kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search
            )
            build_s = time.perf_counter() - start
            ann_s = timeit(lambda: ann_topk(index, interests, mask, args.topk), args.min_time)
            recall = recall_at_n(ann_topk(index, interests, mask, args.topk).ids, exact.ids)
            ann_rows.append((n_items, f"HNSW M={args.hnsw_m} efSearch={args.ef_search}", build_s, args.users / ann_s, exact_s / ann_s, recall))
        del items


# ---------------------------------------------------------------------------------------------- report
def table(header, rows, formats):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f.format(v) for f, v in zip(formats, row)) + " |")
    return "\n".join(lines)


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line():
    usable = usable_cores()
    model = cpu_model()
    try:
        load = ", load average %.2f %.2f %.2f at the end" % os.getloadavg()
    except OSError:
        load = ""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    return f"{model}; os.cpu_count()={os.cpu_count()}, usable cores {usable}{load}" + (f"; env {env}" if env else "")


def versions():
    import onnxruntime

    parts = [f"numpy {np.__version__}", f"onnxruntime {onnxruntime.__version__}"]
    for name in ("torch", "faiss"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained MIND / YouTubeDNN checkpoint for the tower timing")
    parser.add_argument("--tower-items", type=int, default=100_000, help="items of the random tower (default 100000)")
    parser.add_argument("--tower-batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument(
        "--threads", type=int, help="intra-op threads for both torch and ONNX Runtime (default: usable cores)"
    )
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000], help="catalogue sizes")
    parser.add_argument("--users", type=int, default=256, help="users per scoring call")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--topk", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, help="items per scoring chunk (default: export.retrieval's)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--no-ann", action="store_true")
    parser.add_argument("--no-tower", action="store_true")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per measurement")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "serving.md")
    args = parser.parse_args(argv)
    # before loading a checkpoint, which trims sys.argv so that RecBole does not read our options
    command = " ".join(["python benchmarks/serving.py", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()

    tower_rows, exact_rows, ann_rows, tower_info = [], [], [], None
    if not args.no_tower:
        tower_info = bench_tower(args, tower_rows)
    bench_scoring(args, exact_rows, ann_rows)

    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    parts = [
        f"## Serving benchmark, {now}",
        "",
        f"- command: `{command}`",
        f"- machine: {machine_line()}",
        f"- versions: {versions()}",
    ]
    if tower_info:
        parts += [
            "",
            f"### User tower, ONNX Runtime vs PyTorch eager ({tower_info})",
            "",
            table(
                ["batch", "seq_len", "PyTorch ms", "ONNX Runtime ms", "PyTorch users/s", "ONNX Runtime users/s", "speed-up (PyTorch / ORT time)"],
                tower_rows,
                ["{}", "{}", "{:.3f}", "{:.3f}", "{:,.0f}", "{:,.0f}", "{:.2f}x"],
            ),
        ]
    parts += [
        "",
        f"### Exact top-{args.topk}, max over K={args.interests} interests, D={args.dim} (random items and users, 1..K active)",
        "",
        table(
            ["items", "users per call", "chunk", "users/s", "ms per call", "SGEMM GFLOP/s (same shapes)", "users/s if only SGEMM", "SGEMM share of time"],
            exact_rows,
            ["{:,}", "{}", "{:,}", "{:,.0f}", "{:.1f}", "{:.1f}", "{:,.0f}", "{:.0%}"],
        ),
    ]
    if ann_rows:
        parts += [
            "",
            f"### faiss ANN vs exact (top-{args.topk}; one search per active interest, merged)",
            "",
            table(
                ["items", "index", "build s", "users/s", "speed-up vs exact", f"recall@{args.topk} vs exact"],
                ann_rows,
                ["{:,}", "{}", "{:.1f}", "{:,.0f}", "{:.1f}x", "{:.3f}"],
            ),
        ]
    section = "\n".join(parts) + "\n"
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if args.out.exists() else "# Serving benchmarks (benchmarks/serving.py)\n\n"
    with args.out.open("a") as handle:
        handle.write(header + section + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
