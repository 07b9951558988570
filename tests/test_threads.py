"""OpenMP's wait policy: set before torch loads, never over the user's own choice."""

import json
import os
import subprocess
import sys

import pytest

from mind_recbole.threads import OPENMP_DEFAULTS, configure_openmp, thread_count_from_environment


def test_passive_wait_policy_is_set_in_a_clean_environment():
    environ = {"PATH": "/bin"}
    assert configure_openmp(environ) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert environ == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("user_setting", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}])
def test_a_users_own_wait_setting_is_kept(user_setting):
    environ = dict(user_setting)
    assert configure_openmp(environ) == {}
    assert environ == user_setting


@pytest.mark.parametrize("value, expected", [("1", 1), (" 4 ", 4), ("2,1", 2), ("0", None), ("-1", None), ("x", None)])
def test_omp_num_threads_is_read_as_a_positive_count(value, expected):
    assert thread_count_from_environment({"OMP_NUM_THREADS": value}) == expected
    assert thread_count_from_environment({}) is None


def run_probe(lines):
    """Run ``lines`` in a fresh interpreter without a wait policy in its environment; (last JSON line, stderr)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    completed = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True,
                               env=environ, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


def test_entry_points_set_the_policy_before_torch_is_imported():
    """The command line sets it while torch is still unloaded."""
    state, _ = run_probe([
        "import json, os, sys",
        "from mind_recbole import cli",
        "cli.main(['prepare', 'amazon', '--reviews', '/nonexistent.json', '--dataset', 'x'])",
        "print(json.dumps({'policy': os.environ.get('OMP_WAIT_POLICY'), 'torch': 'torch' in sys.modules}))",
    ])
    assert state == {"policy": "PASSIVE", "torch": False}


def test_run_recbole_config_sets_the_policy_and_warns_when_torch_came_first():
    state, stderr = run_probe([
        "import json, logging, os",
        "logging.basicConfig(level=logging.WARNING)",
        "import torch",
        "from mind_recbole.training import build_config",
        "build_config('Pop', 'ml-100k', config_dict={'use_gpu': False})",
        "print(json.dumps({'policy': os.environ.get('OMP_WAIT_POLICY')}))",
    ])
    assert state == {"policy": OPENMP_DEFAULTS["OMP_WAIT_POLICY"]}
    assert "torch was imported before mind_recbole set OMP_WAIT_POLICY=PASSIVE" in stderr
