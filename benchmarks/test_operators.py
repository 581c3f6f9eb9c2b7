"""Every conv-kind operator, and its reference implementation where one exists, against ``nn.Conv2d`` in
one run.

Cases per configuration and phase (the same inputs for all; each module's parameters moved off their
initialisation, so the adaptive branches produce real per-pixel kernels, ``common.build_operator``):

- ``conv``: ``nn.Conv2d`` with the same geometry (the baseline);
- ``<op>``: every built-in conv-kind operator as it runs by default;
- ``<op>/<ref>``: its reference (``common.REFERENCES``): ``unfold`` (pac, paka, acda, dfn, ddf: the
  straightforward unfold formulation), ``torchvision`` (deform/mdeform calling
  ``torchvision.ops.deform_conv2d``; CPU only, on CUDA the operators run it anyway), ``timm`` (condconv:
  ``timm.layers.CondConv2d`` routed as in timm's EfficientNets).

Configurations (``common.CONFIGS``): the issue's target B=8, 64→64, 56×56 and batch 1 at 16 channels,
32/64/128 px; k=3, float32. Phases: ``forward`` (inference: eval mode, ``torch.no_grad``) and ``train``
(train mode, forward + backward of a fixed output gradient, the input requiring a gradient).

Times are medians of rounds in which every case of a configuration and phase runs once, interleaved
(``common.time_steps``), so a change of machine load hits all alike. Ratios: ``×conv`` (time over
nn.Conv2d's), ``ref/ours`` (the reference's time over the operator's), and peak memory over
nn.Conv2d's. ``make bench`` runs ``test_ratio_table`` (prints the table); as a script:

    .venv/bin/python benchmarks/test_operators.py [--repeats 7] [--configs B8-C64-56px ...] [--json out.json]

The verdicts below the table check the issue's targets: training step at the target configuration
≤ 2× conv (deform/mdeform: ≤ 7× and ≥ 10× faster than torchvision's kernel), inference at B=1, 16
channels, 32 px ≤ 4× conv and no slower than the operator's own training step.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

pytestmark = pytest.mark.benchmark

PHASES = ("forward", "train")


def cases() -> list[tuple[str, str]]:
    """(operator, implementation) pairs: every operator as it runs, then its reference."""
    out = []
    for op in common.conv_operators():
        out.append((op, "ours"))
        ref = common.REFERENCES.get(op)
        if ref == "torchvision" and common.device().type != "cpu":
            continue  # on CUDA the operators call torchvision's kernel themselves
        if ref is not None:
            out.append((op, ref))
    return out


def label(op: str, impl: str) -> str:
    return op if impl == "ours" else f"{op}/{impl}"


def measure(configs: list[str], repeats: int, memory: bool = True) -> list[dict]:
    rows = []
    for config in configs:
        shape = common.CONFIGS[config]
        for phase in PHASES:
            steps, peaks = {}, {}
            for op, impl in cases():
                key = label(op, impl)
                steps[key] = common.build_operator(op, impl, phase, **shape)
                peaks[key] = common.peak_memory(*steps[key]) if memory else None
                gc.collect()
            samples = common.time_steps(steps, repeats)
            med = {key: common.median(xs) for key, xs in samples.items()}
            for op, impl in cases():
                key = label(op, impl)
                ours = med[op]
                rows.append(
                    dict(
                        config=config,
                        phase=phase,
                        op=op,
                        impl=impl,
                        case=key,
                        median_s=med[key],
                        rel_iqr=common.rel_iqr(samples[key]),
                        x_conv=med[key] / med["conv"],
                        x_conv_ci=ratio_ci(samples[key], samples["conv"]),
                        ref_over_ours=med[key] / ours if impl != "ours" else None,
                        peak_bytes=peaks[key],
                        mem_x_conv=None if peaks[key] is None else peaks[key] / max(peaks["conv"], 1),
                        samples=samples[key],
                    )
                )
    return rows


def ratio_ci(case: list[float], base: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(case) / median(base) over interleaved rounds, resampled in pairs
    (a round's two samples shared its machine state)."""
    rng = random.Random(seed)
    n = len(case)
    ratios = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(case[i] for i in idx) / statistics.median(base[i] for i in idx))
    ratios.sort()
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def _against(ci: tuple[float, float], limit: float) -> str:
    """ok (the whole interval within the target), MISS (the whole interval beyond it) or edge."""
    if ci[1] <= limit:
        return "ok   "
    return "MISS " if ci[0] > limit else "edge "


def _f(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict], repeats: int, env: dict | None = None) -> str:
    env = env or common.environment()
    lines = [
        f"\nevery operator, k=3, float32, {env['threads']} threads, device {env['device']}, medians of "
        f"{repeats} interleaved rounds (×conv with its 95% bootstrap interval over the rounds; ref/ours: "
        "the reference's time over the operator's)",
        "| config | phase | case | median ms | IQR% | ×conv [95% CI] | ref/ours | peak MiB | mem ×conv |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        noisy = " (noisy)" if r["rel_iqr"] > 0.10 else ""
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
        lo, hi = r["x_conv_ci"]
        lines.append(
            f"| {r['config']} | {r['phase']} | {r['case']} | {r['median_s'] * 1e3:.3f} | "
            f"{100 * r['rel_iqr']:.0f}{noisy} | {r['x_conv']:.2f} [{lo:.2f}–{hi:.2f}] | {_f(r['ref_over_ours'], 1)} | "
            f"{_f(peak, 1)} | {_f(r['mem_x_conv'])} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's targets, one line each (only for the configurations measured): ``ok`` when the ratio's
    whole 95% interval is within the target, ``MISS`` when it is wholly beyond, ``edge`` otherwise."""
    at = {(r["config"], r["phase"], r["case"]): r for r in rows}
    out = []
    for op in common.conv_operators():
        if op == "conv":
            continue
        train = at.get(("B8-C64-56px", "train", op))
        if train is not None:
            limit = 7.0 if op in ("deform", "mdeform") else 2.0
            lo, hi = train["x_conv_ci"]
            line = f"{op}: training step ×{train['x_conv']:.2f} [{lo:.2f}–{hi:.2f}] conv (target ≤ {limit:g})"
            ref = at.get(("B8-C64-56px", "train", f"{op}/torchvision"))
            if ref is not None:
                line += f", torchvision/ours {ref['ref_over_ours']:.1f} (target ≥ 10)"
            out.append(_against(train["x_conv_ci"], limit) + line)
        fwd, trn = at.get(("B1-C16-32px", "forward", op)), at.get(("B1-C16-32px", "train", op))
        if fwd is not None and trn is not None:
            verdict = _against(fwd["x_conv_ci"], 4.0)
            if fwd["median_s"] > trn["median_s"]:
                verdict = "MISS "
            lo, hi = fwd["x_conv_ci"]
            out.append(
                verdict + f"{op}: B1-C16-32px inference ×{fwd['x_conv']:.2f} [{lo:.2f}–{hi:.2f}] conv (target ≤ 4), "
                f"{fwd['median_s'] / trn['median_s']:.2f} of its training step (target ≤ 1)"
            )
    return out


def test_ratio_table(capsys):
    from conftest import ROUNDS

    repeats = ROUNDS + 2
    rows = measure(list(common.CONFIGS), repeats)
    assert all(r["median_s"] > 0 for r in rows)
    with capsys.disabled():
        print(table(rows, repeats))
        print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--configs", nargs="+", default=list(common.CONFIGS), choices=list(common.CONFIGS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--json", help="also write every row (with its samples) to this file")
    parser.add_argument("--from-json", help="print the table and verdicts of a file --json wrote; measure nothing")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = saved["rows"]
        for r in rows:  # files written before the interval existed
            if "x_conv_ci" not in r:
                conv = next(
                    c for c in rows if (c["config"], c["phase"], c["case"]) == (r["config"], r["phase"], "conv")
                )
                r["x_conv_ci"] = ratio_ci(r["samples"], conv["samples"])
        print(table(rows, len(rows[0]["samples"]), saved["environment"]))
        print("\n".join(verdicts(rows)))
        raise SystemExit(0)
    common.set_threads()
    torch.manual_seed(0)
    rows = measure(args.configs, args.repeats, memory=not args.no_memory)
    print(table(rows, args.repeats))
    print("\n".join(verdicts(rows)))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=common.environment(), rows=rows), indent=1))
