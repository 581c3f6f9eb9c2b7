"""Published claims put to the test: a claims file (YAML) and the report's claims table.

A claim from a paper is a direction on a metric, judged on one section of a suite's results::

    claims:
      - id: pac-lowers-upsampling-rmse          # unique; letters, digits, '-', '_', '.'
        claim: PAC lowers joint-upsampling RMSE against the same network with plain convolutions
        source: Su et al., "Pixel-Adaptive Convolutional Neural Networks", CVPR 2019
        section: {task: upsampling, dataset: middlebury}   # task required; dataset, backbone optional
        where: {task_options.upsampler: bilinear}          # optional: fix other factors (both sides)
        op: pac                                 # the operator the paper proposes
        against: conv                           # default conv; another operator or a trivial baseline
        metric: rmse                            # a metric of the task, or params / flops
        direction: lower                        # the paper's claimed direction: higher | lower
        flops_ratio_max: 1.1                    # optional: "at nearly the same FLOPs" (op / against)
        params_ratio_max: 1.0                   # optional: "with no more parameters"
        non_inferior: {metric: top1, margin: 2} # optional: "at similar top1" (CI of the paired
                                                #   difference on top1 no worse than 2 points)
        op_where: {task_options.crf: paccrf}    # optional: factors of the op side only
        against_where: {task_options.crf: none} # optional: factors of the against side only
        note: free text shown nowhere but kept in the CSV

Judging a claim (:func:`evaluate_claims`): the rows of the section that match ``where`` (and
``op_where`` / ``against_where``) and finished (status ok) give ``{seed: value}`` for each side; the
sides are paired by seed, d_s = metric(op, s) − metric(against, s), and the 95% Student-t interval of
mean(d) is computed (:func:`adaptconv.results.stats.paired_difference`). Significance is decided by
Holm–Bonferroni across every claim of the table with an interval. Verdicts:

- **supported**: significant, in the claimed direction, and every condition holds;
- **not supported**: significant in the claimed direction, but a condition fails (e.g. FLOPs ×1.4);
- **contradicted**: significant the other way;
- **inconclusive at this budget**: the interval contains 0, the difference is not significant after
  Holm, n < 2 (no interval), or a condition cannot be checked — the table says which;
- **not measured**: one side has no finished trial in the section (none run, pending or failed).

Nothing in the file can force a verdict: the claim's text and source are only printed.

Bad input is refused with the file, the key path, the line and a did-you-mean (as suite files are):
unknown keys, a bad direction, YAML errors, an unknown task, dataset, backbone, metric or option, and
(when the registry is asked to be strict, as ``adaptconv claims check`` does) an unknown operator.
Reports are built from stored records, so by default an operator that is not installed here is only
a warning at load; at report time it must then appear in the results. A section the suite does not
have (or a name or metric its results lack, or a claim they cannot tell apart) is refused when the
file was given explicitly (``strict=True``) and left out with a note when the project's default
claims file is applied to a suite it was not written for: the default file never stops a report.
"""

from __future__ import annotations

import difflib
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..results.stats import ALPHA, PairedDifference, format_mean_ci, holm, paired_difference
from ..schema import ConfigError, FileConfigError, did_you_mean, parse
from ..sweep.suite import _line_index, _Problems, _split_key, load_yaml

#: the keys that name a section of a report (as in adaptconv.report.tables.SECTION_KEYS)
SECTION_KEYS = ("task", "dataset", "backbone")
#: measurements a claim may be about besides a task's metrics (exact counts: the same for every seed)
MEASURE_METRICS = {"params": False, "flops": False}
#: measurements that are not seed-level quantities and so cannot be judged by a paired-by-seed CI
NOT_SEED_LEVEL = ("inference_ms", "train_step_ms", "inference_peak_mb", "train_step_peak_mb", "throughput_ips")
#: config keys a `where:` may not fix (named elsewhere in a claim, or not a factor of a result)
RESERVED_WHERE = {
    "op": "use `op:` / `against:`",
    "seed": "the seed is what claims are paired over",
    **{k: "use `section:`" for k in SECTION_KEYS},
    **{k: "a run key (where a trial ran), not a factor of its result" for k in ("device", "threads", "data_root")},
}
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

SUPPORTED, NOT_SUPPORTED, CONTRADICTED = "supported", "not supported", "contradicted"
INCONCLUSIVE, NOT_MEASURED = "inconclusive at this budget", "not measured"


class ClaimsError(FileConfigError):
    """Problems in a claims file, each naming the key path and line; the message starts with the file."""

    kind = "claims"


# ---- the file --------------------------------------------------------------------------------------


@dataclass
class NonInferior:
    """``at similar <metric>``: the paired CI on ``metric`` stays within ``margin`` of no change on
    its bad side (higher-is-better metric: CI low > −margin)."""

    metric: str
    margin: float


@dataclass
class Claim:
    id: str
    claim: str
    source: str
    section: dict[str, Any]
    op: str
    metric: str
    direction: Literal["higher", "lower"]
    against: str = "conv"
    where: dict[str, Any] = field(default_factory=dict)
    op_where: dict[str, Any] = field(default_factory=dict)
    against_where: dict[str, Any] = field(default_factory=dict)
    flops_ratio_max: float | None = None
    params_ratio_max: float | None = None
    non_inferior: NonInferior | None = None
    note: str = ""

    def section_label(self) -> str:
        return " · ".join(str(self.section[k]) for k in SECTION_KEYS if k in self.section)


@dataclass
class _ClaimsSpec:
    claims: list[Claim]


@dataclass
class ClaimsFile:
    path: Path
    claims: list[Claim]
    #: key path (as in the YAML: ("claims", 2, "op")) → 1-based line
    lines: dict[tuple, int] = field(default_factory=dict, repr=False)
    #: names the registry does not know but that the results may hold (an operator not installed here,
    #: a trivial baseline of a task that does not list its baselines): (name, message)
    #: names the registry does not know but that the results may hold (an operator not installed here,
    #: a trivial baseline of a task that does not list its baselines): (claim id, name, message)
    unresolved: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [message for _, _, message in self.unresolved]

    def problems(self) -> _Problems:
        return _Problems(self.lines)


def default_claims_path(suite_path: str | Path | None = None) -> Path | None:
    """The project's claims file: ``claims.yaml`` next to the ``suites/`` folder that holds the suite
    (else in the working directory); None when there is none (then a report has no claims table)."""
    candidates = []
    if suite_path is not None:
        folder = Path(suite_path).resolve().parent
        if folder.name == "suites":
            candidates.append(folder.parent / "claims.yaml")
    candidates.append(Path.cwd() / "claims.yaml")
    return next((p for p in candidates if p.is_file()), None)


def load_claims(path: str | Path, operators: Literal["error", "warn"] = "warn") -> ClaimsFile:
    """Read and validate a claims file. Raises :class:`ClaimsError` listing every problem.

    ``operators="error"`` also refuses operators the registry does not know (``adaptconv claims
    check``); ``"warn"`` (for reports, which read stored records) lists them in ``warnings``."""
    path = Path(path)
    if not path.is_file():
        raise ClaimsError(["no such claims file"], path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ClaimsError([f"not UTF-8 text ({exc.reason} at byte {exc.start})"], path) from None
    lines, duplicates = _line_index(text)
    problems = _Problems(lines)
    raw = load_yaml(text, path, ClaimsError)
    if not isinstance(raw, dict):
        raise ClaimsError(
            [
                ("the file is empty: " if raw is None else "")
                + "a claims file is a mapping with one key, `claims:`, a list of claims "
                "(id, claim, source, section, op, metric, direction, ...)"
            ],
            path,
        )
    for key, first, again in duplicates:
        problems.add(key, f"given twice (lines {first} and {again}); YAML would keep the second silently")
    try:
        spec = parse(_ClaimsSpec, raw)
    except ConfigError as exc:
        for p in exc.problems:
            key, _, msg = p.partition(": ")
            problems.add(_split_key(key), msg)
        raise ClaimsError(problems.items, path) from None
    out = ClaimsFile(path, spec.claims, lines)
    _check_structure(spec.claims, problems)
    if not problems.items:  # names are checked once the shape is right
        _check_names(out, problems, operators)
    if problems.items:
        raise ClaimsError(problems.items, path)
    return out


def _check_structure(claims: list[Claim], problems: _Problems) -> None:
    if not claims:
        problems.add(("claims",), "no claims: list at least one (or remove the file)")
    seen: dict[str, int] = {}
    for i, c in enumerate(claims):
        at = ("claims", i)
        if not ID.fullmatch(c.id):
            problems.add(at + ("id",), f"{c.id!r} must be letters, digits, '-', '_' or '.'")
        elif c.id in seen:
            first = problems.lines.get(("claims", seen[c.id], "id"))
            problems.add(
                at + ("id",),
                f"{c.id!r} is already the id of claim {seen[c.id]}" + (f" (line {first})" if first else ""),
            )
        seen.setdefault(c.id, i)
        for key in ("claim", "source"):
            if not getattr(c, key).strip():
                problems.add(
                    at + (key,),
                    "must not be empty" + (": cite the paper (authors, title, venue, year)" if key == "source" else ""),
                )
        for key, value in c.section.items():
            if key not in SECTION_KEYS:
                problems.add(
                    at + ("section", key),
                    f"unknown key{did_you_mean(key, SECTION_KEYS)}; a section is named by {', '.join(SECTION_KEYS)}",
                )
            elif not isinstance(value, str):
                problems.add(at + ("section", key), f"expected a name, got {value!r}")
        if "task" not in c.section:
            problems.add(at + ("section",), "required key `task` is missing")
        for where in ("where", "op_where", "against_where"):
            for key in getattr(c, where):
                if key in RESERVED_WHERE:
                    problems.add(at + (where, key), f"cannot be fixed here: {RESERVED_WHERE[key]}")
        if c.op == c.against and not c.op_where and not c.against_where:
            problems.add(
                at + ("against",),
                f"compares {c.op!r} with itself: name another operator or "
                "baseline, or tell the sides apart with op_where / against_where",
            )
        for key in ("flops_ratio_max", "params_ratio_max"):
            v = getattr(c, key)
            if v is not None and not v > 0:
                problems.add(at + (key,), f"a ratio must be > 0, got {v}")
        if c.non_inferior is not None and not c.non_inferior.margin >= 0:
            problems.add(at + ("non_inferior", "margin"), f"must be >= 0, got {c.non_inferior.margin}")


def _check_metric(name: str, task: str, info: dict, at: tuple, problems: _Problems) -> None:
    """``info``: the task's entry of :func:`adaptconv.installed.installation`."""
    allowed = list(info["metrics"]) + list(MEASURE_METRICS)
    if name in allowed:
        return
    if name in NOT_SEED_LEVEL:
        problems.add(
            at,
            f"{name!r} is a timing or memory measurement, not a seed-level result: it cannot be "
            f"judged by a paired-by-seed interval; choose one of {', '.join(allowed)}",
        )
        return
    problems.add(
        at, f"unknown metric {name!r} of task {task!r}{did_you_mean(name, allowed)}; choices: {', '.join(allowed)}"
    )


def _check_names(cf: ClaimsFile, problems: _Problems, operators: str) -> None:
    """Names against what this installation knows: tasks, datasets, backbones, metrics, task options
    (built in: always errors) and operators (plugins may be missing here: errors or warnings)."""
    from ..installed import installation

    inst = installation()  # plain data, cached: no torch once this installation has been described
    ops = list(inst["ops"])
    tasks = inst["tasks"]
    config_keys = inst["config_keys"]
    timm_models = set(inst["timm_models"])
    for i, c in enumerate(cf.claims):
        at = ("claims", i)
        task = c.section["task"]
        if task not in tasks:
            problems.add(
                at + ("section", "task"),
                f"unknown task {task!r}{did_you_mean(task, list(tasks))}; choices: {', '.join(tasks)}",
            )
            continue
        info = tasks[task]
        dataset = c.section.get("dataset")
        if dataset is not None and dataset not in info["datasets"]:
            problems.add(
                at + ("section", "dataset"),
                f"{dataset!r} is not a dataset of task {task!r}{did_you_mean(dataset, info['datasets'])}; "
                f"choices: {', '.join(info['datasets'])}",
            )
        backbone = c.section.get("backbone")
        if backbone is not None and backbone not in info["backbones"]:
            # a timm name may carry a pretrained tag (resnet18.a1_in1k)
            if not (info["accepts_timm"] and backbone.split(".")[0] in timm_models):
                problems.add(
                    at + ("section", "backbone"),
                    f"{backbone!r} is not a network of task {task!r}{did_you_mean(backbone, info['backbones'])}; "
                    f"choices: {', '.join(info['backbones'])}" + (" or a timm model" if info["accepts_timm"] else ""),
                )
        _check_metric(c.metric, task, info, at + ("metric",), problems)
        if c.non_inferior is not None:
            _check_metric(c.non_inferior.metric, task, info, at + ("non_inferior", "metric"), problems)
        options = list(info["options"])
        for where in ("where", "op_where", "against_where"):
            for key in getattr(c, where):
                head, _, rest = key.partition(".")
                if head not in config_keys:
                    problems.add(
                        at + (where, key), f"{head!r} is not a trial config key{did_you_mean(head, config_keys)}"
                    )
                elif head == "task_options" and rest.split(".")[0] not in options:
                    problems.add(
                        at + (where, key),
                        f"task {task!r} has no option {rest!r}"
                        f"{did_you_mean(rest, options)}; options: {', '.join(options)}",
                    )
        baselines = tuple(info["baselines"])
        for side, name in (("op", c.op), ("against", c.against)):
            choices = ops + (list(baselines) if side == "against" else [])
            if name in choices:
                continue
            if side == "against" and not baselines:
                # this task does not list its baselines: the results will say whether it is one
                cf.unresolved.append(
                    (
                        c.id,
                        name,
                        f"{cf.path}: claim {c.id!r} (line {cf.lines.get(at + (side,), '?')}): "
                        f"{name!r} is not a registered operator; taken to be a trivial baseline of "
                        f"task {task!r}, checked against the results when a report is built",
                    )
                )
                continue
            what = "operator or trivial baseline" if side == "against" else "operator"
            message = f"unknown {what} {name!r}{did_you_mean(name, choices)}; operators: {', '.join(ops)}" + (
                f"; baselines of task {task!r}: {', '.join(baselines)}" if side == "against" and baselines else ""
            )
            if operators == "error":
                problems.add(at + (side,), message)
            else:
                cf.unresolved.append(
                    (
                        c.id,
                        name,
                        f"{cf.path}: claim {c.id!r} (line {cf.lines.get(at + (side,), '?')}): "
                        f"{message} (not installed here? it must then be in the results)",
                    )
                )


def report_claims(
    col, *, claims_path: str | Path | None = None, suite_path: str | Path | None = None
) -> ClaimsTable | None:
    """The claims table of a report, as ``adaptconv report`` builds it: ``claims_path`` given, every claim
    must judge a section of this suite; else the project's default file (:func:`default_claims_path`)
    judges the sections this suite has and lists the others; None without a file."""
    explicit = claims_path is not None
    path = Path(claims_path) if explicit else default_claims_path(suite_path)
    if path is None:
        return None
    return evaluate_claims(load_claims(path), col, strict=explicit)


# ---- judging claims on a collection ----------------------------------------------------------------


@dataclass
class Condition:
    text: str  # e.g. "FLOPs ×1.02 ≤ 1.1"
    state: Literal["holds", "fails", "unknown"]


@dataclass
class ClaimResult:
    claim: Claim
    diff: PairedDifference | None = None
    significant: bool = False
    verdict: str = NOT_MEASURED
    reason: str = ""
    op_mean: float = math.nan
    against_mean: float = math.nan
    conditions: list[Condition] = field(default_factory=list)
    budget: str = ""
    flops_ratio: float = math.nan
    params_ratio: float = math.nan

    @property
    def n(self) -> int:
        return self.diff.n if self.diff is not None else 0


@dataclass
class ClaimsTable:
    path: Path
    suite: str
    results: list[ClaimResult]
    #: claims that were not judged here, with why (a section this suite does not run)
    skipped: list[tuple[Claim, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def family(self) -> int:
        """How many claims entered the Holm correction (those with an interval)."""
        return sum(1 for r in self.results if r.diff is not None and np.isfinite(r.diff.p_value))

    def frame(self) -> pd.DataFrame:
        """The raw table (numbers), one row per judged claim: what ``tables/claims.csv`` holds."""
        rows = []
        for r in self.results:
            c, d = r.claim, r.diff
            rows.append(
                {
                    "id": c.id,
                    "claim": c.claim,
                    "source": c.source,
                    "section": c.section_label(),
                    **{
                        key: json.dumps(getattr(c, key), sort_keys=True) if getattr(c, key) else ""
                        for key in ("where", "op_where", "against_where")
                    },
                    "op": c.op,
                    "against": c.against,
                    "metric": c.metric,
                    "direction": c.direction,
                    "n": r.n,
                    "op_mean": r.op_mean,
                    "against_mean": r.against_mean,
                    "diff_mean": d.mean if d else math.nan,
                    "diff_ci_low": d.low if d else math.nan,
                    "diff_ci_high": d.high if d else math.nan,
                    "p_value": d.p_value if d else math.nan,
                    "significant_holm": r.significant,
                    "flops_ratio": r.flops_ratio,
                    "params_ratio": r.params_ratio,
                    "conditions": "; ".join(f"{x.text} ({x.state})" for x in r.conditions),
                    "budget": r.budget,
                    "verdict": r.verdict,
                    "reason": r.reason,
                    "note": c.note,
                }
            )
        return pd.DataFrame(rows, columns=None if rows else ["id", "verdict"])

    def display(self) -> pd.DataFrame:
        """One string per cell: claim, source, section, measured effect (mean ± CI, n), condition,
        budget and verdict."""
        rows = []
        for r in self.results:
            verdict = r.verdict + (f": {r.reason}" if r.reason else "")
            rows.append(
                {
                    "claim": r.claim.claim,
                    "source": r.claim.source,
                    "section": _section_text(r.claim),
                    "measured effect": _effect_text(r),
                    "condition": _conditions_text(r),
                    "budget": r.budget or "–",
                    "verdict": verdict,
                }
            )
        return pd.DataFrame(
            rows, columns=["claim", "source", "section", "measured effect", "condition", "budget", "verdict"]
        )

    def notes(self) -> list[str]:
        """How to read the table (and what was left out), in words."""
        m = self.family
        notes = [
            "Each claim is a direction on a metric, judged on this suite's results: the difference "
            "d = metric(operator) − metric(against) is paired by seed (same data order and initial "
            "convolution) and shown as mean ± half-width of its 95% Student-t interval, with n the number of "
            f"seeds both sides finished. Significance is Holm–Bonferroni-corrected across the {m} "
            f"claim{'s' if m != 1 else ''} of this table with an interval (family-wise α = {ALPHA:g}); "
            "conditions (FLOPs and parameter ratios, non-inferiority on a second metric) are checked "
            "without correction.",
            "Verdicts: supported (significant in the claimed direction, conditions hold), not supported (a "
            "condition fails), contradicted (significant the other way), inconclusive at this budget (the "
            "interval contains 0, Holm does not reject, or n < 2), not measured (no finished trials). "
            "Papers train far longer than these budgets: an inconclusive or contradicted claim here is a "
            "statement about this budget.",
        ]
        if self.skipped:
            why: dict[str, list[str]] = {}
            for c, reason in self.skipped:
                why.setdefault(reason, []).append(c.id)
            notes.append(
                f"Not judged here ({len(self.skipped)} of the claims in {self.path.name}): "
                + "; ".join(f"{reason}: {', '.join(ids)}" for reason, ids in why.items())
                + "."
            )
        return notes

    def summary(self) -> str:
        """One sentence: how many claims got which verdict (for the report's findings)."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        order = (SUPPORTED, NOT_SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED)
        parts = [f"{counts[v]} {v}" for v in order if counts.get(v)]
        n = len(self.results)
        return (
            f"Of {n} published claim{'s' if n != 1 else ''} judged on this suite: " + ", ".join(parts) + "."
            if n
            else "No published claim could be judged on this suite."
        )

    def files(self) -> dict[str, str]:
        """The table files a report writes, relative to its folder."""
        return {
            "tables/claims.csv": self.to_csv(),
            "tables/claims.md": self.to_markdown() + "\n",
            "tables/claims.tex": self.to_latex(
                f"{self.suite}: published claims", f"tab:{re.sub(r'[^A-Za-z0-9]+', '-', self.suite)}-claims"
            ),
        }

    def markdown_lines(self) -> list[str]:
        """The report's "Published claims" section in Markdown."""
        lines = ["## Published claims", "", self.summary(), ""]
        if self.results:
            lines += [self.to_markdown(), "", "Tables: [CSV](tables/claims.csv) · [LaTeX](tables/claims.tex)", ""]
        lines += [f"- {n}" for n in self.notes()] + [""]
        return lines

    def html_parts(self) -> list[str]:
        """The same section as HTML (the report's page styles bare ``<table>`` elements)."""
        parts = ["<h2>Published claims</h2>", f"<p>{html.escape(self.summary())}</p>"]
        if self.results:
            parts += [
                self.to_html(),
                '<p class="note">Tables: <a href="tables/claims.csv">CSV</a> · '
                '<a href="tables/claims.tex">LaTeX</a></p>',
            ]
        parts.append("<ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in self.notes()) + "</ul>")
        return parts

    def to_latex(self, caption: str, label: str) -> str:
        """A booktabs table (needs ``\\usepackage{booktabs}``)."""
        from .tables import latex_escape as _escape

        def latex_escape(text) -> str:  # what the report's escaper leaves as Unicode
            out = _escape(text)
            for ch, tex in (
                ("−", "$-$"),
                ("≤", r"$\leq$"),
                ("≥", r"$\geq$"),
                ("✓", "(holds)"),
                ("✗", "(fails)"),
                ("Δ", r"$\Delta$"),
            ):
                out = out.replace(ch, tex)
            return out

        cells = self.display()
        lines = [
            r"\begin{table*}[t]",
            r"\centering",
            r"\small",
            rf"\caption{{{latex_escape(caption)}}}",
            rf"\label{{{label}}}",
            r"\begin{tabular}{" + _LATEX_COLUMNS + "}",
            r"\toprule",
            " & ".join(latex_escape(c) for c in cells.columns) + r" \\",
            r"\midrule",
        ]
        for row in cells.itertuples(index=False):
            lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}", ""]
        return "\n".join(lines)

    def to_csv(self) -> str:
        return self.frame().to_csv(index=False)

    def to_markdown(self) -> str:
        return self.display().to_markdown(index=False)

    def to_html(self) -> str:
        cells = self.display()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cells.columns)
        # the report's page keeps table cells on one line; the claims' sentences wrap instead
        rows = [
            "<tr>"
            + "".join(f'<td style="white-space:normal;text-align:left">{html.escape(str(v))}</td>' for v in row)
            + "</tr>"
            for row in cells.itertuples(index=False)
        ]
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


#: paragraph columns for the claims table's sentences (claim, source, section, effect, condition,
#: budget, verdict): about 17 cm, a full-width table of a two-column paper
_LATEX_COLUMNS = "p{3cm}p{2.6cm}p{2.2cm}p{3.2cm}p{2cm}p{1.4cm}p{2.2cm}"


def _section_text(c: Claim) -> str:
    parts = [c.section_label()] + [f"{_short(k)}={v}" for k, v in c.where.items()]
    return " · ".join(parts)


def _short(key: str) -> str:
    for prefix in ("op_options.", "task_options."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _side(name: str, where: dict) -> str:
    return name + (f" ({', '.join(f'{_short(k)}={v}' for k, v in where.items())})" if where else "")


def _effect_text(r: ClaimResult) -> str:
    c, d = r.claim, r.diff
    arrow = "↓" if c.direction == "lower" else "↑"
    head = f"{c.metric} {arrow}: {_side(c.op, c.op_where)} − {_side(c.against, c.against_where)}"
    if d is None or d.n == 0:
        return f"{head}: –"
    half = d.half if d.n >= 2 else math.nan
    digits = _decimals(half)
    means = f"{_fmt(r.op_mean, digits)} vs {_fmt(r.against_mean, digits)}"
    effect = f"{int(d.mean)} ± 0" if half == 0 and float(d.mean).is_integer() else format_mean_ci(d.mean, half)
    return f"{head} = {effect} ({means}; n={d.n})"


def _decimals(half: float) -> int | None:
    from ..results.stats import decimals_for

    return decimals_for(half)


def _fmt(v: float, decimals: int | None) -> str:
    from ..results.stats import format_significant

    if v is None or not np.isfinite(v):
        return "–"
    if decimals is None and float(v).is_integer():  # exact counts (parameters, FLOPs)
        return str(int(v))
    return f"{v:.{decimals}f}" if decimals is not None else format_significant(v, 4)


def _conditions_text(r: ClaimResult) -> str:
    if not r.conditions:
        return "–"
    mark = {"holds": "✓", "fails": "✗", "unknown": "?"}
    return "; ".join(f"{x.text} {mark[x.state]}" for x in r.conditions)


# ---- selecting the rows of one side ----------------------------------------------------------------


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _same(cell, value) -> bool:
    """A table cell (collect's flattened config: scalars, or canonical JSON for lists/mappings) equals a
    value written in the claims file."""
    if _missing(cell):
        return False
    if isinstance(value, (list, dict)):
        return cell == json.dumps(value, sort_keys=True)
    if isinstance(value, bool) or isinstance(cell, (bool, np.bool_)):
        return isinstance(value, bool) and isinstance(cell, (bool, np.bool_)) and bool(cell) == value
    if isinstance(value, (int, float)):
        try:
            return float(cell) == float(value)
        except (TypeError, ValueError):
            return False
    return str(cell) == str(value)


def _default(key: str, task: str | None, op: str | None):
    """The schema default of a config key: normalised configs leave some out at their default
    (a task's late options, an operator's options), so a missing cell means this value."""
    from ..installed import installation

    head, _, rest = key.partition(".")
    inst = installation()
    if head == "task_options" and task in inst["tasks"]:
        info = inst["tasks"][task]
        if rest in info["late_options"]:
            return info["late_options"][rest]
        if "default" in info["options"].get(rest, {}):
            return info["options"][rest]["default"]
    elif head == "op_options" and op in inst["ops"]:
        if "default" in inst["ops"][op].get(rest, {}):
            return inst["ops"][op][rest]["default"]
    return _NO_DEFAULT


_NO_DEFAULT = object()


def _mask(rows: pd.DataFrame, key: str, value, task: str | None, op: str | None) -> pd.Series:
    default = _default(key, task, op)
    if key not in rows:
        hit = default is not _NO_DEFAULT and _same(default, value)
        return pd.Series(hit, index=rows.index)
    missing_ok = default is not _NO_DEFAULT and _same(default, value)
    return rows[key].map(lambda cell: _same(cell, value) or (missing_ok and _missing(cell)))


def _where(rows: pd.DataFrame, where: dict, task: str, op: str | None) -> pd.DataFrame:
    for key, value in where.items():
        rows = rows[_mask(rows, key, value, task, op)]
    return rows


def _section_rows(trials: pd.DataFrame, c: Claim) -> pd.DataFrame:
    rows = trials
    for key in SECTION_KEYS:
        if key in c.section:
            rows = rows[rows[key].map(lambda v, want=c.section[key]: _same(v, want))] if key in rows else rows.iloc[:0]
    return rows


def _sections_of(trials: pd.DataFrame) -> list[str]:
    keys = [k for k in SECTION_KEYS if k in trials]
    if not keys or trials.empty:
        return []
    labels = trials[keys].astype(str).agg(" · ".join, axis=1)
    return sorted(labels.unique().tolist())


def _closest_section(c: Claim, trials: pd.DataFrame) -> str:
    """A did-you-mean among the suite's sections of the claim's task (another task is no near miss)."""
    same = trials[trials["task"].astype(str) == c.section["task"]] if "task" in trials else trials.iloc[:0]
    keys = [k for k in SECTION_KEYS if k in c.section]
    candidates = (
        sorted({" · ".join(str(r[k]) for k in keys) for _, r in same[keys].drop_duplicates().iterrows()})
        if len(same) and all(k in same for k in keys)
        else []
    )
    if not candidates:
        return f" (it has no section of task {c.section['task']!r})"
    close = difflib.get_close_matches(c.section_label(), candidates, n=1, cutoff=0.0)
    return f" (did you mean {close[0]!r}?)"


@dataclass
class _Side:
    values: dict  # seed → metric value
    rows: pd.DataFrame  # its finished rows
    all_rows: pd.DataFrame  # every row (pending and failed included)


class _Ambiguous(Exception):
    pass


def _side_values(rows: pd.DataFrame, columns: list[str], factors: list[str]) -> dict:
    """``{seed: value}`` of one side. Rows of one seed are one measurement when they agree on every
    column (a trivial baseline scored by each trial of that seed on the same test data); rows that
    differ are different configurations the claim does not tell apart."""
    out = {}
    for seed, g in rows.groupby("seed", sort=True):
        vals = g[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        if len(g) > 1 and not np.allclose(vals, vals[0], rtol=1e-12, atol=0, equal_nan=True):
            varying = [f for f in factors if f in g and g[f].map(repr).nunique() > 1]
            detail = "; ".join(f"{f} = {', '.join(sorted(g[f].map(_cell_text).unique()))}" for f in varying)
            raise _Ambiguous(
                f"{len(g)} configurations at seed {seed}"
                + (f" that differ in {detail}" if detail else "")
                + ": fix the others with where / op_where / against_where"
            )
        seed_key = int(seed) if float(seed).is_integer() else seed
        out[seed_key] = float(np.nanmean(vals[:, 0])) if np.isfinite(vals[:, 0]).any() else math.nan
    return out


def _cell_text(v) -> str:
    if _missing(v):
        return "default"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _mean_over(rows: pd.DataFrame, column: str, seeds) -> float:
    if column not in rows:
        return math.nan
    sub = rows[rows["seed"].isin(list(seeds))] if seeds else rows
    v = pd.to_numeric(sub[column], errors="coerce").dropna()
    return float(v.mean()) if len(v) else math.nan


def _budget(rows: pd.DataFrame, n: int) -> str:
    parts = []
    for key, unit in (("steps", "steps"), ("epochs", "epochs")):
        if key in rows:
            vals = sorted({int(v) for v in pd.to_numeric(rows[key], errors="coerce").dropna()})
            if vals:
                parts.append(f"{'/'.join(map(str, vals))} {unit}")
                break
    if n:
        parts.append(f"{n} seed{'s' if n != 1 else ''}")
    return ", ".join(parts)


def evaluate_claims(claims: ClaimsFile, col, *, strict: bool = True, alpha: float = ALPHA) -> ClaimsTable:
    """Judge every claim of ``claims`` on the collection ``col`` (``adaptconv.results.collect.Collection``).

    What only the results can tell is checked here, naming the claim's line: a section the suite does
    not have, an operator or baseline found neither in the results nor in the registry, a metric the
    section's results lack, and a claim that matches several configurations whose results differ
    (``where:`` must tell them apart). ``strict`` (a file given for this report): each is refused with
    a :class:`ClaimsError` listing them all. Otherwise (the project's default file, written for several
    suites) the claim is left out of the table and the notes say why, so a report is never stopped by
    a claim meant for another suite.
    """
    from ..installed import installation
    from ..results.collect import NOT_A_FACTOR

    trials = _in_suite(col.trials)
    # the trivial baselines (adaptconv.results.collect.baseline_table): their own rows, op = their name
    baselines = getattr(col, "baselines", None)
    baselines = _in_suite(baselines) if baselines is not None else pd.DataFrame(columns=["op"])
    problems = claims.problems()
    table = ClaimsTable(claims.path, col.suite, [])
    sections = _sections_of(trials)
    known_ops = set(installation()["ops"])
    result_ops = {str(v) for df in (trials, baselines) if "op" in df for v in df["op"].dropna()}
    factors = [c for c in col.config_columns if c not in NOT_A_FACTOR]
    for i, c in enumerate(claims.claims):
        at = ("claims", i)
        issues: list[tuple[tuple, str, str]] = []  # (key path, message for the error, reason for the notes)
        sec = _section_rows(trials, c)
        if sec.empty:
            issues.append(
                (
                    at + ("section",),
                    f"section {c.section_label()} is not in suite {col.suite!r}"
                    f"{_closest_section(c, trials)}; its sections: {', '.join(sections) or 'none'}",
                    f"section {c.section_label()} is not in this suite",
                )
            )
        done = sec[sec["status"] == "ok"] if "status" in sec else sec
        sec_baselines = _section_rows(baselines, c)
        for side, name in (("op", c.op), ("against", c.against)) if len(sec) else ():
            # a name nobody knows is a mistake once the section has results to tell (finished trials
            # carry their task's baselines; records from before baselines were stored carry none, and
            # a claim against one is then only not measured)
            tells = len(done) and (side == "op" or len(sec_baselines))
            if name not in result_ops and name not in known_ops and tells:
                choices = sorted(known_ops | result_ops)
                issues.append(
                    (
                        at + (side,),
                        f"{name!r} is neither in the results of suite {col.suite!r} nor a "
                        f"registered operator{did_you_mean(name, choices)}",
                        f"no {name!r} in these results{did_you_mean(name, choices)}",
                    )
                )
        metric_cols = {c.metric, *([c.non_inferior.metric] if c.non_inferior else [])}
        present = [m[len("metric.") :] for m in col.metric_columns if m in done and done[m].notna().any()] + [
            m for m in MEASURE_METRICS if m in done and done[m].notna().any()
        ]
        checks = [(("metric",), c.metric)] + (
            [(("non_inferior", "metric"), c.non_inferior.metric)] if c.non_inferior else []
        )
        for key, m in checks:
            if len(done) and m not in present:
                issues.append(
                    (
                        at + key,
                        f"no {m!r} in the results of section {c.section_label()}"
                        f"{did_you_mean(m, present)}; they have {', '.join(present) or 'no metric'}",
                        f"no {m!r} in the results of its section",
                    )
                )
        if not issues:
            try:
                table.results.append(_judge(c, sec, sec_baselines, col, factors, metric_cols))
            except _Ambiguous as exc:
                issues.append((at, f"claim {c.id!r} is ambiguous in suite {col.suite!r}: {exc}", f"ambiguous: {exc}"))
        for key, message, _reason in issues:
            if strict:
                problems.add(key, message)
        if issues and not strict:
            table.skipped.append((c, "; ".join(reason for _, _, reason in issues)))
    if problems.items:
        raise ClaimsError(problems.items, claims.path)
    _decide(table.results, alpha)
    # a name neither the registry nor these results know leaves its claim not measured: say why
    judged = {r.claim.id for r in table.results}
    table.warnings = [m for cid, name, m in claims.unresolved if cid in judged and name not in result_ops]
    return table


def _column(metric: str) -> str:
    return metric if metric in MEASURE_METRICS else f"metric.{metric}"


def _in_suite(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["in_suite"].astype(bool)] if "in_suite" in df else df


def _rows_of(name: str, sec: pd.DataFrame, baselines: pd.DataFrame, where: dict, task: str) -> pd.DataFrame:
    """The rows of one side: the operator's trials, or, for a trivial baseline, its rows of the
    baselines table. A baseline does not depend on how an operator is applied or on the network
    around it, so the baselines table leaves those columns empty and a ``where`` on them does not
    apply to it."""
    rows = sec[sec["op"].astype(str) == name] if "op" in sec else sec.iloc[:0]
    if rows.empty and "op" in baselines:
        rows = baselines[baselines["op"].astype(str) == name]
        if len(rows):
            where = {k: v for k, v in where.items() if k in rows and rows[k].map(lambda x: not _missing(x)).any()}
    return _where(rows, where, task, name)


def _judge(
    c: Claim, sec: pd.DataFrame, baselines: pd.DataFrame, col, factors: list[str], metric_cols: set[str]
) -> ClaimResult:
    task = c.section["task"]
    result = ClaimResult(c)
    sides = {}
    value_cols = (
        [_column(c.metric)]
        + [_column(m) for m in sorted(metric_cols - {c.metric})]
        + [m for m in MEASURE_METRICS if m not in metric_cols]
    )
    for side, name, where in (("op", c.op, c.op_where), ("against", c.against, c.against_where)):
        rows = _rows_of(name, sec, baselines, {**c.where, **where}, task)
        done = rows[rows["status"] == "ok"] if "status" in rows else rows
        cols = [v for v in value_cols if v in done]
        values = _side_values(done, cols, factors) if len(done) and cols and cols[0] == value_cols[0] else {}
        sides[side] = _Side(values, done, rows)
    op, against = sides["op"], sides["against"]
    result.budget = _budget(op.all_rows if len(op.all_rows) else against.all_rows, 0)
    for side, name, where in (("op", c.op, c.op_where), ("against", c.against, c.against_where)):
        s = sides[side]
        if not s.values or not any(np.isfinite(v) for v in s.values.values()):
            result.verdict = NOT_MEASURED
            result.reason = _why_not_measured(_side(name, {**c.where, **where}), s.all_rows)
            return result
    diff = paired_difference(op.values, against.values)
    result.diff = diff
    if diff.n == 0:
        result.verdict = NOT_MEASURED
        result.reason = (
            f"no seed in common ({c.op}: {', '.join(map(str, sorted(op.values)))}; "
            f"{c.against}: {', '.join(map(str, sorted(against.values)))})"
        )
        return result
    seeds = diff.seeds
    result.op_mean = float(np.mean([op.values[s] for s in seeds]))
    result.against_mean = float(np.mean([against.values[s] for s in seeds]))
    result.budget = _budget(op.rows, diff.n)
    # conditions
    for key, column, label in (("flops_ratio_max", "flops", "FLOPs"), ("params_ratio_max", "params", "params")):
        limit = getattr(c, key)
        if limit is None:
            continue
        a, b = _mean_over(op.rows, column, seeds), _mean_over(against.rows, column, seeds)
        if not (np.isfinite(a) and np.isfinite(b) and b > 0):
            missing = c.op if not np.isfinite(a) else c.against
            result.conditions.append(
                Condition(f"{label} ≤ ×{limit:g} {c.against} (no {label} for {missing})", "unknown")
            )
            continue
        ratio = a / b
        setattr(result, "flops_ratio" if column == "flops" else "params_ratio", ratio)
        result.conditions.append(
            Condition(
                f"{label} ×{ratio:#.3g} {'≤' if ratio <= limit else '>'} {limit:g}",
                "holds" if ratio <= limit else "fails",
            )
        )
    if c.non_inferior is not None:
        result.conditions.append(_non_inferior(c, op, against, col))
    return result


def _non_inferior(c: Claim, op: _Side, against: _Side, col) -> Condition:
    ni = c.non_inferior
    column = _column(ni.metric)
    higher = _higher_is_better(ni.metric, col)
    d = paired_difference(_by_seed(op.rows, column), _by_seed(against.rows, column))
    sign = "≥ −" if higher else "≤ +"
    head = f"{ni.metric} Δ {sign}{ni.margin:g}"
    if d.n < 2 or not np.isfinite(d.low):
        return Condition(f"{head}: n={d.n}, no CI", "unknown")
    measured = f"{format_mean_ci(d.mean, d.half)}"
    worst = d.low if higher else d.high  # the bad end of the interval
    beyond = (lambda v: v < -ni.margin) if higher else (lambda v: v > ni.margin)
    if not beyond(worst):
        return Condition(f"{head}: {measured}", "holds")
    best = d.high if higher else d.low
    return Condition(f"{head}: {measured}", "fails" if beyond(best) else "unknown")


def _by_seed(rows: pd.DataFrame, column: str) -> dict:
    if column not in rows:
        return {}
    out = {}
    for seed, g in rows.groupby("seed", sort=True):
        v = pd.to_numeric(g[column], errors="coerce").dropna()
        if len(v):
            out[int(seed) if float(seed).is_integer() else seed] = float(v.mean())
    return out


def _higher_is_better(metric: str, col) -> bool:
    if metric in MEASURE_METRICS:
        return MEASURE_METRICS[metric]
    return bool(col.directions.get(metric, True))


def _why_not_measured(side: str, rows: pd.DataFrame) -> str:
    if rows.empty:
        return f"no trials of {side} in this section"
    states = rows["state"].value_counts() if "state" in rows else pd.Series(dtype=int)
    counts = ", ".join(f"{int(v)} {k}" for k, v in sorted(states.items()) if k != "done")
    return f"no finished trial of {side} ({counts or 'no value of the metric'})"


def _decide(results: list[ClaimResult], alpha: float) -> None:
    """Holm across the table, then each verdict."""
    measured = [r for r in results if r.diff is not None and r.diff.n > 0]
    rejected = holm([r.diff.p_value for r in measured], alpha)
    m = sum(1 for r in measured if np.isfinite(r.diff.p_value))
    for r, significant in zip(measured, rejected):
        r.significant = bool(significant)
        d = r.diff
        if d.n < 2 or not np.isfinite(d.p_value):
            r.verdict, r.reason = INCONCLUSIVE, f"n={d.n}, no CI"
            continue
        if not significant:
            r.verdict = INCONCLUSIVE
            r.reason = "CI contains 0" if not d.excludes_zero else f"not significant after Holm across {m} claims"
            continue
        claimed = d.mean < 0 if r.claim.direction == "lower" else d.mean > 0
        if not claimed:
            r.verdict, r.reason = CONTRADICTED, ""
            continue
        failed = [x.text for x in r.conditions if x.state == "fails"]
        unknown = [x.text for x in r.conditions if x.state == "unknown"]
        if failed:
            r.verdict, r.reason = NOT_SUPPORTED, "condition fails: " + "; ".join(failed)
        elif unknown:
            r.verdict, r.reason = INCONCLUSIVE, "condition not established: " + "; ".join(unknown)
        else:
            r.verdict, r.reason = SUPPORTED, ""


__all__ = [
    "Claim",
    "ClaimResult",
    "ClaimsError",
    "ClaimsFile",
    "ClaimsTable",
    "NonInferior",
    "default_claims_path",
    "evaluate_claims",
    "load_claims",
    "report_claims",
]
