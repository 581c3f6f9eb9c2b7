"""Write a suite's report from its collected results: HTML, Markdown, CSV and LaTeX tables, PNG figures.

```
report/<suite>/
  index.html            self-contained page (figures beside it, relative links; no network)
  README.md             the same report in Markdown (renders on a repository host)
  figures/*.png
  tables/<section>.{csv,tex,md}, tables/status.csv, tables/environment.csv
  manifest.json         what the report contains (figures with their legends, tables)
```

The report reads only the collection (the stored records); regenerating it from the same records
gives the same files, byte for byte. Files from an earlier report that this one no longer produces are
removed so nothing stale is linked or left behind.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..atomic import write_text_atomic
from ..results.collect import Collection, raised
from ..results.store import STATES
from .claims import ClaimsTable
from .figures import Figure, all_figures, slug
from .findings import METHOD, findings
from .spatial import spatial_figures
from .tables import (
    CONTENDED_MARK,
    NOISY_MARK,
    Layout,
    build_layout,
    display_table,
    environment_table,
    section_table,
    status_table,
    to_html,
    to_latex,
    to_markdown,
)


@dataclass
class Report:
    folder: Path
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # files relative to the folder

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:13px;margin:0.6em 0 1.2em}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.best{font-weight:bold}figure{margin:1em 0}figure img{max-width:100%}
figcaption{font-size:13px;color:#555}code{background:#f4f4f4;padding:0 3px}.note{color:#555;font-size:14px}.warning{background:#fff4e5;border-left:4px solid #e8a33d;padding:6px 10px}
"""


def _counts(layout: Layout) -> dict[str, int]:
    states = layout.trials["state"].value_counts()
    return {s: int(states.get(s, 0)) for s in STATES}


def _reading_notes(layout: Layout) -> list[str]:
    t = layout.trials[layout.trials["state"] == "done"]
    devices = sorted({str(v) for v in t.get("env.device_name", pd.Series(dtype=object)).dropna()})
    notes = [
        "Rows: in each comparison group (the same task, data, backbone and swept settings), the operators, the "
        "*network variants* (the same network with a learned upsampler or a CRF head, labelled e.g. "
        "`conv (upsampler=carafe)`) and the task's *trivial baselines* (non-learned predictors such as "
        "`bilinear` or `majority`, scored on the same test data).",
        "Metrics: mean ± half-width of the 95% Student-t confidence interval over seeds, printed to the digits "
        "the interval supports; `n` is the number of seeds. With one seed there is no interval and the value "
        "has 4 significant digits.",
        "`Δ vs conv`: the mean over seeds of the per-seed difference row − `conv` on the headline metric "
        "(paired by seed: both share the data order and the initial convolution), with its 95% t interval; "
        "a network variant is compared with the same network without it (`vs ...`). `verdict`: better / worse "
        "/ no detectable difference after Holm–Bonferroni correction over the operator and variant comparisons "
        "of the group (family-wise α = 0.05); `n<2, no CI` below two seeds. A baseline row's verdict is the "
        "baseline's against `conv`, Holm-corrected over the group's baselines (a family of its own). `vs trivial baseline`: the row against the strongest baseline of its group, paired "
        "and Holm-corrected the same way.",
        "Bold: a value whose advantage over `conv` is significant after Holm (or `conv` itself, when it is "
        "significantly better than every other row of its group) — never a row alone, never on one seed.",
        f"Latency: median of timed repeats after warm-up, at batch {layout.measured('measured_batch')} and "
        f"resolution {layout.measured('measured_resolution')} px (CUDA events on GPU, perf_counter on CPU); "
        "`training step` is forward + backward + optimiser step. Peak memory: the CUDA allocator's peak on GPU, "
        "the profiler's peak of live tensor bytes on CPU. FLOPs count one multiply-add as 2 FLOPs, at batch 1. "
        "`×conv`: ratio to the `conv` row of the same comparison group; measurements are not tested for "
        f"significance here. {CONTENDED_MARK} after a latency or ratio: timed while other processes competed for the "
        f"CPU (contended), not the operator's speed; {NOISY_MARK}: noisy, the repeats spread more than 10% of the "
        "median (with several seeds, the mark says at least one seed's run was).",
    ]
    if devices:
        notes.append(f"Measured on: {', '.join(devices)}.")
    return notes


_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EM = re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])")


def inline_html(text: str) -> str:
    """The inline Markdown the report's own text uses, as HTML: `code`, **strong**, *emphasis*; the rest
    escaped (code spans are escaped and never read as emphasis)."""
    parts = []
    for k, piece in enumerate(_CODE.split(str(text))):
        if k % 2:
            parts.append(f"<code>{html.escape(piece)}</code>")
        else:
            piece = html.escape(piece)
            piece = _STRONG.sub(r"<strong>\1</strong>", piece)
            parts.append(_EM.sub(r"<em>\1</em>", piece))
    return "".join(parts)


def plain_text(text: str) -> str:
    """The same text without Markdown marks (for an image's alt text)."""
    return _EM.sub(r"\1", _STRONG.sub(r"\1", _CODE.sub(r"\1", str(text))))


def build_report(
    col: Collection, out: str | os.PathLike, *, command: str | None = None, claims: ClaimsTable | None = None
) -> Report:
    """Write the report of ``col`` into ``out`` and return what it contains; ``claims``: the published
    claims judged on ``col`` (:func:`adaptconv.report.claims.report_claims`), a section and
    ``tables/claims.*`` of their own."""
    out = Path(out)
    layout = build_layout(col)
    report = Report(out)
    # the spatially adaptive execution tasks add accuracy against executed FLOPs and latency (nothing otherwise)
    figures = all_figures(layout, out / "figures") + spatial_figures(layout, out / "figures")
    report.figures = figures
    counts = _counts(layout)
    sections = []
    for section in layout.sections:
        raw = section_table(layout, section)
        cells, marks = display_table(raw, layout, section)
        name = slug(section)
        files = {
            f"tables/{name}.csv": raw.to_csv(index=False),
            f"tables/{name}.tex": to_latex(cells, marks, f"{col.suite}: {section}", f"tab:{slug(col.suite)}-{name}"),
            f"tables/{name}.md": to_markdown(cells, marks) + "\n",
        }
        for rel, text in files.items():
            write_text_atomic(out / rel, text)
            report.tables.append(rel)
        sections.append((section, name, cells, marks))
    status = status_table(layout)
    env = environment_table(layout)
    for rel, df in (("tables/status.csv", status), ("tables/environment.csv", env)):
        write_text_atomic(out / rel, df.to_csv(index=False))
        report.tables.append(rel)
    for rel, text in (claims.files() if claims is not None else {}).items():
        write_text_atomic(out / rel, text)
        report.tables.append(rel)
    notes = _reading_notes(layout)
    found = findings(layout)
    cmd = command or f"adaptconv report {col.suite}"
    write_text_atomic(
        out / "README.md", _markdown(col, layout, sections, figures, status, env, counts, notes, cmd, found, claims)
    )
    write_text_atomic(
        out / "index.html", _html(col, layout, sections, figures, status, env, counts, notes, cmd, found, claims)
    )
    manifest = {
        "suite": col.suite,
        "counts": counts,
        "primary_metric": col.primary,
        "figures": [asdict(f) for f in figures],
        "tables": report.tables,
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _remove_stale(out, {f.file for f in figures} | set(report.tables))
    return report


def _remove_stale(out: Path, keep: set[str]) -> None:
    for sub in ("figures", "tables"):
        folder = out / sub
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and f"{sub}/{f.name}" not in keep:
                    f.unlink()


def _summary(col: Collection, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    text = f"{counts['done']} of {total} trials finished"
    rest = [f"{counts[s]} {s}" for s in STATES[1:] if counts[s]]
    if rest:
        text += (
            " ("
            + ", ".join(rest)
            + "). Tables and figures use the finished trials only; the others are listed at the end"
        )
    return text + "."


def latency_warning(layout: Layout) -> str | None:
    """A paragraph for the top of the report when some of its latencies cannot be read as the operators'
    speed: timed while other processes competed for the device (contended), with repeats spread beyond
    the noise threshold (noisy), or recorded before the host was checked. None when every one is clean."""
    done = set(layout.trials.loc[layout.trials["state"] == "done", "trial_id"])
    runs = layout.col.runs
    if not len(runs) or "latency_ms" not in runs:
        return None
    runs = runs[runs["trial_id"].isin(done) & runs["latency_ms"].notna()]
    if not len(runs):
        return None
    contended = runs["contended"].map(raised) if "contended" in runs else pd.Series(False, index=runs.index)
    unchecked = runs["contended"].isna() if "contended" in runs else pd.Series(True, index=runs.index)
    noisy = runs["noisy"].map(raised) if "noisy" in runs else pd.Series(False, index=runs.index)
    total = len(runs)
    parts = []
    if contended.any():
        parts.append(
            f"{int(contended.sum())} of {total} latency runs were timed while other processes competed for the "
            f"CPU ({CONTENDED_MARK} in the tables, hollow markers in the figures). On an oversubscribed CPU a "
            "latency measures the machine's load, not the operator: every repeat can be equally slow, so a "
            "tight interval does not vouch for it, and a ratio to `conv` mixes two different loads. Do not "
            "read these as the operators' speed; rerun the suite into another results folder on a quiet "
            "machine (or with fewer `threads` than cores) and compare."
        )
    if noisy.any():
        parts.append(
            f"{int(noisy.sum())} of {total} latency runs are noisy ({NOISY_MARK}: their repeats spread more "
            "than 10% of the median)."
        )
    if unchecked.any():
        parts.append(
            f"{int(unchecked.sum())} of {total} latency runs were recorded before adaptconv checked the host, "
            "so whether the machine was quiet is unknown."
        )
    if not parts:
        return None
    return "**Latencies to read with care.** " + " ".join(parts)


def _section_figures(figures: list[Figure], section: str) -> list[Figure]:
    return [f for f in figures if f.section == section and f.kind != "scaling"]


def _markdown(col, layout, sections, figures, status, env, counts, notes, cmd, found=(), claims=None) -> str:
    lines = [f"# adaptconv report: {col.suite}", ""]
    if found:
        lines += ["## Findings", "", METHOD, ""]
        for section, paragraphs in found:
            lines += [f"**{section}.** " + paragraphs[0], ""] + [p for q in paragraphs[1:] for p in (q, "")]
    if col.description:
        lines += [col.description, ""]
    lines += [f"{_summary(col, counts)} Regenerate with `{cmd}`; [the HTML version](index.html).", ""]
    warning = latency_warning(layout)
    if warning:
        lines += [warning, ""]
    lines += ["## How to read it", ""] + [f"- {n}" for n in notes] + [""]
    if claims is not None:
        lines += claims.markdown_lines()
    for section, name, cells, marks in sections:
        lines += [
            f"## {section}",
            "",
            to_markdown(cells, marks),
            "",
            f"Tables: [CSV](tables/{name}.csv) · [LaTeX](tables/{name}.tex)",
            "",
        ]
        for f in _section_figures(figures, section):
            lines += [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]
    rest = [f for f in figures if f.kind in ("scaling", "ablation")]
    if rest:
        lines += ["## Scaling and ablations", ""]
        for f in rest:
            lines += [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]
    if len(status):
        lines += ["## Trials without a result", "", status.to_markdown(index=False), ""]
    lines += ["## Environment", "", env.to_markdown(index=False) if len(env) else "No finished trial.", ""]
    return "\n".join(lines)


def _html(col, layout, sections, figures, status, env, counts, notes, cmd, found=(), claims=None) -> str:
    esc = html.escape
    parts = [
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>adaptconv report: {esc(col.suite)}'
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>adaptconv report: {esc(col.suite)}</h1>",
    ]
    if found:
        parts.append("<h2>Findings</h2>")
        parts.append(f'<p class="note">{inline_html(METHOD)}</p>')
        for section, paragraphs in found:
            parts.append(f"<p><strong>{esc(section)}.</strong> {inline_html(paragraphs[0])}</p>")
            parts += [f"<p>{inline_html(p)}</p>" for p in paragraphs[1:]]
    if col.description:
        parts.append(f"<p>{inline_html(col.description)}</p>")
    parts.append(f"<p>{esc(_summary(col, counts))} Regenerate with <code>{esc(cmd)}</code>.</p>")
    warning = latency_warning(layout)
    if warning:
        parts.append(f'<p class="warning">{inline_html(warning)}</p>')
    parts.append(
        "<h2>How to read it</h2><ul>" + "".join(f'<li class="note">{inline_html(n)}</li>' for n in notes) + "</ul>"
    )
    if claims is not None:
        parts += claims.html_parts()
    for section, name, cells, marks in sections:
        parts.append(f"<h2>{esc(section)}</h2>")
        parts.append(to_html(cells, marks))
        parts.append(
            f'<p class="note">Tables: <a href="tables/{name}.csv">CSV</a> · <a href="tables/{name}.tex">LaTeX</a></p>'
        )
        for f in _section_figures(figures, section):
            parts.append(_figure_html(f))
    rest = [f for f in figures if f.kind in ("scaling", "ablation")]
    if rest:
        parts.append("<h2>Scaling and ablations</h2>")
        parts += [_figure_html(f) for f in rest]
    if len(status):
        parts.append("<h2>Trials without a result</h2>")
        parts.append(status.to_html(index=False, border=0, escape=True))
    parts.append("<h2>Environment</h2>")
    parts.append(env.to_html(index=False, border=0, escape=True) if len(env) else "<p>No finished trial.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _figure_html(f: Figure) -> str:
    return (
        f'<figure><img src="{html.escape(f.file)}" alt="{html.escape(plain_text(f.caption))}">'
        f"<figcaption>{inline_html(f.caption)}</figcaption></figure>"
    )
