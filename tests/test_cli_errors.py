"""Every sub-command ends in a correct result or a one-line ``mind-recbole CMD: error: ...`` with
exit 2: never a traceback, never half-written output.

The sweep runs the command in this process (``cli.main``) with garbage drawn by hypothesis for
each argument and config key; exit 1 is the catch-all for a bug of ours, so a sweep that sees it
fails. A few cases run as real processes, where the interpreter itself could still print a
traceback (a closed pipe at exit).
"""

import gzip
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mind_recbole import cli

SWEEP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Text that is not a number, a negative or zero count, a fraction where a count is needed.
NOT_A_COUNT = st.one_of(
    st.text(alphabet="abcxyz_-!%", min_size=1, max_size=8),
    st.integers(max_value=0).map(str),
    st.floats(min_value=0.1, max_value=9.9).map(lambda x: f"{x:.2f}"),
)
COUNT_KEYS = ["epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH", "embedding_size",
              "interest_num", "routing_iterations", "num_negatives", "stopping_step", "eval_step"]
NUMBER_KEYS = ["learning_rate", "dropout_prob", "attention_pow", "routing_init_std", "negative_sampling_alpha"]
BOOL_KEYS = ["fixed_routing_init", "routing_detach_logits", "reproducibility"]
# Checked by the model's own check_config ("interest_num (K) must be >= 1, got 0"); the others by
# the config's type check ("config key 'epochs' ... is 0; it must be at least 1").
PLUGIN_KEYS = {"embedding_size", "interest_num", "routing_iterations", "num_negatives"}


def run_in_process(argv, capsys, monkeypatch):
    """``cli.main(argv)``: (exit status, stdout, stderr); sys.argv as a real command line would be."""
    monkeypatch.setattr(sys, "argv", ["mind-recbole", *argv])
    try:
        status = cli.main(argv)
    except SystemExit as stop:  # argparse's usage errors
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, stderr, command, *fragments):
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith((f"mind-recbole {command}: error:", "mind-recbole: error:",
                                                              f"mind-recbole {command.split()[0]}: error:"))]
    assert error_lines, stderr
    for fragment in fragments:
        assert fragment in error_lines[-1], error_lines[-1]


@SWEEP
@given(key=st.sampled_from(COUNT_KEYS), value=NOT_A_COUNT)
def test_train_rejects_a_count_that_is_not_one(key, value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    status, _, stderr = run_in_process(
        ["train", "--model", "MIND", "--dataset", "ml-100k", f"--{key}={value}"], capsys, monkeypatch
    )
    assert_one_line_error(status, stderr, "train", key, "got" if key in PLUGIN_KEYS else "is")
    assert len(stderr.splitlines()) == 1  # the error comes before RecBole logs the config


@SWEEP
@given(key=st.sampled_from(NUMBER_KEYS), value=st.text(alphabet="abcxyz_!%", min_size=1, max_size=8))
def test_train_rejects_a_word_where_a_number_is_needed(key, value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    status, _, stderr = run_in_process(
        ["train", "--model", "MIND", "--dataset", "ml-100k", f"--{key}={value}"], capsys, monkeypatch
    )
    assert_one_line_error(status, stderr, "train", key, repr(value))


@SWEEP
@given(key=st.sampled_from(BOOL_KEYS), value=st.sampled_from(["yes", "1", "0", "maybe", "[True]"]))
def test_train_rejects_a_non_bool_for_a_switch(key, value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    status, _, stderr = run_in_process(
        ["train", "--model", "MIND", "--dataset", "ml-100k", f"--{key}={value}"], capsys, monkeypatch
    )
    assert_one_line_error(status, stderr, "train", key, "True or False")


def test_train_on_a_missing_dataset_says_prepare_first(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    status, _, stderr = run_in_process(["train", "--model", "MIND", "--dataset", "no-such-data"], capsys, monkeypatch)
    assert_one_line_error(status, stderr, "train", "no-such-data.inter not found", "mind-recbole prepare amazon")
    assert len(stderr.splitlines()) == 1


@SWEEP
@given(
    option=st.sampled_from(["--seeds", "--protocols", "--models"]),
    value=st.sampled_from(["0", "-3", "x", "", "leave_one_out,nonsense", ",", "NoSuchModel"]),
)
def test_compare_rejects_bad_arguments(option, value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if option == "--seeds" and not value.lstrip("-").isdigit():
        value = "0"
    if option != "--models" and value == "NoSuchModel":
        value = "-3" if option == "--seeds" else "x"
    status, _, stderr = run_in_process(
        ["compare", "--dataset", "no-such-data", f"{option}={value}", "--out", str(tmp_path / "out")], capsys, monkeypatch
    )
    assert status == 2 and "Traceback" not in stderr, stderr


@SWEEP
@given(value=NOT_A_COUNT)
def test_quickstart_rejects_bad_counts(value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for option in ("--epochs", "--torch_threads"):
        status, _, stderr = run_in_process(["quickstart", f"{option}={value}"], capsys, monkeypatch)
        assert status == 2 and "Traceback" not in stderr, stderr
        assert "expected an integer >= 1" in stderr or "got '--', which is not a value" in stderr, stderr


@pytest.mark.parametrize("argv", [
    ["quickstart", "--epochs=--"], ["compare", "--dataset", "x", "--seeds=--"],
    ["retrieve", "--model-dir", "x", "--history", "a", "--topk=--"], ["train", "--model", "MIND", "--dataset", "x",
                                                                      "--nproc=--"],
])
def test_a_double_dash_value_is_refused_before_argparse_drops_it(argv, capsys, monkeypatch):
    """Python's argparse turns ``--topk=--`` into ``[]`` past the option's type check."""
    status, _, stderr = run_in_process(argv, capsys, monkeypatch)
    assert status == 2 and "got '--', which is not a value" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("content", [b"", b"\x00\x01 not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_export_of_a_file_that_is_no_checkpoint_is_named(content, capsys, monkeypatch, tmp_path):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(content)
    status, _, stderr = run_in_process(
        ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")], capsys, monkeypatch
    )
    assert_one_line_error(status, stderr, "export", str(checkpoint))
    assert not (tmp_path / "out").exists()


@SWEEP
@given(topk=st.integers(max_value=0), history=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3))
def test_retrieve_rejects_bad_arguments_before_loading(topk, history, capsys, monkeypatch, tmp_path):
    status, _, stderr = run_in_process(
        ["retrieve", "--model-dir", str(tmp_path / "nowhere"), f"--topk={topk}", "--history", *history],
        capsys, monkeypatch,
    )
    assert status == 2 and "Traceback" not in stderr, stderr


def test_retrieve_from_a_folder_that_is_no_export_is_named(capsys, monkeypatch, tmp_path):
    status, _, stderr = run_in_process(
        ["retrieve", "--model-dir", str(tmp_path), "--history", "B000000001"], capsys, monkeypatch
    )
    assert status == 2 and "Traceback" not in stderr and str(tmp_path) in stderr, stderr


# ---------------------------------------------------------------------------------------------- prepare
def gz_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    return path


@SWEEP
@given(
    lines=st.lists(st.one_of(st.text(max_size=30), st.just('{"reviewerID": "A", "asin": 5}')), min_size=1, max_size=6),
    k_core=st.integers(-2, 6),
    fmt=st.sampled_from(["auto", "json", "csv-2014", "csv-2018"]),
)
def test_prepare_on_garbage_never_writes_a_half_dataset(lines, k_core, fmt, capsys, monkeypatch, tmp_path_factory):
    folder = tmp_path_factory.mktemp("garbage")
    reviews = folder / "reviews.txt"
    reviews.write_text("\n".join(line.replace("\r", " ") for line in lines), encoding="utf-8", errors="replace")
    status, _, stderr = run_in_process(
        ["prepare", "amazon", "--reviews", str(reviews), "--dataset", "g", "--data-path", str(folder / "out"),
         "--k-core", str(k_core), "--format", fmt, "--no-progress"], capsys, monkeypatch,
    )
    assert status in (0, 2) and "Traceback" not in stderr, stderr
    written = sorted(p.name for p in (folder / "out" / "g").glob("*")) if (folder / "out" / "g").exists() else []
    if status == 2:
        assert written == []  # nothing, not a part
    else:
        assert {"g.inter", "g.yaml"} <= set(written)


def test_prepare_into_a_data_path_that_is_a_file_is_named(synthetic_amazon, capsys, monkeypatch, tmp_path):
    reviews, _ = synthetic_amazon
    blocker = tmp_path / "datasets"
    blocker.write_text("a file, not a folder")
    status, _, stderr = run_in_process(
        ["prepare", "amazon", "--reviews", str(reviews), "--dataset", "x", "--data-path", str(blocker), "--no-progress"],
        capsys, monkeypatch,
    )
    assert_one_line_error(status, stderr, "prepare", str(blocker))


@pytest.mark.parametrize("fmt, plainly", [("csv-2014", "csv-2018"), ("csv-2018", "csv-2014"), ("json", "csv-2014"),
                                          ("csv-2014", "json")])
def test_a_format_the_file_plainly_contradicts_is_an_error(fmt, plainly, capsys, monkeypatch, tmp_path):
    rows = [("AUSER%05dXYZ" % u, "B%09d" % (u % 7), "5.0", str(1_300_000_000 + u)) for u in range(40)]
    if plainly == "json":
        lines = [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": int(t)}) for u, i, _, t in rows]
    elif plainly == "csv-2014":
        lines = [",".join(row) for row in rows]
    else:
        lines = [",".join((i, u, r, t)) for u, i, r, t in rows]
    reviews = gz_lines(tmp_path / "reviews.gz", lines)
    status, _, stderr = run_in_process(
        ["prepare", "amazon", "--reviews", str(reviews), "--dataset", "x", "--data-path", str(tmp_path / "out"),
         "--format", fmt, "--k-core", "0", "--no-progress"], capsys, monkeypatch,
    )
    assert_one_line_error(status, stderr, "prepare", f"--format {fmt} contradicts the file", f"--format {plainly}")
    assert not (tmp_path / "out" / "x").exists()


# ---------------------------------------------------------------------------------------------- real processes
def mind_recbole(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, "-m", "mind_recbole", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, stdin=stdin)


@pytest.mark.parametrize("argv, command", [
    (["train", "--model", "MIND", "--dataset", "nowhere"], "train"),
    (["train", "--model", "MIND", "--dataset", "ml-100k", "--epochs=ten"], "train"),
    (["train", "--model", "MIND", "--dataset", "ml-100k", "--epochs=0"], "train"),
    (["compare", "--dataset", "nowhere", "--seeds", "0"], "compare"),
    (["export", "--checkpoint", "missing.pth", "--out", "x"], "export"),
    (["retrieve", "--model-dir", "nowhere", "--history", "B1"], "retrieve"),
    (["prepare", "amazon", "--reviews", "missing.json", "--dataset", "x"], "prepare"),
    (["quickstart", "--epochs", "0"], "quickstart"),
])
def test_each_sub_command_with_garbage_prints_one_line_and_no_traceback(argv, command, tmp_path):
    result = mind_recbole(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"mind-recbole {command}: error:")


def test_a_reader_that_stops_early_gets_no_traceback(mind_export, tmp_path):
    """``mind-recbole retrieve ... | head -2``: the rest of the output has nowhere to go."""
    import json as json_module

    model_dir = mind_export[0]
    history = json_module.loads((model_dir / "item_tokens.json").read_text())[5:8]
    child = subprocess.Popen(
        [sys.executable, "-m", "mind_recbole", "retrieve", "--model-dir", str(model_dir), "--history", *history,
         "--topk", "1200", "--json"],  # about 100 kB: more than a pipe holds
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    first = child.stdout.readline()
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141 and first.strip() == b"{"
    assert stderr == ""
