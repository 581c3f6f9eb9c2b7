"""Print the ratio tables of the pixel-adaptive benchmarks, measured in one run.

    .venv/bin/python benchmarks/report.py                 # target configuration + resolution sweep
    .venv/bin/python benchmarks/report.py --no-sweep      # the target configuration only
    .venv/bin/python benchmarks/report.py --json out.json # also save every sample

Target configuration (the issue's): B=8, 64→64 channels, 56×56, k=3, float32, forward-only and
forward + backward, for ``nn.Conv2d``, each operator's unfold reference and its lean implementation.
Times are medians over ``--repeats`` rounds in which every case of a phase runs once, interleaved, so
a change of machine load hits all of them alike; ``IQR%`` is the interquartile range over the median
(above 10% the row is flagged ``noisy``). Peak memory is ``adaptconv.measure.measure_peak_memory``
(CPU: peak of live tensor bytes above the step's start, from the profiler's memory events; CUDA: the
allocator's peak). Ratios: ``×conv`` divides by nn.Conv2d's number in the same phase, ``unfold/lean``
divides the reference's by ours.

The sweep runs a training step (forward + backward) at batch 1 for 32…512 px (one timed step at 512).
At 512 the unfold references run only with ``--sweep-unfold-512``, each in a separate process whose
address space is capped (``ADAPTCONV_BENCH_MEM_LIMIT_GIB``, default 2/3 of the RAM): ACDA's needs more
than a 24 GiB machine has.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

TARGETS = {  # (op, phase): (max time ×conv, max memory ×conv, min unfold/lean time, min unfold/lean memory)
    ("pac", "train"): (2.0, 3.0, 2.5, 3.0),
    ("paka", "train"): (None, None, None, 2.0),
    ("dfn", "train"): (None, None, None, 2.0),
    ("acda", "train"): (None, None, None, 2.0),
}


def _fmt(x, digits=2):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def measure(cases: list[common.Case], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Peak memory of each case, then interleaved timing of all of them."""
    out: dict[str, dict] = {}
    steps = {}
    for case in cases:
        step, reset = common.build(case)
        out[case.label] = dict(case=case, peak=common.peak_memory(step, reset))
        steps[case.label] = (step, reset)
        gc.collect()
    samples = common.time_steps(steps, repeats, warmup)
    for key, xs in samples.items():
        out[key].update(samples=xs, median=common.median(xs), rel_iqr=common.rel_iqr(xs))
    return out


def target_table(repeats: int) -> tuple[list[str], list[dict]]:
    lines, rows = [], []
    for phase in common.PHASES:
        cases = [common.Case(op, impl, phase) for op in common.OPERATORS for impl in common.implementations(op)]
        res = measure(cases, repeats)
        conv = res[common.Case("conv", "conv", phase).label]
        lines.append(f"\n### {phase} (B={common.TARGET['batch']}, 64→64, 56×56, k=3, float32)\n")
        lines.append(
            "| operator | impl | median ms | IQR% | peak MiB | time ×conv | memory ×conv | "
            "unfold/lean time | unfold/lean memory |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for op in common.OPERATORS:
            ref = res.get(common.Case(op, "unfold", phase).label)
            for impl in common.implementations(op):
                r = res[common.Case(op, impl, phase).label]
                row = dict(
                    op=op,
                    impl=impl,
                    phase=phase,
                    median_ms=r["median"] * 1e3,
                    rel_iqr=r["rel_iqr"],
                    peak_mib=r["peak"] / 2**20,
                    time_x_conv=r["median"] / conv["median"],
                    mem_x_conv=r["peak"] / max(conv["peak"], 1),
                    samples_ms=[s * 1e3 for s in r["samples"]],
                )
                if impl == "lean" and ref is not None:
                    row.update(
                        unfold_over_lean_time=ref["median"] / r["median"],
                        unfold_over_lean_mem=ref["peak"] / max(r["peak"], 1),
                    )
                rows.append(row)
                noisy = " (noisy)" if r["rel_iqr"] > 0.10 else ""
                lines.append(
                    f"| {op} | {impl} | {_fmt(row['median_ms'], 1)}{noisy} | {_fmt(100 * r['rel_iqr'], 0)} | "
                    f"{_fmt(row['peak_mib'], 1)} | {_fmt(row['time_x_conv'])} | {_fmt(row['mem_x_conv'])} | "
                    f"{_fmt(row.get('unfold_over_lean_time'))} | {_fmt(row.get('unfold_over_lean_mem'))} |"
                )
        gc.collect()
    return lines, rows


def target_verdicts(rows: list[dict]) -> list[str]:
    lines = ["\n### targets (forward + backward)\n"]
    for (op, phase), (t_conv, m_conv, t_ref, m_ref) in TARGETS.items():
        r = next(r for r in rows if r["op"] == op and r["impl"] == "lean" and r["phase"] == phase)
        checks = []
        if t_conv is not None:
            checks.append((f"time ≤ {t_conv}× conv", r["time_x_conv"], r["time_x_conv"] <= t_conv))
        if m_conv is not None:
            checks.append((f"memory ≤ {m_conv}× conv", r["mem_x_conv"], r["mem_x_conv"] <= m_conv))
        if t_ref is not None:
            checks.append(
                (f"≥ {t_ref}× faster than unfold", r["unfold_over_lean_time"], r["unfold_over_lean_time"] >= t_ref)
            )
        if m_ref is not None:
            checks.append(
                (f"≥ {m_ref}× leaner than unfold", r["unfold_over_lean_mem"], r["unfold_over_lean_mem"] >= m_ref)
            )
        for name, value, ok in checks:
            lines.append(f"- {op}: {name}: {value:.2f} → {'met' if ok else 'NOT met'}")
    return lines


def sweep_table(sizes, repeats: int, unfold_512: bool) -> tuple[list[str], list[dict]]:
    lines = [
        "\n### resolution sweep: training step (forward + backward), B=1, 64→64, k=3\n",
        "| px | operator | impl | median ms | peak MiB | time ×conv | memory ×conv |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    rows = []
    limit = common.memory_limit()
    for size in sizes:
        big = size >= 512
        cases = [
            common.Case(op, impl, "train", batch=1, size=size)
            for op in common.OPERATORS
            for impl in common.implementations(op)
            if not (big and impl == "unfold")
        ]
        reps = repeats if size <= 128 else max(1, repeats // 2) if size <= 256 else 1
        res = measure(cases, reps, warmup=1 if size <= 256 else 0)
        if big and unfold_512:  # each in its own memory-capped process: some need more than the machine has
            for op in common.ADAPTIVE:
                case = common.Case(op, "unfold", "train", batch=1, size=size)
                r = common.run_isolated(case, limit)
                cases.append(case)
                res[case.label] = dict(case=case, peak=r.get("peak"), median=r.get("seconds"), error=r.get("error"))
        conv = res[common.Case("conv", "conv", "train", batch=1, size=size).label]
        for case in cases:
            r = res[case.label]
            if r.get("error"):
                row = dict(size=size, op=case.op, impl=case.impl, error=r["error"])
                rows.append(row)
                lines.append(f"| {size} | {case.op} | {case.impl} | {r['error']} | | | |")
                continue
            row = dict(
                size=size,
                op=case.op,
                impl=case.impl,
                median_ms=r["median"] * 1e3,
                peak_mib=r["peak"] / 2**20,
                time_x_conv=r["median"] / conv["median"],
                mem_x_conv=r["peak"] / max(conv["peak"], 1),
            )
            rows.append(row)
            lines.append(
                f"| {size} | {case.op} | {case.impl} | {_fmt(row['median_ms'], 1)} | {_fmt(row['peak_mib'], 1)} | "
                f"{_fmt(row['time_x_conv'])} | {_fmt(row['mem_x_conv'])} |"
            )
        print("\n".join(lines[-len(cases) :]), file=sys.stderr, flush=True)
        gc.collect()
    return lines, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds at the target configuration")
    ap.add_argument("--no-sweep", action="store_true", help="skip the resolution sweep")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(common.SWEEP))
    ap.add_argument(
        "--sweep-unfold-512",
        action="store_true",
        help="also run the unfold references at 512 px (memory-capped subprocesses; minutes)",
    )
    ap.add_argument("--json", type=Path, help="save the rows (with every sample) to this file")
    args = ap.parse_args(argv)

    threads = common.set_threads()
    env = common.environment()
    out = [
        "## pixel-adaptive operators: conv vs unfold reference vs lean\n",
        f"torch {env['torch']}, device {env['device']}, {threads} threads, cpu {env['cpu']}, "
        f"lean chunk {env['chunk_elements']} elements",
    ]
    lines, rows = target_table(args.repeats)
    out += lines + target_verdicts(rows)
    print("\n".join(out), flush=True)
    sweep_rows = []
    if not args.no_sweep:
        lines, sweep_rows = sweep_table(args.sizes, max(3, args.repeats // 2), args.sweep_unfold_512)
        print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, target=rows, sweep=sweep_rows), indent=1))


if __name__ == "__main__":
    main()
