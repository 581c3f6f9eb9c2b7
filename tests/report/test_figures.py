"""The report's figures do not mislead and read well, checked on the matplotlib objects of figures
drawn from fixture records (the values are known in closed form, see tests/fixtures/records.py):

- bar panels start the metric axis at zero and draw conv's mean and each trivial baseline as a named
  reference line; the Pareto figure draws the baselines as horizontal lines (they have no latency);
- no error bar (and no cap) where one seed gives no interval;
- panels are as wide as their content; panel titles name only what sets the group apart, and never
  overlap or leave the figure;
- log axes carry several plain-number labels;
- the training-curve figure separates operators by their loss divided by conv's at the same step;
- an ablation line needs two points; a factor with no such line gets no figure.
"""

import json
import math
import statistics

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from fixtures.records import rmse, write_fixture
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer

from adaptconv.report import figures as F
from adaptconv.report.tables import build_layout
from adaptconv.results.collect import collect

SECTION = "upsampling · middlebury · jointnet"


def bilinear(scale: float) -> float:
    return 2.0 + 0.1 * scale


def nearest(scale: float) -> float:
    return 2.03 + 0.1 * scale  # close to bilinear: their names must still not overlap


def add_baselines(store) -> None:
    for path in sorted(store.root.glob("trials/*/record.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "ok":
            continue
        s = rec["config"]["task_options"]["scale"]
        rec["baselines"] = {
            "bilinear": {"rmse": bilinear(s), "mae": bilinear(s) / 2},
            "nearest": {"rmse": nearest(s), "mae": nearest(s) / 2},
        }
        path.write_text(json.dumps(rec))


def drop_records(store, keep) -> None:
    """Delete the records of the trials ``keep(config)`` rejects: they become pending."""
    for path in sorted(store.root.glob("trials/*/record.json")):
        if not keep(json.loads(path.read_text())["config"]):
            path.unlink()


def draw_all(store, suite, folder):
    """Every figure of the report, with the matplotlib figure behind each file (by file name)."""
    layout = build_layout(collect(store, suite))
    drawn = {}
    save = F._save

    def keep(fig, folder, name):
        rel = save(fig, folder, name)
        drawn[rel.split("/")[-1].removesuffix(".png")] = fig
        return rel

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "_save", keep)
        figures = F.all_figures(layout, folder)
    return layout, {f.file.split("/")[-1].removesuffix(".png"): f for f in figures}, drawn


def render(fig):
    """Lay the (closed) figure out again as it was saved and return its renderer."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def hlines(ax, ls):
    """y of the horizontal reference lines of one line style."""
    out = []
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if line.get_linestyle() == ls and len(y) == 2 and y[0] == y[1] and list(x) == [0, 1]:
            out.append(float(y[0]))
    return sorted(out)


def annotations(ax):
    return {t.get_text(): t for t in ax.texts}


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """conv, pac, dfn and pac (kernel_type=inv) at scales 4 and 8, three seeds, with trivial baselines;
    pac (kernel_type=inv) has no result at scale 8 (one point in the scale ablation)."""
    root = tmp_path_factory.mktemp("figs3")
    suite, store = write_fixture(
        root, ops=("conv", "pac", "dfn"), scales=(4, 8), seeds=(0, 1, 2), kernel_types=("inv",)
    )
    drop_records(
        store,
        lambda c: not ((c.get("op_options") or {}).get("kernel_type") == "inv" and c["task_options"]["scale"] == 8),
    )
    add_baselines(store)
    return draw_all(store, suite, root / "report" / "figures")


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """One seed (no intervals); at scale 8 only conv has a result (a one-bar panel)."""
    root = tmp_path_factory.mktemp("figs1")
    suite, store = write_fixture(root, ops=("conv", "pac", "dfn"), scales=(4, 8), seeds=(0,), kernel_types=())
    drop_records(store, lambda c: c["op"] == "conv" or c["task_options"]["scale"] == 4)
    return draw_all(store, suite, root / "report" / "figures")


def test_bar_axis_starts_at_zero_and_shows_conv_and_the_baselines(three_seeds):
    layout, figures, drawn = three_seeds
    name = "bars-upsampling-middlebury-jointnet"
    assert figures[name].baselines == ["bilinear", "nearest"]
    assert "bilinear, nearest" in figures[name].caption and "starts at zero" in figures[name].caption
    axes = panels(drawn[name])
    assert [ax.get_title() for ax in axes] == ["scale=4", "scale=8"]
    for ax, scale in zip(axes, (4, 8)):
        low, high = ax.get_ylim()
        assert low == 0.0  # not zoomed to where the bars differ
        assert high >= max(bilinear(scale), nearest(scale))  # every baseline in view
        conv = statistics.mean(rmse("conv", scale, s) for s in range(3))
        assert hlines(ax, "--") == [pytest.approx(conv)]
        assert hlines(ax, ":") == [pytest.approx(bilinear(scale)), pytest.approx(nearest(scale))]
        names = annotations(ax)
        assert {"conv", "bilinear", "nearest"} <= set(names)
        # close lines get names that do not overlap
        renderer = render(drawn[name])
        a, b = (names[n].get_window_extent(renderer) for n in ("bilinear", "nearest"))
        assert not a.overlaps(b)


def test_bar_limits():
    assert F.bar_limits([95.0, 97.0, 10.0]) == (0.0, pytest.approx(97 * 1.06))  # accuracy: from zero
    assert F.bar_limits([3.5648, 3.5650])[0] == 0.0  # a 1e-4 difference stays a 1e-4 difference
    low, high = F.bar_limits([-1.0, 2.0])
    assert low < -1.0 and high > 2.0  # a negative value is drawn below zero
    assert F.bar_limits([float("nan"), 1.0]) == (0.0, pytest.approx(1.06))
    # mIoU 9 ± 18: the interval's end above counts, the one below zero is cut at the axis
    assert F.bar_limits([9.0], [-9.0, 27.0]) == (0.0, pytest.approx(27 * 1.06))


def test_pareto_draws_baselines_as_horizontal_lines(three_seeds):
    _, figures, drawn = three_seeds
    name = "pareto-upsampling-middlebury-jointnet"
    assert figures[name].baselines == ["bilinear", "nearest"]
    for ax, scale in zip(panels(drawn[name]), (4, 8)):
        assert "inference latency" in ax.get_xlabel()
        assert hlines(ax, ":") == [pytest.approx(bilinear(scale)), pytest.approx(nearest(scale))]
        low, high = ax.get_ylim()
        assert low <= bilinear(scale) <= high


def caps(ax):
    """Error-bar caps drawn in a panel (markers '_' on vertical bars, '|' on horizontal ones)."""
    return [line for line in ax.get_lines() if line.get_marker() in ("_", "|") and len(line.get_xdata())]


def test_no_error_bar_without_an_interval(one_seed, three_seeds):
    _, _, drawn = one_seed
    for ax in panels(drawn["bars-upsampling-middlebury-jointnet"]):
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert bars and all(c.errorbar is None for c in bars)
        assert caps(ax) == []
    for ax in panels(drawn["pareto-upsampling-middlebury-jointnet"]):
        # the latency's own bootstrap CI is an interval (horizontal bars); the metric has none at n=1
        assert [c.get_marker() for c in caps(ax)] and {c.get_marker() for c in caps(ax)} == {"|"}
    # with three seeds every bar has its interval
    _, _, drawn = three_seeds
    for ax in panels(drawn["bars-upsampling-middlebury-jointnet"]):
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert all(c.errorbar is not None for c in bars)


def test_panels_are_as_wide_as_their_content(one_seed):
    _, figures, drawn = one_seed
    fig = drawn["bars-upsampling-middlebury-jointnet"]
    render(fig)
    three, one = panels(fig)
    assert [len(ax.patches) for ax in (three, one)] == [3, 1]
    assert one.get_position().width < 0.6 * three.get_position().width
    assert figures["bars-upsampling-middlebury-jointnet"].legend == ["conv", "pac", "dfn"]


def test_titles_are_short_and_never_overlap_or_leave_the_figure(three_seeds):
    _, _, drawn = three_seeds
    for name in (
        "bars-upsampling-middlebury-jointnet",
        "pareto-upsampling-middlebury-jointnet",
        "curves-upsampling-middlebury-jointnet",
    ):
        fig = drawn[name]
        renderer = render(fig)
        titled = [ax for ax in panels(fig) if ax.get_title()]
        assert [ax.get_title() for ax in titled] == ["scale=4", "scale=8"], name  # the section is in the caption
        boxes = [ax.title.get_window_extent(renderer) for ax in titled]
        assert not boxes[0].overlaps(boxes[1]), name
        page = fig.bbox
        for box in boxes:
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, name
    long = "segmentation · synthetic · simplecnn-s · size=32 · n_train=320 · decoder_width=16 · crf_iters=3"
    title = F.panel_title("segmentation · synthetic · simplecnn-s", long, 2.0)
    assert "simplecnn-s" not in title and "crf_iters=3" in title
    assert max(len(line) for line in title.splitlines()) <= (2.0 + F.AXIS_ROOM) * F.TITLE_CHARS_PER_INCH
    assert F.panel_title(SECTION, SECTION, 4.0) == ""


def labelled_ticks(axis, low, high):
    return [
        t.get_text()
        for t in axis.get_ticklabels()
        if t.get_visible() and t.get_text() and low <= t.get_position()[axis.axis_name == "y"] <= high
    ]


def test_log_axes_have_several_plain_labels(three_seeds):
    _, _, drawn = three_seeds
    fig = drawn["scaling-upsampling-middlebury-jointnet-scale-4"]
    render(fig)
    logs = [ax for ax in panels(fig) if ax.get_yscale() == "log"]
    assert len(logs) == 4  # latency and memory grow 16x from 32 to 128 px
    for ax in logs:
        labels = labelled_ticks(ax.yaxis, *sorted(ax.get_ylim()))
        assert len(labels) >= 3, labels
        assert all("$" not in t and "10^" not in t for t in labels), labels
    # about one decade of latencies (a Pareto x axis): 1-2-3-5-7 labels, not one '10^1'
    fig, ax = plt.subplots()
    ax.plot([2.2, 6.0, 30.0], [1, 2, 3], "o")
    ax.set_xscale("log")
    F._log_ticks(ax)
    fig.canvas.draw()
    labels = labelled_ticks(ax.xaxis, *sorted(ax.get_xlim()))
    plt.close(fig)
    assert len(labels) >= 4 and "10" in labels and "3" in labels, labels
    assert F.log_subs(1, 1e6) == (1.0,) and F.log_subs(1, 100) == (1.0, 2.0, 5.0)


def test_curves_separate_operators_by_their_loss_relative_to_conv(three_seeds):
    _, figures, drawn = three_seeds
    fig = drawn["curves-upsampling-middlebury-jointnet"]
    top, bottom = fig.axes[0], fig.axes[2]  # rows: loss, loss / conv's loss (first column: scale=4)
    assert top.get_ylabel() == "training loss" and "conv" in bottom.get_ylabel()
    assert hlines(bottom, "--") == [1.0]
    # fixture losses are rmse * exp(-step / 10): the ratio is rmse(op) / rmse(conv) of each seed, at every step
    expected = {op: statistics.mean(rmse(op, 4, s) / rmse("conv", 4, s) for s in range(3)) for op in ("pac", "dfn")}
    lines = {line.get_label(): line.get_ydata() for line in bottom.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"pac", "dfn", "pac (kernel_type=inv)"}
    for op, value in expected.items():
        assert np.allclose(lines[op], value)
    assert "divided by conv's" in figures["curves-upsampling-middlebury-jointnet"].caption
    low, high = bottom.get_ylim()
    assert low <= 0.99 and high >= 1.01  # tiny relative differences are drawn as tiny


def test_tiny_loss_ratios_look_flat(tmp_path):
    """Operators within 1e-4 of conv's loss: the ratio axis still spans 1 ± 1%."""
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=())
    for path in store.root.glob("trials/*/record.json"):
        rec = json.loads(path.read_text())
        factor = 1.0001 if rec["config"]["op"] == "pac" else 1.0
        rec["curve"]["loss"] = [factor * math.exp(-s / 10) for s in rec["curve"]["step"]]
        path.write_text(json.dumps(rec))
    _, _, drawn = draw_all(store, suite, tmp_path / "figures")
    bottom = drawn["curves-upsampling-middlebury-jointnet"].axes[1]
    low, high = bottom.get_ylim()
    assert low <= 0.99 and high >= 1.01


def test_smoothing_window():
    assert F.smoothing_window(10) == 1 and F.smoothing_window(30) == 3 and F.smoothing_window(300) == 30


def test_ablation_lines_need_two_points(three_seeds, one_seed):
    _, figures, drawn = three_seeds
    scale = figures["ablation-task-options-scale"]
    assert scale.legend == ["conv", "pac", "dfn"]  # pac (kernel_type=inv) was measured at scale 4 only
    assert "Left out" in scale.caption and "pac (kernel_type=inv)" in scale.caption
    # the baselines depend on the scale: drawn over it, not as one level
    ax = panels(drawn["ablation-task-options-scale"])[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert sorted(tuple(np.round(line.get_ydata(), 6)) for line in dotted) == [
        (round(bilinear(4), 6), round(bilinear(8), 6)),
        (round(nearest(4), 6), round(nearest(8), 6)),
    ]
    # one seed, and only conv at scale 8: conv is the only line of the scale ablation
    _, figures, _ = one_seed
    assert figures["ablation-task-options-scale"].legend == ["conv"]


def test_an_ablation_with_nothing_to_compare_is_skipped(tmp_path):
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=("inv",))
    drop_records(store, lambda c: (c.get("op_options") or {}).get("kernel_type") != "inv")
    _, figures, _ = draw_all(store, suite, tmp_path / "figures")
    assert not any(name.startswith("ablation") for name in figures), sorted(figures)
    assert {"bars-upsampling-middlebury-jointnet", "pareto-upsampling-middlebury-jointnet"} <= set(figures)


def test_regenerated_figures_are_byte_identical(tmp_path):
    """Reference lines, their names and every figure kind: drawn twice from the same records, the same bytes."""
    root = tmp_path
    suite, store = write_fixture(root, ops=("conv", "pac"), scales=(4, 8), seeds=(0, 1), kernel_types=())
    add_baselines(store)
    first = draw_all(store, suite, root / "a")[1]
    draw_all(store, suite, root / "b")
    for name in first:
        assert (root / "a" / f"{name}.png").read_bytes() == (root / "b" / f"{name}.png").read_bytes(), name


def test_operator_colours_are_fixed_and_conv_is_black():
    from adaptconv.report.palette import op_color, variant_styles

    assert op_color("conv") == (0.0, 0.0, 0.0)
    alone = variant_styles(["pac"])["pac"]
    among = variant_styles(["conv", "dfn", "pac", "ddf", "gated"])["pac"]
    assert alone == among  # a colour depends on the name, not on the other operators of a report
    assert math.isclose(sum(op_color("conv (upsampler=carafe)")), 0.0)
    assert matplotlib.colors.to_rgb(op_color("pac")) != matplotlib.colors.to_rgb(op_color("dfn"))
