"""The ``mind-recbole`` command (also ``python -m mind_recbole``).

Sub-commands:
  prepare amazon   McAuley Amazon review files -> RecBole atomic files under datasets/NAME/
  train            train and test a model (ours or RecBole's) with RecBole
  quickstart       MIND beside Pop on MovieLens-100k, shipped inside RecBole's wheel (offline)
  compare          every model on one dataset and split: results/NAME.md, .json and a plot
  export           an interest model checkpoint (MIND, YouTubeDNN, ComiRec) -> ONNX user tower + item embeddings (parity-checked)
  retrieve         top items for a history from an exported model (onnxruntime + numpy; no torch)
  index            a faiss ANN index over an exported model's items, built once and saved beside them
  serve            an HTTP retrieval service over an exported model, micro-batched (FastAPI; no torch)

Heavy imports (torch, RecBole) happen inside the sub-commands that need them.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from export import artifacts
from mind_recbole.atomic_write import write_json
from mind_recbole.config_files import DEFAULT_DATA_PATH, dataset_config_files
from mind_recbole.known_warnings import hide_known_warnings
from mind_recbole.results import format_metrics_table, result_record
from mind_recbole.threads import configure_openmp

TRACEBACK_VARIABLE = "MIND_RECBOLE_TRACEBACK"  # set: unexpected errors show their traceback
QUICKSTART_CONFIG = Path(__file__).resolve().parent / "properties" / "quickstart-ml-100k.yaml"


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    configure_openmp()  # before anything imports torch
    hide_known_warnings()
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    dashes = [a for a in arguments if a.startswith("--") and a.endswith("=--")]
    if dashes:  # argparse drops a value of "--" and passes [] on, past the option's type check
        print(f"mind-recbole: error: {dashes[0]}: got '--', which is not a value", file=sys.stderr)
        return 2
    args, overrides = parser.parse_known_args(arguments)
    args.raw_argv = arguments[1:]
    if overrides and args.command not in ("train", "compare"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        return args.handler(args, overrides)
    except (ValueError, OSError) as error:  # bad input, or a file that cannot be read or written
        if isinstance(error, BrokenPipeError):
            return stdout_closed()
        print(f"mind-recbole {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mind-recbole {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug of ours: one line, the traceback on request
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(
            f"mind-recbole {args.command}: internal error: {type(error).__name__}: {one_line(error)} "
            f"(a bug; set {TRACEBACK_VARIABLE}=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1


def one_line(error):
    """An exception's message on one line (RecBole's and pandas' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def stdout_closed():
    """The reader of our output went away (``mind-recbole retrieve ... | head``): stop quietly with
    the status of a process ended by SIGPIPE, as other command-line tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 128 + 13


def build_parser():
    from mind_recbole.compare.runner import DEFAULT_MODELS, SEED_SWEEP_MODELS  # no torch, no RecBole at import
    from mind_recbole.quick_start import DEFAULT_PORT
    parser = argparse.ArgumentParser(prog="mind-recbole", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="turn raw data into RecBole atomic files")
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    amazon = sources.add_parser("amazon", help="McAuley Amazon reviews / ratings CSV + metadata")
    amazon.add_argument("--reviews", required=True, type=Path, help="reviews JSON lines or ratings CSV (.gz ok)")
    amazon.add_argument("--meta", type=Path, help="metadata JSON lines (.gz ok): brand, categories")
    amazon.add_argument("--dataset", required=True, help="dataset name; files go to DATA_PATH/NAME/NAME.inter|.item")
    amazon.add_argument("--data-path", type=Path, default=DEFAULT_DATA_PATH, help="output root (default: datasets)")
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
        help="YAML config file (repeatable; later files win). Default: configs/NAME.yaml (and configs/NAME/MODEL.yaml), "
        "else the DATA_PATH/NAME/NAME.yaml that prepare wrote",
    )
    train.add_argument("--result-json", type=Path, help="write the validation and test metrics here")
    train.add_argument(
        "--valid-only", action="store_true", help="tuning: report validation metrics, never touch the test split"
    )
    train.add_argument(
        "--resume", type=Path, metavar="CHECKPOINT",
        help="continue training from this checkpoint (saved/MODEL-....pth) up to --epochs; it is overwritten",
    )
    distributed = train.add_argument_group(
        "distributed training (RecBole's torch.distributed mode; gloo on CPUs, nccl on GPUs with --gpu_id=0,1,...)"
    )
    distributed.add_argument("--nproc", type=int, default=1, help="processes on this machine (default 1)")
    distributed.add_argument("--world-size", type=int, default=-1, help="processes on all machines (default: --nproc)")
    distributed.add_argument("--ip", default="localhost", help="address of the machine running rank 0 (default localhost)")
    distributed.add_argument("--port", default=DEFAULT_PORT, help=f"free TCP port on rank 0's machine (default {DEFAULT_PORT})")
    distributed.add_argument(
        "--group-offset", type=int, default=0, help="rank of this machine's first process (0 on rank 0's machine)"
    )
    train.set_defaults(handler=train_model)

    quickstart = commands.add_parser("quickstart", help="MIND beside Pop on MovieLens-100k (offline)")
    quickstart.add_argument("--epochs", type=positive_int, default=20, help="MIND training epochs (default 20: 5-9 minutes on 2 cores)")
    quickstart.add_argument("--result-json", type=Path, help="write both models' metrics here")
    quickstart.add_argument(
        "--torch_threads", "--torch-threads", type=positive_int, metavar="N",
        help="torch threads (default: OMP_NUM_THREADS when set, else one per core)",
    )
    quickstart.set_defaults(handler=run_quickstart)

    compare = commands.add_parser(
        "compare",
        help="train and evaluate several models on the same split; tables, JSON and a plot",
        epilog="Any --key=value is passed to every run as a config override, e.g. --epochs=2.",
    )
    compare.add_argument("--dataset", required=True, help="dataset name (atomic files in data_path/NAME/)")
    compare.add_argument(
        "--models", default=",".join(DEFAULT_MODELS),
        help=f"comma-separated models (default {','.join(DEFAULT_MODELS)})",
    )
    compare.add_argument(
        "--config", action="append", default=[], type=Path,
        help="YAML config for every model (repeatable). Default: configs/NAME.yaml; "
        "configs/NAME/MODEL.yaml is added per model when it exists",
    )
    compare.add_argument(
        "--seeds", type=int, default=1,
        help="seeds 2020, 2021, ... for each of --seed-models; every other model gets one (default 1)",
    )
    compare.add_argument(
        "--seed-models", default=",".join(SEED_SWEEP_MODELS),
        help=f"comma-separated models that get --seeds seeds (default the contenders: {','.join(SEED_SWEEP_MODELS)})",
    )
    compare.add_argument(
        "--protocols", default="leave_one_out,multi_interest",
        help="leave_one_out (full ranking and 100 sampled negatives) and/or multi_interest (ComiRec's)",
    )
    compare.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results)")
    compare.add_argument(
        "--rerun", action="store_true",
        help="retrain every run from scratch, even those already in OUT (without it, a run stopped part-way "
             "resumes from its last checkpoint)",
    )
    compare.add_argument(
        "--report-only", action="store_true", help="train nothing: rewrite the report from the runs already in OUT"
    )
    compare.add_argument(
        "--valid-only", action="store_true",
        help="tuning: train and validate, never evaluate the test split; writes OUT/NAME-valid.md (validation "
             "results) and runs that a full compare does not reuse",
    )
    compare.set_defaults(handler=compare_command)

    export = commands.add_parser(
        "export", help="export a MIND / YouTubeDNN / ComiRecSA / ComiRecDR checkpoint for serving (ONNX user tower, item embeddings)"
    )
    export.add_argument("--checkpoint", required=True, type=Path, help="RecBole checkpoint, e.g. saved/MIND-....pth")
    export.add_argument("--out", required=True, type=Path, help="output directory (user_tower.onnx, item_embeddings.npy, ...)")
    export.add_argument("--opset", type=int, help="ONNX opset (default: torch's)")
    export.add_argument(
        "--atol", type=float, default=artifacts.PARITY_ATOL,
        help=f"parity tolerance, ONNX Runtime vs PyTorch (default {artifacts.PARITY_ATOL:g})",
    )
    export.add_argument(
        "--rtol", type=float, default=artifacts.PARITY_RTOL,
        help=f"added parity tolerance, times each case's largest |interest value| (default {artifacts.PARITY_RTOL:g})",
    )
    export.add_argument(
        "--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
        help="torch.onnx exporter; auto is dynamo with a TorchScript fallback (default auto)",
    )
    export.add_argument(
        "--quantize", choices=["int8"],
        help="also write user_tower.int8.onnx (int8 weights, dynamic quantization) and report its top-50 overlap with the float tower",
    )
    export.set_defaults(handler=export_checkpoint)

    retrieve = commands.add_parser("retrieve", help="top items for a history from an exported model (no torch needed)")
    retrieve.add_argument("--model-dir", required=True, type=Path, help="a directory written by `mind-recbole export`")
    retrieve.add_argument("--history", required=True, nargs="+", metavar="ITEM", help="item tokens (ASINs), oldest first")
    retrieve.add_argument("--user", help="user token; required by models with user profile fields (e.g. the quickstart's)")
    retrieve.add_argument("--topk", type=int, default=50, help="items to return (default 50)")
    retrieve.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device (default auto)")
    retrieve.add_argument(
        "--precision", default="fp32", choices=["fp32", "int8"],
        help="user tower graph: fp32 (user_tower.onnx) or int8 (user_tower.int8.onnx from export --quantize int8; default fp32)",
    )
    retrieve.add_argument(
        "--ann", action="store_true",
        help="faiss search instead of exact scoring (needs faiss): the index `mind-recbole index` saved in --model-dir, "
             "else an HNSW index built for this call",
    )
    retrieve.add_argument("--skip-unknown", action="store_true", help="drop unknown item tokens instead of failing")
    retrieve.add_argument("--include-history", action="store_true", help="allow the history's own items in the results")
    retrieve.add_argument("--json", action="store_true", help="print JSON")
    retrieve.set_defaults(handler=retrieve_items)
    add_index_parser(commands)
    add_serve_parser(commands)
    return parser


def add_index_parser(commands):
    from export.ann_index import DEFAULT_KIND, DEFAULT_SETTINGS

    index = commands.add_parser(
        "index", help="build a faiss ANN index over an export's items once and save it in the model directory (needs faiss)",
        epilog="retrieve --ann then uses it; a new export into the directory drops it. "
               "results/serving.md has the recall and speed of each setting.",
    )
    index.add_argument("--model-dir", required=True, type=Path, help="a directory written by `mind-recbole export`")
    index.add_argument("--kind", default=DEFAULT_KIND, choices=["ivf", "hnsw", "flat"],
                       help=f"ivf (inverted lists), hnsw (graph) or flat (exact, for checks); default {DEFAULT_KIND}")
    ivf, hnsw = DEFAULT_SETTINGS["ivf"], DEFAULT_SETTINGS["hnsw"]
    index.add_argument("--nlist", type=positive_int, help="ivf: lists (default about 4 sqrt(items))")
    index.add_argument("--nprobe", type=positive_int, help=f"ivf: lists searched per interest (default {ivf['nprobe']})")
    index.add_argument("--hnsw-m", type=positive_int, help=f"hnsw: links per node (default {hnsw['hnsw_m']})")
    index.add_argument("--ef-construction", type=positive_int, help=f"hnsw: build effort (default {hnsw['ef_construction']})")
    index.add_argument("--ef-search", type=positive_int, help=f"hnsw: search effort per interest (default {hnsw['ef_search']})")
    index.set_defaults(handler=index_items)


def add_serve_parser(commands):
    from export import service  # its defaults only: no fastapi, numpy or onnxruntime at parse time

    serve = commands.add_parser("serve", help="an HTTP retrieval service over an exported model (needs the serve extra)")
    serve.add_argument("--model-dir", required=True, type=Path, help="a directory written by `mind-recbole export`")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed)")
    serve.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device (default auto)")
    serve.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                       help="user tower graph: fp32 or int8 (user_tower.int8.onnx from export --quantize int8; default fp32)")
    serve.add_argument("--ann", action="store_true", help="allow \"ann\": true requests: the index saved by `mind-recbole index`, else an HNSW index built at start")
    serve.add_argument("--max-batch", type=positive_int, default=service.DEFAULT_MAX_BATCH,
                       help=f"requests per user-tower call at most (default {service.DEFAULT_MAX_BATCH})")
    serve.add_argument("--max-wait-ms", type=float, default=service.DEFAULT_MAX_WAIT_MS,
                       help=f"wait for more requests after a batch's first, in ms (default {service.DEFAULT_MAX_WAIT_MS:g})")
    serve.add_argument("--timeout-ms", type=float, default=service.DEFAULT_TIMEOUT_MS,
                       help=f"a request's deadline in ms; past it the answer is 503 (default {service.DEFAULT_TIMEOUT_MS:g})")
    serve.add_argument("--queue-size", type=positive_int, default=service.DEFAULT_QUEUE_SIZE,
                       help=f"requests waiting at most; more get 503 at once (default {service.DEFAULT_QUEUE_SIZE})")
    serve.add_argument("--max-topk", type=positive_int, default=service.DEFAULT_MAX_TOPK,
                       help=f"largest topk a request may ask (default {service.DEFAULT_MAX_TOPK})")
    serve.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads (default: its own, one per core)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="server log level (default info)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=serve_model)


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
    data_path = "" if args.data_path == DEFAULT_DATA_PATH else f" --data_path={args.data_path}"
    print(f"next: mind-recbole train --model MIND --dataset {args.dataset}{data_path}")
    return 0


def chosen_config_files(args, model=None, overrides=()):
    """``--config`` files, else the dataset's (and the model's tuned) files; each must exist."""
    data_path = next((arg.split("=", 1)[1] for arg in overrides if arg.startswith("--data_path=")), None)
    config_files = args.config or dataset_config_files(args.dataset, model, data_path)
    for file in config_files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"config file not found: {file}")
    return config_files


def recbole_command_line(overrides=()):
    """Leave only ``overrides`` after the program name in ``sys.argv``: RecBole reads every
    ``--key=value`` there as a config override, our own options included."""
    sys.argv = sys.argv[:1] + list(overrides)


def parse_overrides(overrides):
    """Check that extra arguments are RecBole-style ``--key=value`` overrides."""
    bad = [arg for arg in overrides if not (arg.startswith("--") and "=" in arg)]
    if bad:
        raise ValueError(f"unrecognized arguments {bad}: config overrides are written --key=value")
    return overrides


def train_model(args, overrides):
    from mind_recbole import compat
    from mind_recbole.quick_start import run as run_distributed

    config_files = chosen_config_files(args, args.model, overrides)
    recbole_command_line(parse_overrides(overrides))  # RecBole converts their types itself
    compat.apply()
    from mind_recbole.config import check_command_line_keys

    check_command_line_keys(overrides)  # here the command line is all config: a typo is an error
    if args.resume is not None and not args.resume.is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {args.resume}")
    result = run_distributed(
        model=args.model, dataset=args.dataset, config_file_list=[str(f) for f in config_files] or None,
        nproc=args.nproc, world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
        evaluate_test=not args.valid_only, resume=None if args.resume is None else str(args.resume),
    )
    if result is None:  # a distributed run whose first local process did not report
        print("no result from this machine's processes (see the log of rank 0)", file=sys.stderr)
        return 1
    if result.get("distributed"):
        print("distributed: {world_size} processes, weights agree: {weights_agree}".format(**result["distributed"]))
    record = result_record(args.model, args.dataset, result, config_files)
    split = "valid" if args.valid_only else "test"
    print(format_metrics_table({args.model: record["best_valid_result" if args.valid_only else "test_result"]}, title=f"{split} metrics on {args.dataset}"))
    write_result_json(args.result_json, record)
    return 0


def compare_command(args, overrides):
    from mind_recbole.compare import PROTOCOL_GROUPS, compare

    config_files = chosen_config_files(args, overrides=overrides)
    models, groups = comma_list(args.models), comma_list(args.protocols)
    unknown = [p for p in groups if p not in PROTOCOL_GROUPS]
    if unknown or not groups:
        raise ValueError(f"--protocols: unknown {unknown}; choose from {', '.join(PROTOCOL_GROUPS)}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    recbole_command_line()  # overrides go to every run through config_dict
    paths = compare(
        args.dataset, models, config_files, args.seeds, args.out, groups,
        overrides=parse_override_values(overrides), rerun=args.rerun, report_only=args.report_only,
        seed_models=comma_list(args.seed_models), valid_only=args.valid_only,
        config_dir=Path(config_files[0]).parent if config_files else Path("configs"),
        command="mind-recbole compare " + " ".join(args.raw_argv),
    )
    for kind, path in paths.items():
        if path:
            print(f"wrote {path}")
    return 0


def comma_list(text):
    """``"MIND, Pop,"`` -> ``["MIND", "Pop"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_override_values(overrides):
    """``--key=value`` arguments -> ``{key: value}``, values read as YAML (``2`` -> 2, ``[a, b]`` -> list)."""
    import yaml

    values = {}
    for argument in parse_overrides(overrides):
        key, _, text = argument[2:].partition("=")
        values[key] = yaml.safe_load(text) if text else None
    return values


def run_quickstart(args, _overrides):
    from mind_recbole.quick_start import run_recbole

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    recbole_command_line()
    records = {}
    for model, extra in (("MIND", {"epochs": args.epochs}), ("Pop", {"epochs": 1})):
        extra["torch_threads"] = args.torch_threads  # None: OMP_NUM_THREADS, else one per core
        result = run_recbole(model=model, dataset="ml-100k", config_file_list=[str(QUICKSTART_CONFIG)], config_dict=extra)
        records[model] = result_record(model, "ml-100k", result, [QUICKSTART_CONFIG])
    print(format_metrics_table({m: r["test_result"] for m, r in records.items()}, title="test metrics on ml-100k"))
    write_result_json(args.result_json, records)
    print(quickstart_next_steps(records["MIND"]["saved_model_file"]))
    return 0


def quickstart_next_steps(checkpoint):
    """Where the MIND checkpoint went and the commands that serve it (the model uses user profile
    fields, so ``retrieve`` needs ``--user``; an ml-100k user and the items of their history)."""
    from mind_recbole.data.atomic_files import dataset_folder
    from mind_recbole.evaluation.multi_interest import read_sequences
    from mind_recbole.training import build_config

    config = build_config("Pop", "ml-100k", [str(QUICKSTART_CONFIG)], {"use_gpu": False})
    sequences = read_sequences(dataset_folder(config) / "ml-100k.inter")
    user = min(sequences, key=lambda token: int(token) if token.isdigit() else token)
    history = " ".join(sequences[user][-5:])
    return "\n".join([
        f"MIND checkpoint: {checkpoint}",
        "next: serve it (ONNX user tower, then retrieval with onnxruntime and numpy only):",
        f"  mind-recbole export --checkpoint {checkpoint} --out exported/mind-ml-100k",
        f"  mind-recbole retrieve --model-dir exported/mind-ml-100k --user {user} --history {history} --topk 10",
    ])


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def write_result_json(path, payload):
    """Write ``payload`` to ``--result-json`` (when given) atomically and say so."""
    if path is None:
        return
    write_json(path, payload)
    print(f"wrote {path}")


def export_checkpoint(args, _overrides):
    from export.onnx_export import ParityError, export_user_tower

    try:
        result = export_user_tower(
            args.checkpoint, args.out, opset=args.opset, atol=args.atol, exporter=args.exporter, quantize=args.quantize, rtol=args.rtol
        )
    except ParityError as error:
        print(f"mind-recbole export: parity check failed: {error}", file=sys.stderr)
        if error.report is not None:
            print(error.report, file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def retrieve_items(args, _overrides):
    # onnxruntime + numpy only: this must work where torch is not installed.
    import warnings

    from export.ann_index import tower_index
    from export.retrieval import retrieve
    from export.runtime import ProviderFallbackWarning, UserTower

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        tower = UserTower(args.model_dir, provider=args.provider, precision=args.precision)
    for warning in caught:
        print(f"mind-recbole retrieve: warning: {warning.message}", file=sys.stderr)
    if tower.uses_user_id and args.user is None:
        example = next(iter(tower.user_index), "USER")
        raise ValueError(
            f"{args.model_dir} is a model with user profile fields: give the user with --user TOKEN "
            f"(a user of its training data, e.g. --user {example})"
        )
    if not tower.uses_user_id and args.user is not None:
        raise ValueError(f"--user: {args.model_dir} is a model without user profile fields; leave --user out")
    index = None
    if args.ann:
        try:
            index = tower_index(tower, on_build=lambda: print(
                f"mind-recbole retrieve: no saved index in {args.model_dir}: building an HNSW index for this call "
                f"(`mind-recbole index --model-dir {args.model_dir}` saves one)", file=sys.stderr))
        except ImportError as error:
            print(f"mind-recbole retrieve: error: {error}", file=sys.stderr)
            return 2
    search = "exact" if index is None else index.kind
    users = [args.user] if args.user is not None else None
    recommendations, mask = retrieve(
        tower, [args.history], topk=args.topk, index=index, exclude_history=not args.include_history,
        on_unknown="skip" if args.skip_unknown else "error", users=users,
    )
    items = recommendations[0]
    active = int(mask[0].sum())
    if args.json:
        payload = {
            "model": tower.metadata.get("model"),
            "history": args.history,
            "active_interests": active,
            "interest_num": tower.interest_num,
            "provider": tower.providers[0],
            "search": search,
            "items": [
                {"rank": rank, "item": r.item, "score": r.score, "interest": r.interest}
                for rank, r in enumerate(items, 1)
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(
        f"top {len(items)} for a history of {len(args.history)} items: {active} of {tower.interest_num} interests "
        f"active, {search} search on {tower.providers[0]}"
    )
    width = max([len("item")] + [len(r.item) for r in items])
    print(f"{'rank':>4}  {'item'.ljust(width)}  {'score':>10}  interest")
    for rank, r in enumerate(items, 1):
        print(f"{rank:>4}  {r.item.ljust(width)}  {r.score:10.5g}  {r.interest:>8}")
    return 0


def index_items(args, _overrides):
    # numpy + onnxruntime + faiss only, like retrieve.
    from export.ann_index import build_saved_index, index_paths, index_settings, recorded_embeddings_sha256
    from export.runtime import UserTower

    settings = index_settings(args.kind, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                              ef_construction=args.ef_construction, ef_search=args.ef_search)
    tower = UserTower(args.model_dir, provider="cpu")  # the export is checked whole (digests, finite rows) first
    try:
        index = build_saved_index(args.model_dir, tower.item_vectors, args.kind,
                                  recorded_embeddings_sha256(tower.metadata), **settings)
    except ImportError as error:
        print(f"mind-recbole index: error: {error}", file=sys.stderr)
        return 2
    index_file, sidecar = index_paths(args.model_dir)
    print(f"wrote {index_file} ({index.describe()}, {index.index.ntotal:,} items) and {sidecar}")
    print(f"next: mind-recbole retrieve --model-dir {args.model_dir} --history ITEM ... --ann")
    return 0


def serve_model(args, _overrides):
    # onnxruntime + numpy + fastapi only: like retrieve, this must work where torch is not installed.
    try:
        from export.service.app import check_settings, create_app, listening_socket, serve
        from export.service.batch_retrieval import open_retriever
    except ImportError as error:  # the serve extra
        print(f"mind-recbole serve: error: {error}", file=sys.stderr)
        return 2
    check_settings(max_wait_ms=args.max_wait_ms, timeout_ms=args.timeout_ms)
    with listening_socket(args.host, args.port) as sock:  # a busy port is an error before the model loads
        try:
            retriever = open_retriever(args.model_dir, provider=args.provider, ann=args.ann, max_topk=args.max_topk,
                                       intra_op_num_threads=args.threads or 0, precision=args.precision)
        except ImportError as error:  # faiss, for --ann
            print(f"mind-recbole serve: error: {error}", file=sys.stderr)
            return 2
        app = create_app(retriever, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         timeout_ms=args.timeout_ms, queue_size=args.queue_size)
        model = retriever.describe()
        index = f", {model['ann_index']} index" if model["ann_index"] else ""
        print(f"mind-recbole serve: {model['model']} from {args.model_dir} ({model['items']:,} items, "
              f"K={model['interest_num']}, {model['provider']}{index})", flush=True)
        return serve(app, sock, log_level=args.log_level, access_log=args.access_log,
                     announce=lambda line: print(f"mind-recbole serve: {line}", flush=True))
