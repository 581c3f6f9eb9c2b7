"""The claims file and the claims table: parsing, every refusal (file, line, did-you-mean), and the
verdicts on synthetic result sets — a claim is never forced."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adaptconv.report.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimsError,
    default_claims_path,
    evaluate_claims,
    load_claims,
)
from adaptconv.results.collect import Collection

ROOT = Path(__file__).resolve().parents[2]

CLAIM = """\
claims:
  - id: pac-lowers-rmse
    claim: PAC lowers RMSE
    source: Su et al., CVPR 2019
    section: {task: upsampling, dataset: middlebury}
    op: pac
    against: conv
    metric: rmse
    direction: lower
"""


def write(tmp_path: Path, text: str, name: str = "claims.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- parsing ---------------------------------------------------------------------------------------


def test_a_claim_parses_with_defaults(tmp_path):
    cf = load_claims(write(tmp_path, CLAIM))
    (c,) = cf.claims
    assert (c.id, c.op, c.against, c.metric, c.direction) == ("pac-lowers-rmse", "pac", "conv", "rmse", "lower")
    assert c.section == {"task": "upsampling", "dataset": "middlebury"}
    assert c.where == {} and c.flops_ratio_max is None and c.non_inferior is None
    assert cf.warnings == []


def test_optional_fields_parse(tmp_path):
    text = CLAIM.replace(
        "    direction: lower\n",
        "    direction: lower\n    flops_ratio_max: 1.1\n"
        "    params_ratio_max: 2\n    where: {task_options.scale: 8}\n"
        "    non_inferior: {metric: mae, margin: 0.5}\n",
    )
    (c,) = load_claims(write(tmp_path, text)).claims
    assert c.flops_ratio_max == 1.1 and c.params_ratio_max == 2.0
    assert c.where == {"task_options.scale": 8}
    assert (c.non_inferior.metric, c.non_inferior.margin) == ("mae", 0.5)


def test_the_project_claims_file_loads_and_judges_sections_of_the_quick_suite():
    from adaptconv.sweep.suite import load_suite

    cf = load_claims(ROOT / "claims.yaml", operators="error")
    ids = [c.id for c in cf.claims]
    assert len(ids) == len(set(ids)) >= 5
    sections = {
        (t.config["task"], t.config.get("dataset"), t.config.get("backbone")) for t in load_suite("quick").trials
    }
    for c in cf.claims:
        key = (c.section["task"], c.section.get("dataset"), c.section.get("backbone"))
        assert key in sections, f"{c.id}: {key} is not a section of the quick suite"
    # the claims the issue names are all there
    pairs = {(c.op, c.against, c.metric) for c in cf.claims}
    for want in [
        ("pac", "conv", "rmse"),
        ("condconv", "conv", "top1"),
        ("dynconv", "conv", "top1"),
        ("deform", "conv", "miou"),
        ("conv", "bilinear", "rmse"),
    ]:
        assert want in pairs
    flops = {c.op: c.flops_ratio_max for c in cf.claims if c.against == "conv" and c.metric == "top1"}
    assert flops["condconv"] and flops["dynconv"]  # "at nearly the same FLOPs" is a condition, not prose


def test_the_project_claims_name_baselines_the_tasks_compute():
    """A claim against a trivial baseline names one its task really reports, on the quick suite's data
    (the registry cannot tell: tasks compute their baselines from their test data)."""
    import torch

    from adaptconv.ops import list_ops
    from adaptconv.sweep.suite import load_suite
    from adaptconv.tasks import get_task
    from adaptconv.trial.config import parse_trial_config

    claims = [c for c in load_claims(ROOT / "claims.yaml").claims if c.against not in list_ops()]
    assert claims, "the project's claims include the sanity checks against trivial baselines"
    trials = load_suite("quick").trials
    missing = []
    for c in claims:
        config = next(
            t.config
            for t in trials
            if t.config["seed"] == 0
            and t.config["op"] == "conv"
            and all(t.config.get(k) == v for k, v in c.section.items())
            and not t.config["task_options"].get("crf", "none") != "none"
            and t.config["task_options"].get("upsampler", "bilinear") == "bilinear"
        )
        cfg = parse_trial_config({**config, "threads": 1})
        task = get_task(cfg.task)(cfg, torch.device("cpu"))
        _, test = task.build_data()
        found = task.baselines(test)
        if not found:
            missing.append(cfg.task)
            continue
        assert c.against in found, f"{c.id}: task {cfg.task} reports the baselines {sorted(found)}"
        assert c.metric in found[c.against]
    if missing:
        pytest.skip(f"tasks without baselines yet: {', '.join(sorted(set(missing)))}")


def test_default_claims_path_is_next_to_the_suites_folder(tmp_path, monkeypatch):
    (tmp_path / "suites").mkdir()
    suite = tmp_path / "suites" / "s.yaml"
    suite.write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert default_claims_path(suite) is None  # no file: no claims table
    (tmp_path / "claims.yaml").write_text(CLAIM)
    assert default_claims_path(suite) == tmp_path / "claims.yaml"
    (elsewhere / "claims.yaml").write_text(CLAIM)
    assert default_claims_path(elsewhere / "mine.yaml") == elsewhere / "claims.yaml"


# ---- bad input -------------------------------------------------------------------------------------

BAD = [
    (
        "unknown key",
        CLAIM.replace("metric: rmse", "metirc: rmse"),
        r"claims\.0\.metirc \(line 8\): unknown key \(did you mean 'metric'\?\)",
    ),
    (
        "unknown top-level key",
        CLAIM.replace("claims:", "claim:"),
        r"claim \(line 1\): unknown key \(did you mean 'claims'\?\)",
    ),
    (
        "bad direction",
        CLAIM.replace("direction: lower", "direction: lowr"),
        r"claims\.0\.direction \(line 9\): 'lowr' is not one of 'higher', 'lower' \(did you mean 'lower'\?\)",
    ),
    ("not yaml", CLAIM.replace("op: pac", "op: [pac"), r"not valid YAML \(line \d+\)"),
    ("not a mapping", "- a\n- b\n", r"a claims file is a mapping"),
    (
        "missing required key",
        CLAIM.replace("    source: Su et al., CVPR 2019\n", ""),
        r"claims\.0\.source \(line 2\): required key is missing",
    ),
    (
        "unknown task",
        CLAIM.replace("task: upsampling", "task: upsamplng"),
        r"claims\.0\.section\.task \(line 5\): unknown task 'upsamplng' \(did you mean 'upsampling'\?\)",
    ),
    (
        "missing section: unknown dataset",
        CLAIM.replace("dataset: middlebury", "dataset: midlebury"),
        r"claims\.0\.section\.dataset \(line 5\): 'midlebury' is not a dataset of task 'upsampling' "
        r"\(did you mean 'middlebury'\?\)",
    ),
    (
        "unknown backbone",
        CLAIM.replace("dataset: middlebury", "dataset: middlebury, backbone: jointnt"),
        r"claims\.0\.section\.backbone \(line 5\): 'jointnt' is not a network of task 'upsampling' "
        r"\(did you mean 'jointnet'\?\)",
    ),
    (
        "unknown section key",
        CLAIM.replace("dataset: middlebury", "datset: middlebury"),
        r"claims\.0\.section\.datset \(line 5\): unknown key \(did you mean 'dataset'\?\)",
    ),
    (
        "section without task",
        CLAIM.replace("task: upsampling, ", ""),
        r"claims\.0\.section \(line 5\): required key `task`",
    ),
    (
        "unknown metric",
        CLAIM.replace("metric: rmse", "metric: rmes"),
        r"claims\.0\.metric \(line 8\): unknown metric 'rmes' of task 'upsampling' \(did you mean 'rmse'\?\)",
    ),
    (
        "latency is not seed-level",
        CLAIM.replace("metric: rmse", "metric: inference_ms"),
        r"claims\.0\.metric \(line 8\): 'inference_ms' is a timing or memory measurement, not a seed-level result",
    ),
    (
        "unknown metric of a condition",
        CLAIM + "    non_inferior: {metric: top1, margin: 1}\n",
        r"claims\.0\.non_inferior\.metric \(line 10\): unknown metric 'top1' of task 'upsampling'",
    ),
    (
        "unknown operator",
        CLAIM.replace("op: pac", "op: pak"),
        r"claims\.0\.op \(line 6\): unknown operator 'pak' \(did you mean 'paka'\?\)",
    ),
    (
        "unknown where key",
        CLAIM + "    where: {stpes: 30}\n",
        r"claims\.0\.where\.stpes \(line 10\): 'stpes' is not a trial config key \(did you mean 'steps'\?\)",
    ),
    (
        "unknown task option",
        CLAIM + "    where: {task_options.upsampeler: carafe}\n",
        r"claims\.0\.where\.task_options\.upsampeler \(line 10\): task 'upsampling' has no option 'upsampeler' "
        r"\(did you mean 'upsampler'\?\)",
    ),
    (
        "where fixes the operator",
        CLAIM + "    op_where: {op: conv}\n",
        r"claims\.0\.op_where\.op \(line 10\): cannot be fixed here: use `op:`",
    ),
    (
        "where fixes the seed",
        CLAIM + "    where: {seed: 0}\n",
        r"claims\.0\.where\.seed \(line 10\): cannot be fixed here",
    ),
    (
        "compared with itself",
        CLAIM.replace("against: conv", "against: pac"),
        r"claims\.0\.against \(line 7\): compares 'pac' with itself",
    ),
    (
        "duplicate id",
        CLAIM + CLAIM.split("claims:\n")[1],
        r"claims\.1\.id \(line 10\): 'pac-lowers-rmse' is already the id of claim 0 \(line 2\)",
    ),
    (
        "bad id",
        CLAIM.replace("id: pac-lowers-rmse", "id: 'pac lowers'"),
        r"claims\.0\.id \(line 2\): 'pac lowers' must be",
    ),
    (
        "empty source",
        CLAIM.replace("source: Su et al., CVPR 2019", "source: ''"),
        r"claims\.0\.source \(line 4\): must not be empty",
    ),
    ("bad ratio", CLAIM + "    flops_ratio_max: 0\n", r"claims\.0\.flops_ratio_max \(line 10\): a ratio must be > 0"),
    ("wrong type", CLAIM + "    flops_ratio_max: nearly\n", r"claims\.0\.flops_ratio_max \(line 10\): expected float"),
    ("no claims", "claims: []\n", r"claims \(line 1\): no claims"),
    ("empty file", "", r"the file is empty: a claims file is a mapping"),
    (
        "key given twice",
        CLAIM.replace("    metric: rmse\n", "    metric: rmse\n    metric: mae\n"),
        r"claims\.0\.metric \(line 8\): given twice \(lines 8 and 9\)",
    ),
]


@pytest.mark.parametrize("label,text,match", BAD, ids=[b[0] for b in BAD])
def test_bad_claims_files_name_file_key_line_and_a_close_match(tmp_path, label, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ClaimsError) as info:
        load_claims(path, operators="error")
    message = str(info.value)
    assert message.startswith(f"{path}: invalid claims"), message
    assert re.search(match, message), message


def test_every_problem_is_reported_at_once(tmp_path):
    text = CLAIM.replace("metric: rmse", "metric: rmes").replace("dataset: middlebury", "dataset: midlebury")
    with pytest.raises(ClaimsError) as info:
        load_claims(write(tmp_path, text))
    assert len(info.value.problems) == 2


def test_an_operator_not_installed_is_only_a_warning_when_loading_for_a_report(tmp_path):
    cf = load_claims(write(tmp_path, CLAIM.replace("op: pac", "op: myplugin")))  # operators="warn"
    assert len(cf.warnings) == 1
    assert re.search(r"claims\.yaml: claim 'pac-lowers-rmse' \(line 6\): unknown operator 'myplugin'", cf.warnings[0])


def test_a_baseline_name_is_checked_against_the_results(tmp_path):
    cf = load_claims(
        write(tmp_path, CLAIM.replace("op: pac", "op: conv").replace("against: conv", "against: bilinear")),
        operators="error",
    )  # the task does not list its baselines: the results decide
    assert "bilinear" in cf.warnings[0] and "trivial baseline" in cf.warnings[0]


# ---- synthetic result sets -------------------------------------------------------------------------

SECTION = {"task": "upsampling", "dataset": "middlebury", "backbone": "jointnet"}


def rows(op: str, values, *, seeds=None, flops=1e6, params=1e3, status="ok", metric="rmse", **extra) -> list[dict]:
    seeds = list(range(len(values))) if seeds is None else seeds
    out = []
    for s, v in zip(seeds, values):
        done = status == "ok"
        out.append(
            {
                "trial_id": f"{op}-{s}-{len(extra)}-{hash(tuple(sorted(extra.items()))) % 997}",
                "state": "done" if done else status,
                "status": status,
                "in_suite": True,
                **SECTION,
                "op": op,
                "seed": s,
                **extra,
                f"metric.{metric}": v if done else np.nan,
                "flops": flops if done else np.nan,
                "params": params if done else np.nan,
            }
        )
    return out


def collection(*groups, baselines=None, directions=None) -> Collection:
    trials = pd.DataFrame([r for g in groups for r in g])
    config = [
        c for c in ("task", "dataset", "backbone", "op", "task_options.upsampler", "steps", "seed") if c in trials
    ]
    col = Collection(
        "synthetic",
        "",
        trials,
        pd.DataFrame(),
        pd.DataFrame(),
        config,
        directions or {"rmse": False, "mae": False, "top1": True},
        "rmse",
    )
    if baselines is not None:
        col.baselines = pd.DataFrame(baselines)
    return col


def claims_file(tmp_path, *claims: str) -> object:
    head = "claims:\n"
    body = ""
    for i, extra in enumerate(claims):
        body += (
            f"  - id: c{i}\n    claim: claim {i}\n    source: a paper\n"
            "    section: {task: upsampling, dataset: middlebury}\n" + extra
        )
    return load_claims(write(tmp_path, head + body, name=f"claims{abs(hash(body)) % 10**6}.yaml"))


PAC_LOWER = "    op: pac\n    metric: rmse\n    direction: lower\n"
PAC_HIGHER = "    op: pac\n    metric: rmse\n    direction: higher\n"
CONV = [3.0, 3.5, 2.5, 3.2]


def judge(tmp_path, col, *claims, **kwargs):
    return evaluate_claims(claims_file(tmp_path, *claims), col, **kwargs)


def test_supported_contradicted_inconclusive_not_measured(tmp_path):
    # pairing: pac is 0.1 below conv at every seed (±0.01) while seeds differ by ±0.5: unpaired intervals
    # would overlap, the paired one excludes 0
    pac_better = [v - 0.1 + d for v, d in zip(CONV, [0.01, -0.01, 0.005, -0.005])]
    col = collection(rows("conv", CONV), rows("pac", pac_better))
    table = judge(tmp_path, col, PAC_LOWER, PAC_HIGHER)
    lower, higher = table.results
    assert lower.verdict == SUPPORTED and lower.n == 4
    assert lower.diff.high < 0 and lower.diff.mean == pytest.approx(-0.1, abs=0.01)
    assert higher.verdict == CONTRADICTED  # the same data, the opposite claim: never forced
    noisy = [v + d for v, d in zip(CONV, [0.3, -0.2, 0.25, -0.3])]
    table = judge(tmp_path, collection(rows("conv", CONV), rows("pac", noisy)), PAC_LOWER)
    (r,) = table.results
    assert r.verdict == INCONCLUSIVE and r.reason == "CI contains 0"
    assert r.diff.low < 0 < r.diff.high
    table = judge(tmp_path, collection(rows("conv", CONV)), PAC_LOWER)
    (r,) = table.results
    assert r.verdict == NOT_MEASURED and "no trials of pac" in r.reason


def test_one_seed_is_inconclusive_not_a_verdict(tmp_path):
    col = collection(rows("conv", [3.0]), rows("pac", [2.0]))
    (r,) = judge(tmp_path, col, PAC_LOWER).results
    assert r.verdict == INCONCLUSIVE and r.reason == "n=1, no CI" and r.n == 1
    assert "n=1" in table_text(judge(tmp_path, col, PAC_LOWER))


def table_effect(result) -> str:
    from adaptconv.report.claims import _effect_text

    return _effect_text(result)


def table_text(table) -> str:
    return table.to_markdown()


def test_pending_and_failed_trials_are_not_measured(tmp_path):
    col = collection(
        rows("conv", CONV),
        rows("pac", [np.nan] * 3, status="pending"),
        rows("pac", [np.nan], seeds=[3], status="error"),
    )
    (r,) = judge(tmp_path, col, PAC_LOWER).results
    assert r.verdict == NOT_MEASURED and "3 pending" in r.reason and "1 error" in r.reason


def test_only_common_seeds_are_paired(tmp_path):
    col = collection(rows("conv", [3.0, 3.1], seeds=[0, 1]), rows("pac", [2.0, 2.1], seeds=[2, 3]))
    (r,) = judge(tmp_path, col, PAC_LOWER).results
    assert r.verdict == NOT_MEASURED and "no seed in common" in r.reason
    col = collection(rows("conv", CONV), rows("pac", [2.0, 2.4, 1.5], seeds=[0, 1, 2]))
    (r,) = judge(tmp_path, col, PAC_LOWER).results
    assert r.n == 3 and r.diff.seeds == (0, 1, 2)


def test_holm_across_the_table_can_withhold_a_verdict(tmp_path):
    # two claims whose own intervals exclude 0 with p ≈ 0.03: Holm at family size 2 rejects neither
    conv = [3.0, 3.5, 2.5]
    pac = [3.0 - 0.1, 3.5 - 0.07, 2.5 - 0.13]
    p_alone = judge(tmp_path, collection(rows("conv", conv), rows("pac", pac)), PAC_LOWER).results[0]
    assert p_alone.verdict == SUPPORTED and 0.01 < p_alone.diff.p_value < 0.05
    col = collection(rows("conv", conv), rows("pac", pac), rows("paka", pac))
    table = judge(tmp_path, col, PAC_LOWER, PAC_LOWER.replace("pac", "paka"))
    assert table.family == 2
    for r in table.results:
        assert r.diff.excludes_zero and not r.significant
        assert r.verdict == INCONCLUSIVE and r.reason == "not significant after Holm across 2 claims"
    assert any("Holm" in n and "2 claims" in n for n in table.notes())


def test_flops_condition(tmp_path):
    better = [v - 0.3 for v in CONV]
    cond = PAC_LOWER + "    flops_ratio_max: 1.1\n"
    col = collection(rows("conv", CONV, flops=1e6), rows("pac", better, flops=1.05e6))
    (r,) = judge(tmp_path, col, cond).results
    assert r.verdict == SUPPORTED and r.flops_ratio == pytest.approx(1.05)
    col = collection(rows("conv", CONV, flops=1e6), rows("pac", better, flops=1.5e6))
    (r,) = judge(tmp_path, col, cond).results
    assert r.verdict == NOT_SUPPORTED and "FLOPs ×1.50 > 1.1" in r.reason
    col = collection(rows("conv", CONV, flops=1e6), rows("pac", better, flops=np.nan))
    (r,) = judge(tmp_path, col, cond).results
    assert r.verdict == INCONCLUSIVE and "condition not established" in r.reason
    # a failed condition never rescues a contradicted claim
    col = collection(rows("conv", CONV), rows("pac", [v + 0.3 for v in CONV], flops=9e6))
    (r,) = judge(tmp_path, col, cond).results
    assert r.verdict == CONTRADICTED


def test_params_claim_with_non_inferiority(tmp_path):
    claim = (
        "    op: involution\n    metric: params\n    direction: lower\n    non_inferior: {metric: mae, margin: 0.2}\n"
    )
    conv = rows("conv", CONV, metric="mae", params=1000)
    close = rows("involution", [v + 0.05 for v in CONV], metric="mae", params=400)
    (r,) = judge(tmp_path, collection(conv, close), claim).results
    assert r.verdict == SUPPORTED and r.diff.mean == -600
    assert "= -600 ± 0 (400 vs 1000; n=4)" in table_effect(r)
    far = rows("involution", [v + 1.0 + 0.01 * i for i, v in enumerate(CONV)], metric="mae", params=400)
    (r,) = judge(tmp_path, collection(conv, far), claim).results
    assert r.verdict == NOT_SUPPORTED and "mae" in r.reason
    unsure = rows("involution", [v + d for v, d in zip(CONV, [0.5, -0.3, 0.4, -0.1])], metric="mae", params=400)
    (r,) = judge(tmp_path, collection(conv, unsure), claim).results
    assert r.verdict == INCONCLUSIVE


def test_against_a_trivial_baseline(tmp_path):
    conv = rows("conv", CONV)
    base = [
        {
            "trial_id": f"conv-{s}",
            "state": "done",
            "status": "ok",
            "in_suite": True,
            "baseline": "bilinear",
            **SECTION,
            "op": "bilinear",
            "seed": s,
            "task_options.upsampler": None,
            "metric.rmse": v + 0.4,
        }
        for s, v in enumerate(CONV)
    ]
    claim = (
        "    where: {task_options.upsampler: bilinear}\n    op: conv\n    against: bilinear\n"
        "    metric: rmse\n    direction: lower\n"
    )
    (r,) = judge(tmp_path, collection(conv, baselines=base), claim).results
    assert r.verdict == SUPPORTED and r.diff.mean == pytest.approx(-0.4)
    # records from before baselines were stored: not measured, not an error
    (r,) = judge(tmp_path, collection(conv, baselines=[]), claim).results
    assert r.verdict == NOT_MEASURED and "no trials of bilinear" in r.reason
    with pytest.raises(
        ClaimsError,
        match=r"claims\.0\.against \(line 8\): 'bilinaer' is neither in the results "
        r"of suite 'synthetic' nor a registered operator \(did you mean 'bilinear'\?\)",
    ):
        judge(tmp_path, collection(conv, baselines=base), claim.replace("against: bilinear", "against: bilinaer"))


def test_where_matches_a_late_option_left_out_at_its_default(tmp_path):
    conv = rows("conv", CONV)  # no task_options.upsampler column: bilinear, the default
    carafe = rows("conv", [v + 1 for v in CONV], **{"task_options.upsampler": "carafe"})
    pac = rows("pac", [v - 0.2 for v in CONV])
    claim = PAC_LOWER + "    where: {task_options.upsampler: bilinear}\n"
    (r,) = judge(tmp_path, collection(conv, carafe, pac), claim).results
    assert r.verdict == SUPPORTED and r.against_mean == pytest.approx(np.mean(CONV))
    variant = (
        "    op: conv\n    op_where: {task_options.upsampler: carafe}\n    against: conv\n"
        "    against_where: {task_options.upsampler: bilinear}\n    metric: rmse\n    direction: lower\n"
    )
    (r,) = judge(tmp_path, collection(conv, carafe, pac), variant).results
    assert r.verdict == CONTRADICTED and r.diff.mean == pytest.approx(1.0)


def test_an_ambiguous_claim_is_refused_naming_what_differs(tmp_path):
    conv = rows("conv", CONV)
    carafe = rows("conv", [v + 1 for v in CONV], **{"task_options.upsampler": "carafe"})
    col = collection(conv, carafe, rows("pac", CONV))
    with pytest.raises(
        ClaimsError,
        match=r"claims\.0 \(line 2\): claim 'c0' is ambiguous .* differ in "
        r"task_options\.upsampler = carafe, default",
    ):
        judge(tmp_path, col, PAC_LOWER)
    table = judge(tmp_path, col, PAC_LOWER, strict=False)
    assert not table.results and "ambiguous" in table.skipped[0][1]


def test_a_section_the_suite_does_not_have(tmp_path):
    col = collection(rows("conv", CONV), rows("pac", CONV))
    other = (
        "  - id: seg\n    claim: deform helps\n    source: Dai et al. 2017\n"
        "    section: {task: segmentation, dataset: synthetic}\n    op: deform\n    metric: miou\n"
        "    direction: higher\n"
    )
    cf = load_claims(write(tmp_path, CLAIM + other))
    with pytest.raises(ClaimsError) as info:
        evaluate_claims(cf, col)
    message = str(info.value)
    assert re.search(
        r"claims\.1\.section \(line 13\): section segmentation · synthetic is not in suite 'synthetic' "
        r"\(it has no section of task 'segmentation'\); "
        r"its sections: upsampling · middlebury · jointnet",
        message,
    ), message
    table = evaluate_claims(cf, col, strict=False)  # the project's file on another suite: skipped
    assert [r.claim.id for r in table.results] == ["pac-lowers-rmse"]
    assert [c.id for c, _ in table.skipped] == ["seg"]
    assert any("section segmentation · synthetic is not in this suite: seg." in n for n in table.notes())


def test_a_near_miss_section_gets_a_did_you_mean(tmp_path):
    col = collection(rows("conv", CONV), rows("pac", CONV))
    cf = load_claims(write(tmp_path, CLAIM.replace("dataset: middlebury", "dataset: synthetic")))
    with pytest.raises(
        ClaimsError,
        match=r"section upsampling · synthetic is not in suite 'synthetic' "
        r"\(did you mean 'upsampling · middlebury'\?\)",
    ):
        evaluate_claims(cf, col)


def test_metric_missing_from_the_results_is_refused(tmp_path):
    col = collection(rows("conv", CONV, metric="mae"), rows("pac", CONV, metric="mae"))
    with pytest.raises(
        ClaimsError,
        match=r"claims\.0\.metric \(line 8\): no 'rmse' in the results of section "
        r"upsampling · middlebury.*; they have mae",
    ):
        evaluate_claims(load_claims(write(tmp_path, CLAIM)), col)


def test_the_default_file_never_stops_a_report(tmp_path):
    """What only the results can refuse (a baseline or metric name they lack) leaves the claim out of the
    table with a note when the file is the project's default, applied to any suite."""
    base = [
        {
            "trial_id": f"conv-{s}",
            "state": "done",
            "status": "ok",
            "in_suite": True,
            "baseline": "bilinear",
            **SECTION,
            "op": "bilinear",
            "seed": s,
            "metric.rmse": v + 0.4,
        }
        for s, v in enumerate(CONV)
    ]
    col = collection(rows("conv", CONV), rows("pac", [v - 0.2 for v in CONV]), baselines=base)
    cf = load_claims(
        write(
            tmp_path,
            "claims:\n"
            + "".join(
                f"  - id: {cid}\n    claim: x\n    source: y\n    section: {{task: upsampling, dataset: middlebury}}\n{body}"
                for cid, body in [
                    ("ok", PAC_LOWER),
                    ("name", "    op: conv\n    against: bilinear_up\n    metric: rmse\n    direction: lower\n"),
                    ("metric", PAC_LOWER.replace("rmse", "mae")),
                ]
            ),
        )
    )
    with pytest.raises(ClaimsError) as info:
        evaluate_claims(cf, col, strict=True)
    assert len(info.value.problems) == 2 and "did you mean 'bilinear'" in str(info.value)
    table = evaluate_claims(cf, col, strict=False)
    assert [r.claim.id for r in table.results] == ["ok"] and table.results[0].verdict == SUPPORTED
    assert dict((c.id, why) for c, why in table.skipped) == {
        "name": "no 'bilinear_up' in these results (did you mean 'bilinear'?)",
        "metric": "no 'mae' in the results of its section",
    }


def test_unknown_operator_at_report_time(tmp_path):
    col = collection(rows("conv", CONV), rows("myplugin", CONV))
    # an operator not installed here but in the stored results is judged
    cf = load_claims(write(tmp_path, CLAIM.replace("op: pac", "op: myplugin")))
    table = evaluate_claims(cf, col)
    assert table.results[0].verdict == INCONCLUSIVE and table.warnings == []
    cf = load_claims(write(tmp_path, CLAIM.replace("op: pac", "op: myplugn")))
    with pytest.raises(
        ClaimsError, match=r"claims\.0\.op \(line 6\): 'myplugn' is neither .* \(did you mean 'myplugin'\?\)"
    ):
        evaluate_claims(cf, col)


def test_no_claim_is_forced(tmp_path):
    """Whatever the data, a claim and its opposite are never both supported; a claim's text and source
    change nothing; and a contradicted claim stays contradicted however its conditions are set."""
    rng = np.random.default_rng(0)
    for _trial in range(12):
        conv = list(rng.normal(3, 0.5, 4))
        pac = [v + rng.normal(rng.choice([-0.3, 0, 0.3]), 0.1) for v in conv]
        col = collection(rows("conv", conv), rows("pac", pac))
        a, b = judge(tmp_path, col, PAC_LOWER, PAC_HIGHER).results
        assert not (a.verdict == SUPPORTED and b.verdict == SUPPORTED)
        if a.verdict == SUPPORTED:
            assert b.verdict == CONTRADICTED
        if a.verdict == CONTRADICTED:
            assert b.verdict == SUPPORTED
            (c,) = judge(tmp_path, col, PAC_LOWER + "    flops_ratio_max: 100\n").results
            assert c.verdict == CONTRADICTED
    col = collection(rows("conv", CONV), rows("pac", [v + 0.2 for v in CONV]))
    text = (
        "  - id: x\n    claim: PAC is SUPPORTED by every experiment\n    source: supported\n"
        "    section: {task: upsampling, dataset: middlebury}\n" + PAC_LOWER + "    note: supported\n"
    )
    table = evaluate_claims(load_claims(write(tmp_path, "claims:\n" + text)), col)
    assert table.results[0].verdict == CONTRADICTED


# ---- rendering -------------------------------------------------------------------------------------


def test_table_renderers(tmp_path):
    better = [v - 0.1 + d for v, d in zip(CONV, [0.01, -0.01, 0.005, -0.005])]
    col = collection(rows("conv", CONV), rows("pac", better))
    table = judge(tmp_path, col, PAC_LOWER + "    flops_ratio_max: 1.1\n", PAC_LOWER.replace("pac", "paka"))
    shown = table.display()
    assert list(shown.columns) == ["claim", "source", "section", "measured effect", "condition", "budget", "verdict"]
    effect = shown["measured effect"][0]
    assert re.fullmatch(r"rmse ↓: pac − conv = -0\.10\d ± 0\.0\d+ \(2\.950 vs 3\.050; n=4\)", effect), effect
    assert shown["condition"][0] == "FLOPs ×1.00 ≤ 1.1 ✓"
    assert shown["verdict"][0] == SUPPORTED
    assert shown["verdict"][1] == "not measured: no trials of paka in this section"
    md = table.to_markdown()
    assert md.splitlines()[0].startswith("| claim") and "supported" in md
    raw = pd.read_csv(__import__("io").StringIO(table.to_csv()))
    assert list(raw["id"]) == ["c0", "c1"] and raw["n"][0] == 4 and raw["diff_ci_high"][0] < 0
    assert bool(raw["significant_holm"][0]) and raw["verdict"][1] == NOT_MEASURED
    col = collection(rows("conv", CONV), rows("pac", better))
    html = judge(tmp_path, col, PAC_LOWER.replace("op: pac", "op: pac\n    op_where: {steps: 30}")).to_html()
    assert html.startswith("<table>") and "<td style=" in html and "not measured: no trials of pac (steps=30)" in html
    text = (
        "claims:\n  - id: x\n    claim: 'PAC <b>wins</b> & more'\n    source: a paper\n"
        "    section: {task: upsampling, dataset: middlebury}\n" + PAC_LOWER
    )
    html = evaluate_claims(load_claims(write(tmp_path, text)), col).to_html()
    assert "PAC &lt;b&gt;wins&lt;/b&gt; &amp; more" in html and "<b>" not in html


def test_report_section_and_files(tmp_path):
    better = [v - 0.1 + d for v, d in zip(CONV, [0.01, -0.01, 0.005, -0.005])]
    col = collection(rows("conv", CONV), rows("pac", better))
    table = judge(tmp_path, col, PAC_LOWER, PAC_HIGHER, PAC_LOWER.replace("pac", "paka"))
    assert table.summary() == (
        "Of 3 published claims judged on this suite: 1 supported, 1 contradicted, 1 not measured."
    )
    files = table.files()
    assert set(files) == {"tables/claims.csv", "tables/claims.md", "tables/claims.tex"}
    tex = files["tables/claims.tex"]
    assert r"\begin{tabular}{p{3cm}" in tex and r"\end{table*}" in tex and "−" not in tex and "✓" not in tex
    md = "\n".join(table.markdown_lines())
    assert md.startswith("## Published claims") and "Holm" in md and "tables/claims.csv" in md
    page = "\n".join(table.html_parts())
    assert page.startswith("<h2>Published claims</h2>") and "<table>" in page


def test_report_claims_default_file_is_lenient_and_an_explicit_one_strict(tmp_path, monkeypatch):
    from adaptconv.report.claims import report_claims

    col = collection(rows("conv", CONV), rows("pac", CONV))
    other = (
        "  - id: seg\n    claim: deform helps\n    source: Dai et al. 2017\n"
        "    section: {task: segmentation, dataset: synthetic}\n    op: deform\n    metric: miou\n"
        "    direction: higher\n"
    )
    (tmp_path / "suites").mkdir()
    write(tmp_path, CLAIM + other)
    monkeypatch.chdir(tmp_path / "suites")
    assert report_claims(col, suite_path=tmp_path / "elsewhere.yaml") is None  # no file: no claims table
    table = report_claims(col, suite_path=tmp_path / "suites" / "s.yaml")
    assert [r.claim.id for r in table.results] == ["pac-lowers-rmse"] and len(table.skipped) == 1
    with pytest.raises(ClaimsError, match="is not in suite"):
        report_claims(col, claims_path=tmp_path / "claims.yaml")


# ---- end to end: a stored suite, `adaptconv report --claims` and `adaptconv claims check` ----------

E2E = """\
claims:
  - id: pac-lowers-rmse
    claim: PAC lowers RMSE
    source: Su et al., CVPR 2019
    section: {task: upsampling, dataset: middlebury}
    op: pac
    metric: rmse
    direction: lower
  - id: conv-beats-bilinear
    claim: the network beats bilinear
    source: sanity check
    section: {task: upsampling, dataset: middlebury}
    op: conv
    against: bilinear
    metric: rmse
    direction: lower
  - id: dfn-lowers-rmse
    claim: DFN lowers RMSE
    source: Jia et al., NIPS 2016
    section: {task: upsampling, dataset: middlebury}
    op: dfn
    metric: rmse
    direction: lower
"""


def test_cli_report_with_claims_and_claims_check(tmp_path, capsys):
    from fixtures.records import write_fixture

    from adaptconv.cli import main

    # records: pac is 0.30 below conv and dfn 0.10 above it at every seed; bilinear about 1 above conv
    suite, store = write_fixture(tmp_path, ops=("conv", "pac", "dfn"), scales=(8,), seeds=(0, 1, 2), kernel_types=())
    claims = write(tmp_path, E2E, name="mine.yaml")
    dest = tmp_path / "rep"
    args = ["report", str(suite.path), "--results", str(store.root), "--out", str(dest)]
    assert main(args + ["--claims", str(claims)]) == 0
    out = capsys.readouterr().out
    assert "Of 3 published claims judged on this suite: 2 supported, 1 contradicted." in out
    table = pd.read_csv(dest / "tables" / "claims.csv").set_index("id")
    assert table.loc["pac-lowers-rmse", "verdict"] == SUPPORTED
    assert table.loc["pac-lowers-rmse", "diff_mean"] == pytest.approx(-0.30)
    assert table.loc["conv-beats-bilinear", "verdict"] == SUPPORTED
    assert table.loc["dfn-lowers-rmse", "verdict"] == CONTRADICTED
    readme = (dest / "README.md").read_text()
    assert "## Published claims" in readme and "Holm" in readme and "(tables/claims.csv)" in readme
    assert "<h2>Published claims</h2>" in (dest / "index.html").read_text()
    assert "tables/claims.csv" in (dest / "manifest.json").read_text()
    # no claims: no table, and the files of the last report are not left behind
    assert main(args + ["--no-claims"]) == 0
    assert not (dest / "tables" / "claims.csv").exists() and "Published claims" not in (dest / "README.md").read_text()
    # a claims file with a mistake: refused, nothing half-written, the file, line and a close match said
    capsys.readouterr()
    bad = write(tmp_path, E2E.replace("op: dfn", "op: dfm"), name="bad.yaml")
    assert main(args + ["--claims", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: invalid claims" in err and "claims.2.op (line 21)" in err and "did you mean 'dfn'" in err
    assert main(["claims", "check", str(bad)]) == 2
    assert "claims.2.op (line 21): unknown operator 'dfm' (did you mean 'dfn'?)" in capsys.readouterr().err
    assert main(["claims", "check", str(claims), "--suite", str(suite.path), "--results", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "3 claims, names valid" in out and "every claim judges a section of suite fixture" in out
    assert "contradicted" in out
