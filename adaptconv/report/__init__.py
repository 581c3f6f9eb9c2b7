"""Reports regenerated from stored results: tables (CSV, LaTeX, Markdown, HTML) and seaborn figures."""

from .build import Report, build_report
from .compare import compare

__all__ = ["Report", "build_report", "compare"]
