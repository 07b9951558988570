"""The ``mind-recbole`` command (also ``python -m mind_recbole``).

Sub-commands:
  prepare amazon   McAuley Amazon review files -> RecBole atomic files under datasets/NAME/
  train            train and test a model (ours or RecBole's) with RecBole
  quickstart       MIND beside Pop on MovieLens-100k, shipped inside RecBole's wheel (offline)

Heavy imports (torch, RecBole) happen inside the sub-commands that need them.
"""

import argparse
import json
import sys
from pathlib import Path

PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICKSTART_CONFIG = Path(__file__).resolve().parent / "properties" / "quickstart-ml-100k.yaml"


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        return args.handler(args, overrides)
    except (ValueError, FileNotFoundError) as error:
        print(f"mind-recbole {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(prog="mind-recbole", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="turn raw data into RecBole atomic files")
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    amazon = sources.add_parser("amazon", help="McAuley Amazon reviews / ratings CSV + metadata")
    amazon.add_argument("--reviews", required=True, type=Path, help="reviews JSON lines or ratings CSV (.gz ok)")
    amazon.add_argument("--meta", type=Path, help="metadata JSON lines (.gz ok): brand, categories")
    amazon.add_argument("--dataset", required=True, help="dataset name; files go to DATA_PATH/NAME/NAME.inter|.item")
    amazon.add_argument("--data-path", type=Path, default=Path("datasets"), help="output root (default: datasets)")
    amazon.add_argument("--k-core", type=int, default=5, help="keep users and items with >= N interactions, iterated (0: off)")
    amazon.add_argument("--min-rating", type=float, help="keep interactions rated >= this (needs ratings)")
    amazon.add_argument(
        "--format", default="auto", choices=["auto", "json", "csv-2014", "csv-2018"],
        help="reviews layout; csv-2014 is user,item,rating,time and csv-2018 item,user,rating,time",
    )
    amazon.add_argument("--no-progress", action="store_true", help="no progress bar")
    amazon.set_defaults(handler=prepare_amazon)

    train = commands.add_parser(
        "train",
        help="train and test a model with RecBole",
        epilog="Any --key=value is passed to RecBole as a config override, e.g. --epochs=2 --data_path=DIR.",
    )
    train.add_argument("--model", required=True, help="MIND, YouTubeDNN or any RecBole model (SASRec, Pop, ...)")
    train.add_argument("--dataset", required=True, help="dataset name (atomic files in data_path/NAME/)")
    train.add_argument(
        "--config", action="append", default=[], type=Path,
        help="YAML config file (repeatable; later files win). Default: configs/NAME.yaml when it exists",
    )
    train.add_argument("--result-json", type=Path, help="write the validation and test metrics here")
    train.set_defaults(handler=train_model)

    quickstart = commands.add_parser("quickstart", help="MIND beside Pop on MovieLens-100k (offline)")
    quickstart.add_argument("--epochs", type=int, default=5, help="MIND training epochs (default 5)")
    quickstart.add_argument("--result-json", type=Path, help="write both models' metrics here")
    quickstart.set_defaults(handler=run_quickstart)
    return parser


def prepare_amazon(args, _overrides):
    from mind_recbole.data.amazon import convert_amazon

    report = convert_amazon(
        reviews=args.reviews,
        meta=args.meta,
        dataset=args.dataset,
        data_path=args.data_path,
        k_core=args.k_core,
        min_rating=args.min_rating,
        reviews_format=args.format,
        show_progress=not args.no_progress,
    )
    print(report.summary())
    if not dataset_config_files(args.dataset):
        print(
            f"note: no configs/{args.dataset}.yaml; train with --config FILE "
            "(configs/amazon-beauty.yaml is a template for Amazon data)"
        )
    return 0


def dataset_config_files(dataset):
    """``configs/<dataset>.yaml`` from the working directory, else from the project checkout."""
    for folder in (Path.cwd() / "configs", PROJECT_CONFIGS):
        candidate = folder / f"{dataset}.yaml"
        if candidate.is_file():
            return [candidate]
    return []


def parse_overrides(overrides):
    """Check that extra arguments are RecBole-style ``--key=value`` overrides."""
    bad = [arg for arg in overrides if not (arg.startswith("--") and "=" in arg)]
    if bad:
        raise ValueError(f"unrecognized arguments {bad}: config overrides are written --key=value")
    return overrides


def train_model(args, overrides):
    from mind_recbole.quick_start import run_recbole

    config_files = args.config or dataset_config_files(args.dataset)
    for file in config_files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"config file not found: {file}")
    # RecBole reads --key=value overrides from sys.argv itself, with its own type conversion.
    sys.argv = [sys.argv[0]] + parse_overrides(overrides)
    result = run_recbole(
        model=args.model, dataset=args.dataset, config_file_list=[str(f) for f in config_files] or None
    )
    record = result_record(args.model, args.dataset, result, config_files)
    print(format_metrics_table({args.model: record["test_result"]}, title=f"test metrics on {args.dataset}"))
    write_json(args.result_json, record)
    return 0


def run_quickstart(args, _overrides):
    from mind_recbole.quick_start import run_recbole

    sys.argv = sys.argv[:1]
    records = {}
    for model, extra in (("MIND", {"epochs": args.epochs}), ("Pop", {"epochs": 1})):
        result = run_recbole(model=model, dataset="ml-100k", config_file_list=[str(QUICKSTART_CONFIG)], config_dict=extra)
        records[model] = result_record(model, "ml-100k", result, [QUICKSTART_CONFIG])
    print(format_metrics_table({m: r["test_result"] for m, r in records.items()}, title="test metrics on ml-100k"))
    write_json(args.result_json, records)
    return 0


def result_record(model, dataset, result, config_files):
    """A JSON-ready summary of one run (metric names as RecBole writes them, e.g. ``recall@50``)."""
    epoch_seconds = result.get("train_epoch_seconds") or []
    return {
        "model": model,
        "dataset": dataset,
        "config_files": [str(f) for f in config_files],
        "best_valid_result": {k: float(v) for k, v in result["best_valid_result"].items()},
        "test_result": {k: float(v) for k, v in result["test_result"].items()},
        "epochs": len(epoch_seconds),
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "saved_model_file": result.get("saved_model_file"),
    }


def format_metrics_table(results, title):
    """Rows: models; columns: metrics (``{model: {metric: value}}``)."""
    metrics = list(next(iter(results.values())))
    width = max(len("model"), *(len(m) for m in results))
    lines = [title, "  ".join(["model".ljust(width)] + [m.rjust(10) for m in metrics])]
    for model, values in results.items():
        lines.append("  ".join([model.ljust(width)] + [f"{values.get(m, float('nan')):10.4f}" for m in metrics]))
    return "\n".join(lines)


def write_json(path, payload):
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(path)
    print(f"wrote {path}")
