"""One colour and one marker per operator, the same in every figure of every report.

Colours come from seaborn's colour-blind-safe palette. An operator's colour depends only on its
name (a fixed order for the built-in operators, a stable hash for plugins), never on which operators a
report happens to contain, so two reports can be read side by side. The baseline ``conv`` is black.
With more operators than colours, colours repeat with a different marker and line style. Reference
lines (conv's mean, the task's trivial baselines) have their own fixed styles.
"""

from __future__ import annotations

import hashlib

import seaborn as sns

from ..plugins import BUILTIN_OPS

BASELINE = "conv"
#: built-in operators in a fixed order (their colour index): the registry's table of built-ins, whose
#: order is therefore the palette's (a new built-in goes at the end of it, so no colour moves)
KNOWN_OPS = tuple(name for name in BUILTIN_OPS if name != BASELINE)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DASHES = ("-", "--", "-.", ":")
#: reference lines drawn across a panel: conv's mean (black, dashed) and each trivial, non-learned
#: baseline of the task (grey, dotted), so neither can be mistaken for an operator's line
CONV_LINE = {"color": (0.0, 0.0, 0.0), "ls": "--", "lw": 1.0}
TRIVIAL_LINE = {"color": (0.4, 0.4, 0.4), "ls": ":", "lw": 1.4}


def _index(op: str) -> int:
    if op in KNOWN_OPS:
        return KNOWN_OPS.index(op)
    # a plugin: a stable position after the built-ins, independent of the other names in the report
    return len(KNOWN_OPS) + int(hashlib.sha256(op.encode()).hexdigest(), 16) % 97


def base_op(label: str) -> str:
    """The operator of a variant label such as ``pac (kernel_type=inv_0.5)``."""
    return label.split(" ", 1)[0]


def op_color(label: str) -> tuple[float, float, float]:
    op = base_op(label)
    if op == BASELINE:
        return (0.0, 0.0, 0.0)
    colors = sns.color_palette("colorblind", 10)
    return tuple(colors[_index(op) % len(colors)])


def op_marker(label: str) -> str:
    op = base_op(label)
    if op == BASELINE:
        return "*"
    i = _index(op)
    return MARKERS[(i + i // 10) % len(MARKERS)]


def op_dash(label: str) -> str:
    op = base_op(label)
    return "-" if op == BASELINE else DASHES[(_index(op) // 10) % len(DASHES)]


def op_order(labels) -> list[str]:
    """Labels sorted as every table and legend lists them: the baseline first, then the fixed order."""
    return sorted(
        set(labels), key=lambda s: (base_op(s) != BASELINE, _index(base_op(s)) if base_op(s) != BASELINE else -1, s)
    )


def variant_styles(labels) -> dict[str, tuple[tuple[float, float, float], str, str]]:
    """(colour, marker, line style) per label: the operator gives the colour; variants of one operator
    (``pac`` and ``pac (kernel_type=inv)``) keep the colour and differ by marker and line style."""
    by_op: dict[str, list[str]] = {}
    for label in op_order(labels):
        by_op.setdefault(base_op(label), []).append(label)
    out = {}
    for _op, variants in by_op.items():
        for k, label in enumerate(variants):
            if k == 0:
                out[label] = (op_color(label), op_marker(label), op_dash(label))
            else:
                i = MARKERS.index(op_marker(label)) if op_marker(label) in MARKERS else 0
                out[label] = (op_color(label), MARKERS[(i + k) % len(MARKERS)], DASHES[k % len(DASHES)])
    return out
