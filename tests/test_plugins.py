"""One registry style (adaptconv/plugins.py): operators, tasks and data sets are each found through a
table of built-ins and a group of entry points, so a plugin package can add any of the three."""

import subprocess
import sys
import textwrap

import pytest

from adaptconv import plugins
from adaptconv.data import DATASETS, DatasetError, get_dataset, list_datasets
from adaptconv.data import REGISTRY as DATASET_REGISTRY
from adaptconv.ops import get_op, list_ops, registry
from adaptconv.plugins import BUILTIN_DATASETS, BUILTIN_OPS, BUILTIN_TASKS, Registry
from adaptconv.report import palette
from adaptconv.schema import ConfigError
from adaptconv.tasks import TASKS, get_task, list_tasks, task_plugin_errors, task_source

NO_MEASURE = {"latency": False, "memory": False, "flops": False}


def write_dist(root, dist, groups, modules):
    """Lay out an installed distribution (dist-info with entry_points.txt, as pip writes it):
    ``groups`` maps an entry-point group to {name: "module:attr"}."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    text = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in groups.items()
    )
    (info / "entry_points.txt").write_text(text)
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    for mod in [m for m in sys.modules if m.startswith("acplug_")]:
        del sys.modules[mod]
    TASKS.reload_plugins()
    DATASET_REGISTRY.reload_plugins()
    registry.reload_plugins()


PLUGIN = """
    from adaptconv.data import DatasetSpec, digits
    from adaptconv.tasks.classification import Classification

    def half_digits(split="train", seed=0):
        # scikit-learn's digits split half and half
        return digits(split, seed=seed, test_fraction=0.5)

    HALF_DIGITS = DatasetSpec("halfdigits", ("classification",), True, half_digits, ("train", "test"),
                              "digits, half of them for testing (a test plugin)")

    class TinyDigits(Classification):
        name = "tinydigits"
        datasets = ("halfdigits",)
        default_dataset = "halfdigits"
        default_steps = 2
"""


def test_a_plugin_adds_a_task_and_a_dataset(plugin_path):
    write_dist(
        plugin_path,
        "acplug-tiny",
        {
            "adaptconv.tasks": {"tinydigits": "acplug_tiny:TinyDigits"},
            "adaptconv.datasets": {"halfdigits": "acplug_tiny:HALF_DIGITS"},
        },
        {"acplug_tiny": PLUGIN},
    )
    TASKS.reload_plugins()
    DATASET_REGISTRY.reload_plugins()
    assert "acplug_tiny" not in sys.modules  # listing the names imports nothing
    assert list_tasks() == [*BUILTIN_TASKS, "tinydigits"]
    assert "halfdigits" in DATASETS and list_datasets("classification")[-1] == "halfdigits"
    assert get_task("tinydigits").__name__ == "TinyDigits"
    assert task_source("tinydigits") == "plugin acplug-tiny (acplug_tiny:TinyDigits)"
    assert len(get_dataset("halfdigits", "classification", "test")) == 899  # half of 1,797
    # the plugin task runs a trial on the plugin data set
    from adaptconv.trial import run_trial

    rec = run_trial({"task": "tinydigits", "threads": 1, "batch_size": 16, "measure": NO_MEASURE})
    assert rec["status"] == "ok", rec.get("error")
    assert rec["config"]["task"] == "tinydigits" and rec["config"]["dataset"] == "halfdigits"
    assert 0 <= rec["metrics"]["top1"] <= 100


BROKEN = """
    from adaptconv.data import DatasetSpec
    not_a_task = 3
    WRONG_NAME = DatasetSpec("other", ("classification",), True, lambda split="train": None, ("train",), "x")
"""


def test_broken_and_clashing_task_and_dataset_plugins_are_reported_and_break_nothing(plugin_path):
    write_dist(
        plugin_path,
        "acplug-bad",
        {
            "adaptconv.tasks": {
                "segmentation": "acplug_bad:not_a_task",
                "notatask": "acplug_bad:not_a_task",
                "gone": "acplug_missing:Task",
            },
            "adaptconv.datasets": {"wrongname": "acplug_bad:WRONG_NAME", "digits": "acplug_bad:WRONG_NAME"},
        },
        {"acplug_bad": BROKEN},
    )
    TASKS.reload_plugins()
    DATASET_REGISTRY.reload_plugins()
    # a name already taken is refused before the plugin is imported
    errors = {e.entry_point.split(" = ")[0]: e for e in task_plugin_errors()}
    assert (
        "'segmentation' is already registered by adaptconv.tasks.segmentation:Segmentation"
        in errors["segmentation"].error
        and errors["segmentation"].distribution == "acplug-bad"
    )
    assert get_task("segmentation").__module__ == "adaptconv.tasks.segmentation"
    # the others fail when asked for, with the reason in the error
    with pytest.raises(
        ConfigError,
        match=r"unknown task 'notatask'.*failed to load: .*not a subclass of "
        r"adaptconv\.tasks\.Task",
    ):
        get_task("notatask")
    with pytest.raises(ConfigError, match=r"unknown task 'gone'.*import failed: ModuleNotFoundError"):
        get_task("gone")
    assert "gone" not in list_tasks()  # once it failed
    with pytest.raises(DatasetError, match=r"unknown dataset 'wrongname'.*failed to load: .*the spec is named 'other'"):
        get_dataset("wrongname", "classification", "train")
    assert DATASETS["digits"].factory.__module__ == "adaptconv.data.builtin"
    # everything else works
    assert list(DATASETS) == list(BUILTIN_DATASETS)
    assert get_task("classification").name == "classification"


def test_an_unknown_task_in_a_trial_config_names_the_choices():
    from adaptconv.trial import parse_trial_config

    with pytest.raises(
        ConfigError,
        match=r"task: 'segmentaton' is not one of 'classification', .*'spatial_video' "
        r"\(did you mean 'segmentation'\?\)",
    ):
        parse_trial_config({"task": "segmentaton"})


# ---- the built-in tables ---------------------------------------------------------------------------


def test_builtin_tables_name_what_the_registries_hold():
    assert set(BUILTIN_OPS) <= set(list_ops())
    for name, target in BUILTIN_OPS.items():
        cls = get_op(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == target == registry.op_source(name)
        assert cls.name == name
    for name, target in BUILTIN_TASKS.items():
        assert get_task(name) is plugins.load_target(target) and get_task(name).name == name
    for name, target in BUILTIN_DATASETS.items():
        assert DATASETS[name] is plugins.load_target(target) and DATASETS[name].name == name


def test_every_registered_operator_module_is_in_the_table():
    """A built-in operator registered by decorator but missing from the table would be left out
    of the palette's fixed order: each class under adaptconv.ops must be in BUILTIN_OPS."""
    for name in list_ops():
        cls = get_op(name)
        if cls.__module__.startswith("adaptconv."):
            assert BUILTIN_OPS.get(name) == f"{cls.__module__}:{cls.__qualname__}", name


def test_palette_order_is_the_table_order():
    assert palette.KNOWN_OPS == tuple(n for n in BUILTIN_OPS if n != "conv")
    # the colours of the operators that existed before the table (report figures stay identical)
    assert palette.KNOWN_OPS[:14] == (
        "pac",
        "paka",
        "acda",
        "dfn",
        "deform",
        "mdeform",
        "condconv",
        "dynconv",
        "involution",
        "ddf",
        "odconv",
        "sparse_gated",
        "carafe",
        "paccrf",
    )


def test_tables_and_palette_import_without_torch():
    code = (
        "import sys; import adaptconv.plugins, adaptconv.report.palette; "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the shared registry ---------------------------------------------------------------------------


class _Error(Exception):
    pass


def _registry(builtins=None):
    def check(name, obj, source):
        if not isinstance(obj, int):
            raise _Error(f"{source}: {name!r} is not an int")

    return Registry("number", "acplug.numbers", builtins or {}, check, _Error)


def test_registry_loads_builtins_lazily_and_checks_registrations(plugin_path):
    (plugin_path / "acplug_numbers.py").write_text("ONE = 1\nTWO = 2\nWORD = 'two'\n")
    reg = _registry({"one": "acplug_numbers:ONE"})
    assert reg.names() == ["one"] and "acplug_numbers" not in sys.modules
    assert reg.get("one") == 1 and reg.source("one") == "acplug_numbers:ONE"
    reg.add("two", 2, "test:TWO")
    assert reg.names() == ["one", "two"]
    with pytest.raises(_Error, match=r"'one' is already registered by acplug_numbers:ONE; test:other tries"):
        reg.add("one", 3, "test:other")
    with pytest.raises(_Error, match=r"'word' is not an int"):
        reg.add("word", "two", "test:WORD")
    with pytest.raises(_Error, match=r"unknown number 'tow' \(did you mean 'two'\?\); choices: one, two"):
        reg.get("tow")
    reg.remove("two")
    assert reg.names() == ["one"]


def test_registry_reads_its_entry_point_group(plugin_path):
    write_dist(
        plugin_path,
        "acplug-numbers",
        {
            "acplug.numbers": {
                "three": "acplug_numbers:THREE",
                "one": "acplug_numbers:THREE",
                "word": "acplug_numbers:WORD",
            }
        },
        {"acplug_numbers": "ONE = 1\nTHREE = 3\nWORD = 'three'\n"},
    )
    reg = _registry({"one": "acplug_numbers:ONE"})
    assert reg.names() == ["one", "three", "word"]
    assert reg.get("three") == 3 and reg.source("three") == "plugin acplug-numbers (acplug_numbers:THREE)"
    assert reg.get("one") == 1  # the built-in keeps its name
    with pytest.raises(_Error, match="failed to load: .*'word' is not an int"):
        reg.get("word")
    assert {e.entry_point.split(" = ")[0] for e in reg.errors()} == {"one", "word"}
    # an in-process registration cannot take an installed plugin's name
    reg.reload_plugins()
    with pytest.raises(_Error, match=r"'three' is already registered by plugin acplug-numbers"):
        reg.add("three", 33, "test:THREE")


def test_cli_tasks_lists_tasks_and_data_sets(capsys):
    from adaptconv.cli import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "| classification " in out and "| digits " in out and "from disk (data_root)" in out
    assert "top1, top5, loss" in out  # the headline metric first
