"""The figures of the spatially adaptive execution tasks: accuracy against executed FLOPs and against
latency, for SegBlocks (``spatial_segmentation``) and BlockCopy (``spatial_video``).

Hook for the report: ``spatial_figures(layout, folder) -> list[Figure]`` (like the other figure
functions of :mod:`adaptconv.report.figures`); it also takes a
:class:`~adaptconv.results.collect.Collection` or its trials table. It reads the trials' columns
``task``, ``state``, ``dataset``, ``metric.miou``, ``metric.gflops``, ``inference_ms``,
``task_options.policy``, ``task_options.target``, ``task_options.block_size`` (and ``section`` when
there is one), and the trivial baselines (``baseline``, ``metric.miou``).

One figure per section (task · dataset · backbone) of these tasks: left, mIoU against the executed
convolution GFLOPs per image (per frame for video); right, mIoU against inference latency (video: of
a clip, its first frame in full). One colour per policy, one marker per block size, lines joining a
policy's target fractions in the FLOPs panel (latencies are too noisy to join), the target written beside each point, the
dense network run block-wise (policy ``all``) as a black star, and the trivial baselines (majority,
chance) as grey horizontal lines. Seeds are averaged per configuration; the error bars are the
standard deviation over seeds (none with one seed).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .figures import Figure, _save, _style, slug

SPATIAL_TASKS = {
    "spatial_segmentation": ("SegBlocks (dual-resolution blocks)", "per image"),
    "spatial_video": ("BlockCopy (block reuse on video)", "per frame"),
}
POLICY_ORDER = ("learned", "heuristic", "difference", "random", "all")
MARKERS = ("o", "s", "^", "D", "v", "P")
KIND = "spatial"
#: what each task's figure plots upward, one row each: video adds the agreement with the dense network
#: per frame (paired with the same trained network, so it is not blurred by seed-to-seed spread)
Y_METRICS = {"spatial_segmentation": ("metric.miou",), "spatial_video": ("metric.miou", "metric.dense_agreement")}
Y_LABELS = {"metric.miou": "mIoU (%)", "metric.dense_agreement": "agreement with dense (% px)"}


def _draw(ax, agg: pd.DataFrame, x: str, y: str, blocks: list, palette: dict) -> None:
    """One line per (policy, block size) over the target fractions; the dense network as a star."""
    for (policy, block), line in agg.groupby(["policy", "block"], sort=True):
        line = line.sort_values("target")
        dense = policy == "all"
        ax.errorbar(
            line[x],
            line[y],
            yerr=line[f"{y}.std"].fillna(0) if f"{y}.std" in line else None,
            color=palette.get(policy, (0.5, 0.5, 0.5)),
            marker="*" if dense else MARKERS[blocks.index(block) % len(MARKERS)],
            ms=10 if dense else 5,
            lw=1,
            capsize=2,
            ls="-" if x == "metric.gflops" and not dense else "none",  # latency: too noisy to join
            zorder=3,
        )
        if not dense:
            for _, row in line.iterrows():
                ax.annotate(
                    f"{row['target']:g}", (row[x], row[y]), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )


def _option(df: pd.DataFrame, key: str, default) -> pd.Series:
    col = f"task_options.{key}"
    return df[col].fillna(default) if col in df else pd.Series(default, index=df.index)


def _tables(source) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, baselines) of a report Layout, a results Collection or a trials DataFrame."""
    if isinstance(source, pd.DataFrame):
        return source, pd.DataFrame()
    if hasattr(source, "col"):  # report.tables.Layout
        baselines = source.baseline_trials if source.baseline_trials is not None else source.col.baselines
        return source.trials, baselines if baselines is not None else pd.DataFrame()
    if hasattr(source, "trials"):  # results.collect.Collection
        return source.trials, source.baselines if source.baselines is not None else pd.DataFrame()
    raise TypeError(f"spatial_figures: a report Layout, a results Collection or a DataFrame, got {type(source)}")


def _sections(df: pd.DataFrame) -> pd.Series:
    if "section" in df:
        return df["section"]
    keys = [k for k in ("task", "dataset", "backbone") if k in df]
    return df[keys].astype(str).agg(" · ".join, axis=1)


def spatial_figures(source, folder: str | Path) -> list[Figure]:
    """Draw one figure per section of the spatial tasks in ``source`` (see the module docstring) into
    ``folder``; returns them as :class:`~adaptconv.report.figures.Figure` (``kind`` "spatial", ``file``
    relative to the report folder, i.e. ``figures/<name>.png`` when ``folder`` is the report's
    ``figures`` folder). Nothing is drawn when no finished trial of these tasks is there."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    trials, baselines = _tables(source)
    if trials is None or trials.empty or "task" not in trials:
        return []
    done = trials[trials["task"].isin(list(SPATIAL_TASKS))]
    if "state" in done:
        done = done[done["state"] == "done"]
    if done.empty or "metric.miou" not in done or not done["metric.miou"].notna().any():
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = done.assign(
        policy=_option(done, "policy", "learned"),
        target=_option(done, "target", 0.5).astype(float),
        block=_option(done, "block_size", 16).astype(float),
        section=_sections(done),
    )
    if not baselines.empty and "task" in baselines and "baseline" in baselines and "metric.miou" in baselines:
        baselines = baselines[baselines["task"].isin(list(SPATIAL_TASKS))].assign(section=_sections(baselines))
    else:
        baselines = pd.DataFrame(columns=["section", "baseline", "metric.miou"])
    _style()
    palette = dict(zip(POLICY_ORDER, sns.color_palette("colorblind", len(POLICY_ORDER))))
    palette["all"] = (0, 0, 0)
    out = []
    for section, group in done.groupby("section", sort=True):
        task = group["task"].iloc[0]
        ys = [y for y in Y_METRICS[task] if y in group and group[y].notna().any()]
        cols = [c for c in (*ys, "metric.gflops", "inference_ms") if c in group]
        agg = group.groupby(["policy", "target", "block"], sort=True)[cols].agg(["mean", "std"]).reset_index()
        agg.columns = [a if not b or b == "mean" else f"{a}.{b}" for a, b in agg.columns]
        refs = baselines[baselines["section"] == section].groupby("baseline")["metric.miou"].mean().dropna()
        title, unit = SPATIAL_TASKS[task]
        fig, axes = plt.subplots(len(ys), 2, figsize=(9, 3.3 * len(ys)), sharey="row", squeeze=False)
        blocks = sorted(agg["block"].unique())
        for r, y in enumerate(ys):
            for ax, x, label in (
                (axes[r][0], "metric.gflops", f"executed conv GFLOPs {unit} (↓)"),
                (axes[r][1], "inference_ms", "inference latency (ms, ↓)"),
            ):
                if x not in agg or not agg[x].notna().any():
                    ax.set_axis_off()
                    continue
                _draw(ax, agg, x, y, blocks, palette)
                if y == "metric.miou":  # the trivial baselines score mIoU only
                    for name, value in refs.items():
                        ax.axhline(value, color="0.6", ls=":", lw=1, zorder=1)
                        ax.annotate(
                            name, (1, value), xycoords=("axes fraction", "data"), fontsize=6, ha="right", va="bottom"
                        )
                ax.set_xlabel(label)
            axes[r][0].set_ylabel(Y_LABELS[y])
        present = set(agg["policy"])
        legend = [p for p in POLICY_ORDER if p in present and p != "all"]
        handles = [plt.Line2D([], [], color=palette[p], marker="o", linestyle="-", label=p) for p in legend]
        handles += [
            plt.Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="", label=f"block {b:g} px")
            for i, b in enumerate(blocks)
        ]
        if "all" in present:
            handles.append(plt.Line2D([], [], color="black", marker="*", linestyle="", label="dense (every block)"))
            legend.append("dense (every block)")
        (axes[0][1] if axes[0][1].axison else axes[0][0]).legend(handles=handles, loc="best", fontsize=7)
        fig.suptitle(f"{title} — {section}", fontsize=9)
        fig.tight_layout()
        path = _save(fig, folder, f"{KIND}-{slug(section)}")
        caption = (
            f"{title}, {section}: {' and '.join(Y_LABELS[y] for y in ys)} against executed convolution "
            f"GFLOPs {unit} (left) and inference latency (right); colour = policy, marker = block size, number = target fraction of selected "
            f"blocks, black star = every block (the dense network), dotted = trivial baselines "
            f"({', '.join(refs.index) or 'none recorded'}); mean ± standard deviation over seeds."
        )
        out.append(Figure(path, caption, KIND, legend, section, list(refs.index)))
    return out
