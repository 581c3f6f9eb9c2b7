"""The suites in suites/: each loads and expands, says what it is, and names only known operators.

An operator that is not registered yet may be listed on an axis only if an exclude rule of the form
``{op: [...]}`` keeps it out of the expansion: that rule is the explicit "pending" marker (remove it
once the operator is registered).
"""

import warnings

import pytest

from adaptconv.ops import list_ops
from adaptconv.sweep.suite import SUITES_DIR, load_suite

SUITES = sorted(SUITES_DIR.glob("*.yaml"))
# the research suites of issue 6: cluster budgets, so each states its cost in GPU-hours
RESEARCH = (
    "operators-scaling",
    "cifar-resnet-swap",
    "nyu-joint-upsampling",
    "voc-segmentation",
    "denoising",
    "ablation-pac",
    "ablation-acda",
    "ablation-experts",
    "ablation-placement",
)


def _named_ops(spec) -> set[str]:
    """Every operator a suite names: in its base, block bases and op axes."""
    names: set[str] = set()
    for base in [spec.base] + [b.base for b in spec.blocks]:
        if "op" in base:
            names.add(base["op"])
    for axes in [spec.product, spec.zip] + [b.product for b in spec.blocks] + [b.zip for b in spec.blocks]:
        names.update(axes.get("op", []))
    return names


def _pending_ops(spec) -> set[str]:
    """Operators kept out by an exclude rule on `op` alone (the pending marker)."""
    out: set[str] = set()
    for rule in spec.exclude:
        if set(rule) == {"op"}:
            out.update(rule["op"] if isinstance(rule["op"], list) else [rule["op"]])
    return out


def test_the_research_suites_exist():
    assert set(RESEARCH) <= {p.stem for p in SUITES}


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_suite_loads_expands_and_names_only_known_operators(path):
    suite = load_suite(path)
    assert suite.trials, path
    spec = suite.spec
    assert len(spec.description.split()) >= 5, "a description says what the suite answers"
    registered = set(list_ops())
    pending = _pending_ops(spec)
    unknown = _named_ops(spec) - registered - pending
    assert not unknown, f"{path.name} names operators that are neither registered nor marked pending: {unknown}"
    assert {t.config["op"] for t in suite.trials} <= registered
    stale = pending & registered
    if stale:
        warnings.warn(
            f"{path.name}: {sorted(stale)} are registered now; drop them from the pending exclude rule", stacklevel=2
        )
    if path.stem in RESEARCH:
        assert spec.name == path.stem and len(spec.description.split()) >= 50
        assert "GPU-hours" in spec.description, "a cluster suite states its cost"
        assert spec.seeds is not None and len(spec.seeds) >= 3, "seeds are an axis"
        assert spec.resources.gpus and spec.resources.time
        root = spec.base.get("data_root")
        if root:  # a real-data suite says where its data must be
            assert root in spec.description


def test_trial_counts():
    # the operators a suite runs: its op axis less those still marked pending (their counts grow by
    # 3 trials per operator and axis point once their exclude rule is dropped)
    ops = len(
        {
            "conv",
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
        }
        - _pending_ops(load_suite("cifar-resnet-swap").spec)
    )
    # ops × 3 seeds
    assert len(load_suite("cifar-resnet-swap").trials) == ops * 3
    # (ops × 3 kernels × 3 channel widths + guided ops × 3 widths + ops × 3 geometries) × 3 seeds;
    # conv with an image guide is the self-guided conv trial (conv takes no guide), counted once
    scaling = load_suite("operators-scaling")
    blocks = {}
    for t in scaling.trials:
        blocks[t.block] = blocks.get(t.block, 0) + 1
    assert blocks == {
        "self-guided": ops * 27,
        "image-guided": (ops - 1) * 9,
        "stride-2": ops * 3,
        "dilation-2": ops * 3,
        "groups-4": ops * 3,
    }
    assert ops == 13  # the 9 operators of the first release, involution, ddf, odconv, sparse_gated
    assert len(scaling.trials) == 576
    # 2 kernels × 2 guides + no-adaptation control + conv, × 3 seeds
    assert len(load_suite("ablation-pac").trials) == 18


def test_ablations_share_trials_with_the_main_suites():
    """Same recipe, same ids: an ablation's reference point is the main table's trial."""
    cifar = {t.id for t in load_suite("cifar-resnet-swap").trials}
    placement = {t.id for t in load_suite("ablation-placement").trials}
    assert len(cifar & placement) == 4 * 3  # conv, pac, deform, dynconv at stages [3, 4]
    nyu = {t.id for t in load_suite("nyu-joint-upsampling").trials}
    assert len(nyu & {t.id for t in load_suite("ablation-pac").trials}) == 2 * 3  # conv and pac at ×8


def test_opbench_trials_measure_every_resolution():
    trial = load_suite("operators-scaling").trials[0]
    assert trial.config["steps"] == 0
    assert trial.config["measure"]["resolutions"] == [32, 64, 128, 256, 512]
