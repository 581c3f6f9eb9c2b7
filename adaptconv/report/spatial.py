"""The figure of the spatially adaptive execution tasks: accuracy against executed FLOPs and against
latency, for SegBlocks (``spatial_segmentation``) and BlockCopy (``spatial_video``).

Reads only the collected results table (``results.parquet`` rows: ``task``, ``state``,
``metric.miou``, ``metric.flops_ratio``, ``metric.gflops``, ``inference_ms``,
``task_options.policy``, ``task_options.target``, ``task_options.block_size``, ``dataset``). One
figure per task · dataset present: left, mIoU against executed conv GFLOPs per image (per frame for
video); right, mIoU against inference latency (video: of a clip, the first frame in full); one colour
per policy, one marker per block size, the target fraction written beside each point, and the dense
network run block-wise (policy ``all``) as a black star. Seeds are averaged per configuration.

Hook for the report: ``spatial_figures(table, figures_dir)`` returns ``[(relative path, caption)]``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .figures import _save, _style, slug

SPATIAL_TASKS = {"spatial_segmentation": ("SegBlocks (dual-resolution blocks)", "per image"),
                 "spatial_video": ("BlockCopy (block reuse on video)", "per frame")}
POLICY_ORDER = ("learned", "heuristic", "difference", "random", "all")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _option(df: pd.DataFrame, key: str, default):
    col = f"task_options.{key}"
    return df[col] if col in df else pd.Series(default, index=df.index)


def spatial_figures(table: pd.DataFrame, figures_dir: str | Path) -> list[tuple[str, str]]:
    """Draw one figure per spatial task · dataset in ``table``; returns (path relative to the report,
    caption) for each. Nothing is drawn when no finished trial of these tasks is in the table."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if "task" not in table:
        return []
    done = table[table["task"].isin(list(SPATIAL_TASKS))]
    if "state" in done:
        done = done[done["state"] == "done"]
    if done.empty or "metric.miou" not in done:
        return []
    done = done.assign(policy=_option(done, "policy", "learned"), target=_option(done, "target", 0.5),
                       block=_option(done, "block_size", 16))
    _style()
    palette = dict(zip(POLICY_ORDER, sns.color_palette("colorblind", len(POLICY_ORDER))))
    palette["all"] = (0, 0, 0)
    out = []
    for (task, dataset), group in done.groupby(["task", "dataset"], sort=True):
        cols = ["metric.miou", "metric.gflops"] + (["inference_ms"] if "inference_ms" in group else [])
        agg = group.groupby(["policy", "target", "block"], sort=True)[cols].mean().reset_index()
        title, unit = SPATIAL_TASKS[task]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        blocks = sorted(agg["block"].unique())
        for ax, x, label in ((axes[0], "metric.gflops", f"executed conv GFLOPs {unit}"),
                             (axes[1], "inference_ms", "inference latency (ms)")):
            if x not in agg:
                ax.set_axis_off()
                continue
            for _, row in agg.iterrows():
                dense = row["policy"] == "all"
                ax.scatter(row[x], row["metric.miou"], color=palette.get(row["policy"], (0.5, 0.5, 0.5)),
                           marker="*" if dense else MARKERS[blocks.index(row["block"]) % len(MARKERS)],
                           s=90 if dense else 36, zorder=3)
                if not dense:
                    ax.annotate(f"{row['target']:g}", (row[x], row["metric.miou"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(label)
        axes[0].set_ylabel("mIoU (%)")
        handles = [plt.Line2D([], [], color=palette[p], marker="o", linestyle="", label=p)
                   for p in POLICY_ORDER if p in set(agg["policy"]) and p != "all"]
        handles += [plt.Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="",
                               label=f"block {b:g} px") for i, b in enumerate(blocks)]
        if "all" in set(agg["policy"]):
            handles.append(plt.Line2D([], [], color="black", marker="*", linestyle="", label="dense (all blocks)"))
        axes[1].legend(handles=handles, loc="best")
        fig.suptitle(f"{title} — {dataset}")
        fig.tight_layout()
        path = _save(fig, folder, f"spatial-{slug(task)}-{slug(dataset)}")
        caption = (f"{title} on {dataset}: mIoU against executed convolution GFLOPs {unit} (left) and inference "
                   f"latency (right); colour = policy, marker = block size, number = target fraction of "
                   f"selected blocks, black star = every block (the dense network); mean over seeds.")
        out.append((path, caption))
    return out
