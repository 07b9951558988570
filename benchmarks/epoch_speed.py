"""Seconds per training epoch: RecBole 1.2.1 as shipped vs. with our runtime settings, on an
idle machine or beside one busy process.

Each setting runs in its own process (anomaly mode, thread count, OpenMP's wait policy and malloc
options are process-wide), one after the other, so measure with nothing else running. Settings
are cumulative:

  shipped       anomaly detection on (what importing RecBole's SINE does), torch's default threads
                (one per core), OpenMP's default spinning wait (GOMP_SPINCOUNT=300000, what libgomp
                does when OMP_WAIT_POLICY is unset), glibc's default malloc thresholds
  anomaly-off   + anomaly detection off (mind_recbole.compat)
  malloc        + raised mmap / trim thresholds (mind_recbole.runtime_settings)
  passive       + OMP_WAIT_POLICY=PASSIVE (mind_recbole.threads) = what run_recbole does
  one-thread    + torch_threads=1

``--beside-busy`` runs every setting a second time beside one busy process (one torch thread
multiplying matrices, as another training would; stopped when the benchmark ends, and after
``--busy-limit`` seconds at the latest), the situation of a shared machine.

``--model`` takes a comma-separated list to compare models on the same data and settings, e.g.
MIND against YouTubeDNN under the loss their defaults share (the table then gives each row's
seconds per epoch relative to the first row's model).

Usage:
  python benchmarks/epoch_speed.py --model SASRec --dataset ml-100k
  python benchmarks/epoch_speed.py --model MIND --dataset amazon-beauty --config configs/amazon-beauty.yaml \
      --settings malloc,passive,one-thread --beside-busy --out results/epoch_speed.md
  python benchmarks/epoch_speed.py --model YouTubeDNN,MIND --dataset amazon-beauty --config configs/amazon-beauty.yaml \
      --settings passive --epochs 2

Prints a Markdown table (and appends it to --out). ``--recipes`` gives each model the config files
``compare`` gives it, and ``--json results/DATASET-epoch-speed.json`` puts the idle rows into
``compare``'s report as the cost of each model's recipe measured alone:
  python benchmarks/epoch_speed.py --model MIND,YouTubeDNN,SASRec --dataset amazon-beauty --recipes \
      --settings passive --json results/amazon-beauty-epoch-speed.json
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = ("shipped", "anomaly-off", "malloc", "passive", "one-thread")
SPINNING = {"GOMP_SPINCOUNT": "300000"}  # libgomp's spin count when no wait policy is given
BUSY_LOOP = (
    "import sys, time, torch\n"
    "torch.set_num_threads(1)\n"
    "matrix, deadline = torch.randn(384, 384), time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < deadline:\n"
    "    matrix = torch.tanh(matrix @ matrix)\n"
)


def run_one(model, dataset, setting, epochs, config_files):
    """Train ``epochs`` epochs under ``setting`` in this process; print a JSON line of timings."""
    from mind_recbole.threads import configure_openmp

    configure_openmp()  # a no-op under the spinning settings, whose GOMP_SPINCOUNT the parent set
    import torch

    from mind_recbole import compat
    from mind_recbole.quick_start import run_recbole

    compat.apply()
    level = SETTINGS.index(setting)
    torch.autograd.set_detect_anomaly(level < 1)
    config_dict = {
        "epochs": epochs,
        "torch_threads": 1 if level >= 4 else None,
        "malloc_tuning": level >= 2,
        "show_progress": False,
        "state": "WARNING",
        "eval_step": epochs,
    }
    sys.argv = sys.argv[:1]
    result = run_recbole(model=model, dataset=dataset, config_file_list=config_files, config_dict=config_dict, saved=False)
    print(json.dumps({"setting": setting, "threads": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY", "spin"),
                      "epoch_seconds": result["train_epoch_seconds"]}))


def model_configs(args, model):
    """The YAML files ``model`` trains with: ``--config``, or with ``--recipes`` what ``compare`` reads
    for it (``configs/DATASET.yaml`` and ``configs/DATASET/MODEL.yaml`` where there is one)."""
    if args.recipes:
        from mind_recbole.config_files import dataset_config_files

        return [str(path) for path in dataset_config_files(args.dataset, model)]
    return args.config


def measure(args, model, setting):
    """One model under one setting in a child process; its JSON record plus the process's wall time."""
    configs = model_configs(args, model)
    command = [sys.executable, __file__, "--model", model, "--dataset", args.dataset,
               "--epochs", str(args.epochs), "--one", setting]
    for config in configs:
        command += ["--config", config]
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if SETTINGS.index(setting) < SETTINGS.index("passive"):
        environ.update(SPINNING)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=environ)
    if completed.returncode != 0:
        sys.exit(f"{setting}: failed\n{completed.stderr[-3000:]}")
    record = json.loads(completed.stdout.strip().splitlines()[-1])
    record["process_seconds"] = time.perf_counter() - start
    record["model"] = model
    record["config_files"] = configs
    return record


def measure_beside_busy(args, model, setting):
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(args.busy_limit)])
    try:
        time.sleep(2)  # the busy process is running before the measured one starts
        return measure(args, model, setting)
    finally:
        busy.kill()
        busy.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SASRec", help="a model, or several separated by commas")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config", action="append", default=[], help="RecBole YAML (repeatable)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--beside-busy", action="store_true", help="also measure each setting beside one busy process")
    parser.add_argument("--busy-limit", type=float, default=3600.0, help="the busy process stops after this many seconds")
    parser.add_argument(
        "--recipes", action="store_true",
        help="each model with the config files compare gives it (configs/DATASET.yaml and configs/DATASET/MODEL.yaml) "
        "instead of --config",
    )
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    parser.add_argument(
        "--json", type=Path,
        help="also write the rows here as JSON (compare's report shows OUT/DATASET-epoch-speed.json as the cost measured alone)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting in this process
    args = parser.parse_args()

    if args.one:
        run_one(args.model, args.dataset, args.one, args.epochs, args.config or None)
        return

    rows = []
    for model in args.model.split(","):
        for setting in args.settings.split(","):
            for machine, runner in (("idle", measure), ("beside 1 busy", measure_beside_busy)):
                if machine != "idle" and not args.beside_busy:
                    continue
                record = runner(args, model, setting)
                record["machine"] = machine
                rows.append(record)
                print(f"{model} {setting} ({machine}): {record['epoch_seconds']}", file=sys.stderr)

    def per_epoch(row):
        return sum(row["epoch_seconds"]) / len(row["epoch_seconds"])

    baseline = per_epoch(rows[0])
    idle = {(row["model"], row["setting"]): per_epoch(row) for row in rows if row["machine"] == "idle"}
    command = (f"python benchmarks/epoch_speed.py --model {args.model} --dataset {args.dataset}"
               + "".join(f" --config {c}" for c in args.config) + (" --recipes" if args.recipes else "")
               + (f" --epochs {args.epochs}" if args.epochs != 1 else "")
               + f" --settings {args.settings}" + (" --beside-busy" if args.beside_busy else ""))
    lines = [
        f"{args.model} on {args.dataset}, {args.epochs} epoch(s), {os.cpu_count()} CPUs (`{command}`)",
        "",
        "| model | setting | machine | torch threads | OpenMP wait | s / epoch | speed-up vs first row | cost vs first row | slow-down vs idle |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        seconds = per_epoch(row)
        own_idle = idle.get((row["model"], row["setting"]))
        slowdown = f"{seconds / own_idle:.2f}x" if own_idle else "-"
        lines.append(f"| {row['model']} | {row['setting']} | {row['machine']} | {row['threads']} | {row['wait_policy']} | "
                     f"{seconds:.1f} | {baseline / seconds:.2f}x | {seconds / baseline:.2f}x | {slowdown} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.json:
        from mind_recbole.atomic_write import write_json

        write_json(args.json, {
            "command": command, "date": datetime.datetime.now().isoformat(timespec="minutes"), "cpus": os.cpu_count(),
            "epochs": args.epochs,
            "rows": [{"model": row["model"], "setting": row["setting"], "machine": row["machine"], "threads": row["threads"],
                      "seconds_per_epoch": per_epoch(row), "config_files": row["config_files"]}
                     for row in rows],
        })
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
