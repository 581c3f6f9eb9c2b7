"""`--set` for run keys (where trials run) and the data check before a run: a suite whose dataset is
not on this machine is refused before anything is written, naming the path and the layout expected."""

import pytest

from adaptconv.cli import main
from adaptconv.results.store import ResultStore
from adaptconv.sweep.executors import make_plan, missing_data
from adaptconv.sweep.suite import SuiteError, load_suite, override_run_keys

SUITE = """\
name: real-data
description: CIFAR-10 from disk
base: {task: classification, dataset: cifar10, data_root: data/cifar10-not-here, steps: 1}
product: {op: [conv, pac]}
"""


def _suite(tmp_path):
    path = tmp_path / "real-data.yaml"
    path.write_text(SUITE)
    return path


def test_set_changes_run_keys_but_not_trial_ids(tmp_path):
    suite = load_suite(_suite(tmp_path))
    ids = [t.id for t in suite.trials]
    override_run_keys(suite, {"data_root": str(tmp_path), "threads": 2})
    assert [t.id for t in suite.trials] == ids
    assert all(t.config["data_root"] == str(tmp_path) and t.config["threads"] == 2 for t in suite.trials)
    assert missing_data(make_plan(suite, ResultStore(tmp_path / "r"))) == []


def test_set_refuses_what_changes_the_result(tmp_path):
    suite = load_suite(_suite(tmp_path))
    with pytest.raises(SuiteError, match="only run keys"):
        override_run_keys(suite, {"steps": 5})
    with pytest.raises(SuiteError, match="threads"):
        override_run_keys(suite, {"threads": "two"})


def test_run_without_the_data_is_refused_before_anything_runs(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", str(_suite(tmp_path)), "--results", str(results), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert "data_root 'data/cifar10-not-here' does not exist" in err and "cifar-10-batches-py" in err
    assert not (results / "trials").exists()  # nothing prepared, nothing claimed
    assert main(["run", str(_suite(tmp_path)), "--results", str(results), "--set", "data_root=/nowhere/x"]) == 2
    assert "'/nowhere/x' does not exist" in capsys.readouterr().err
