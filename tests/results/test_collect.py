"""`collect`: one row per trial (pending and failed included), values read back exactly from the
records, and the seed aggregation and ranking against independent computations."""

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from fixtures.records import OP_MS, TEMPLATE, baselines, latency_ms, params, peak_bytes, rmse, write_fixture
from scipy import stats

from adaptconv.results.collect import CollectError, aggregate, collect


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("collect"), pending=2, failed=1)


@pytest.fixture(scope="module")
def col(fixture_store):
    suite, store = fixture_store
    return collect(store, suite)


def test_one_row_per_trial_with_its_state(col, fixture_store):
    suite, _ = fixture_store
    t = col.trials
    assert len(t) == len(suite.trials) == 24
    assert list(t["trial_id"]) == [tr.id for tr in suite.trials]
    assert t["state"].value_counts().to_dict() == {"done": 21, "failed": 1, "pending": 2}
    failed = t[t["state"] == "failed"].iloc[0]
    assert failed["status"] == "error" and "boom" in failed["error"]
    pending = t[t["state"] == "pending"]
    # pending trials keep their config and have no invented values
    assert set(pending["op"]) == {"pac"} and set(pending["op_options.kernel_type"]) == {"inv"}
    assert pending["metric.rmse"].isna().all() and pending["inference_ms"].isna().all()
    # flattened config columns as dotted keys, in the table
    for key in ("op", "seed", "task_options.scale", "optimizer.lr", "measure.batch_sizes"):
        assert key in col.config_columns
    assert sorted(col.factors()) == ["op", "op_options.kernel_type", "task_options.scale"]
    assert col.primary == "rmse" and col.directions["rmse"] is False


def test_values_are_the_records_values(col):
    done = col.trials[col.trials["state"] == "done"]
    for _, r in done.iterrows():
        kt = r["op_options.kernel_type"] if isinstance(r["op_options.kernel_type"], str) else None
        assert r["metric.rmse"] == pytest.approx(rmse(r["op"], r["task_options.scale"], r["seed"], kt), abs=1e-12)
        assert r["inference_ms"] == pytest.approx(latency_ms(r["op"], "inference", 1, 32))
        assert r["train_step_ms"] == pytest.approx(latency_ms(r["op"], "train_step", 1, 32))
        assert r["train_step_peak_mb"] == pytest.approx(peak_bytes(r["op"], "train_step", 1, 32) / 2**20)
        assert r["throughput_ips"] == pytest.approx(2 / (latency_ms(r["op"], "inference", 2, 32) / 1e3))
        assert r["params"] == params(r["op"])
        assert r["env.device"] == "cpu" and r["run.steps"] == TEMPLATE["steps"]


def test_runs_and_curves_tables(col):
    assert len(col.runs) == 21 * 12  # 3 resolutions × 2 batch sizes × 2 phases per finished trial
    assert sorted(col.runs["resolution"].unique()) == [32, 64, 128]
    one = col.runs[
        (col.runs["phase"] == "train_step") & (col.runs["resolution"] == 128) & (col.runs["batch_size"] == 2)
    ]
    ops = col.trials.set_index("trial_id").loc[one["trial_id"], "op"]
    assert np.allclose(one["latency_ms"].values, [latency_ms(o, "train_step", 2, 128) for o in ops])
    loss = col.curves[col.curves["series"] == "loss"]
    assert len(loss) == 22 * 20  # the failed trial keeps the curve it had when it failed
    assert set(col.curves["series"]) == {"loss", "lr", "eval.rmse", "eval.mae"}


def test_written_tables_read_back(col, tmp_path):
    paths = col.write(tmp_path)
    assert sorted(p.name for p in paths) == [
        "baselines.csv",
        "baselines.parquet",
        "curves.parquet",
        "results.csv",
        "results.parquet",
        "runs.csv",
        "runs.parquet",
    ]
    assert len(pd.read_csv(tmp_path / "baselines.csv")) == len(col.baselines) == 12
    back = pd.read_parquet(tmp_path / "results.parquet")

    def plain(df):  # Parquet reads a missing value back as None or NaN depending on the column type
        return df.astype(object).where(df.notna(), None)

    pd.testing.assert_frame_equal(plain(back), plain(col.trials.reset_index(drop=True)), check_dtype=False)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert len(csv) == 24 and np.allclose(csv["metric.rmse"].dropna(), col.trials["metric.rmse"].dropna())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_aggregate_over_seeds_matches_an_independent_computation(col):
    agg = aggregate(col)
    assert len(agg) == 8  # (conv, pac, dfn, pac-inv) × 2 scales; the seed is not a factor
    row = agg[(agg["op"] == "dfn") & (agg["task_options.scale"] == 8)].iloc[0]
    values = [rmse("dfn", 8, s) for s in (0, 1, 2)]
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert row["metric.rmse"] == pytest.approx(mean)
    assert row["metric.rmse.std"] == pytest.approx(sd)
    assert row["metric.rmse.n"] == 3
    assert (row["metric.rmse.ci_low"], row["metric.rmse.ci_high"]) == pytest.approx((mean - half, mean + half))
    partial = agg[(agg["op_options.kernel_type"] == "inv") & (agg["task_options.scale"] == 8)].iloc[0]
    assert (partial["n_trials"], partial["n_done"], partial["n_failed"], partial["n_pending"]) == (3, 0, 1, 2)
    assert math.isnan(partial["metric.rmse"]) and partial["metric.rmse.n"] == 0


def test_baselines_are_rows_one_per_seed_config_and_name(col):
    """Every operator of a seed and scale carries the same baselines: one row each, with the config
    columns of the trials (without the operator keys), op = the baseline's name, and its metrics."""
    b = col.baselines
    assert len(b) == 2 * 3 * 2  # scales × seeds × (bilinear, guided_filter)
    assert set(b["baseline"]) == {"bilinear", "guided_filter"} and (b["op"] == b["baseline"]).all()
    assert b["op_options.kernel_type"].isna().all()  # an operator key: a baseline has none
    assert (b["state"] == "done").all() and (b["status"] == "ok").all()
    for _, r in b.iterrows():
        expected = baselines(r["task_options.scale"], r["seed"])[r["baseline"]]
        assert (r["metric.rmse"], r["metric.mae"]) == pytest.approx((expected["rmse"], expected["mae"]))
    # the copies merged: 4 records per seed at scale 4 (conv, pac, dfn, pac-inv); at scale 8 the
    # kernel-type trials failed or are pending, and seed 0 of it is the failed one (no baselines)
    counts = b.groupby(["task_options.scale", "seed"])["n_records"].first().to_dict()
    assert counts == {(4, 0): 4, (4, 1): 4, (4, 2): 4, (8, 0): 3, (8, 1): 3, (8, 2): 3}


def test_baselines_aggregate_over_seeds(col):
    agg = aggregate(col, trials=col.baselines)
    assert len(agg) == 4  # (bilinear, guided_filter) × 2 scales
    row = agg[(agg["baseline"] == "bilinear") & (agg["task_options.scale"] == 8)].iloc[0]
    values = [baselines(8, s)["bilinear"]["rmse"] for s in (0, 1, 2)]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(values) / math.sqrt(3)
    assert row["metric.rmse"] == pytest.approx(statistics.mean(values)) and row["metric.rmse.n"] == 3
    assert (row["metric.rmse.ci_low"], row["metric.rmse.ci_high"]) == pytest.approx(
        (statistics.mean(values) - half, statistics.mean(values) + half)
    )


def test_records_without_baselines_have_none(tmp_path):
    suite, store = write_fixture(
        tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1), kernel_types=(), baselines_fn=lambda cfg: None
    )
    col = collect(store, suite)
    assert col.baselines.empty and "baseline" in col.baselines.columns
    assert len(aggregate(col)) == 2


def test_baseline_copies_that_disagree_are_logged(tmp_path, caplog):
    def differ(cfg):  # pac's copy of the test set differs: not the same test data
        return {"bilinear": {"rmse": 2.0 + (0.5 if cfg["op"] == "pac" else 0.0)}}

    suite, store = write_fixture(
        tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=(), baselines_fn=differ
    )
    with caplog.at_level("WARNING"):
        col = collect(store, suite)
    assert len(col.baselines) == 1 and col.baselines["metric.rmse"].iloc[0] == 2.0  # the first kept
    assert "bilinear: rmse is 2.0" in caplog.text and "2.5" in caplog.text


def test_records_without_resolution_key_use_the_input_shape(tmp_path):
    suite, store = write_fixture(tmp_path, ops=("conv",), scales=(4,), seeds=(0,), kernel_types=())
    tid = suite.trials[0].id
    rec = store.read_record(tid)
    for run in rec["measurements"]["runs"]:
        del run["resolution"]  # records written before the key existed
    store.write_record(tid, rec)
    col = collect(store, suite)
    assert sorted(col.runs["resolution"].unique()) == [32, 64, 128]


def test_unreadable_store_is_a_clear_error(tmp_path):
    with pytest.raises(CollectError, match="no trials stored"):
        collect(tmp_path / "nothing-here")


def test_a_damaged_record_is_set_aside_not_fatal(tmp_path):
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=())
    store.record_path(suite.trials[1].id).write_text('{"status": "ok", "metr')  # edited by hand, cut short
    col = collect(store, suite)
    assert col.trials["state"].tolist() == ["done", "corrupt"]  # moved aside, counted, not shown as pending
    assert not store.record_path(suite.trials[1].id).exists() and store.corrupt_records(suite.trials[1].id)


def test_fixture_template_has_the_shape_of_a_real_record():
    """The fixtures stand for real records: a trial run now must produce the same structure."""
    from adaptconv.trial import run_trial

    cfg = json.loads(json.dumps(TEMPLATE["config"]))
    cfg.update(
        steps=1,
        eval_points=1,
        measure={"batch_sizes": [1], "resolution": 32, "warmup": 1, "repeats": 2, "min_time_s": 0.0},
    )
    rec = run_trial(cfg)
    assert rec["status"] == "ok", rec.get("error")
    fixture_only = {"metric_info", "baselines"}  # the template predates these keys; the fixtures add them
    assert set(TEMPLATE) | fixture_only >= set(rec) - {"resumed_from_step"}
    assert set(rec) >= set(TEMPLATE)
    assert set(rec["measurements"]) == set(TEMPLATE["measurements"])
    assert set(rec["measurements"]["runs"][0]) >= set(TEMPLATE["measurements"]["runs"][0])
    assert set(rec["measurements"]["runs"][0]["latency"]) == set(TEMPLATE["measurements"]["runs"][0]["latency"])
    assert OP_MS["conv"] == 1.0


def test_parallel_parsing_gives_the_same_tables(fixture_store, monkeypatch):
    """Large stores are parsed by forked worker processes; the tables must not change."""
    import adaptconv.results.collect as collect_module

    suite, store = fixture_store
    sequential = collect(store, suite)
    monkeypatch.setattr(collect_module, "PARALLEL_ABOVE", 1)
    parallel = collect(store, suite)
    pd.testing.assert_frame_equal(parallel.trials, sequential.trials)
    pd.testing.assert_frame_equal(parallel.runs, sequential.runs)
    pd.testing.assert_frame_equal(parallel.curves, sequential.curves)
