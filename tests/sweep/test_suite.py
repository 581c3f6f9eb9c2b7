"""Suite expansion semantics, stable ids, and a catalogue of bad suite files with their errors."""

import textwrap

import pytest

from adaptconv.sweep.ids import check_trial_id, identity, trial_id
from adaptconv.sweep.suite import SuiteError, load_suite
from adaptconv.trial import parse_trial_config

BASE = """\
name: t
description: test
base:
  task: classification
  dataset: digits
  steps: 2
"""


def write(tmp_path, text, name="suite.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def values(suite, key):
    from adaptconv.sweep.suite import _get

    return [_get(t.config, key) for t in suite.trials]


def test_product_zip_seeds(tmp_path):
    s = load_suite(write(tmp_path, BASE + """\
product:
  op: [conv, pac, paka]
  optimizer.name: [adam, sgd]
zip:
  optimizer.lr: [0.1, 0.01]
  batch_size: [8, 16]
seeds: [0, 1]
"""))
    assert len(s.trials) == 3 * 2 * 2 * 2
    pairs = set(zip(values(s, "optimizer.lr"), values(s, "batch_size")))
    assert pairs == {(0.1, 8), (0.01, 16)}  # zipped, not crossed
    assert set(values(s, "seed")) == {0, 1}
    assert len({t.id for t in s.trials}) == len(s.trials)


def test_blocks_are_unioned_and_deduplicated(tmp_path):
    s = load_suite(write(tmp_path, BASE + """\
blocks:
  - name: ops
    product: {op: [conv, pac]}
  - name: pac-kernels
    base: {op: pac}
    product: {op_options.kernel_type: [gaussian, inv]}
"""))
    # pac with the default kernel (gaussian) appears in both blocks: it counts once
    assert len(s.trials) == 3
    assert sorted(values(s, "op")) == ["conv", "pac", "pac"]
    assert [t.block for t in s.trials] == ["ops", "ops", "pac-kernels"]


def test_exclude_rules_with_lists(tmp_path):
    s = load_suite(write(tmp_path, BASE + """\
product:
  op: [conv, pac, paka]
  optimizer.name: [adam, sgd]
exclude:
  - {op: conv, optimizer.name: sgd}
  - {op: [pac, paka], optimizer.name: adam}
"""))
    assert sorted(zip(values(s, "op"), values(s, "optimizer.name"))) == [("conv", "adam"), ("pac", "sgd"), ("paka", "sgd")]


def test_ids_are_stable_and_ignore_defaults_and_where_it_runs():
    a = parse_trial_config({"task": "upsampling", "op": "pac"}).normalised()
    b = parse_trial_config({"task": "upsampling", "op": "pac", "dataset": "middlebury", "steps": 300,
                            "device": "cpu", "threads": 3, "optimizer": {"name": "adam"}}).normalised()
    assert trial_id(a) == trial_id(b)
    c = parse_trial_config({"task": "upsampling", "op": "pac", "seed": 1}).normalised()
    assert trial_id(c) != trial_id(a)
    assert "device" not in identity(b) and "threads" not in identity(b)
    # the same config gives the same id in every process and version of this code: pin one
    assert trial_id(parse_trial_config({"task": "classification", "op": "conv"}).normalised()) == \
        trial_id(parse_trial_config({"task": "classification"}).normalised())
    assert check_trial_id(trial_id(a)) == trial_id(a)
    for bad in ("../../etc", "ABCDEF0123456789", "0123", "/tmp/x", "0123456789abcdef/.."):
        with pytest.raises(ValueError, match="not a trial id"):
            check_trial_id(bad)


def test_suites_in_the_repository_are_valid():
    from adaptconv.sweep.suite import SUITES_DIR

    for path in sorted(SUITES_DIR.glob("*.yaml")):
        assert load_suite(path).trials, path


BAD = [
    ("unknown top-level key", BASE + "produt:\n  op: [conv]\n", r"produt \(line 7\): unknown key \(did you mean 'product'\?\)"),
    ("missing name", "description: x\nbase: {task: classification}\n", r"- name: required key is missing"),
    ("missing base", "name: x\ndescription: y\n", r"- base: required key is missing"),
    ("bad name", BASE.replace("name: t", "name: ../evil"), r"name \(line 1\): '\.\./evil' must be"),
    ("empty description", BASE.replace("description: test", "description: ''"), r"description \(line 2\): say what"),
    ("axis not a list", BASE + "product:\n  op: pac\n", r"product\.op \(line 8\): an axis is a non-empty list"),
    ("empty axis", BASE + "product:\n  op: []\n", r"product\.op \(line 8\): an axis is a non-empty list"),
    ("unknown operator", BASE + "product:\n  op: [conv, pak]\n",
     r"product\.op \(line 8\): op: unknown operator 'pak' \(did you mean 'paka'\?\)"),
    ("unknown trial key", BASE + "product:\n  optimiser.lr: [0.1]\n",
     r"optimiser: unknown key \(did you mean 'optimizer'\?\)"),
    ("wrong type in base", BASE.replace("steps: 2", "steps: two"), r"base\.steps \(line 6\): steps: expected int"),
    ("unknown task", BASE.replace("task: classification", "task: clasification"),
     r"base\.task \(line 4\): task: 'clasification' is not one of .*did you mean 'classification'"),
    ("dataset for another task", BASE.replace("dataset: digits", "dataset: middlebury"),
     r"base\.dataset \(line 5\): dataset: 'middlebury' does not serve task 'classification'"),
    ("zip lengths differ", BASE + "zip:\n  optimizer.lr: [0.1, 0.2]\n  batch_size: [8]\n", r"zip \(line 7\): zipped lists differ in length"),
    ("axis in product and zip", BASE + "product:\n  op: [conv]\nzip:\n  op: [pac]\n", r"zip\.op \(line 10\): is also a product axis"),
    ("block repeats a top axis", BASE + "product:\n  op: [conv]\nblocks:\n  - name: b\n    product: {op: [pac]}\n",
     r"blocks\.0\.op .*contradictory axes"),
    ("duplicate block names", BASE + "blocks:\n  - {name: a, product: {op: [pac]}}\n  - {name: a, product: {op: [paka]}}\n",
     r"block name 'a' is used twice"),
    ("exclude on unswept key", BASE + "product:\n  op: [conv, pac]\nexclude:\n  - {guide: image}\n",
     r"exclude\.0\.guide \(line 10\): is not swept by any axis"),
    ("exclude removes everything", BASE + "product:\n  op: [conv]\nexclude:\n  - {op: conv}\n",
     r"the suite expands to no trial \(1 excluded\)"),
    ("seed as an axis", BASE + "product:\n  seed: [0, 1]\n", r"use the top-level `seeds:` list"),
    ("seed twice", BASE.replace("steps: 2", "steps: 2\n  seed: 3") + "seeds: [0]\n", r"base\.seed \(line 7\): given both"),
    ("repeated seeds", BASE + "seeds: [0, 0]\n", r"seeds \(line 7\): a non-empty list of distinct seeds"),
    ("bad time", BASE + "resources: {time: '90 minutes'}\n", r"resources\.time \(line 7\): '90 minutes' is not"),
    ("bad task option", BASE + "product:\n  task_options.image_siz: [16]\n",
     r"task_options\.image_siz: unknown key \(did you mean 'image_size'\?\)"),
    ("not yaml", "name: [unclosed\n", r"not valid YAML \(line 2\)"),
    ("not a mapping", "- a\n- b\n", r"a suite file is a mapping"),
    ("unknown operator option", BASE + "product:\n  op: [pac]\n  op_options.kernel: [inv]\n",
     r"op_options\.kernel: 'pac' has no option 'kernel' \(did you mean 'kernel_type'\?\)"),
    ("repeated axis value", BASE + "product:\n  op: [pac, pac]\n", r"product\.op \(line 8\): repeats a value"),
]


@pytest.mark.parametrize("label,text,match", BAD, ids=[b[0] for b in BAD])
def test_bad_suite_files_name_file_key_and_line(tmp_path, label, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message
    assert __import__("re").search(match, message), message


def test_unknown_suite_name_suggests_one():
    with pytest.raises(SuiteError, match="no suite named"):
        load_suite("no-such-suite-anywhere")


def test_bad_suite_is_refused_by_the_cli_without_writing(tmp_path, capsys):
    from adaptconv.cli import main

    path = write(tmp_path, BASE + "product:\n  op: [conv, pak]\n")
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    assert "did you mean 'paka'" in capsys.readouterr().err
    assert not results.exists()
