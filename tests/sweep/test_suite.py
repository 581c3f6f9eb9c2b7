"""Suite expansion semantics, stable ids, and a catalogue of bad suite files with their errors."""

import textwrap

import pytest

from adaptconv.sweep.suite import SuiteError, load_suite
from adaptconv.trial import parse_trial_config
from adaptconv.trial.ids import check_trial_id, identity, trial_id

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
    s = load_suite(
        write(
            tmp_path,
            BASE
            + """\
product:
  op: [conv, pac, paka]
  optimizer.name: [adam, sgd]
zip:
  optimizer.lr: [0.1, 0.01]
  batch_size: [8, 16]
seeds: [0, 1]
""",
        )
    )
    assert len(s.trials) == 3 * 2 * 2 * 2
    pairs = set(zip(values(s, "optimizer.lr"), values(s, "batch_size")))
    assert pairs == {(0.1, 8), (0.01, 16)}  # zipped, not crossed
    assert set(values(s, "seed")) == {0, 1}
    assert len({t.id for t in s.trials}) == len(s.trials)


def test_blocks_are_unioned_and_deduplicated(tmp_path):
    s = load_suite(
        write(
            tmp_path,
            BASE
            + """\
blocks:
  - name: ops
    product: {op: [conv, pac]}
  - name: pac-kernels
    base: {op: pac}
    product: {op_options.kernel_type: [gaussian, inv]}
""",
        )
    )
    # pac with the default kernel (gaussian) appears in both blocks: it counts once
    assert len(s.trials) == 3
    assert sorted(values(s, "op")) == ["conv", "pac", "pac"]
    assert [t.block for t in s.trials] == ["ops", "ops", "pac-kernels"]


def test_a_block_may_give_its_own_seeds(tmp_path):
    s = load_suite(
        write(
            tmp_path,
            BASE
            + """\
blocks:
  - name: trained
    product: {op: [conv, pac]}
  - name: measured-once
    seeds: [7]
    base: {op: paka}
seeds: [0, 1, 2]
""",
        )
    )
    by_block = {}
    for t in s.trials:
        by_block.setdefault(t.block, []).append((t.config["op"], t.config["seed"]))
    assert sorted(by_block["trained"]) == [(op, s_) for op in ("conv", "pac") for s_ in (0, 1, 2)]
    assert by_block["measured-once"] == [("paka", 7)]
    with pytest.raises(SuiteError, match=r"blocks\.0\.seeds.*distinct seeds"):
        load_suite(
            write(
                tmp_path,
                BASE
                + """\
blocks:
  - name: b
    seeds: [1, 1]
    product: {op: [conv]}
""",
            )
        )


def test_exclude_rules_with_lists(tmp_path):
    s = load_suite(
        write(
            tmp_path,
            BASE
            + """\
product:
  op: [conv, pac, paka]
  optimizer.name: [adam, sgd]
exclude:
  - {op: conv, optimizer.name: sgd}
  - {op: [pac, paka], optimizer.name: adam}
""",
        )
    )
    assert sorted(zip(values(s, "op"), values(s, "optimizer.name"))) == [
        ("conv", "adam"),
        ("pac", "sgd"),
        ("paka", "sgd"),
    ]


def test_ids_are_stable_and_ignore_defaults_and_where_it_runs():
    a = parse_trial_config({"task": "upsampling", "op": "pac"}).normalised()
    b = parse_trial_config(
        {
            "task": "upsampling",
            "op": "pac",
            "dataset": "middlebury",
            "steps": 300,
            "device": "cpu",
            "threads": 3,
            "optimizer": {"name": "adam"},
        }
    ).normalised()
    assert trial_id(a) == trial_id(b)
    c = parse_trial_config({"task": "upsampling", "op": "pac", "seed": 1}).normalised()
    assert trial_id(c) != trial_id(a)
    assert "device" not in identity(b) and "threads" not in identity(b)
    # the same config gives the same id in every process and version of this code: pin one
    assert trial_id(parse_trial_config({"task": "classification", "op": "conv"}).normalised()) == trial_id(
        parse_trial_config({"task": "classification"}).normalised()
    )
    assert check_trial_id(trial_id(a)) == trial_id(a)
    for bad in ("../../etc", "ABCDEF0123456789", "0123", "/tmp/x", "0123456789abcdef/.."):
        with pytest.raises(ValueError, match="not a trial id"):
            check_trial_id(bad)


def test_suites_in_the_repository_are_valid():
    from adaptconv.sweep.suite import SUITES_DIR

    for path in sorted(SUITES_DIR.glob("*.yaml")):
        assert load_suite(path).trials, path


UPS = """\
name: t
description: test
base:
  task: upsampling
  steps: 2
"""
LONG = "x" * 300

# The catalogue of broken suite files: (label, file content — str, bytes, or None for a directory —,
# the expected message as a regex). Each is also run through `adaptconv plan`, which must say it
# without a traceback.
BAD = [
    (
        "unknown top-level key",
        BASE + "produt:\n  op: [conv]\n",
        r"produt \(line 7\): unknown key \(did you mean 'product'\?\)",
    ),
    ("missing name", "description: x\nbase: {task: classification}\n", r"- name: required key is missing"),
    ("missing base", "name: x\ndescription: y\n", r"- base: required key is missing"),
    ("bad name", BASE.replace("name: t", "name: ../evil"), r"name \(line 1\): '\.\./evil' must be"),
    ("empty description", BASE.replace("description: test", "description: ''"), r"description \(line 2\): say what"),
    ("axis not a list", BASE + "product:\n  op: pac\n", r"product\.op \(line 8\): an axis is a non-empty list"),
    ("empty axis", BASE + "product:\n  op: []\n", r"product\.op \(line 8\): an axis is a non-empty list"),
    (
        "unknown operator",
        BASE + "product:\n  op: [conv, pak]\n",
        r"product\.op \(line 8\): op: unknown operator 'pak' \(did you mean 'paka'\?\)",
    ),
    (
        "unknown trial key",
        BASE + "product:\n  optimiser.lr: [0.1]\n",
        r"optimiser: unknown key \(did you mean 'optimizer'\?\)",
    ),
    ("wrong type in base", BASE.replace("steps: 2", "steps: two"), r"base\.steps \(line 6\): steps: expected int"),
    (
        "unknown task",
        BASE.replace("task: classification", "task: clasification"),
        r"base\.task \(line 4\): task: 'clasification' is not one of .*did you mean 'classification'",
    ),
    (
        "dataset for another task",
        BASE.replace("dataset: digits", "dataset: middlebury"),
        r"base\.dataset \(line 5\): dataset: 'middlebury' does not serve task 'classification'",
    ),
    (
        "zip lengths differ",
        BASE + "zip:\n  optimizer.lr: [0.1, 0.2]\n  batch_size: [8]\n",
        r"zip \(line 7\): zipped lists differ in length",
    ),
    (
        "axis in product and zip",
        BASE + "product:\n  op: [conv]\nzip:\n  op: [pac]\n",
        r"zip\.op \(line 10\): is also a product axis",
    ),
    (
        "block repeats a top axis",
        BASE + "product:\n  op: [conv]\nblocks:\n  - name: b\n    product: {op: [pac]}\n",
        r"blocks\.0\.op .*contradictory axes",
    ),
    (
        "duplicate block names",
        BASE + "blocks:\n  - {name: a, product: {op: [pac]}}\n  - {name: a, product: {op: [paka]}}\n",
        r"block name 'a' is used twice",
    ),
    (
        "exclude on unswept key",
        BASE + "product:\n  op: [conv, pac]\nexclude:\n  - {guide: image}\n",
        r"exclude\.0\.guide \(line 10\): is not swept by any axis",
    ),
    (
        "exclude removes everything",
        BASE + "product:\n  op: [conv]\nexclude:\n  - {op: conv}\n",
        r"the suite expands to no trial \(1 excluded\)",
    ),
    ("seed as an axis", BASE + "product:\n  seed: [0, 1]\n", r"use the top-level `seeds:` list"),
    (
        "seed twice",
        BASE.replace("steps: 2", "steps: 2\n  seed: 3") + "seeds: [0]\n",
        r"base\.seed \(line 7\): given both",
    ),
    ("repeated seeds", BASE + "seeds: [0, 0]\n", r"seeds \(line 7\): a non-empty list of distinct seeds"),
    ("bad time", BASE + "resources: {time: '90 minutes'}\n", r"resources\.time \(line 7\): '90 minutes' is not"),
    (
        "bad task option",
        BASE + "product:\n  task_options.image_siz: [16]\n",
        r"task_options\.image_siz: unknown key \(did you mean 'image_size'\?\)",
    ),
    ("not yaml", "name: [unclosed\n", r"not valid YAML \(line 2\)"),
    ("not a mapping", "- a\n- b\n", r"a suite file is a mapping"),
    (
        "unknown operator option",
        BASE + "product:\n  op: [pac]\n  op_options.kernel: [inv]\n",
        r"op_options\.kernel: 'pac' has no option 'kernel' \(did you mean 'kernel_type'\?\)",
    ),
    ("repeated axis value", BASE + "product:\n  op: [pac, pac]\n", r"product\.op \(line 8\): repeats a value"),
    # issue 14, item 2: everything a trial refuses is refused here
    (
        "upsampler as op",
        UPS + "product:\n  op: [conv, carafe]\n",
        r"product\.op \(line 7\): op: 'carafe' is an operator of kind 'upsampler', not a convolution.*"
        r"`task_options\.upsampler: carafe`",
    ),
    (
        "refiner as op",
        UPS.replace("upsampling", "segmentation") + "product:\n  op: [paccrf]\n",
        r"op: 'paccrf' is an operator of kind 'refiner'.*`task_options\.crf: paccrf`",
    ),
    (
        "did-you-mean lists conv operators only",
        BASE + "product:\n  op: [carafee]\n",
        r"op: unknown operator 'carafee'; choices: acda, condconv, conv, ",
    ),
    (
        "misspelt operator option value",
        BASE + "product:\n  op: [pac]\n  op_options.kernel_type: [gaussian, gausian]\n",
        r"product\.op_options\.kernel_type \(line 9\): op_options\.kernel_type: operator 'pac' refuses "
        r"kernel_type='gausian': pac: kernel_type must be one of .* \(did you mean 'gaussian'\?\)",
    ),
    (
        "operator option out of range",
        BASE + "product:\n  op: [paka]\n  op_options.reduction: [0]\n",
        r"op_options\.reduction: operator 'paka' refuses reduction=0: "
        r"paka: reduction must be a positive int",
    ),
    (
        "operator option from_conv refuses",
        BASE + "product:\n  op: [pac]\n  op_options.shared_filters: [true]\n",
        r"op_options\.shared_filters: operator 'pac' refuses shared_filters=True: pac\.from_conv",
    ),
    ("duplicate key", BASE + "  steps: 3\n", r"base\.steps \(line 6\): given twice \(lines 6 and 7\)"),
    (
        "duplicate top-level key",
        BASE + "description: again\n",
        r"description \(line 2\): given twice \(lines 2 and 7\)",
    ),
    (
        "exclude matching nothing",
        BASE + "product:\n  op: [conv, pac]\nexclude:\n  - {op: pak}\n",
        r"exclude\.0 \(line 10\): matches no trial, so it excludes nothing: no trial has op=pak "
        r"\(did you mean 'pac'\?\) \(its values: conv, pac\)",
    ),
    (
        "exclude values never together",
        BASE + "product:\n  op: [conv, pac]\nzip:\n  optimizer.name: [adam, sgd]\n"
        "  batch_size: [8, 16]\nexclude:\n  - {optimizer.name: adam, batch_size: 16}\n",
        r"exclude\.0 \(line 13\): matches no trial, so it excludes nothing: no trial has all of its values together",
    ),
    (
        "name too long",
        BASE.replace("name: t", f"name: {LONG}"),
        r"name \(line 1\): is 300 characters long; it names the results and report folders.*at most 128",
    ),
    ("not UTF-8", BASE.encode() + b"# caf\xe9\n", r"is not UTF-8 text: byte 0xe9 at line 7, column 6"),
    ("empty file", "", r"the file is empty; a suite is a mapping"),
    ("only comments", "# a suite\n\n", r"has only comments and blank lines"),
    ("a directory", None, r"is a directory, not a suite file; the suite files in it: inner\.yaml"),
    (
        "problem of an axis value printed once",
        UPS + "product:\n  op: [conv, pac]\n  task_options.scale: [4, 7]\nseeds: [0, 1, 2]\n",
        r"- product\.task_options\.scale \(line 8\): task_options\.patch: must be a multiple of scale=7.*"
        r"\(in 6 trials: every one with task_options\.scale=7\)\n?$",
    ),
    (
        "problem in every trial",
        UPS + "product:\n  op: [conv, pac]\n  optimizer.name: [adam, sgd]\n  task_options.scale: [7]\n",
        r"task_options\.scale \(line 9\): task_options\.patch: .* \(in all 4 trials\)\n?$",
    ),
    (
        "float field not a number",
        BASE + "product:\n  optimizer.lr: [1e-3, fast]\n",
        r"product\.optimizer\.lr \(line 8\): optimizer\.lr: expected float, got 'fast', which is not a number",
    ),
    ("non-finite float", BASE + "product:\n  optimizer.lr: [.nan]\n", r"optimizer\.lr: expected a finite number"),
    (
        "misspelt guide",
        BASE + "product:\n  op: [conv]\n  guide: [self, selff]\n",
        r"guide: 'selff' is not one of 'self', 'image' \(did you mean 'self'\?\)",
    ),
]


def _write_bad(tmp_path, content):
    if content is None:  # a directory where a file was meant
        d = tmp_path / "suite.yaml"
        d.mkdir()
        (d / "inner.yaml").write_text(BASE)
        return d
    if isinstance(content, bytes):
        p = tmp_path / "suite.yaml"
        p.write_bytes(content)
        return p
    return write(tmp_path, content)


def test_the_catalogue_holds_at_least_40_broken_suites():
    assert len(BAD) >= 40 and len({b[0] for b in BAD}) == len(BAD)


@pytest.mark.parametrize("label,text,match", BAD, ids=[b[0] for b in BAD])
def test_bad_suite_files_name_file_key_and_line(tmp_path, label, text, match):
    path = _write_bad(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message
    assert __import__("re").search(match, message), message


@pytest.mark.parametrize("label,text,match", BAD, ids=[b[0] for b in BAD])
def test_plan_refuses_each_broken_suite_without_a_traceback(tmp_path, capsys, label, text, match):
    from adaptconv.cli import main

    path = _write_bad(tmp_path, text)
    assert main(["plan", str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and __import__("re").search(match, err), err
    assert not (tmp_path / "results").exists()


def test_a_problem_of_every_seed_and_operator_is_printed_once(tmp_path):
    """Issue 14: scale=7 gave one line per trial, each blaming `base` and naming only patch."""
    path = write(tmp_path, UPS + "product:\n  op: [conv, pac, paka]\n  task_options.scale: [4, 7]\nseeds: [0, 1]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert len(info.value.problems) == 1, info.value.problems
    (problem,) = info.value.problems
    assert "task_options.scale" in problem and "task_options.patch" in problem and "6 trials" in problem


def test_each_distinct_operator_configuration_is_built_once(tmp_path, monkeypatch):
    from adaptconv.ops import get_op
    from adaptconv.trial import config as trial_config

    trial_config._op_build_problems.cache_clear()
    calls = []
    cls = get_op("pac")
    real = cls.from_conv.__func__
    monkeypatch.setattr(cls, "from_conv", classmethod(lambda c, conv, **o: calls.append(o) or real(c, conv, **o)))
    s = load_suite(
        write(
            tmp_path,
            BASE + "product:\n  op: [pac]\n  op_options.kernel_type: [gaussian, inv]\n"
            "  batch_size: [4, 8]\nseeds: [0, 1, 2]\n",
        )
    )
    assert len(s.trials) == 12
    assert calls == [{"kernel_type": "inv"}]  # gaussian is the default: nothing to build


def test_a_suite_name_too_long_for_a_file_name_is_refused_by_plan_not_run(tmp_path, capsys):
    from adaptconv.cli import main

    path = write(tmp_path, BASE.replace("name: t", "name: " + "n" * 129))
    assert main(["plan", str(path)]) == 2
    assert "at most 128" in capsys.readouterr().err
    assert load_suite(write(tmp_path, BASE.replace("name: t", "name: " + "n" * 128), "ok.yaml")).trials


# ---- issue 14, item 3: numbers as a user writes them ---------------------------------------------


@pytest.mark.parametrize(
    "spelling,value",
    [
        ("1e-3", 1e-3),
        ("1E-3", 1e-3),
        ("'1e-3'", 1e-3),
        (".5e-2", 0.005),
        ("1_000.5", 1000.5),
        ("'  2e-4 '", 2e-4),
        ("3", 3.0),
        ("1.0e-3", 1e-3),
    ],
)
def test_a_float_field_takes_every_float_spelling(tmp_path, spelling, value):
    s = load_suite(
        write(
            tmp_path,
            BASE + f"product:\n  optimizer.lr: [{spelling}]\n  op_options.guide_scale: [{spelling}]\n  op: [pac]\n",
        )
    )
    (trial,) = s.trials
    assert trial.config["optimizer"]["lr"] == value and isinstance(trial.config["optimizer"]["lr"], float)
    assert trial.config["op_options"]["guide_scale"] == value  # an operator's float option too


def test_the_same_number_written_two_ways_is_one_trial(tmp_path):
    s = load_suite(
        write(
            tmp_path,
            BASE + "blocks:\n  - {name: a, base: {optimizer: {lr: 1e-3}}}\n"
            "  - {name: b, base: {optimizer: {lr: 0.001}}}\n",
        )
    )
    assert len(s.trials) == 1


def test_a_string_field_keeps_a_number_like_string():
    """float() spellings are read as numbers only where a float is expected."""
    from adaptconv.schema import ConfigError

    with pytest.raises(ConfigError, match=r"dataset: expected str, got 0\.001 \(float\)"):
        parse_trial_config({"task": "classification", "dataset": 1e-3})
    with pytest.raises(ConfigError, match=r"optimizer\.name: '1e-3' is not one of"):
        parse_trial_config({"task": "classification", "optimizer": {"name": "1e-3"}})
    cfg = parse_trial_config({"task": "classification", "data_root": "1e-3"})
    assert cfg.data_root == "1e-3"


def test_the_trial_command_line_takes_1e_3(capsys):
    from adaptconv.cli import parse_assignments

    config = parse_assignments(["task=upsampling", "optimizer.lr=1e-3", "optimizer.weight_decay=5E-4"])
    cfg = parse_trial_config(config)
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 5e-4


def test_the_trial_command_refuses_a_non_number_clearly(capsys):
    from adaptconv.cli import main

    assert main(["trial", "task=upsampling", "optimizer.lr=fast"]) == 2
    assert "optimizer.lr: expected float, got 'fast', which is not a number" in capsys.readouterr().err


# ---- issue 14, item 4: reports from records alone ------------------------------------------------


def test_collect_and_report_work_when_an_operator_is_no_longer_installed(tmp_path, monkeypatch, capsys):
    import fixtures.records as fx

    from adaptconv.cli import main
    from adaptconv.ops import registry
    from adaptconv.ops.conv import Conv2d
    from adaptconv.results.store import ResultStore

    class SEConv(Conv2d):
        paper = "a plugin that gets uninstalled"
        guide = "optional"

        def __init__(self, *args, gain: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.gain = gain

    for table, value in ((fx.OP_OFFSET, -0.2), (fx.OP_MS, 2.0)):
        monkeypatch.setitem(table, "seconv", value)
    registry._ensure_loaded()
    registry._add("seconv", SEConv, "plugin fake-seconv (test)")
    # gain 1.0 is the default: the stored trial has no op_options, the suite file says gain: 1.0
    text = (
        fx.suite_text("gone", ops=("conv", "seconv"), scales=(4,), seeds=(0, 1), kernel_types=())
        + "  - {name: gains, base: {op: seconv}, product: {op_options.gain: [1.0, 2.0]}}\n"
    )
    path = write(tmp_path, text, "gone.yaml")
    store = ResultStore(tmp_path / "results" / "gone")
    try:
        suite = load_suite(path)
        for trial in suite.trials:  # every trial finished while the plugin was installed
            store.write_config(trial.id, trial.config)
            store.write_record(trial.id, fx.make_record(trial, "gone"))
    finally:
        registry._REGISTRY.pop("seconv")
        registry._SOURCES.pop("seconv")
    assert len(suite.trials) == 6
    # plan still refuses it (the registry is checked there) ...
    assert main(["plan", str(path), "--results", str(store.root)]) == 2
    assert "unknown operator 'seconv'" in capsys.readouterr().err
    # ... collect and report work from the records, with a warning
    assert main(["collect", str(path), "--results", str(store.root)]) == 0
    err = capsys.readouterr().err
    assert "warning: operator 'seconv' is not installed" in err and "invalid suite" not in err
    import pandas as pd

    table = pd.read_csv(store.root / "results.csv")
    assert len(table) == 6 and set(table["state"]) == {"done"} and table["in_suite"].all()
    assert (table["op"] == "seconv").sum() == 4
    out = tmp_path / "report"
    assert main(["report", str(path), "--results", str(store.root), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()


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
