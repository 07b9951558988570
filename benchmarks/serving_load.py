"""Serving load test over HTTP: `mind-recbole serve` on 127.0.0.1, driven by concurrent HTTP clients.

The server is the real command (``python -m mind_recbole serve --model-dir DIR --port 0``) in its
own process, micro-batching concurrent requests (``--max-batch``, ``--max-wait-ms``,
``--timeout-ms`` are passed on when given). The clients are threads of this process, each with its own
keep-alive HTTP/1.1 connection (``export.service.client``, standard library ``http.client``), in a
closed loop: a client sends its next request as soon as the previous answer has arrived. A
request is one user: ``POST /retrieve`` with a history of real item tokens, exact top-``--topk``
over the whole catalogue, the history excluded. For each client count (``--clients``, default
1 8 32) the run serves ``--requests`` requests or stops at ``--time-limit`` seconds, and reports
requests/s, latency p50 / p95 / p99 / max (client side: from sending the request to the whole
answer read), errors (any answer but 200, or a failed connection; must be 0), the batches the
server made (its ``/stats``) and mismatches: every ``--verify-every``-th answer is compared with
the in-process reference, ``export.retrieval.retrieve`` for that user alone on the same export in
this process, computed before the load (``export.service.batch_retrieval.same_ranking``: the same
items and scores up to float rounding; must be 0).

The catalogue: the export's own items and, with ``--catalogue N`` above their count, synthetic
rows appended up to ``N`` items (Gaussian with the per-dimension mean and standard deviation of
the real rows; seeded), written as a complete export in a temporary folder (item tokens, file
digests in ``user_tower.onnx`` and ``manifest.json`` updated), so that scoring costs what an
``N``-item catalogue costs. Histories: ``--lengths`` (default 1 .. 2 x max_seq_length, uniform)
real item tokens drawn uniformly, seeded.

The model (one of):
  --model-dir DIR        a directory written by `mind-recbole export` (no torch needed)
  --checkpoint FILE.pth  a MIND / YouTubeDNN checkpoint, exported to a temporary folder first (torch)

Usage:
  python benchmarks/serving_load.py --model-dir exported/mind-beauty --catalogue 100000
  python benchmarks/serving_load.py --model-dir DIR --clients 1 8 32 --requests 3000 --time-limit 60 --max-batch 1

Needs the serve extra (``pip install -e ".[serve]"``). Appends a Markdown section (command,
machine, date, load average before and after, the table) to ``--out`` (default
results/serving_load.md). Exit status 1 on any error or mismatch.
"""

import argparse
import datetime
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from export import artifacts  # noqa: E402  (standard library only)
from export.retrieval import retrieve  # noqa: E402  (numpy only)
from export.runtime import UserTower  # noqa: E402  (onnxruntime + numpy only)
from export.service.batch_retrieval import same_ranking  # noqa: E402
from export.service.client import ServiceClient  # noqa: E402  (standard library only)
from serving import cpu_model, table, usable_cores  # noqa: E402  (benchmarks/serving.py, shared by both reports)

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
SYNTHETIC_TOKEN = "SYNTHETIC-{:08d}"
SERVER_OPTIONS = ("--max-batch", "--max-wait-ms", "--timeout-ms")  # `mind-recbole serve` options passed on


# ---------------------------------------------------------------------------------------------- the export
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
    return np.concatenate([real, extra])


def enlarged_export(model_dir, size, out_dir):
    """A copy of the export in ``out_dir`` with ``size`` items (synthetic ones appended), its file
    digests, ``n_items`` and manifest updated so that ``UserTower`` accepts it."""
    import onnx  # a core dependency of the package (the exporter writes with it)

    shutil.copytree(model_dir, out_dir)
    vectors = build_catalogue(np.load(out_dir / artifacts.ITEM_EMBEDDINGS_FILE), size)
    tokens = json.loads((out_dir / artifacts.ITEM_TOKENS_FILE).read_text())
    tokens += [SYNTHETIC_TOKEN.format(i) for i in range(len(tokens), len(vectors))]
    np.save(out_dir / artifacts.ITEM_EMBEDDINGS_FILE, vectors)
    (out_dir / artifacts.ITEM_TOKENS_FILE).write_text(json.dumps(tokens))
    proto = onnx.load(str(out_dir / artifacts.ONNX_FILE))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    digests = json.loads(metadata[artifacts.META_FILE_DIGESTS])
    metadata[artifacts.META_FILE_DIGESTS] = json.dumps({name: artifacts.file_digest(out_dir / name) for name in digests})
    metadata[artifacts.META_N_ITEMS] = str(len(tokens))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save_model(proto, str(out_dir / artifacts.ONNX_FILE))
    manifest_path = out_dir / artifacts.MANIFEST_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        manifest["files"] = {name: artifacts.file_digest(out_dir / name) for name in manifest["files"]}
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def make_requests(tower, real_items, count, min_len, max_len, seed=1):
    """``count`` histories of the exported items (ids ``1 .. real_items - 1``, not synthetic ones),
    lengths uniform in ``min_len .. max_len``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, count)
    return [[tower.item_tokens[i] for i in rng.integers(1, real_items, n)] for n in lengths]


# ---------------------------------------------------------------------------------------------- the server
class ServerProcess:
    """``mind-recbole serve`` in a subprocess on a free port of 127.0.0.1; stopped with SIGINT."""

    def __init__(self, model_dir, server_args, log_path):
        command = [sys.executable, "-m", "mind_recbole", "serve", "--model-dir", str(model_dir), "--port", "0",
                   "--provider", "cpu", "--log-level", "warning", *server_args]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = None
        for line in self.process.stdout:  # the command prints the address once it listens
            if "serving on http://127.0.0.1:" in line:
                self.port = int(line.split("http://127.0.0.1:")[1].split()[0])
                break
        if self.port is None:
            self.stop()
            raise RuntimeError(f"the server did not start; see {log_path}")
        client = ServiceClient("127.0.0.1", self.port, timeout=60)
        if client.get("/healthz").status != 200:
            raise RuntimeError("the server is not healthy")
        self.metadata = client.get("/metadata").payload
        client.close()

    def stats(self):
        client = ServiceClient("127.0.0.1", self.port)
        try:
            return client.get("/stats").payload
        finally:
            client.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------- the load
def run_load(port, requests, clients, topk, time_limit, reference):
    """Send ``requests`` from ``clients`` threads (closed loop) until done or ``time_limit`` s.

    Returns a dict: ``completed``, ``seconds``, ``latencies`` (s, per answered request), ``errors``
    (Counter: HTTP status or exception type), ``first_error`` (text), ``verified``, ``mismatches``.
    """
    next_request = itertools.count()
    lock = threading.Lock()
    latencies, errors, first_error, answers = [], Counter(), [], {}
    barrier = threading.Barrier(clients)
    deadline = []

    def client_loop():
        client = ServiceClient("127.0.0.1", port)
        own_latencies, own_answers = [], {}
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            index = next(next_request)  # itertools.count is atomic under the GIL
            if index >= len(requests):
                break
            start = time.perf_counter()
            try:
                reply = client.retrieve(requests[index], topk=topk)
            except Exception as error:  # noqa: BLE001 - counted and reported, the load goes on
                failure = (type(error).__name__, f"{type(error).__name__}: {error}")
            else:
                failure = None if reply.status == 200 else (f"HTTP {reply.status}", reply.text[:500])
            if failure is not None:
                with lock:
                    errors[failure[0]] += 1
                    first_error[:] = first_error or [failure[1]]
                continue
            own_latencies.append(time.perf_counter() - start)
            if index in reference:
                own_answers[index] = list(zip(reply.payload["items"], reply.payload["scores"]))
        client.close()
        with lock:
            latencies.extend(own_latencies)
            answers.update(own_answers)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    deadline.append(start + time_limit)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    mismatches = sum(not same_ranking(items, reference[i]) for i, items in answers.items())
    return {
        "completed": len(latencies), "seconds": seconds, "latencies": np.asarray(latencies), "errors": errors,
        "first_error": first_error[0] if first_error else None, "verified": len(answers), "mismatches": int(mismatches),
    }


def summarise(clients, outcome, stats_before, stats_after):
    """One table row: clients, requests, seconds, requests/s, p50, p95, p99, max (ms), errors,
    batches, mean batch, verified, mismatches."""
    lat = outcome["latencies"] * 1e3
    p50, p95, p99, worst = (np.percentile(lat, [50, 95, 99, 100]) if lat.size else [float("nan")] * 4)
    batches = stats_after["batches"] - stats_before["batches"]
    processed = stats_after["processed"] - stats_before["processed"]
    return (
        clients, outcome["completed"], outcome["seconds"], outcome["completed"] / outcome["seconds"], p50, p95, p99,
        worst, sum(outcome["errors"].values()), batches, processed / batches if batches else float("nan"),
        outcome["verified"], outcome["mismatches"],
    )


# ---------------------------------------------------------------------------------------------- report
def uptime():
    """``uptime``'s line (the load average), or ``os.getloadavg()`` where there is no such command."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average %.2f %.2f %.2f" % os.getloadavg()


def machine_line():
    env = {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}
    return f"{cpu_model()}; os.cpu_count()={os.cpu_count()}, usable cores {usable_cores()}; thread env {env or 'none set'}"


def versions():
    import fastapi
    import onnxruntime
    import uvicorn

    return (f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="a directory written by `mind-recbole export`")
    source.add_argument("--checkpoint", type=Path, help="a checkpoint to export first (needs torch)")
    parser.add_argument("--catalogue", type=int, default=100_000, help="items scored per request (default 100000)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients (default 1 8 32)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per client count at most (default 3000)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per client count at most (default 60)")
    parser.add_argument("--topk", type=int, default=50)
    parser.add_argument("--lengths", type=int, nargs=2, metavar=("MIN", "MAX"), help="history lengths (default 1 .. 2 x max_seq_length)")
    for option in SERVER_OPTIONS:  # passed on when given; the server's own defaults otherwise
        parser.add_argument(option, type=float if option.endswith("-ms") else int,
                            help=f"server {option} (default: the server's{'; 1: no batching' if option == '--max-batch' else ''})")
    parser.add_argument("--verify-every", type=int, default=25, help="check every N-th answer against the in-process reference (default 25)")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. what else was running)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "serving_load.md")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/serving_load.py", shlex.join(sys.argv[1:] if argv is None else argv)])
    env_prefix = " ".join(f"{k}={os.environ[k]}" for k in THREAD_VARIABLES if k in os.environ)
    command = f"{env_prefix} {command}".strip()
    given = {option: getattr(args, option[2:].replace("-", "_")) for option in SERVER_OPTIONS}
    server_args = [f"{option}={value}" for option, value in given.items() if value is not None]

    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model_dir
        if args.checkpoint is not None:
            model_dir = Path(folder) / "model"
            print(export_checkpoint(args.checkpoint, model_dir).summary())
        exported_items = len(json.loads((model_dir / artifacts.ITEM_TOKENS_FILE).read_text()))
        if args.catalogue > exported_items:
            model_dir = enlarged_export(model_dir, args.catalogue, Path(folder) / "catalogue")
        tower = UserTower(model_dir, provider="cpu")
        min_len, max_len = args.lengths or (1, 2 * tower.max_seq_length)
        requests = make_requests(tower, exported_items, args.requests, min_len, max_len)
        check = range(0, len(requests), max(1, args.verify_every))
        t0 = time.perf_counter()
        reference = {}
        for i in check:
            recommendations, _ = retrieve(tower, [requests[i]], topk=args.topk)
            reference[i] = [(r.item, r.score) for r in recommendations[0]]
        reference_s = time.perf_counter() - t0
        print(f"in-process reference: {len(reference)} requests in {reference_s:.1f} s", flush=True)
        del tower  # the server holds its own copy

        load_before = uptime()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        server = ServerProcess(model_dir, server_args, Path(folder) / "server.log")
        try:
            metadata = server.metadata
            warm = ServiceClient("127.0.0.1", server.port)
            for history in requests[:20]:  # first calls pay for lazy initialisation
                warm.retrieve(history, topk=args.topk)
            warm.close()
            rows, failures = [], []
            for clients in args.clients:
                before = server.stats()
                outcome = run_load(server.port, requests, clients, args.topk, args.time_limit, reference)
                rows.append(summarise(clients, outcome, before, server.stats()))
                print(table(HEADER, rows[-1:], FORMATS).splitlines()[-1], flush=True)
                if outcome["errors"] or outcome["mismatches"]:
                    failures.append((clients, dict(outcome["errors"]), outcome["mismatches"], outcome["first_error"]))
        finally:
            server.stop()
        server_log = (Path(folder) / "server.log").read_text().strip()
        load_after = uptime()

    synthetic = metadata["items"] + 1 - exported_items
    parts = [
        f"## HTTP load test, {started}",
        "",
        f"- command: `{command}`",
        f"- server: `{' '.join(['mind-recbole serve --port 0 --provider cpu', *server_args])}` (batching "
        f"{metadata['batching']}; FastAPI + uvicorn, its own "
        f"process); clients: threads of the benchmark process, one keep-alive `http.client` connection each, closed loop",
        f"- model: {metadata['model']} from `{metadata.get('checkpoint') or args.model_dir or args.checkpoint}` "
        f"(dataset {metadata['dataset']}, K={metadata['interest_num']}, D={metadata['embedding_size']}, "
        f"max_seq_length={metadata['max_seq_length']}), ONNX Runtime CPU",
        f"- catalogue: {metadata['items']:,} items scored per request ({exported_items - 1:,} exported"
        + (f" + {synthetic:,} synthetic rows with the real rows' per-dimension mean and std" if synthetic else "")
        + f"); exact top-{args.topk}, the history excluded",
        f"- requests: at most {args.requests:,} per client count (time limit {args.time_limit:g} s), one user each, "
        f"histories of {min_len}..{max_len} real item tokens (uniform; longer than {metadata['max_seq_length']} is truncated)",
        f"- checked: every {args.verify_every}th answer ({len(reference)} requests) against `retrieve` for that user "
        f"alone in this process ({reference_s:.1f} s), same items and scores up to float rounding (`same_ranking`)",
        "- latency: client side, from sending a request to its whole answer read; batches and mean batch from the server's `/stats`",
        f"- machine: {machine_line()}; {versions()}",
        f"- `uptime` before: `{load_before}`",
        f"- `uptime` after: `{load_after}`",
    ]
    if args.note:
        parts.append(f"- note: {args.note}")
    parts += ["", table(HEADER, rows, FORMATS)]
    for clients, errors, mismatches, first in failures:
        parts += ["", f"**{clients} clients: errors {errors}, mismatches {mismatches}**", "", "```", (first or "").strip(), "```"]
    if failures and server_log:
        parts += ["", "Server log (last lines):", "", "```", "\n".join(server_log.splitlines()[-30:]), "```"]
    section = "\n".join(parts) + "\n"
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if args.out.exists() else "# Serving load tests (benchmarks/serving_load.py)\n\n"
    with args.out.open("a") as handle:
        handle.write(header + section + "\n")
    print(f"appended to {args.out}")
    return 1 if failures else 0


HEADER = ["clients", "requests", "seconds", "requests/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
          "batches", "mean batch", "verified", "mismatches"]
FORMATS = ["{}", "{:,}", "{:.1f}", "{:,.0f}", "{:.2f}", "{:.2f}", "{:.2f}", "{:.1f}", "{}", "{:,}", "{:.1f}", "{}", "{}"]


if __name__ == "__main__":
    sys.exit(main())
