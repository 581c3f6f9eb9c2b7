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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..results.atomic import write_text_atomic
from ..results.collect import Collection
from .figures import Figure, all_figures, slug
from .tables import (Layout, build_layout, display_table, environment_table, section_table, status_table,
                     to_html, to_latex, to_markdown)


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
figcaption{font-size:13px;color:#555}code{background:#f4f4f4;padding:0 3px}.note{color:#555;font-size:14px}
"""


def _counts(layout: Layout) -> dict[str, int]:
    states = layout.trials["state"].value_counts()
    return {s: int(states.get(s, 0)) for s in ("done", "failed", "running", "pending")}


def _reading_notes(layout: Layout) -> list[str]:
    t = layout.trials[layout.trials["state"] == "done"]
    devices = sorted({str(v) for v in t.get("env.device_name", pd.Series(dtype=object)).dropna()})
    notes = [
        "Metrics: mean ± half-width of the 95% Student-t confidence interval over seeds; `n` is the number of "
        "seeds. With one seed there is no interval. The best mean of each column within a comparison group is "
        "in bold; `vs best` says whether the row's interval separates from the best row's (only then is the "
        "difference significant).",
        f"Latency: median of timed repeats after warm-up, at batch {layout.measured('measured_batch')} and "
        f"resolution {layout.measured('measured_resolution')} px (CUDA events on GPU, perf_counter on CPU); "
        "`training step` is forward + backward + optimiser step. Peak memory: the CUDA allocator's peak on GPU, "
        "the profiler's peak of live tensor bytes on CPU. FLOPs count one multiply-add as 2 FLOPs, at batch 1. "
        "`×conv`: ratio to the `conv` baseline in the same comparison group.",
    ]
    if devices:
        notes.append(f"Measured on: {', '.join(devices)}.")
    return notes


def build_report(col: Collection, out: str | os.PathLike, *, command: str | None = None) -> Report:
    """Write the report of ``col`` into ``out`` and return what it contains."""
    out = Path(out)
    layout = build_layout(col)
    report = Report(out)
    figures = all_figures(layout, out / "figures")
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
    notes = _reading_notes(layout)
    cmd = command or f"adaptconv report {col.suite}"
    write_text_atomic(out / "README.md", _markdown(col, layout, sections, figures, status, env, counts, notes, cmd))
    write_text_atomic(out / "index.html", _html(col, layout, sections, figures, status, env, counts, notes, cmd))
    manifest = {"suite": col.suite, "counts": counts, "primary_metric": col.primary,
                "figures": [asdict(f) for f in figures], "tables": report.tables}
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
    rest = [f"{counts[s]} {s}" for s in ("failed", "running", "pending") if counts[s]]
    if rest:
        text += " (" + ", ".join(rest) + "). Tables and figures use the finished trials only; the others are listed at the end"
    return text + "."


def _section_figures(figures: list[Figure], section: str) -> list[Figure]:
    return [f for f in figures if f.section == section and f.kind != "scaling"]


def _markdown(col, layout, sections, figures, status, env, counts, notes, cmd) -> str:
    lines = [f"# adaptconv report: {col.suite}", ""]
    if col.description:
        lines += [col.description, ""]
    lines += [f"{_summary(col, counts)} Regenerate with `{cmd}`; [the HTML version](index.html).", ""]
    lines += ["## How to read it", ""] + [f"- {n}" for n in notes] + [""]
    for section, name, cells, marks in sections:
        lines += [f"## {section}", "", to_markdown(cells, marks), "",
                  f"Tables: [CSV](tables/{name}.csv) · [LaTeX](tables/{name}.tex)", ""]
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


def _html(col, layout, sections, figures, status, env, counts, notes, cmd) -> str:
    esc = html.escape
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>adaptconv report: {esc(col.suite)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>adaptconv report: {esc(col.suite)}</h1>"]
    if col.description:
        parts.append(f"<p>{esc(col.description)}</p>")
    parts.append(f"<p>{esc(_summary(col, counts))} Regenerate with <code>{esc(cmd)}</code>.</p>")
    parts.append("<h2>How to read it</h2><ul>" + "".join(f"<li class=\"note\">{esc(n)}</li>" for n in notes) + "</ul>")
    for section, name, cells, marks in sections:
        parts.append(f"<h2>{esc(section)}</h2>")
        parts.append(to_html(cells, marks))
        parts.append(f"<p class=\"note\">Tables: <a href=\"tables/{name}.csv\">CSV</a> · "
                     f"<a href=\"tables/{name}.tex\">LaTeX</a></p>")
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
    return (f"<figure><img src=\"{html.escape(f.file)}\" alt=\"{html.escape(f.caption)}\">"
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
