"""The ``adaptconv`` command line. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _short_source(source: str, verbose: bool) -> str:
    if verbose:
        return source
    return source.split(" (")[0] if source.startswith("plugin ") else source.split(":")[0]


#: the README's words on each built-in operator, beside what the registry says (method: ``cls.paper``,
#: guide: ``cls.guide``, from_conv: exact/approx from ``cls.function_preserving``): how exact
#: ``from_conv`` is and the operator's options. A plugin may give its own as class attributes
#: ``from_conv_detail`` and ``notes``.
FROM_CONV_DETAIL = {
    "pac": "γ = 0 ⇒ K ≡ 1",
    "paka": "zero-init attention",
    "deform": "zero offsets",
    "mdeform": "mask 2·σ(0) = 1",
    "acda": "least-squares; exact for k ≤ 3 with complete bases",
    "dfn": "best rank-1 fit; exact for 1×1",
    "involution": "best rank-1 fit; exact for 1×1",
    "ddf": "exact for depthwise/1×1/separable weights",
    "sparse_gated": "exact in eval",
}
OP_NOTES = {
    "conv": "the baseline",
    "pac": "`kernel_type` gaussian/inv, `normalize_kernel`, `shared_filters`, learnable guide scale γ; also "
    "`PacConvTranspose2d` (guided upsampling) and `PacPool2d`",
    "paka": "`reduction`, `hidden_channels`",
    "acda": "`num_atoms`, `bases_per_scale` (Fourier–Bessel)",
    "dfn": "`filter_groups`, `normalize` softmax/none, 1×1 projection when O ≠ C",
    "deform": "`offset_groups`; compiled CPU kernel (torchvision's on CUDA)",
    "mdeform": "`mask_scale` (1.0 = the paper's plain sigmoid, which halves the output at init); compiled CPU "
    "kernel (torchvision's on CUDA)",
    "condconv": "`num_experts`; the guide drives the routing",
    "dynconv": "`num_kernels`, `reduction`, `temperature` τ annealed to 1 over the first `anneal` of training "
    "(0.1); the guide drives the attention",
    "involution": "kernel from the pixel itself, shared per channel group (`group_channels`), 1×1 projection "
    "when O ≠ C",
    "ddf": "channel filter (GAP) × spatial filter, each FilterNorm'd; `heads`; runs on the CPU and in fp16/bf16",
    "odconv": "`num_kernels`; four attentions, driven by the guide if given; LayerNorm (the reference's "
    "BatchNorm crashes at batch 1)",
    "sparse_gated": "Gumbel straight-through mask in training, `logit ≥ 0` in eval; `budget` + sparsity loss "
    "(`auxiliary_loss`, added by the trial's training loop); `residual=True` for "
    "`x + m ⊙ conv(x)`; eval computes only the active pixels; the guide drives the mask",
}


def ops_markdown(plugins: bool = False) -> str:
    """The conv-kind operators as the README's Markdown table (name, method, guide, from_conv, notes),
    from the registry: ``adaptconv ops --markdown`` prints it and a test keeps the README equal to it.
    Built-in operators only unless ``plugins``; ``conv`` first, then by name."""
    from .ops import get_op, list_ops, op_source

    names = [
        n
        for n in list_ops()
        if getattr(get_op(n), "kind", "conv") == "conv" and (plugins or not op_source(n).startswith("plugin "))
    ]
    names.sort(key=lambda n: (n != "conv", n))
    lines = ["| name | method | guide | from_conv | notes |", "|---|---|---|---|---|"]
    for name in names:
        cls = get_op(name)
        exact = "exact" if cls.function_preserving else "approx"
        detail = getattr(cls, "from_conv_detail", None) or FROM_CONV_DETAIL.get(name)
        notes = getattr(cls, "notes", None) or OP_NOTES.get(name, "")
        cells = [f"`{name}`", cls.paper, cls.guide, f"{exact} ({detail})" if detail else exact, notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def cmd_ops(args: argparse.Namespace) -> int:
    if args.markdown:
        print(ops_markdown(plugins=True))
        return 0
    import pandas as pd
    from torch import nn

    from .ops import create_op, get_op, list_ops, op_source, plugin_errors

    conv_params = _param_count(nn.Conv2d(64, 64, 3, padding=1))
    rows = []
    for name in list_ops():
        cls = get_op(name)
        kind = getattr(cls, "kind", "conv")
        try:
            if kind == "conv":
                params = _param_count(create_op(name, 64, 64, 3, padding=1 if "padding" in cls.supports else 0))
                ratio = f"{params / conv_params:.2f}×"
            else:  # not a conv: its own parameter count at 64 channels, no conv to compare with
                params = _param_count(
                    cls(64, scale_factor=2)
                    if kind == "upsampler"
                    else cls(64, guide_channels=3)
                    if cls.guide == "required"
                    else cls(64)
                )
                ratio = "n/a"
        except Exception as exc:  # a plugin that cannot build the reference layer is reported, not fatal
            params, ratio = f"error: {exc}", ""
        rows.append(
            {
                "name": name,
                "kind": kind,
                "paper": cls.paper,
                "guide": cls.guide,
                "supports": ",".join(
                    a for a in ("stride", "padding", "dilation", "groups", "bias") if a in cls.supports
                ),
                "from_conv": "n/a" if kind != "conv" else "exact" if cls.function_preserving else "approx",
                "params 64→64 k3": params,
                "vs Conv2d": ratio,
                "source": _short_source(op_source(name), args.verbose),
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(
        f"\nnn.Conv2d(64, 64, 3): {conv_params} parameters; operators of another kind than conv: "
        "params at 64 channels (upsampler ×2; refiner with 64 labels and an RGB guide)"
    )
    print(
        "conv: `op: NAME` in a trial or suite (hot-swapped for the task's convolutions); upsampler: "
        "`task_options.upsampler: NAME`; refiner: `task_options.crf: NAME` (segmentation)"
    )
    errors = plugin_errors()
    for err in errors:
        print(f"plugin error: {err.entry_point} (from {err.distribution}): {err.error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """The tasks and the data sets (built in and from plugins), and what each serves."""
    import pandas as pd

    from .data import DATASETS, dataset_plugin_errors
    from .plugins import BUILTIN_DATASETS, BUILTIN_TASKS
    from .tasks import get_task, list_tasks, task_plugin_errors, task_source

    rows = []
    for name in list_tasks():
        try:
            cls = get_task(name)
        except Exception:  # reported below with the plugin errors
            continue
        rows.append(
            {
                "task": name,
                "metrics (first = headline)": ", ".join(cls.metrics),
                "datasets": ", ".join(cls.datasets),
                "networks": ", ".join(cls.backbones) + (" or a timm model" if cls.accepts_timm else ""),
                "source": "built in" if name in BUILTIN_TASKS else f"plugin {task_source(name)}",
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))
    rows = [
        {
            "dataset": name,
            "serves": ", ".join(spec.tasks),
            "data": "built in" if spec.builtin else "from disk (data_root)",
            "splits": ", ".join(spec.splits),
            "description": spec.description,
            "source": "built in" if name in BUILTIN_DATASETS else "plugin",
        }
        for name, spec in DATASETS.items()
    ]
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    errors = task_plugin_errors() + dataset_plugin_errors()
    for err in errors:
        print(f"plugin error: {err.entry_point} (from {err.distribution}): {err.error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_check_op(args: argparse.Namespace) -> int:
    from .ops import OpRegistryError, list_ops
    from .ops.conformance import run_checks

    names = list_ops() if args.all else args.names
    if not names:
        print("check-op: give operator names or --all", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== {name}")
        start = time.perf_counter()
        try:
            results = list(_print_checks(run_checks(name)))
        except OpRegistryError as exc:
            print(f"  FAIL  {exc}")
            failed.append(name)
            continue
        bad = [r for r in results if not r.ok]
        summary = "FAIL" if bad else "ok"
        print(
            f"  -> {summary}: {sum(r.status == 'pass' for r in results)} passed, {len(bad)} failed, "
            f"{sum(r.status == 'skip' for r in results)} skipped ({time.perf_counter() - start:.1f}s)"
        )
        if bad:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(names)} operator(s) conform")
    return 0


def parse_assignments(items: list[str]) -> dict:
    """``["task=upsampling", "optimizer.lr=0.01", "measure.batch_sizes=[1,4]"]`` → nested mapping.

    Values are read as YAML scalars/lists (numbers, booleans, null, [lists], {maps}), else strings.
    """
    import yaml

    from .schema import ConfigError, set_dotted

    config: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError([f"{item!r}: expected key=value (dotted keys for nesting, e.g. optimizer.lr=0.01)"])
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(config, key.strip(), value)
    return config


def cmd_trial(args: argparse.Namespace) -> int:
    import json

    from .schema import ConfigError
    from .trial import run_trial
    from .trial.config import parse_trial_config

    try:
        config = parse_assignments(args.assignments)
        parse_trial_config(config)  # all errors before anything runs
    except ConfigError as exc:
        print(f"adaptconv trial: {exc}", file=sys.stderr)
        return 2
    with _trial_progress() as progress:
        record = run_trial(config, progress=progress)
    text = json.dumps(record, indent=1 if args.full else None, sort_keys=False)
    if args.out:
        from .atomic import write_text_atomic

        write_text_atomic(args.out, text)
    if args.full:
        print(text)
    else:
        summary = {k: record[k] for k in ("status", "metrics", "swap", "timing")}
        summary["swap"] = {k: v for k, v in record["swap"].items() if k != "names"}
        if "error" in record:
            summary["error"] = record["error"].get("message")
        print(json.dumps(summary, indent=1))
    return 0 if record["status"] == "ok" else 1


@contextlib.contextmanager
def _trial_progress():
    """A progress bar for ``adaptconv trial`` on a terminal; else a line every tenth of training
    (step, loss, elapsed, ETA) on stderr, from the runner's ``adaptconv.progress`` log."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=0, unit="step", desc="setup")

        def progress(phase: str, step: int, total: int) -> None:
            bar.set_description(phase, refresh=False)
            if total:
                bar.total = total
            bar.n = step
            bar.refresh()

        try:
            yield progress
        finally:
            bar.close()
        return
    logger = logging.getLogger("adaptconv.progress")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s trial: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _load(args, stored_copy: bool = False):
    """The suite and its result store (``--results`` or results/<suite name>), with ``--set`` applied.

    ``stored_copy`` is for the commands that only read results (collect, report): if the suite file is
    gone or renamed, read the copy kept with its results; and read it without checking it against
    the operators installed now (a plugin uninstalled, an operator renamed): the records are what
    counts, so such trials are matched to their stored configs and a warning says so. ``plan`` and
    ``run`` check everything."""
    from .results.store import ResultStore
    from .sweep.cache import load_suite_cached
    from .sweep.suite import SuiteError, match_stored, override_run_keys

    check = not stored_copy

    def read(path):
        # run expands and checks afresh (and refreshes the cache); the others reuse an expansion
        # checked before by this very code and these plugins (sweep/cache.py), so need no torch
        return load_suite_cached(path, check_registry=check, force=args.command == "run")[0]

    try:
        suite = read(args.suite)
    except SuiteError:
        stored = Path(args.results or Path("results") / Path(args.suite).stem) / "suite.yaml"
        if not stored_copy or not stored.is_file():
            raise
        suite = read(stored)
    if getattr(args, "set", None):
        override_run_keys(suite, parse_assignments(args.set))
    root = Path(args.results) if args.results else Path("results") / suite.name
    store = ResultStore(root)
    if any(not t.checked for t in suite.trials):
        from .trial.ids import ID_PATTERN

        configs = {}
        folders = sorted(store.trials_dir.iterdir()) if store.trials_dir.is_dir() else []
        for folder in folders:
            if not ID_PATTERN.fullmatch(folder.name):
                continue
            try:
                configs[folder.name] = store.read_config(folder.name)
            except (OSError, ValueError):
                continue  # a folder without its config: collect reports what it holds
        match_stored(suite, configs)
    for warning in suite.warnings:
        print(f"adaptconv {args.command}: warning: {warning}", file=sys.stderr)
    return suite, store


def _swept_keys(suite) -> list[str]:
    """The keys a suite sweeps (its and its blocks' product/zip axes, and the seed), in the suite's
    order, keeping those whose value differs between its trials: what tells its trials apart."""
    from .schema import flatten_config

    spec = suite.spec
    keys: list[str] = []
    for axes in (spec.product, spec.zip, *(a for b in spec.blocks for a in (b.product, b.zip))):
        keys += [k for k in axes if k not in keys]
    if "seed" not in keys and (spec.seeds is not None or any(b.seeds is not None for b in spec.blocks)):
        keys.append("seed")
    flat = [flatten_config(t.config) for t in suite.trials]

    def values(key):  # a swept mapping (e.g. op_options) shows as its flattened sub-keys
        return {repr(f.get(key, {k[len(key) + 1 :]: v for k, v in f.items() if k.startswith(key + ".")})) for f in flat}

    return [k for k in keys if len(values(k)) > 1]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_cell(v) for v in value) + "]"
    return str(value)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table (no pandas: plan must answer at once)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _estimate(suite, store, states) -> tuple[float, int] | None:
    """Estimated serial time of the trials a run would start: per block, the median ``total_s`` of its
    done trials times its pending ones; (seconds, trials without an estimate), or None without records."""
    import statistics

    done: dict = {}
    for t in suite.trials:
        if states[t.id] == "done":
            total = ((store.read_record(t.id) or {}).get("timing") or {}).get("total_s")
            if isinstance(total, (int, float)):
                done.setdefault(t.block, []).append(total)
    if not done:
        return None
    seconds, unknown = 0.0, 0
    for t in suite.trials:
        if states[t.id] != "done":
            if t.block in done:
                seconds += statistics.median(done[t.block])
            else:
                unknown += 1
    return seconds, unknown


def cmd_plan(args: argparse.Namespace) -> int:
    from .schema import flatten_config
    from .sweep.executors import make_plan

    suite, store = _load(args)
    plan = make_plan(suite, store, args.retry_failed)
    print(f"suite {suite.name} ({suite.path}) → {store.root}")
    keys = _swept_keys(suite)
    extra = [c.strip() for c in (args.columns or "").split(",") if c.strip()]
    flat = {t.id: flatten_config(t.config) for t in suite.trials}
    known = {k for f in flat.values() for k in f} | {k.rsplit(".", 1)[0] for f in flat.values() for k in f if "." in k}
    unknown = [c for c in extra if c not in known]
    if unknown:
        from .schema import did_you_mean

        print(
            f"adaptconv plan: --columns: no trial has {', '.join(map(repr, unknown))}"
            f"{did_you_mean(unknown[0], sorted(known))}",
            file=sys.stderr,
        )
        return 2
    columns = keys + [c for c in extra if c not in keys]
    header = ["id", "state"] + (["block"] if suite.spec.blocks else []) + columns

    def value(f, key):
        if key in f:
            return f[key]
        sub = {k[len(key) + 1 :]: v for k, v in f.items() if k.startswith(key + ".")}
        return sub or None

    rows = [
        [t.id, plan.states[t.id]]
        + ([t.block or ""] if suite.spec.blocks else [])
        + [_cell(value(flat[t.id], k)) for k in columns]
        for t in suite.trials
    ]
    limit = None if args.all else 50
    print(_text_table(header, rows[:limit]))
    if limit and len(rows) > limit:
        print(f"... {len(rows) - limit} more (--all to list every trial)")
    first, *rest = plan.summary().splitlines()
    estimate = _estimate(suite, store, plan.states) if plan.counts.get("done") and plan.to_run else None
    if estimate is not None:
        seconds, unknown = estimate
        first += (
            f"; ≈ {_duration(seconds)} one at a time (median time of the done trials of each block"
            + (f"; {unknown} trials of blocks with none done not counted" if unknown else "")
            + ")"
        )
    print("\n".join([first, *rest]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .schema import ConfigError
    from .sweep import executors

    suite, store = _load(args)
    plan = executors.make_plan(suite, store, args.retry_failed)
    print(plan.summary(), flush=True)
    if not plan.to_run:
        print("nothing to run")
        return 0
    if args.executor == "slurm" and plan.scheduler_note:  # cannot tell which trials are still queued
        print(
            "adaptconv run: not submitting: trials submitted before may still be queued and would run "
            "twice; run again when squeue answers",
            file=sys.stderr,
        )
        return 2
    missing = executors.missing_data(plan)
    if missing and args.executor != "slurm":
        raise ConfigError(
            missing,
            f"suite {suite.name} ({suite.path}): data not found; "
            f"give its place with --set data_root=PATH or base.data_root",
        )
    for problem in missing:  # a cluster may see paths this login node does not
        print(f"warning: {problem} (not visible here; the jobs may still see it)", file=sys.stderr)
    if args.executor == "slurm":
        from .sweep import slurm

        profile, name = slurm.load_profile(args.profile)
        print(f"SLURM profile: {name}", flush=True)
        ids = slurm.submit(plan, profile, name)
        print(
            f"submitted {len(plan.to_run)} trials as {len(set(i.split('_')[0] for i in ids))} job array(s): "
            f"{', '.join(sorted(set(i.split('_')[0] for i in ids)))}"
        )
        if not args.wait:
            return 0
        states = slurm.wait_for(store, [t.id for t in plan.to_run])
        _print_problems(store, [t.id for t in plan.to_run], states)
        out = {}
        for st in states.values():
            out[st] = out.get(st, 0) + 1
    else:
        try:
            if args.executor == "debug":
                out = executors.run_debug(plan, checkpoint_every_s=args.checkpoint_every)
            else:
                out = executors.run_local(plan, args.max_parallel, checkpoint_every_s=args.checkpoint_every)
        except KeyboardInterrupt:
            again = f"adaptconv run {args.suite}" + (f" --results {args.results}" if args.results else "")
            print(
                f"\ninterrupted: the trials that were running keep their checkpoints (saved every "
                f"{args.checkpoint_every:g} s) and resume from them; run `{again}` again",
                file=sys.stderr,
                flush=True,
            )
            return 130
    print("finished: " + ", ".join(f"{v} {k}" for k, v in sorted(out.items())))
    return 0 if set(out) <= {"done"} else 1


def _print_problems(store, tids, states) -> None:
    """One line per trial that failed, crashed or whose record was damaged, with what went wrong."""
    for tid in tids:
        state = states.get(tid)
        if state in ("failed", "crashed"):
            rec = store.read_record(tid) or {}
            msg = (rec.get("error") or {}).get("message", "")
            print(f"  {state} {tid}: {rec.get('status')}: {msg[:200]}")
        elif state == "corrupt":
            moved = store.corrupt_records(tid)
            print(f"  corrupt {tid}: damaged record moved aside to {moved[-1] if moved else '?'}")


def cmd_status(args: argparse.Namespace) -> int:
    from .sweep import executors

    suite, store = _load(args)
    plan = executors.make_plan(suite, store)
    print(plan.summary())
    _print_problems(store, [t.id for t in suite.trials], plan.states)
    jobs = store.jobs()
    if jobs:
        from .sweep.slurm import SchedulerUnavailable, job_states

        ids = sorted({j for e in jobs for j in e.get("jobs", {}).values()})
        try:
            states = job_states(ids)
        except SchedulerUnavailable as exc:
            print(f"SLURM jobs: {len(ids)} submitted (cannot ask the scheduler: {exc})")
            return 0
        counts: dict[str, int] = {}
        for jid in ids:
            st = states.get(jid, "UNKNOWN")
            counts[st] = counts.get(st, 0) + 1
        print(f"SLURM jobs ({len(ids)} submitted): " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .sweep.executors import reap_slurm_claims
    from .sweep.slurm import cancel

    suite, store = _load(args)
    live = cancel(store)
    print(f"cancelled {len(live)} SLURM job(s)" + (f": {', '.join(live)}" if live else ""))
    if live:
        time.sleep(1)  # let the scheduler take the cancelled jobs off before their claims are reaped
    reap_slurm_claims(store, [t.id for t in suite.trials])
    return 0


def _collect(args):
    from .results.collect import collect

    suite, store = _load(args, stored_copy=True)
    t0 = time.perf_counter()
    col = collect(store, suite)
    paths = col.write(store.root)
    return col, paths, time.perf_counter() - t0


def cmd_collect(args: argparse.Namespace) -> int:
    from .report.tables import build_layout

    col, paths, seconds = _collect(args)
    states = col.trials["state"].value_counts()
    print(
        f"{len(col.trials)} trials ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))}) "
        f"collected in {seconds:.1f} s"
    )
    for p in paths:
        print(f"  {p}")
    layout = build_layout(col)
    metric = f"metric.{col.primary}" if col.primary else None
    if len(layout.agg) and metric in layout.agg:
        cols = (
            ["section", "variant"]
            + layout.context
            + [metric, f"{metric}.ci_low", f"{metric}.ci_high", f"{metric}.n", "n_done", "n_trials"]
        )
        print(layout.agg[cols].to_markdown(index=False, floatfmt=".4g"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report
    from .report.claims import report_claims
    from .sweep.suite import SuiteError, resolve_suite_path

    col, _, seconds = _collect(args)
    out = Path(args.out) if args.out else Path("report") / col.suite
    t0 = time.perf_counter()
    try:
        suite_path = resolve_suite_path(args.suite)
    except SuiteError:  # reported from the copy kept with the results: the working directory's claims
        suite_path = None
    claims = None if args.no_claims else report_claims(col, claims_path=args.claims, suite_path=suite_path)
    for warning in claims.warnings if claims is not None else ():
        print(f"warning: {warning}", file=sys.stderr)
    command = (
        f"adaptconv report {args.suite}"
        + (f" --results {args.results}" if args.results else "")
        + (f" --out {args.out}" if args.out else "")
        + (f" --claims {args.claims}" if args.claims else "")
        + (" --no-claims" if args.no_claims else "")
    )
    report = build_report(col, out, command=command, claims=claims)
    print(
        f"collected {len(col.trials)} trials in {seconds:.1f} s; wrote {len(report.figures)} figures and "
        f"{len(report.tables)} tables in {time.perf_counter() - t0:.1f} s"
    )
    if claims is not None:
        print(f"claims ({claims.path}): {claims.summary()}")
    print(f"report: {report.index}")
    return 0


def cmd_claims_check(args: argparse.Namespace) -> int:
    """Validate a claims file against this installation (and, with --suite, the suite's sections)."""
    import pandas as pd

    from .report.claims import evaluate_claims, load_claims

    claims = load_claims(args.file, operators="error")
    for warning in claims.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    rows = [
        {
            "id": c.id,
            "section": c.section_label(),
            "op": c.op,
            "against": c.against,
            "metric": c.metric,
            "direction": c.direction,
            "source": c.source,
        }
        for c in claims.claims
    ]
    print(f"{args.file}: {len(rows)} claims, names valid")
    if args.suite:
        from .results.collect import collect

        suite, store = _load(args, stored_copy=True)
        table = evaluate_claims(claims, collect(store, suite), strict=True)
        verdicts = {r.claim.id: r.verdict + (f": {r.reason}" if r.reason else "") for r in table.results}
        for row in rows:
            row["on " + suite.name] = verdicts.get(row["id"], "")
        print(f"every claim judges a section of suite {suite.name}")
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare
    from .results.collect import CollectError, collect

    cols = []
    for spec in (args.a, args.b):
        root = Path(spec)
        if not (root / "trials").is_dir() and (Path("results") / spec / "trials").is_dir():
            root = Path("results") / spec
        if not (root / "trials").is_dir():
            raise CollectError(
                f"{spec}: not a results folder (expected {root}/trials/<id>/record.json) "
                f"nor a suite name with results in results/{spec}"
            )
        cols.append(collect(root))
    cmp = compare(*cols, include_contended=args.include_contended)
    for label, env in (("A", cmp.env_a), ("B", cmp.env_b)):
        print(f"{label}: {args.a if label == 'A' else args.b}")
        print(env.to_markdown(index=False) if len(env) else "  (no finished trial)")
    print(f"\n{len(cmp.table)} trials in both; {len(cmp.only_a)} only in A; {len(cmp.only_b)} only in B\n")
    if not len(cmp.table):
        print(
            "no finished trial in common: trials match by id (the config without device, threads and data "
            "path), so A and B must come from the same suite"
        )
        return 1
    print(cmp.summary.to_markdown(index=False, floatfmt=".3f"))
    if cmp.contended:
        left = ", ".join(f"{c}: {n}" for c, n in cmp.contended.items())
        print(
            f"\nleft out, timed while other processes competed for the CPU in A or B ({left}); "
            "--include-contended keeps them"
        )
    if args.out:
        from .atomic import write_text_atomic

        write_text_atomic(args.out, cmp.table.to_csv(index=False))
        print(f"\nper-trial table: {args.out}")
    elif len(cmp.table):
        ratios = [c for c in cmp.table.columns if c.endswith("B/A")]
        keys = [c for c in cmp.table.columns if not c.endswith((" A", " B", "B/A"))]
        print()
        print(cmp.table[keys + ratios].head(40).to_markdown(index=False, floatfmt=".3f"))
    return 0


def _print_checks(results):
    for r in results:
        print(f"  {r.status.upper():4}  {r.name}: {r.detail}", flush=True)
        yield r


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptconv", description="Benchmark suite for content-adaptive convolutions")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail and debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ops", help="list the registered operators (built-in and plugins)")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="the conv-kind operators as the README's table (name, method, guide, from_conv, notes)",
    )
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("tasks", help="list the tasks and data sets (built-in and plugins)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("check-op", help="run the conformance checks on operators (non-zero exit on failure)")
    p.add_argument("names", nargs="*", help="registry names of the operators to check")
    p.add_argument("--all", action="store_true", help="check every registered operator")
    p.set_defaults(func=cmd_check_op)

    p = sub.add_parser(
        "trial",
        help="run one trial from key=value settings and print its record",
        description="Example: adaptconv trial task=upsampling op=pac steps=200 task_options.scale=8",
    )
    p.add_argument("assignments", nargs="*", metavar="key=value", help="trial config (dotted keys for nesting)")
    p.add_argument("--out", help="also write the full record (JSON) to this file, atomically")
    p.add_argument("--full", action="store_true", help="print the full record, not a summary")
    p.set_defaults(func=cmd_trial)

    for name, func, text in (
        ("plan", cmd_plan, "expand a suite and show each trial's state; runs nothing"),
        ("run", cmd_run, "run a suite's pending trials (local, debug or SLURM)"),
        ("status", cmd_status, "counts of done/failed/crashed/corrupt/running/queued/pending trials and SLURM jobs"),
        ("cancel", cmd_cancel, "cancel a suite's submitted SLURM jobs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("suite", help="a suite name in suites/ or a path to a suite file")
        p.add_argument("--results", help="results folder (default: results/<suite name>)")
        p.set_defaults(func=func)
        if name in ("plan", "run"):
            p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
            p.add_argument(
                "--set",
                nargs="+",
                metavar="KEY=VALUE",
                help="where the trials run, for this machine: data_root=PATH, device=cuda, threads=N "
                "(run keys only: they are not part of the trial ids)",
            )
        if name == "plan":
            p.add_argument("--all", action="store_true", help="list every trial (default: the first 50)")
            p.add_argument(
                "--columns",
                metavar="A,B",
                help="more config keys to show (dotted, e.g. steps,optimizer.lr); by default "
                "only the keys the suite sweeps",
            )
        if name == "run":
            p.add_argument("--executor", choices=("local", "debug", "slurm"), default="local")
            p.add_argument(
                "--profile",
                help="SLURM profile: NAME (slurm/NAME.yaml of the working directory, "
                "else of the adaptconv repository) or a path to a .yaml file",
            )
            p.add_argument("--max-parallel", type=int, help="local: trials at once (default: one per GPU, or 1)")
            p.add_argument("--wait", action="store_true", help="slurm: wait until every trial has a record")
            p.add_argument(
                "--checkpoint-every",
                type=float,
                default=120.0,
                metavar="SECONDS",
                help="local/debug: save a running trial's state this often (default 120 s); an "
                "interrupted trial resumes from its last save",
            )
    p = sub.add_parser("collect", help="gather a suite's records into results/<suite>/results.parquet (and CSV)")
    p.add_argument("suite", help="a suite name in suites/ or a path to a suite file")
    p.add_argument("--results", help="results folder (default: results/<suite name>)")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("report", help="collect, then write tables and figures to report/<suite>/")
    p.add_argument("suite", help="a suite name in suites/ or a path to a suite file")
    p.add_argument("--results", help="results folder (default: results/<suite name>)")
    p.add_argument("--out", help="report folder (default: report/<suite name>)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--claims",
        metavar="FILE",
        help="published claims to judge; each must name a section of this suite (default: "
        "claims.yaml next to the suites/ folder, judging only the sections this suite has)",
    )
    group.add_argument("--no-claims", action="store_true", help="no claims table")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("claims", help="published claims (claims.yaml): check a claims file")
    claims_sub = p.add_subparsers(dest="claims_command", required=True)
    p = claims_sub.add_parser(
        "check",
        help="validate a claims file: keys, names of tasks, datasets, operators, "
        "metrics (and, with --suite, that the suite has every section)",
    )
    p.add_argument("file", help="a claims file (YAML)")
    p.add_argument(
        "--suite",
        help="also check the sections against this suite (a name in suites/ or a path); "
        "with its results, print each claim's verdict",
    )
    p.add_argument("--results", help="results folder of --suite (default: results/<suite name>)")
    p.set_defaults(func=cmd_claims_check)
    p = sub.add_parser("compare", help="two result sets side by side, with the ratio B/A per metric")
    p.add_argument("a", help="results folder (or suite name) A")
    p.add_argument("b", help="results folder (or suite name) B")
    p.add_argument("--out", help="write the per-trial table to this CSV")
    p.add_argument(
        "--include-contended",
        action="store_true",
        help="keep latencies timed while other processes competed for the CPU (left out by default)",
    )
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from .schema import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:  # a suite, profile or config problem: say it, run nothing
        print(f"adaptconv {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
