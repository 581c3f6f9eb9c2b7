"""Suite files: a base trial config swept over axes, validated before anything runs.

```yaml
name: ablation-pac                      # also the results folder: results/<name>/
description: what this suite answers, where its data lives, what it costs
base:                                   # a trial config (see adaptconv.trial.config.TrialConfig)
  task: upsampling
  steps: 300
product:                                # cartesian product of dotted trial keys
  op: [conv, pac]
  task_options.scale: [4, 8, 16]
zip:                                    # lists of equal length, taken element by element
  optimizer.lr: [0.01, 0.001]
  steps: [100, 300]
blocks:                                 # ablations: each block expands on its own; the union is taken
  - name: kernel-type
    base: {op: pac}                     # block overrides of the base
    product: {op_options.kernel_type: [gaussian, inv]}
exclude:                                # drop trials matching every key of a rule (a list = any of)
  - {op: conv, guide: image}
seeds: [0, 1, 2]                        # the seed axis, crossed with everything (a block may give its own)
resources: {time: "01:00:00", gpus: 1, cpus: 4, mem_gb: 16}
```

A suite with ``blocks`` expands each block as ``block.product × block.zip`` over ``base + block.base``,
crossed with the top-level ``product``/``zip`` and ``seeds``, and takes the union (identical trials
count once). Without ``blocks`` it is the top-level ``product × zip × seeds`` over ``base``.

Every problem is reported at once, naming the file, the key path and the line, with a did-you-mean.
What a trial would refuse is refused here: each trial config is validated as the trial validates it,
and each distinct operator configuration (operator, options, guide) is built once from an
``nn.Conv2d``, as the hot-swap builds it, so an option value the operator refuses is an error of the
suite. A key given twice in one mapping, an exclude rule that drops no trial and a name too long for
a folder are errors too. A problem shared by several trials is reported once, with how many trials
have it and the axis value they share (``scale=7`` is blamed for a ``patch`` that is not a multiple
of it). Numbers are read as a user writes them: a float field takes every spelling ``float()`` reads
(``1e-3``, which YAML 1.1 leaves a string).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..schema import ConfigError, FileConfigError, as_float, did_you_mean, flatten_config, parse, set_dotted
from ..trial.config import TrialConfig, parse_trial_config
from ..trial.ids import trial_id

SUITES_DIR = Path(__file__).resolve().parents[2] / "suites"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
#: a suite's name is a folder name (results/<name>/, report/<name>/) and goes into file names; file
#: systems allow 255 bytes, and this leaves room for what is derived from it
MAX_NAME = 128


class SuiteError(FileConfigError):
    """Problems in a suite file, each naming the file, key path and line."""

    kind = "suite"


@dataclass
class Resources:
    """What one trial needs. Unset fields fall back to the SLURM profile, then to 01:00:00, 0 GPUs,
    2 CPUs and 8 GB."""

    time: str | None = None  # [D-]HH:MM:SS per trial
    gpus: int | None = None
    cpus: int | None = None
    mem_gb: float | None = None


@dataclass
class Block:
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    product: dict[str, list] = field(default_factory=dict)
    zip: dict[str, list] = field(default_factory=dict)
    #: this block's seed axis in place of the suite's (e.g. one seed for a latency-only block)
    seeds: list[int] | None = None


@dataclass
class SuiteSpec:
    name: str
    description: str
    base: dict[str, Any]
    product: dict[str, list] = field(default_factory=dict)
    zip: dict[str, list] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] | None = None
    resources: Resources = field(default_factory=Resources)


@dataclass
class Trial:
    id: str
    config: dict[str, Any]  # the normalised trial config
    block: str | None = None
    #: False for a trial read without the registry (``load_suite(..., check_registry=False)``) whose
    #: operator is not installed: its config could not be checked nor fully normalised
    checked: bool = True


@dataclass
class Suite:
    spec: SuiteSpec
    path: Path
    trials: list[Trial]
    #: what could not be checked when read with ``check_registry=False`` (printed as warnings)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


# --------------------------------------------------------------------------------------------------
# Locating lines in the YAML source


def _line_index(text: str) -> tuple[dict[tuple, int], list[tuple[tuple, int, int]]]:
    """Key path (tuple of keys / list indices) → 1-based line, from the YAML node tree; and the keys
    given twice in one mapping, as (key path, first line, repeated line) — YAML loaders keep the last
    silently."""
    index: dict[tuple, int] = {}
    duplicates: list[tuple[tuple, int, int]] = []

    def walk(node, path):
        index.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                key = k.value
                line = k.start_mark.line + 1
                if key in first and key != "<<":
                    duplicates.append((path + (key,), first[key], line))
                first.setdefault(key, line)
                index.setdefault(path + (key,), line)
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index, duplicates
    if root is not None:
        walk(root, ())
    return index, duplicates


class _Problems:
    def __init__(self, lines: dict[tuple, int]) -> None:
        self.lines = lines
        self.items: list[str] = []

    def add(self, path: tuple, message: str) -> None:
        line = None
        for n in range(len(path), 0, -1):  # the nearest enclosing key that has a line
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                break
        key = ".".join(str(p) for p in path) or "(top level)"
        self.items.append(f"{key}{f' (line {line})' if line else ''}: {message}")


# --------------------------------------------------------------------------------------------------


def resolve_suite_path(suite: str | Path) -> Path:
    """A suite name in ``suites/`` or a path to a suite file."""
    p = Path(suite)
    named = SUITES_DIR / f"{suite}.yaml"
    if p.is_dir() and len(p.parts) == 1 and named.is_file():  # a bare name: the suite, not a folder here
        return named
    if p.is_dir():
        inside = sorted(f.name for f in p.iterdir() if f.suffix in (".yaml", ".yml"))
        raise SuiteError(
            ["is a directory, not a suite file" + (f"; the suite files in it: {', '.join(inside)}" if inside else "")],
            p,
        )
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise SuiteError(["no such suite file"], p)
        if not p.is_file():
            raise SuiteError(["is not a regular file"], p)
        return p
    candidate = SUITES_DIR / f"{suite}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(f.stem for f in SUITES_DIR.glob("*.yaml")) if SUITES_DIR.is_dir() else []
    raise SuiteError(
        [
            f"no suite named {str(suite)!r} in {SUITES_DIR}{did_you_mean(str(suite), known)}; "
            f"known: {', '.join(known) or 'none'}"
        ],
        suite,
    )


def load_yaml(text: str, path: Path, error: type[FileConfigError]):
    """``yaml.safe_load(text)``, or ``error`` naming the line where the YAML is broken."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise error([f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"], path) from None


def _read_text(path: Path) -> str:
    """The file's text, or a SuiteError saying why it cannot be read as a suite."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteError([f"cannot be read: {exc.strerror or exc}"], path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SuiteError(
            [
                f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column} is "
                f"not UTF-8 (save the file as UTF-8)"
            ],
            path,
        ) from None
    if not text.strip():
        raise SuiteError(
            ["the file is empty; a suite is a mapping with keys name, description, base, ... (see suites/quick.yaml)"],
            path,
        )
    return text


def load_suite(suite: str | Path, check_registry: bool = True) -> Suite:
    """Read, validate and expand a suite. Raises :class:`SuiteError` listing every problem.

    ``check_registry=False`` reads a suite whose results are being collected whatever is installed
    now: a trial whose operator is not installed (or no longer takes its options) is kept, unchecked
    (``Trial.checked``), with a warning in ``Suite.warnings`` instead of an error; match such trials
    to their stored records with :func:`match_stored`. Validation against the registry belongs to
    ``plan`` and ``run``."""
    path = resolve_suite_path(suite)
    text = _read_text(path)
    lines, duplicates = _line_index(text)
    problems = _Problems(lines)
    raw = load_yaml(text, path, SuiteError)
    if raw is None:
        raise SuiteError(
            ["has only comments and blank lines; a suite is a mapping with keys name, description, base, ..."], path
        )
    if not isinstance(raw, dict):
        raise SuiteError(["a suite file is a mapping with keys name, description, base, ..."], path)
    for key, first, again in duplicates:
        problems.add(key, f"given twice (lines {first} and {again}); YAML would keep the second silently")
    try:
        spec = parse(SuiteSpec, raw)
    except ConfigError as exc:
        for p in exc.problems:
            key, _, msg = p.partition(": ")
            problems.add(_split_key(key), msg)
        raise SuiteError(problems.items, path) from None
    _check_spec(spec, problems)
    if problems.items:
        raise SuiteError(problems.items, path)
    warnings: list[str] = []
    trials = expand(spec, problems, check_registry=check_registry, warnings=warnings)
    if problems.items:
        raise SuiteError(problems.items, path)
    return Suite(spec, path, trials, warnings)


def _split_key(key: str) -> tuple:
    parts: list = []
    for part in key.split("."):
        m = re.fullmatch(r"(.*?)\[(\d+)\]", part)
        if m:
            parts += [m.group(1), int(m.group(2))]
        else:
            parts.append(part)
    return tuple(parts)


def _check_spec(spec: SuiteSpec, problems: _Problems) -> None:
    if not NAME.fullmatch(spec.name):
        problems.add(("name",), f"{spec.name!r} must be letters, digits, '-', '_' or '.' (it names a folder)")
    elif len(spec.name) > MAX_NAME:
        problems.add(
            ("name",),
            f"is {len(spec.name)} characters long; it names the results and report folders "
            f"(results/<name>/), so at most {MAX_NAME}",
        )
    if not spec.description.strip():
        problems.add(("description",), "say what the suite answers (and, for real data, where it must be)")
    if spec.resources.time is not None and not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", spec.resources.time):
        problems.add(("resources", "time"), f"{spec.resources.time!r} is not [D-]HH:MM:SS")
    axes = [(("product",), spec.product), (("zip",), spec.zip)]
    axes += [(("blocks", i, "product"), b.product) for i, b in enumerate(spec.blocks)]
    axes += [(("blocks", i, "zip"), b.zip) for i, b in enumerate(spec.blocks)]
    for where, axis in axes:
        for key, values in axis.items():
            if not isinstance(values, list) or not values:
                problems.add(where + (key,), "an axis is a non-empty list of values")
            elif len({_freeze(v) for v in values}) != len(values):
                problems.add(where + (key,), "repeats a value")
            if key == "seed":
                problems.add(where + (key,), "use the top-level `seeds:` list for the seed axis")
    for where, z in [(("zip",), spec.zip)] + [(("blocks", i, "zip"), b.zip) for i, b in enumerate(spec.blocks)]:
        lengths = {k: len(v) for k, v in z.items() if isinstance(v, list)}
        if len(set(lengths.values())) > 1:
            problems.add(where, f"zipped lists differ in length: {lengths}")
    both = set(spec.product) & set(spec.zip)
    for key in sorted(both):
        problems.add(("zip", key), "is also a product axis: an axis is swept one way")
    for i, b in enumerate(spec.blocks):
        if not NAME.fullmatch(b.name):
            problems.add(("blocks", i, "name"), f"{b.name!r} is not a valid block name")
        for key in sorted((set(b.product) | set(b.zip)) & (set(spec.product) | set(spec.zip))):
            problems.add(("blocks", i, key), "is swept at the top level too (contradictory axes)")
        for key in sorted(set(b.product) & set(b.zip)):
            problems.add(("blocks", i, "zip", key), "is also a product axis of this block")
        if b.seeds is not None and (not b.seeds or len(set(b.seeds)) != len(b.seeds)):
            problems.add(("blocks", i, "seeds"), "a non-empty list of distinct seeds")
        if b.seeds is not None and "seed" in b.base:
            problems.add(("blocks", i, "base", "seed"), "given both here and in the block's `seeds:`")
    names = [b.name for b in spec.blocks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.add(("blocks",), f"block name {dup!r} is used twice")
    if spec.seeds is not None and (not spec.seeds or len(set(spec.seeds)) != len(spec.seeds)):
        problems.add(("seeds",), "a non-empty list of distinct seeds")
    if "seed" in spec.base and spec.seeds is not None:
        problems.add(("base", "seed"), "given both here and in `seeds:`")
    swept = set(spec.product) | set(spec.zip) | {"seed"}
    for b in spec.blocks:
        swept |= set(b.product) | set(b.zip) | set(flatten_config(b.base))
    for i, rule in enumerate(spec.exclude):
        if not rule:
            problems.add(("exclude", i), "an empty rule would exclude everything")
        for key in rule:
            if key not in swept:
                problems.add(
                    ("exclude", i, key),
                    f"is not swept by any axis, so the rule can never select a subset"
                    f"{did_you_mean(key, sorted(swept))}",
                )


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _get(config: dict, dotted: str):
    node = config
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return _MISSING
        node = node[k]
    return node


_MISSING = object()


def _grid(product: dict[str, list], zipped: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(product)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(product[k] for k in keys))] or [{}]
    if zipped:
        zkeys = list(zipped)
        rows = [dict(zip(zkeys, vals)) for vals in zip(*(zipped[k] for k in zkeys))]
        points = [{**p, **r} for p in points for r in rows]
    return points


def _same(have, want) -> bool:
    """Equal, also as numbers written differently (``1e-3`` is a string in YAML 1.1, 0.001 a float)."""
    if have == want:
        return True
    if isinstance(have, bool) or isinstance(want, bool):
        return False
    a = have if isinstance(have, (int, float)) else as_float(have)
    b = want if isinstance(want, (int, float)) else as_float(want)
    return a is not None and b is not None and float(a) == float(b)


def _matches(rule: dict[str, Any], config: dict) -> bool:
    for key, want in rule.items():
        have = _get(config, key)
        if isinstance(want, list):
            if not any(_same(have, w) for w in want):
                return False
        elif not _same(have, want):
            return False
    return True


def expand(
    spec: SuiteSpec, problems: _Problems | None = None, check_registry: bool = True, warnings: list[str] | None = None
) -> list[Trial]:
    """The suite's trials, each validated and with its stable id, in a deterministic order.

    A problem found in several trials is reported once, with how many trials have it and the axis
    values they share (the axis is blamed when the problem comes with one of its values); an exclude
    rule that drops no trial is a problem."""
    problems = problems or _Problems({})
    warnings = warnings if warnings is not None else []
    blocks = spec.blocks or [Block(name="", base={}, product={}, zip={})]
    seeds = spec.seeds if spec.seeds is not None else [None]
    top = _grid(spec.product, spec.zip)
    trials: dict[str, Trial] = {}
    excluded = 0
    rule_hits = [0] * len(spec.exclude)
    rule_values: dict[str, list] = {k: [] for rule in spec.exclude for k in rule}  # values met, for the hint
    failures: dict[tuple[int, str], list[dict]] = {}  # (block, problem) → the swept values of its trials
    points: dict[int, list[dict]] = {}  # block → the swept values of every trial it keeps
    unchecked: dict[str, None] = {}  # operators of trials read unchecked (check_registry=False), in order
    for bi, block in enumerate(blocks):
        base = _deep_merge(spec.base, block.base)
        for point in _grid(block.product, block.zip):
            for tp in top:
                for seed in block.seeds if block.seeds is not None else seeds:
                    config = _deep_merge(base, {})
                    swept = {**tp, **point}
                    try:
                        for key, value in swept.items():
                            set_dotted(config, key, value)
                    except ConfigError as exc:  # a swept key inside a value that is not a mapping
                        points.setdefault(bi, []).append(swept)
                        for p in exc.problems:
                            failures.setdefault((bi, p), []).append(swept)
                        continue
                    if seed is not None:
                        config["seed"] = seed
                        swept["seed"] = seed
                    for key, seen in rule_values.items():
                        value = _get(config, key)
                        if value is not _MISSING and not any(_same(value, v) for v in seen):
                            seen.append(value)
                    hits = [i for i, rule in enumerate(spec.exclude) if _matches(rule, config)]
                    for i in hits:
                        rule_hits[i] += 1
                    if hits:
                        excluded += 1
                        continue
                    points.setdefault(bi, []).append(swept)
                    checked = True
                    try:
                        cfg = parse_trial_config(config)
                    except ConfigError as exc:
                        cfg = None if check_registry else _unchecked(config)
                        if cfg is None:
                            for p in exc.problems:
                                failures.setdefault((bi, p), []).append(swept)
                            continue
                        checked = False
                        unchecked.setdefault(cfg.op, None)
                    normalised = cfg.normalised()
                    tid = trial_id(normalised)
                    trials.setdefault(tid, Trial(tid, normalised, block.name or None, checked))
    for (bi, problem), failed in failures.items():
        _report(problems, spec, blocks[bi], bi, problem, failed, points[bi])
    for i, hits in enumerate(rule_hits):
        if not hits and spec.exclude[i]:
            problems.add(
                ("exclude", i), f"matches no trial, so it excludes nothing{_rule_hint(spec.exclude[i], rule_values)}"
            )
    for op in unchecked:
        warnings.append(
            f"operator {op!r} is not installed here (or no longer takes the suite's options): its "
            "trials are read as the suite gives them, unchecked, and matched to their stored records; "
            "plan and run would refuse them"
        )
    if not trials and not problems.items:
        problems.add(
            ("exclude",) if excluded else (),
            "the suite expands to no trial" + (f" ({excluded} excluded)" if excluded else ""),
        )
    return list(trials.values())


def _unchecked(config: dict):
    """For check_registry=False: the config read without asking the operator registry, or None when it
    has problems of its own (reported as usual)."""
    try:
        return parse_trial_config(config, registry=False)
    except ConfigError:
        return None


def _report(
    problems: _Problems, spec: SuiteSpec, block: Block, bi: int, problem: str, failed: list[dict], every: list[dict]
) -> None:
    """One problem found in the trials ``failed`` (swept values) out of ``every`` trial of the block."""
    key = problem.split(":", 1)[0]
    keys = list(dict.fromkeys(k for pt in every for k in pt))
    varying = [k for k in keys if len({repr(_freeze(pt.get(k))) for pt in every}) > 1]
    first = failed[0]
    shared = {
        k: first.get(k)
        for k in varying
        if all(repr(_freeze(pt.get(k))) == repr(_freeze(first.get(k))) for pt in failed)
    }
    where = _axis_of(key, spec, block, bi)
    if where is None:
        # the problem names another key (task_options.patch) because of a swept value (scale=7): blame
        # the swept key it mentions; the message still names its own key, so both are named
        text = problem.split(":", 1)[-1]
        for k in first:
            leaf = k.split(".")[-1]
            if k != key and len(leaf) >= 3 and re.search(rf"\b{re.escape(leaf)}\b", text):
                where = _axis_of(k, spec, block, bi)
                break
    if where is None and shared and len(failed) < len(every):
        # the problem names another key (task_options.patch) but comes with an axis value (scale=7):
        # blame the axis; the message still names its own key, so both are named
        where = _axis_of(next(iter(shared)), spec, block, bi)
    if where is None:
        where = ("blocks", bi) if spec.blocks else ("base",)
    if len(every) == 1 or not first:
        context = ""
    elif len(failed) == 1:
        context = f" (in the trial {_short(first)})"
    elif len(failed) == len(every):
        context = f" (in all {len(failed)} trials{' of block ' + repr(block.name) if block.name else ''})"
    elif shared:
        context = f" (in {len(failed)} trials: every one with {_short(shared)})"
    else:
        context = f" (in {len(failed)} trials, e.g. {_short(first)})"
    problems.add(where, problem + context)


def _rule_hint(rule: dict[str, Any], seen: dict[str, list]) -> str:
    """Why an exclude rule matches nothing: a value no trial has, or values never together."""
    for key, want in rule.items():
        wanted = want if isinstance(want, list) else [want]
        missing = [w for w in wanted if not any(_same(v, w) for v in seen[key])]
        if len(missing) == len(wanted):
            shown = ", ".join(map(str, seen[key][:12])) or "none"
            return (
                f": no trial has {key}={missing[0] if len(missing) == 1 else missing}"
                f"{did_you_mean(missing[0], [str(v) for v in seen[key]])} (its values: {shown})"
            )
    return ": no trial has all of its values together"


def _axis_of(key: str, spec: SuiteSpec, block: Block, bi: int) -> tuple | None:
    """Where in the file a bad trial key comes from (an axis if it is swept, else the base)."""
    for where, axis in (
        (("blocks", bi, "product"), block.product),
        (("blocks", bi, "zip"), block.zip),
        (("product",), spec.product),
        (("zip",), spec.zip),
    ):
        for k in axis:
            if k == key or k.startswith(key + ".") or key.startswith(k + "."):
                return where + (k,)
    if key.split(".")[0] in block.base:
        return ("blocks", bi, "base") + tuple(key.split("."))
    if key.split(".")[0] in spec.base:
        return ("base",) + tuple(key.split("."))
    return None


def _short(items: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in items.items())


def _deep_merge(a: dict, b: dict) -> dict:
    out = {k: (_deep_merge(v, {}) if isinstance(v, dict) else v) for k, v in a.items()}
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = _deep_merge(v, {}) if isinstance(v, dict) else v
    return out


def match_stored(suite: Suite, stored: dict[str, dict[str, Any]]) -> int:
    """Give each unchecked trial of ``suite`` (see ``load_suite(check_registry=False)``) the id and
    config of its stored trial (``stored``: id → the ``trial.json`` config written when it ran).

    Without its operator an unchecked trial keeps its options as written, so its id differs from the
    stored one wherever an option equal to the operator's default was dropped (``{gain: 1.0}`` stored
    as ``{}``): a stored config matches when it equals the trial's in everything but those dropped
    options. Returns how many trials were matched this way; in place."""
    from ..trial.ids import identity

    out: dict[str, Trial] = {}
    matched = 0
    for t in suite.trials:
        if not t.checked and t.id not in stored:
            mine = identity(t.config)
            found = [tid for tid, cfg in stored.items() if _stored_match(mine, identity(cfg))]
            if len(found) == 1:  # the same trial as another of the suite's is counted once, as when checked
                t = Trial(found[0], stored[found[0]], t.block, False)
                matched += 1
        out.setdefault(t.id, t)
    suite.trials[:] = list(out.values())
    return matched


def _stored_match(mine: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """``theirs`` (stored) is ``mine`` (as written) with some operator options dropped as defaults."""
    if set(mine) - {"op_options"} != set(theirs) - {"op_options"}:
        return False
    if any(_freeze(v) != _freeze(theirs[k]) for k, v in mine.items() if k != "op_options"):
        return False
    written = mine.get("op_options") or {}
    return all(k in written and _same(written[k], v) for k, v in (theirs.get("op_options") or {}).items())


def trial_config(trial: Trial) -> TrialConfig:
    return parse(TrialConfig, trial.config)


def override_run_keys(suite: Suite, values: dict[str, Any]) -> None:
    """Set run keys (where a trial runs: ``device``, ``threads``, ``data_root``) in every trial of
    ``suite``, e.g. from ``adaptconv run --set data_root=/data/nyu``. Run keys are not part of trial
    ids, so the trials stay the same ones; anything else must be changed in the suite file."""
    from ..trial.config import RUN_KEYS

    bad = [k for k in values if k not in RUN_KEYS]
    if bad:
        raise SuiteError(
            [
                f"--set {k}: only run keys can be set from the command line ({', '.join(RUN_KEYS)}); "
                f"change {k} in the suite file"
                for k in bad
            ],
            suite.path,
        )
    for trial in suite.trials:
        trial.config.update(values)
        try:
            parse_trial_config(trial.config)
        except ConfigError as exc:
            raise SuiteError([f"--set: {p}" for p in exc.problems], suite.path) from None
