"""Deformable convolution v1/v2 against ``nn.Conv2d`` and torchvision's kernel, in one run.

Cases (the same inputs and parameters for each operator; its side conv's weights moved off their
zero initialisation, so the offsets are about a pixel and the mask varies):

- ``conv``: ``nn.Conv2d`` with the same geometry (the baseline);
- ``deform`` / ``mdeform``: the operators as they run by default (on the CPU, the compiled kernels of
  ``adaptconv.ops.cpu_deform``);
- ``deform-torchvision`` / ``mdeform-torchvision``: the same operators with those kernels off
  (``cpu_deform.disabled()``), i.e. calling ``torchvision.ops.deform_conv2d`` as before — the
  reference. On CUDA both run torchvision's kernel, so these cases are left out there.

Configurations: the issue's target (B=8, 64→64, 56×56, k=3) and batch 1 at 16 channels, 32/64/128 px;
phases ``forward`` (inference, ``torch.no_grad``) and ``train`` (forward + backward of a fixed output
gradient, the input requiring a gradient as in a middle layer). float32.

``test_latency`` gives pytest-benchmark one entry per case. ``test_ratio_table`` times every case
of a configuration and phase interleaved (``common.time_steps``: medians over ``ADAPTCONV_BENCH_ROUNDS``
+ 2 rounds, so a change of machine load hits all alike) and prints the ratios: ``×conv`` (time over
nn.Conv2d's), ``tv/ours`` (torchvision's time over ours) and peak memory (``measure_peak_memory``: on
the CPU the peak of live tensor bytes above the step's start) with its ratio to nn.Conv2d's. Run as a
script (``python benchmarks/test_deform.py [--json out.json]``) it prints the same table.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

from adaptconv.ops import cpu_deform  # noqa: E402
from adaptconv.ops.deform import DeformConv2d, ModulatedDeformConv2d  # noqa: E402

pytestmark = pytest.mark.benchmark

CONFIGS = {
    "B8-C64-56px": dict(batch=8, channels=64, size=56),
    "B1-C16-32px": dict(batch=1, channels=16, size=32),
    "B1-C16-64px": dict(batch=1, channels=16, size=64),
    "B1-C16-128px": dict(batch=1, channels=16, size=128),
}
KERNEL = 3
PHASES = ("forward", "train")
_CLASSES = {"deform": DeformConv2d, "mdeform": ModulatedDeformConv2d}


def cases() -> tuple[str, ...]:
    ops = ["conv", "deform", "mdeform"]
    if common.device().type == "cpu":
        ops += ["deform-torchvision", "mdeform-torchvision"]
    return tuple(ops)


def build(case: str, phase: str, batch: int, channels: int, size: int):
    """(step, reset) of one case, as ``common.build`` makes them for the pixel-adaptive operators."""
    dev = common.device()
    torch.manual_seed(0)
    op = case.split("-")[0]
    if op == "conv":
        module = nn.Conv2d(channels, channels, KERNEL, padding=KERNEL // 2)
    else:
        module = _CLASSES[op](channels, channels, KERNEL, padding=KERNEL // 2)
    module = module.to(dev)
    x, _, grad_out = common.perturb_and_draw(module, batch, channels, size)
    kernels = cpu_deform.disabled if case.endswith("-torchvision") else contextlib.nullcontext
    return common.step_and_reset(module, (x,), grad_out, phase, kernels)


def _sync_step(step):
    def run():
        step()
        if common.device().type == "cuda":
            torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", cases())
def test_latency(benchmark, case, config, phase):
    from conftest import ROUNDS

    step, reset = build(case, phase, **CONFIGS[config])
    peak = common.peak_memory(step, reset)
    benchmark.group = f"deform {phase} {config}"
    benchmark.extra_info.update(common.environment())
    benchmark.extra_info.update(
        case=case,
        phase=phase,
        kernel=KERNEL,
        deform_cpu_kernels=cpu_deform.status(),
        peak_bytes=peak,
        peak_mib=round(peak / 2**20, 2),
        **CONFIGS[config],
    )
    rounds = ROUNDS if not case.endswith("-torchvision") or config != "B8-C64-56px" else max(1, ROUNDS // 2)
    benchmark.pedantic(_sync_step(step), setup=reset, rounds=rounds, iterations=1, warmup_rounds=1)
    gc.collect()


def measure(repeats: int) -> list[dict]:
    """Every configuration × phase: peak memory of each case, then all cases timed interleaved."""
    rows = []
    for config, shape in CONFIGS.items():
        for phase in PHASES:
            steps, peaks = {}, {}
            for case in cases():
                steps[case] = build(case, phase, **shape)
                peaks[case] = common.peak_memory(*steps[case])
                gc.collect()
            samples = common.time_steps(steps, repeats)
            med = {case: common.median(xs) for case, xs in samples.items()}
            for case in cases():
                tv = med.get(f"{case}-torchvision")
                rows.append(
                    dict(
                        config=config,
                        phase=phase,
                        case=case,
                        median_s=med[case],
                        rel_iqr=common.rel_iqr(samples[case]),
                        x_conv=med[case] / med["conv"],
                        tv_over_ours=None if tv is None else tv / med[case],
                        peak_bytes=peaks[case],
                        mem_x_conv=peaks[case] / max(peaks["conv"], 1),
                        samples=samples[case],
                    )
                )
    return rows


def table(rows: list[dict], repeats: int) -> str:
    env = common.environment()
    lines = [
        f"\ndeformable convolution, k={KERNEL}, float32, {env['threads']} threads, device {env['device']}, "
        f"deform CPU kernels {cpu_deform.status().split(' (')[0]}, medians of {repeats} interleaved rounds",
        "| config | phase | case | median ms | IQR% | ×conv | tv/ours | peak MiB | mem ×conv |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tv = "—" if r["tv_over_ours"] is None else f"{r['tv_over_ours']:.1f}"
        noisy = " (noisy)" if r["rel_iqr"] > 0.10 else ""
        lines.append(
            f"| {r['config']} | {r['phase']} | {r['case']} | {r['median_s'] * 1e3:.2f} | "
            f"{100 * r['rel_iqr']:.0f}{noisy} | {r['x_conv']:.2f} | {tv} | {r['peak_bytes'] / 2**20:.1f} | "
            f"{r['mem_x_conv']:.2f} |"
        )
    return "\n".join(lines)


def test_ratio_table(capsys):
    from conftest import ROUNDS

    repeats = ROUNDS + 2
    rows = measure(repeats)
    assert all(r["median_s"] > 0 for r in rows)
    with capsys.disabled():
        print(table(rows, repeats))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write every row (with its samples) to this file")
    args = parser.parse_args()
    common.set_threads()
    rows = measure(args.repeats)
    print(table(rows, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=common.environment(), rows=rows), indent=1))
