"""The spatial tasks' figure: one per section, from a trials table, a Collection-like or a Layout-like
source, with the trivial baselines as reference lines; nothing without finished spatial trials."""

from types import SimpleNamespace

import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from adaptconv.report.figures import Figure  # noqa: E402
from adaptconv.report.spatial import spatial_figures  # noqa: E402


def _trials() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for policy, target in (("learned", 0.25), ("learned", 0.5), ("random", 0.25), ("all", 0.5)):
            for task, dataset in (("spatial_segmentation", "synthetic"), ("spatial_video", "synthetic_video")):
                rows.append(
                    {
                        "task": task,
                        "dataset": dataset,
                        "backbone": "simplecnn-s",
                        "state": "done",
                        "seed": seed,
                        "task_options.policy": policy,
                        "task_options.target": target,
                        "task_options.block_size": 8,
                        "metric.miou": 20 + 10 * target + seed,
                        "metric.gflops": 0.01 * target,
                        "inference_ms": 3 + target,
                    }
                )
    rows.append({"task": "segmentation", "dataset": "synthetic", "state": "done", "metric.miou": 30.0})
    return pd.DataFrame(rows)


def test_one_figure_per_spatial_section_with_baselines(tmp_path):
    trials = _trials()
    baselines = pd.DataFrame(
        [
            {
                "task": "spatial_segmentation",
                "dataset": "synthetic",
                "backbone": "simplecnn-s",
                "seed": s,
                "baseline": name,
                "metric.miou": value + s,
            }
            for s in (0, 1)
            for name, value in (("majority", 12.0), ("chance", 11.0))
        ]
    )
    figures = spatial_figures(SimpleNamespace(trials=trials, baselines=baselines), tmp_path / "figures")
    assert [f.section for f in figures] == [
        "spatial_segmentation · synthetic · simplecnn-s",
        "spatial_video · synthetic_video · simplecnn-s",
    ]
    seg, video = figures
    assert isinstance(seg, Figure) and seg.kind == "spatial"
    assert seg.file.startswith("figures/") and (tmp_path / seg.file).is_file()
    assert seg.baselines == ["chance", "majority"] and video.baselines == []
    assert seg.legend == ["learned", "random", "dense (every block)"]
    # a Layout-like source: its own sections and baseline rows
    seg_trials = trials[trials["task"] == "spatial_segmentation"].assign(section="S")
    layout = SimpleNamespace(trials=seg_trials, baseline_trials=baselines.assign(section="S"), col=None)
    (only,) = spatial_figures(layout, tmp_path / "figures")
    assert only.section == "S" and only.baselines == ["chance", "majority"]


def test_nothing_without_finished_spatial_trials(tmp_path):
    assert spatial_figures(pd.DataFrame(), tmp_path) == []
    assert spatial_figures(_trials().assign(state="error"), tmp_path) == []
    with pytest.raises(TypeError, match="Layout, a results Collection or a DataFrame"):
        spatial_figures(42, tmp_path)
