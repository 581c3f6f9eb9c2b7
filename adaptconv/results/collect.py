"""Collect a suite's stored records into pandas tables, and aggregate them over seeds.

Three tables, written next to the records as Parquet and CSV (``results/<suite>/``):

- ``results``: one row per trial of the suite (and per record found in the store), pending and
  failed trials included with their state. Columns: the flattened config (dotted keys, as in the
  suite file), ``metric.<name>``, the headline measurements (``params``, ``flops``, ``inference_ms``,
  ``train_step_ms``, ``inference_peak_mb``, ``train_step_peak_mb`` at the smallest measured batch and
  the first measured resolution, ``throughput_ips`` at the largest), ``env.*`` and ``timing.*``.
- ``runs``: one row per measurement run (trial × phase × batch size × resolution).
- ``curves``: the training curves, long format (trial, step, series, value).

Everything is read from the stored records: a report regenerated from the same store is the same.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..atomic import write_bytes_atomic
from ..schema import ConfigError, flatten_config
from ..trial.config import RUN_KEYS
from .stats import t_quantile
from .store import STATES, ResultStore, run_columns, set_aside_corrupt, state_of_status

log = logging.getLogger(__name__)

#: config keys that never separate two results (the run keys) or that are replicated (the seed)
NOT_A_FACTOR = set(RUN_KEYS) | {"seed"}
#: stores with more records than this are parsed by worker processes
PARALLEL_ABOVE = 2000
#: config keys that say how the operator is applied: they make operator *variants* inside a comparison
#: group (``pac (kernel_type=inv)``), not groups of their own, and a trivial baseline does not depend on them
OP_KEYS = ("op", "op_options.", "swap.", "guide", "dynconv_anneal")  # dynconv_anneal: records before op_options.anneal
#: task options that change the network around the operators (a learned upsampler, a CRF head): rows with
#: them are *network variants*, compared with the same network without them (and with the trivial baselines)
NETWORK_VARIANT_KEYS = ("task_options.upsampler", "task_options.crf", "task_options.crf_iters")
#: headline measurements: column → (higher is better)
MEASURES = {
    "inference_ms": False,
    "train_step_ms": False,
    "inference_peak_mb": False,
    "train_step_peak_mb": False,
    "throughput_ips": True,
    "params": False,
    "flops": False,
}

#: the measured (bootstrap) CI bounds of the headline latencies, averaged like the rest
MEASURED_CI = ("inference_ms_ci_low", "inference_ms_ci_high", "train_step_ms_ci_low", "train_step_ms_ci_high")
#: what a headline latency says about itself; over seeds a row carries a flag when any seed's run did
LATENCY_FLAGS = ("inference_noisy", "inference_contended", "train_step_noisy", "train_step_contended")


class CollectError(ConfigError):
    """A result set that cannot be read (no records, no suite); the message names the path."""

    def __init__(self, message: str) -> None:
        super().__init__([message], "results")


@dataclass
class Collection:
    suite: str
    description: str
    trials: pd.DataFrame
    runs: pd.DataFrame
    curves: pd.DataFrame
    #: config columns (dotted keys) in the order of the suite
    config_columns: list[str]
    #: metric name → higher is better
    directions: dict[str, bool]
    #: the headline metric of the suite (the first task's first metric)
    primary: str | None
    #: the trivial baselines of the records (``record["baselines"]``): one row per baseline, seed and
    #: config without the operator keys (see :func:`baseline_table`); empty for older stores
    baselines: pd.DataFrame = None

    def __post_init__(self) -> None:
        if self.baselines is None:
            self.baselines = empty_baselines()

    @property
    def metric_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("metric.")]

    def factors(self) -> list[str]:
        """Config columns that vary between trials and change the result (not the seed, not run keys)."""
        out = []
        for c in self.config_columns:
            if c in NOT_A_FACTOR:
                continue
            if self.trials[c].map(repr).nunique() > 1:
                out.append(c)
        return out

    def write(self, root: str | os.PathLike) -> list[Path]:
        """Write ``results.parquet``/``.csv``, ``runs.*`` and ``curves.parquet`` atomically; returns the paths."""
        root = Path(root)
        written = []
        for name, df in (
            ("results", self.trials),
            ("runs", self.runs),
            ("curves", self.curves),
            ("baselines", self.baselines),
        ):
            for fmt in ("parquet", "csv"):
                if name == "curves" and fmt == "csv":
                    continue  # long and only useful for plotting; parquet keeps it small
                path = root / f"{name}.{fmt}"
                write_bytes_atomic(path, _serialise(df, fmt))
                written.append(path)
        return written


def _serialise(df: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# ---- one record → rows -----------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    """Config values as table cells: scalars stay, lists and mappings become canonical JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _mb(nbytes: Any) -> float:
    return float(nbytes) / 2**20 if isinstance(nbytes, (int, float)) else math.nan


def _run_rows(tid: str, runs: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        lat = run.get("latency") or {}
        mem = run.get("memory") or {}
        shapes = run.get("input_shapes") or [[]]
        res = run.get("resolution")
        if res is None and shapes and len(shapes[0]) == 4:
            res = shapes[0][-1]  # records before the explicit key: the image input's width
        rows.append(
            {
                "trial_id": tid,
                "phase": run.get("phase"),
                "batch_size": run.get("batch_size"),
                "resolution": res,
                "status": run.get("status", "ok"),
                "error": run.get("error"),
                "latency_ms": 1e3 * lat["median_s"] if "median_s" in lat else math.nan,
                "latency_ci_low_ms": 1e3 * lat["ci95_low_s"] if "ci95_low_s" in lat else math.nan,
                "latency_ci_high_ms": 1e3 * lat["ci95_high_s"] if "ci95_high_s" in lat else math.nan,
                "latency_rel_iqr": lat.get("rel_iqr", math.nan),
                "noisy": lat.get("noisy"),
                # None: recorded before the host was checked (the latency cannot say it was quiet)
                "contended": lat.get("contended"),
                "timer": lat.get("timer"),
                "threads": lat.get("threads"),
                "peak_mb": _mb(mem.get("peak_bytes")),
                "memory_method": mem.get("method"),
            }
        )
    return rows


def _headline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The measurements a table shows: smallest batch at the first resolution; throughput at the largest."""
    ok = [r for r in runs if r["status"] == "ok"]
    out: dict[str, Any] = {}
    if not runs:
        return out
    first_res = runs[0]["resolution"]
    at_res = [r for r in ok if r["resolution"] == first_res]
    if not at_res:
        return out
    small = min(r["batch_size"] for r in at_res)
    for r in at_res:
        if r["batch_size"] == small and r["phase"] in ("inference", "train_step"):
            out[f"{r['phase']}_ms"] = r["latency_ms"]
            out[f"{r['phase']}_ms_ci_low"] = r["latency_ci_low_ms"]
            out[f"{r['phase']}_ms_ci_high"] = r["latency_ci_high_ms"]
            out[f"{r['phase']}_noisy"] = r["noisy"]
            out[f"{r['phase']}_contended"] = r["contended"]
            out[f"{r['phase']}_peak_mb"] = r["peak_mb"]
    large = max(r["batch_size"] for r in at_res)
    for r in at_res:
        if r["batch_size"] == large and r["phase"] == "inference" and r["latency_ms"] > 0:
            out["throughput_ips"] = large / (r["latency_ms"] / 1e3)
            out["throughput_contended"] = r["contended"]
    out["measured_batch"] = small
    out["measured_resolution"] = first_res
    return out


def _environment(env: dict) -> dict[str, Any]:
    cuda = env.get("cuda") or {}
    devices = cuda.get("devices") or []
    device = env.get("device")
    name = (
        (devices[0].get("name") if devices and isinstance(devices[0], dict) else None)
        if device == "cuda"
        else (env.get("cpu") or {}).get("model")
    )
    git = env.get("git") or {}
    slurm = env.get("slurm") or {}
    return {
        "env.device": device,
        "env.device_name": name,
        "env.threads": (env.get("cpu") or {}).get("torch_threads"),
        "env.torch": (env.get("versions") or {}).get("torch"),
        "env.git_commit": git.get("commit"),
        "env.git_dirty": git.get("dirty"),
        "env.hostname": env.get("hostname"),
        "env.precision": env.get("precision"),
        "env.slurm_job_id": slurm.get("job_id") or slurm.get("SLURM_JOB_ID"),
        "env.timestamp": env.get("timestamp_utc"),
        # "on" / "off" / "unavailable": whether PAC on the CPU runs its compiled kernels (cpu_pac)
        "env.pac_cpu_kernels": (str((env.get("backends") or {}).get("pac_cpu_kernels") or "").split(" (")[0] or None),
        "env.cpu_kernels": _cpu_kernels((env.get("backends") or {}).get("cpu_kernels")),
    }


def _cpu_kernels(statuses: Any) -> str | None:
    """The compiled CPU kernels in a few words: "on" when every family ran them, else which did not."""
    if not isinstance(statuses, dict) or not statuses:
        return None  # records from before the other families had kernels (see env.pac_cpu_kernels)
    short = {name: str(v).split(" (")[0] for name, v in statuses.items()}
    if all(v == "on" for v in short.values()):
        return "on"
    return ", ".join(f"{name} {v}" for name, v in short.items())


def record_rows(tid: str, record: dict) -> tuple[dict[str, Any], list[dict], tuple[list, list, list]]:
    """The trial row, the run rows and the curve columns (steps, series, values) of one stored record."""
    row: dict[str, Any] = {"trial_id": tid, "status": record.get("status")}
    # the task's headline metric (records before metric_info: the first metric the task reported)
    metrics = record.get("metrics") or {}
    row["primary_metric"] = (record.get("metric_info") or {}).get("primary") or next(iter(metrics), None)
    row.update({k: _cell(v) for k, v in flatten_config(record.get("config") or {}, keep_empty=False).items()})
    for k, v in (record.get("metrics") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[f"metric.{k}"] = float(v)
    meas = record.get("measurements") or {}
    params = meas.get("params") or {}
    if "total" in params:
        row["params"] = params["total"]
    flops = meas.get("flops") or {}
    if "flops" in flops:
        row["flops"] = flops["flops"]
        row["flops_complete"] = flops.get("complete")
    runs = _run_rows(tid, meas.get("runs") or [])
    row.update(_headline(runs))
    row.update(_environment(record.get("environment") or {}))
    for k, v in (record.get("timing") or {}).items():
        row[f"timing.{k}"] = v
    for key in ("steps", "attempts", "requeues", "finished", "resumed_from_step"):
        if key in record:  # `steps` is also a config key: the record's is the number actually run
            row[f"run.{key}"] = record[key]
    err = record.get("error") or {}
    if err:
        row["error"] = err.get("message") or err.get("type")
    if "diverged_at_step" in record or "step" in err:
        row["diverged_at_step"] = record.get("diverged_at_step", err.get("step"))
    # curves stay columnar (step, series, value lists): tens of thousands of records make millions of points
    curve = record.get("curve") or {}
    steps = list(curve.get("step") or [])
    c_step, c_series, c_value = [], [], []
    for series in ("loss", "lr"):
        values = list(curve.get(series) or [])[: len(steps)]
        c_step += steps[: len(values)]
        c_series += [series] * len(values)
        c_value += values
    for point in curve.get("eval") or []:
        for k, v in point.items():
            if k != "step" and isinstance(v, (int, float)):
                c_step.append(point.get("step"))
                c_series.append(f"eval.{k}")
                c_value.append(v)
    return row, runs, (c_step, c_series, c_value)


# ---- a store → tables ------------------------------------------------------------------------------


def _digest(root: str, tid: str) -> dict | None:
    """What collect keeps of one record (its rows, config and metric info), or None without one.

    Runs in worker processes for large stores: parsing is the cost (a record holds every latency
    sample), and the digest is a fraction of the record's size to send back."""
    path = Path(root) / "trials" / tid / "record.json"
    try:
        record = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        # cannot happen through the store's atomic writes: a damaged record is moved aside (warned once);
        # the trial's state is then "corrupt"
        set_aside_corrupt(path, str(exc))
        return None
    if not isinstance(record, dict):
        set_aside_corrupt(path, f"not a JSON object but {type(record).__name__}")
        return None
    row, runs, curves = record_rows(tid, record)
    row.update(run_columns(record))  # SLURM job/array ids, attempts, requeues, the time of every attempt
    metrics = record.get("metrics") or {}
    return {
        "row": row,
        "runs": runs,
        "curves": curves,
        "status": record.get("status"),
        "config": record.get("config") or {},
        "metric_info": record.get("metric_info") or {},
        "first_metric": next(iter(metrics), None),
        "baselines": record.get("baselines") or {},
    }


def _read_all(store: ResultStore, tids: Iterable[str]) -> dict[str, dict]:
    tids = list(tids)
    root = str(store.root)
    if len(tids) < PARALLEL_ABOVE or (os.cpu_count() or 1) < 2 or "fork" not in mp.get_all_start_methods():
        digests = [_digest(root, t) for t in tids]
    else:
        # fork: the workers only parse JSON, and a spawned interpreter would re-import torch
        workers = min(os.cpu_count() or 1, 8)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            digests = list(pool.map(_digest, [root] * len(tids), tids, chunksize=256))
    return {t: d for t, d in zip(tids, digests) if d is not None}


def collect(store: ResultStore | str | os.PathLike, suite=None) -> Collection:
    """Gather every trial of ``suite`` (an expanded :class:`~adaptconv.sweep.suite.Suite`, or None to take
    the trials found in the store) and every record in ``store`` into a :class:`Collection`.

    Trials without a record appear with their state (``pending`` or ``running``) and their config;
    nothing is invented for them.
    """
    if not isinstance(store, ResultStore):
        store = ResultStore(store)
    stored = store.trial_ids()
    if suite is None and not stored:
        raise CollectError(f"{store.root}: no trials stored here (expected {store.trials_dir}/<id>/record.json)")
    suite_trials = {t.id: t for t in suite.trials} if suite is not None else {}
    records = _read_all(store, stored)
    rows, runs = [], []
    curves: dict[str, list] = {"trial_id": [], "step": [], "series": [], "value": []}
    order = list(suite_trials) + [t for t in stored if t not in suite_trials]
    for tid in order:
        digest = records.get(tid)
        if digest is not None:
            row, r, c = digest["row"], digest["runs"], digest["curves"]
            row["state"] = state_of_status(digest["status"])
            runs += r
            curves["trial_id"] += [tid] * len(c[0])
            curves["step"] += c[0]
            curves["series"] += c[1]
            curves["value"] += c[2]
        else:
            if tid in suite_trials:
                config = suite_trials[tid].config
            else:
                try:
                    config = store.read_config(tid)
                except (FileNotFoundError, json.JSONDecodeError):
                    continue  # a folder with nothing in it yet
            row = {"trial_id": tid, **{k: _cell(v) for k, v in flatten_config(config, keep_empty=False).items()}}
            row["state"] = store.state(tid)
            row["status"] = row["state"]
        row["in_suite"] = tid in suite_trials or suite is None
        if tid in suite_trials and suite_trials[tid].block:
            row["block"] = suite_trials[tid].block
        rows.append(row)
    trials = pd.DataFrame(rows)
    config_columns = _config_columns(trials, suite_trials, records)
    trials = _order_columns(trials, config_columns)
    directions: dict[str, bool] = {}
    primary = None
    for tid in order:
        info = (records.get(tid) or {}).get("metric_info") or {}
        directions.update(info.get("higher_is_better") or {})
        if primary is None and info.get("primary"):
            primary = info["primary"]
    metrics = {c[len("metric.") :] for c in trials.columns if c.startswith("metric.")}
    if metrics - set(directions):  # records from before metric_info: the tasks say (cached, see adaptconv.installed)
        from ..installed import installation

        for task in installation()["tasks"].values():
            for metric, higher in task["higher_is_better"].items():
                directions.setdefault(metric, higher)
    if primary is None:  # records before metric_info: the first metric the task reported
        firsts = [d["first_metric"] for d in records.values() if d["first_metric"]]
        primary = firsts[0] if firsts else None
    name = suite.spec.name if suite is not None else store.root.name
    description = suite.spec.description if suite is not None else ""
    runs_df = pd.DataFrame(
        runs,
        columns=None if runs else ["trial_id", "phase", "batch_size", "resolution", "status", "latency_ms", "peak_mb"],
    )
    curves_df = pd.DataFrame(curves)
    curves_df["series"] = curves_df["series"].astype("category")
    baselines = baseline_table(trials, {t: d["baselines"] for t, d in records.items()}, config_columns)
    return Collection(
        name, description.strip(), trials, runs_df, curves_df, config_columns, directions, primary, baselines
    )


# ---- trivial baselines -----------------------------------------------------------------------------

#: the column that marks a row of the baselines table (the baseline's name; ``op`` repeats it)
BASELINE_COLUMN = "baseline"
#: two records of one seed and config whose baseline values differ by more than this (relative) disagree
BASELINE_RTOL = 1e-9


def is_op_key(key: str) -> bool:
    """Whether a config column says how the operator is applied (see :data:`OP_KEYS`)."""
    return any(key.startswith(k) if k.endswith(".") else key == k for k in OP_KEYS)


def baseline_key_columns(config_columns: list[str]) -> list[str]:
    """The config columns a trivial baseline's value can depend on: everything but the operator keys, the
    network variant keys and the run keys (the seed stays: a seed may draw its own data split)."""
    return [c for c in config_columns if not is_op_key(c) and c not in NETWORK_VARIANT_KEYS and c not in RUN_KEYS]


def empty_baselines() -> pd.DataFrame:
    return pd.DataFrame(columns=["trial_id", "state", "status", "in_suite", BASELINE_COLUMN, "op"])


def baseline_table(trials: pd.DataFrame, baselines: dict[str, dict], config_columns: list[str]) -> pd.DataFrame:
    """One row per (config without the operator keys, seed, baseline) from the records' ``baselines``.

    Every operator of one seed and config scores the same trivial baseline on the same test data, so the
    copies are merged into one row (``n_records`` says how many carried it; the row's ``trial_id`` is the
    first of them). Copies that disagree are logged and the first is kept. The row has the config columns
    (the operator keys empty, ``op`` = the baseline's name), ``baseline`` = the name, ``state``/``status``
    done/ok, and ``metric.<name>`` for each of the baseline's metrics, so :func:`aggregate` gives it a
    mean and confidence interval over seeds like any operator."""
    keys = baseline_key_columns(config_columns)
    rows: dict[tuple, dict[str, Any]] = {}
    if not baselines or trials.empty:
        return empty_baselines()
    for _, trial in trials.iterrows():
        found = baselines.get(trial["trial_id"])
        if not found:
            continue
        where = tuple(repr(trial[c]) if c in trial else "nan" for c in keys)
        for name in sorted(found):
            metrics = {
                f"metric.{m}": float(v)
                for m, v in (found[name] or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            row = rows.get((where, name))
            if row is None:
                rows[(where, name)] = {
                    "trial_id": trial["trial_id"],
                    "state": "done",
                    "status": "ok",
                    "in_suite": trial.get("in_suite", True),
                    BASELINE_COLUMN: name,
                    "op": name,
                    **{c: trial[c] for c in keys if c in trial},
                    "primary_metric": trial.get("primary_metric"),
                    **metrics,
                    "n_records": 1,
                }
                continue
            row["n_records"] += 1
            for m, v in metrics.items():
                if m in row and not math.isclose(row[m], v, rel_tol=BASELINE_RTOL, abs_tol=0.0):
                    log.warning(
                        "baseline %s: %s is %r in trial %s but %r in trial %s (same seed and config); "
                        "keeping the first",
                        name,
                        m[len("metric.") :],
                        row[m],
                        row["trial_id"],
                        v,
                        trial["trial_id"],
                    )
    if not rows:
        return empty_baselines()
    df = pd.DataFrame(list(rows.values()))
    for c in config_columns:  # the operator keys stay empty: a baseline has no operator
        if c not in df:
            df[c] = None
    head = ["trial_id", "state", "status", "in_suite", BASELINE_COLUMN]
    metric_columns = sorted(c for c in df.columns if c.startswith("metric."))
    rest = [c for c in df.columns if c not in head and c not in config_columns and c not in metric_columns]
    return df[head + config_columns + metric_columns + rest].reset_index(drop=True)


def _config_columns(trials: pd.DataFrame, suite_trials: dict, records: dict) -> list[str]:
    keys: list[str] = []
    seen = set()
    configs = [t.config for t in suite_trials.values()] + [d["config"] for d in records.values()]
    for config in configs:
        for k in flatten_config(config, keep_empty=False):
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return [k for k in keys if k in trials.columns]


def _order_columns(df: pd.DataFrame, config_columns: list[str]) -> pd.DataFrame:
    head = [c for c in ("trial_id", "state", "status", "in_suite", "block") if c in df.columns]
    metrics = sorted(c for c in df.columns if c.startswith("metric."))
    measures = [c for c in df.columns if c not in head and c not in config_columns and c not in metrics]
    df = df[head + config_columns + metrics + measures]
    # one type per column so Parquet can store it: a column mixing numbers and text becomes text
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[c] = df[c].map(lambda v: None if v is None else str(v))
    return df


# ---- aggregation over seeds ------------------------------------------------------------------------


def raised(flag: Any) -> bool:
    """A stored flag (True/False, None where it was not recorded, NaN after a table round trip) as a bool."""
    return flag is not None and not (isinstance(flag, float) and math.isnan(flag)) and bool(flag)


def aggregate(col: Collection, values: list[str] | None = None, *, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean, std, n and a 95% t confidence interval of every metric and measurement, over seeds.

    Groups are the config without the seed (and without run keys such as the device or data path);
    only finished trials (status ok) enter the statistics, and each group also counts its trials by
    state so a partly run group is visible. ``trials``: another table with the collection's config
    columns to aggregate instead of ``col.trials`` (e.g. ``col.baselines``).
    """
    df = col.trials if trials is None else trials
    keys = [c for c in col.config_columns if c not in NOT_A_FACTOR and c in df.columns]
    if trials is not None and BASELINE_COLUMN in df.columns:
        keys.append(BASELINE_COLUMN)
    if values is None:
        values = sorted(c for c in df.columns if c.startswith("metric.")) if trials is not None else col.metric_columns
        values = values + [c for c in (*MEASURES, *MEASURED_CI) if c in df.columns]
    label = df.groupby(keys, dropna=False, sort=False).ngroup() if keys else pd.Series(0, index=df.index)
    states = pd.crosstab(label, df["state"])
    for s in STATES:
        if s not in states:
            states[s] = 0
    ok = df[df["status"] == "ok"]
    ok_label = label[ok.index]
    out = df.loc[~label.duplicated(), keys].copy()
    if "primary_metric" in df:  # the headline metric of the group's task, from its finished trials
        prim = df.loc[df["status"] == "ok"].groupby(label[df["status"] == "ok"].values)["primary_metric"].first()
        out["primary_metric"] = prim.reindex(label[~label.duplicated()].values).values
    out.index = label[~label.duplicated()].values
    out["n_trials"] = states.sum(axis=1).reindex(out.index).values
    for s in STATES:
        out[f"n_{s}"] = states[s].reindex(out.index).values
    columns: dict[str, Any] = {}
    if len(ok):
        grouped = ok[values].apply(pd.to_numeric, errors="coerce").groupby(ok_label.values)
        mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
        for v in values:
            nv = n[v].reindex(out.index).fillna(0).astype(int)
            m = mean[v].reindex(out.index)
            s = std[v].reindex(out.index)
            half = t_quantile(nv.values) * s.values / np.sqrt(np.maximum(nv.values, 1))
            columns.update(
                {
                    v: m.values,
                    f"{v}.std": s.values,
                    f"{v}.n": nv.values,
                    f"{v}.ci_low": m.values - half,
                    f"{v}.ci_high": m.values + half,
                }
            )
    else:
        for v in values:
            columns.update({v: np.nan, f"{v}.std": np.nan, f"{v}.n": 0, f"{v}.ci_low": np.nan, f"{v}.ci_high": np.nan})
    for flag in LATENCY_FLAGS:
        if flag in df.columns:
            if not len(ok):
                columns[flag] = False
                continue
            flagged = ok[flag].map(raised).astype(bool)
            columns[flag] = flagged.groupby(ok_label.values).any().reindex(out.index, fill_value=False).values
    stats_df = pd.DataFrame(columns, index=out.index)
    return pd.concat([out, stats_df], axis=1).reset_index(drop=True)
