"""Training steps per second of a small torch step, idle and beside one busy process, under
OpenMP's wait policies: what ``mind_recbole.threads`` guards against.

Each setting runs in its own process (the policy is read when torch loads). The busy process is
the same step run with one torch thread, or ``--busy-command`` (e.g. a real training); it is
stopped after each measurement (the step loop also after ``--busy-limit`` seconds).

Usage:
  python benchmarks/thread_contention.py [--seconds 3] [--out results/epoch_speed.md]
  python benchmarks/thread_contention.py --busy-command "mind-recbole train --model SINE --dataset amazon-beauty"
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

# (name, environment, torch threads)
SETTINGS = (
    ("spin", {"GOMP_SPINCOUNT": "300000"}, 2),  # libgomp's default when OMP_WAIT_POLICY is unset
    ("PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, 2),  # what mind_recbole.threads sets
    ("spin", {"GOMP_SPINCOUNT": "300000"}, 1),
)
STEP = """
import json, sys, time
import torch
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
weights = torch.randn(64, 256, requires_grad=True)
table = torch.nn.Embedding(12000, 64)
ids = torch.randint(0, 12000, (256, 20))
def step():
    hidden = table(ids).mean(1) @ weights
    hidden.relu().sum().backward()
for _ in range(20):
    step()
start, steps = time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    step()
    steps += 1
print(json.dumps({"steps_per_second": steps / (time.perf_counter() - start)}))
"""


def clean_environment(extra):
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(extra)
    return environ


def measure(environment, threads, seconds):
    completed = subprocess.run([sys.executable, "-c", STEP, str(threads), str(seconds)], capture_output=True,
                               text=True, check=True, env=clean_environment(environment))
    return json.loads(completed.stdout.strip().splitlines()[-1])["steps_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per setting")
    parser.add_argument("--busy-limit", type=float, default=120.0, help="the busy step loop stops after this long")
    parser.add_argument("--busy-command", help="run this as the busy process instead of the step loop")
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    args = parser.parse_args()

    rows = []
    for name, environment, threads in SETTINGS:
        idle = measure(environment, threads, args.seconds)
        busy_command = (shlex.split(args.busy_command) if args.busy_command
                        else [sys.executable, "-c", STEP, "1", str(args.busy_limit)])
        busy = subprocess.Popen(busy_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            time.sleep(30 if args.busy_command else 2)  # a real training first loads its data
            beside = measure(environment, threads, args.seconds)
        finally:
            os.killpg(busy.pid, signal.SIGKILL)  # the command and any process it started
            busy.wait()
        rows.append((name, threads, idle, beside))
        print(f"{name} {threads} threads: {idle:.0f} idle, {beside:.0f} beside 1 busy", file=sys.stderr)
    busy_option = f" --busy-command {shlex.quote(args.busy_command)}" if args.busy_command else ""
    lines = [
        f"Small training step, {os.cpu_count()} CPUs "
        f"(`python benchmarks/thread_contention.py --seconds {args.seconds:g}{busy_option}`)",
        "",
        "| OpenMP wait | torch threads | steps / s idle | steps / s beside 1 busy | slow-down |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {threads} | {idle:.0f} | {beside:.0f} | {idle / beside:.1f}x |"
              for name, threads, idle, beside in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
