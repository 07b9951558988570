"""Seconds per training epoch: RecBole 1.2.1 as shipped vs. with our runtime settings.

Each setting runs in its own process (anomaly mode, thread count and malloc options are
process-wide), one after the other, so measure with nothing else running. Settings are cumulative:

  shipped       anomaly detection on (what importing RecBole's SINE does), torch's default threads
                (one per core), glibc's default malloc thresholds
  anomaly-off   + anomaly detection off (mind_recbole.compat)
  malloc        + raised mmap / trim thresholds (mind_recbole.performance) = what run_recbole does
  one-thread    + torch_threads=1 (the setting for a machine busy with other work)

Usage:
  python benchmarks/epoch_speed.py --model SASRec --dataset ml-100k
  python benchmarks/epoch_speed.py --model MIND --dataset amazon-beauty --out results/epoch_speed.md

Prints a Markdown table (and appends it to --out).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = ("shipped", "anomaly-off", "malloc", "one-thread")


def run_one(model, dataset, setting, epochs, config_files):
    """Train ``epochs`` epochs under ``setting`` in this process; print a JSON line of timings."""
    import torch

    from mind_recbole import compat
    from mind_recbole.quick_start import run_recbole

    compat.apply()
    level = SETTINGS.index(setting)
    torch.autograd.set_detect_anomaly(level < 1)
    config_dict = {
        "epochs": epochs,
        "torch_threads": 1 if level >= 3 else None,
        "malloc_tuning": level >= 2,
        "show_progress": False,
        "state": "WARNING",
        "eval_step": epochs,
    }
    sys.argv = sys.argv[:1]
    result = run_recbole(model=model, dataset=dataset, config_file_list=config_files, config_dict=config_dict, saved=False)
    print(json.dumps({"setting": setting, "threads": torch.get_num_threads(), "epoch_seconds": result["train_epoch_seconds"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config", action="append", default=[], help="RecBole YAML (repeatable)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting in this process
    args = parser.parse_args()

    if args.one:
        run_one(args.model, args.dataset, args.one, args.epochs, args.config or None)
        return

    rows = []
    for setting in args.settings.split(","):
        command = [sys.executable, __file__, "--model", args.model, "--dataset", args.dataset,
                   "--epochs", str(args.epochs), "--one", setting]
        for config in args.config:
            command += ["--config", config]
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.exit(f"{setting}: failed\n{completed.stderr[-3000:]}")
        record = json.loads(completed.stdout.strip().splitlines()[-1])
        record["process_seconds"] = time.perf_counter() - start
        rows.append(record)
        print(f"{setting}: {record['epoch_seconds']}", file=sys.stderr)

    baseline = sum(rows[0]["epoch_seconds"]) / len(rows[0]["epoch_seconds"])
    lines = [
        f"{args.model} on {args.dataset}, {args.epochs} epoch(s), {os.cpu_count()} CPUs "
        f"(`python benchmarks/epoch_speed.py --model {args.model} --dataset {args.dataset}"
        + "".join(f" --config {c}" for c in args.config) + "`)",
        "",
        "| setting | torch threads | s / epoch | speed-up vs shipped |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        seconds = sum(row["epoch_seconds"]) / len(row["epoch_seconds"])
        lines.append(f"| {row['setting']} | {row['threads']} | {seconds:.1f} | {baseline / seconds:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
