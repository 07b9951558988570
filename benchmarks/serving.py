"""Serving speed: the ONNX user tower vs PyTorch eager, exact max-over-K top-k, faiss ANN.

Measured in one run, on this machine:

1. user tower, ONNX Runtime (CPU) vs PyTorch eager (``torch.inference_mode``), at batch 1 and
   256 users with ``seq_len`` 50 (full histories): ms per call, users/s, and the ratio. The tower
   is a **randomly initialised MIND** (MIND.yaml defaults: K=4, D=64, ReLU tower [256],
   ``--tower-items`` items) unless ``--checkpoint`` names a trained one; speed does not depend on
   the weights. It is exported with the same code as ``mind-recbole export`` and served through
   ``export.runtime.UserTower``.
2. exact top-50 by ``max over active k of e_i . v_u^k`` (``export.retrieval.max_over_interests_topk``)
   over 100k and 1M items (D=64, K=4, 1 to K active interests per user) of each synthetic
   catalogue (``catalogue()``: ``gaussian``, no structure; ``clustered``, a Gaussian mixture):
   users/s, next to the machine's SGEMM rate for the products the scorer runs (numpy
   ``[chunk, D] @ [D, R]`` over the catalogue, ``R`` active interests, output reused: GFLOP/s,
   users/s if scoring were only that matmul, and the share of the scorer's time it is).
3. faiss IVF and HNSW over the same items (skipped without faiss), each built once, its search
   effort swept (``--nprobe``, ``--ef-search``): build time, users/s, speed-up over exact and
   recall@50 against exact, and whether it meets the goal (recall@50 >= 0.95 at >= 5x exact).
   Gaussian items are the worst case for ANN (no neighbourhood structure); the clustered
   catalogue is closer to trained embeddings. Both are reported.

Usage (the defaults are the full run; 20-30 minutes on 2 cores, most of it building the 1M-item
IVF and HNSW indexes, and ~2 GB of memory):
  python benchmarks/serving.py
  python benchmarks/serving.py --checkpoint saved/MIND-....pth
  python benchmarks/serving.py --no-tower --ann-kinds ivf          # scoring and IVF only
  python benchmarks/serving.py --items 20000 --tower-items 5000 --users 64 --out /tmp/serving.md   # quick check
  OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/serving.py --no-tower   # one core for everything

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
from functools import partial
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GOAL_RECALL, GOAL_SPEED_UP = 0.95, 5.0  # what an ANN setting must reach to be worth serving (recall@topk, x exact)
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from export.retrieval import usable_cores  # noqa: E402  (numpy only; re-exported for serving_load.py)


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

    with torch.no_grad():
        np.save(out_dir / artifacts.ITEM_EMBEDDINGS_FILE, model.all_item_vectors().numpy().astype(np.float32))
    tokens = [artifacts.PAD_TOKEN] + [f"item{i}" for i in range(1, model.n_items)]
    (out_dir / artifacts.ITEM_TOKENS_FILE).write_text(json.dumps(tokens))
    proto, exporter = export_graph(model)
    metadata = build_metadata(model, dataset_name, exporter)
    metadata[artifacts.META_FILE_DIGESTS] = json.dumps(
        {name: artifacts.file_digest(out_dir / name) for name in (artifacts.ITEM_EMBEDDINGS_FILE, artifacts.ITEM_TOKENS_FILE)}
    )
    set_metadata(proto, metadata)
    save_onnx(proto, out_dir / artifacts.ONNX_FILE)
    return check_parity(out_dir / artifacts.ONNX_FILE, model, batch_sizes=(1, 3), atol=1e-4)


def bench_tower(args, rows):
    import torch

    from export import artifacts
    from export.quantize import quantize_tower
    from export.runtime import UserTower

    if args.checkpoint:
        from mind_recbole import load_data_and_model

        sys.argv = sys.argv[:1]
        _, model, dataset, _, _, test_data = load_data_and_model(str(args.checkpoint))
        model = model.to("cpu").eval()
        source = f"trained {type(model).__name__} from {args.checkpoint.name}"
        dataset_name = dataset.dataset_name
        test_features = test_data.dataset.inter_feat
        real_histories = (test_features[model.ITEM_SEQ].numpy(), test_features[model.ITEM_SEQ_LEN].numpy())
    else:
        model = random_mind(args.tower_items, args.seq_len)
        source = "randomly initialised MIND (MIND.yaml defaults)"
        dataset_name = "random"
        real_histories = None
    seq_len = min(args.seq_len, model.max_seq_length)
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder)
        parity = write_model_dir(model, model_dir, dataset_name)
        quantize_tower(model_dir / artifacts.ONNX_FILE, model_dir / artifacts.INT8_ONNX_FILE)
        tower = UserTower(model_dir, provider="cpu", intra_op_num_threads=threads)
        int8_tower = UserTower(model_dir, provider="cpu", intra_op_num_threads=threads, precision="int8")
        rng = np.random.default_rng(0)
        for batch in args.tower_batches:
            seq = rng.integers(1, model.n_items, (batch, seq_len)).astype(np.int64)
            lengths = np.full(batch, seq_len, np.int64)
            ort_s = timeit(lambda: tower.run(seq, lengths), args.min_time)
            int8_s = timeit(lambda: int8_tower.run(seq, lengths), args.min_time)
            seq_t, len_t = torch.from_numpy(seq), torch.from_numpy(lengths)

            def eager():
                with torch.inference_mode():
                    model(seq_t, len_t)

            torch_s = timeit(eager, args.min_time)
            rows.append((batch, seq_len, torch_s * 1e3, ort_s * 1e3, batch / torch_s, batch / ort_s, torch_s / ort_s,
                         int8_s * 1e3, ort_s / int8_s))
        overlap = int8_overlap(tower, int8_tower, real_histories, args.topk) if real_histories else None
    info = (
        f"{source}: K={model.interest_num}, D={model.embedding_size}, {model.n_items:,} items, "
        f"max_seq_length={model.max_seq_length}; {threads} thread(s) for torch and for ONNX Runtime; parity max abs diff {parity.max_abs_diff['interests']:.2g}"
    )
    if overlap is not None:
        info += f"; int8 tower: top-{args.topk} overlap with the float tower {overlap.mean_overlap:.4f} over the {overlap.histories:,} test users' histories"
    return info


def int8_overlap(tower, int8_tower, histories, topk):
    """:func:`export.quantize.ranking_overlap` of the int8 and float towers over real histories (batches of 256)."""
    from export.quantize import ranking_overlap

    item_seq, lengths = histories
    cases = [
        ("test", item_seq[start : start + 256, : int(lengths[start : start + 256].max())], lengths[start : start + 256], None)
        for start in range(0, len(lengths), 256)
    ]
    return ranking_overlap(tower.session, int8_tower.session, tower.item_vectors, cases, topk)


# ---------------------------------------------------------------------------------------------- scoring
def catalogue(name, rng, n_items, args):
    """``(items [N, D], interests [B, K, D], mask [B, K])`` of a synthetic catalogue, 1..K active interests.

    ``gaussian``: items and interests i.i.d. N(0, I), no structure at all (the worst case for ANN).
    ``clustered``: a Gaussian mixture, ``N / cluster_size`` centres from N(0, I), each item a
    centre plus ``cluster_spread`` * N(0, I), each interest likewise near a random centre (a user's
    interests point at groups of similar items, as trained item embeddings group by category).
    """
    users, k, dim = args.users, args.interests, args.dim
    mask = np.arange(k)[None, :] < rng.integers(1, k + 1, users)[:, None]
    if name == "gaussian":
        items = rng.standard_normal((n_items, dim)).astype(np.float32)
        return items, rng.standard_normal((users, k, dim)).astype(np.float32), mask
    centres = rng.standard_normal((max(1, n_items // args.cluster_size), dim)).astype(np.float32)
    items = centres[rng.integers(0, len(centres), n_items)] + args.cluster_spread * rng.standard_normal((n_items, dim))
    interests = centres[rng.integers(0, len(centres), (users, k))] + args.cluster_spread * rng.standard_normal((users, k, dim))
    return items.astype(np.float32), interests.astype(np.float32), mask


def sgemm_products(interests, mask, items, chunk_size):
    """``(run, flops)``: ``run()`` does the bare products the exact scorer does, ``[chunk, D] @ [D, R]``
    over the catalogue, ``R`` the active interests, into one reused output block."""
    active_t = np.ascontiguousarray(interests[mask].T)  # [D R]
    chunks = [np.ascontiguousarray(items[s : s + chunk_size]) for s in range(0, len(items), chunk_size)]
    out = np.empty((chunk_size, active_t.shape[1]), np.float32)

    def matmuls():
        for chunk in chunks:
            np.matmul(chunk, active_t, out=out[: len(chunk)])

    return matmuls, 2.0 * active_t.size * len(items)


def interleaved_best(functions, repeats):
    """Each function's best seconds over ``repeats`` rounds that call them in turn (after one warm-up
    round): both see the same moments of a machine whose speed drifts."""
    best = [float("inf")] * len(functions)
    for round_ in range(repeats + 1):
        for position, function in enumerate(functions):
            start = time.perf_counter()
            function()
            if round_:
                best[position] = min(best[position], time.perf_counter() - start)
    return best


def ann_indexes(items, args):
    """``(index, build seconds, search efforts)`` for each ``--ann-kinds``, each built once."""
    from export.retrieval import build_index

    for kind in args.ann_kinds:
        start = time.perf_counter()
        if kind == "ivf":
            index = build_index(items, kind="ivf", nlist=args.nlist)
            efforts = [{"nprobe": n} for n in args.nprobe]
        else:
            index = build_index(items, kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
            efforts = [{"ef_search": e} for e in args.ef_search]
        yield index, time.perf_counter() - start, efforts
        del index  # before the next one is built


def bench_scoring(args, exact_rows, ann_rows):
    from export.retrieval import ann_topk, default_chunk_size, max_over_interests_topk, recall_at_n

    rng = np.random.default_rng(1)
    have_faiss = not args.no_ann
    if have_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            have_faiss = False
            print("faiss not installed: ANN skipped (pip install mind-recbole[faiss])", file=sys.stderr)
    for name in args.catalogues:
        for n_items in args.items:
            items, interests, mask = catalogue(name, rng, n_items, args)
            chunk = args.chunk_size or default_chunk_size(args.users, args.interests)
            products, flops = sgemm_products(interests, mask, items, chunk)
            gemm_s = None if args.interleave else timeit(products, args.min_time)
            for threads in args.scorer_threads:
                scorer = partial(max_over_interests_topk, interests, mask, items, args.topk, chunk_size=chunk,
                                 threads=threads)
                if args.interleave:
                    gemm_s, exact_s = interleaved_best([products, scorer], args.interleave)
                else:
                    exact_s = timeit(scorer, args.min_time)
                exact_rows.append((name, n_items, args.users, int(mask.sum()), chunk, threads or usable_cores(),
                                   args.users / exact_s, exact_s * 1e3, flops / gemm_s / 1e9, args.users / gemm_s,
                                   gemm_s / exact_s))
            if not have_faiss:
                continue
            exact = max_over_interests_topk(interests, mask, items, args.topk, chunk_size=chunk)
            for index, build_s, efforts in ann_indexes(items, args):
                for effort in efforts:
                    index.set_search_effort(**effort)
                    ann_s = timeit(partial(ann_topk, index, interests, mask, args.topk), args.min_time)
                    recall = recall_at_n(ann_topk(index, interests, mask, args.topk).ids, exact.ids)
                    speed_up = exact_s / ann_s
                    meets = "yes" if recall >= GOAL_RECALL and speed_up >= GOAL_SPEED_UP else ""
                    ann_rows.append((name, n_items, index.describe(), build_s, args.users / ann_s, speed_up, recall, meets))
                del index  # before the next one is built
            del items


# ---------------------------------------------------------------------------------------------- report
def table(header, rows, formats):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f.format(v) for f, v in zip(formats, row)) + " |")
    return "\n".join(lines)


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
    parser.add_argument(
        "--scorer-threads", type=int, nargs="+", default=[0],
        help="the exact scorer's threads, swept (0: its default, the usable cores; 1: one pass on BLAS's threads)",
    )
    parser.add_argument("--catalogues", nargs="+", default=["gaussian", "clustered"], choices=["gaussian", "clustered"],
                        help="synthetic catalogues (see catalogue(); default both)")
    parser.add_argument("--cluster-size", type=int, default=256, help="clustered: items per centre on average (default 256)")
    parser.add_argument("--cluster-spread", type=float, default=1.0,
                        help="clustered: std of items and interests around their centre, centres being N(0, I) (default 1: "
                             "clusters overlap)")
    parser.add_argument("--ann-kinds", nargs="+", default=["ivf", "hnsw"], choices=["ivf", "hnsw"], help="faiss indexes to build")
    parser.add_argument("--nlist", type=int, help="IVF lists (default: export.retrieval's, about 4 sqrt(items))")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128], help="IVF search efforts swept")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512, 1024], help="HNSW search efforts swept")
    parser.add_argument("--no-ann", action="store_true")
    parser.add_argument("--no-tower", action="store_true")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per measurement")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="exact scorer: time the SGEMM alone and the scorer in turn for ROUNDS rounds and compare "
                             "their best times (default 0: medians over --min-time each, measured one after the other)")
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
                ["batch", "seq_len", "PyTorch ms", "ONNX Runtime ms", "PyTorch users/s", "ONNX Runtime users/s", "speed-up (PyTorch / ORT time)",
                 "ORT int8 ms", "int8 speed-up (ORT fp32 / int8 time)"],
                tower_rows,
                ["{}", "{}", "{:.3f}", "{:.3f}", "{:,.0f}", "{:,.0f}", "{:.2f}x", "{:.3f}", "{:.2f}x"],
            ),
        ]
    parts += [
        "",
        f"### Exact top-{args.topk}, max over K={args.interests} interests, D={args.dim} (1..K active per user; "
        "SGEMM: the scorer's own products over the active interests, output block reused; "
        + (f"best of {args.interleave} interleaved rounds)" if args.interleave else "medians)"),
        "",
        table(
            ["catalogue", "items", "users per call", "active interests", "chunk", "scorer threads", "users/s",
             "ms per call", "SGEMM GFLOP/s (same shapes, BLAS's threads)", "users/s if only SGEMM", "SGEMM share of time"],
            exact_rows,
            ["{}", "{:,}", "{}", "{}", "{:,}", "{}", "{:,.0f}", "{:.1f}", "{:.1f}", "{:,.0f}", "{:.0%}"],
        ),
    ]
    if ann_rows:
        clustered = (f"; clustered: {args.cluster_size} items per centre on average, spread {args.cluster_spread:g}"
                     if "clustered" in args.catalogues else "")
        parts += [
            "",
            f"### faiss ANN vs exact (top-{args.topk}; one search per active interest, merged{clustered}; "
            f"goal: recall@{args.topk} >= {GOAL_RECALL} at >= {GOAL_SPEED_UP:g}x exact)",
            "",
            table(
                ["catalogue", "items", "index", "build s", "users/s", "speed-up vs exact", f"recall@{args.topk} vs exact", "meets goal"],
                ann_rows,
                ["{}", "{:,}", "{}", "{:.1f}", "{:,.0f}", "{:.1f}x", "{:.3f}", "{}"],
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
