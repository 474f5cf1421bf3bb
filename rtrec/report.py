"""Self-contained HTML reports: tables and matplotlib figures inlined as base64 PNG.

The demo writes one after each run so a person can read what happened without any of
the services still running.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:1.6em;color:#234}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #bbb;padding:.25em .6em}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
.warn{color:#a00;font-weight:600}
"""


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = field(default_factory=list)
    """(caption, header, rows)."""
    figures: list[Any] = field(default_factory=list)
    """matplotlib Figures."""
    warnings: list[str] = field(default_factory=list)
    """Lines shown prominently above the tables (what did not happen, and why)."""


def steps_section(steps: Sequence[dict[str, Any]], title: str = "Steps") -> Section:
    """A run's steps as a table: each step's outcome, its seconds when it was done, and
    the reason when it was not (a skipped step shows why, never a duration of 0).

    ``steps``: dicts with ``step``, ``status`` ("done" when absent), ``seconds`` and,
    for a step not done, ``reason``; ``missed`` true for a step that should have
    happened (shown as a warning above the table too).
    """
    rows, warnings = [], []
    for s in steps:
        status = s.get("status", "done")
        done = status == "done"
        rows.append(
            [s["step"], status, s.get("seconds") if done else None, "" if done else s.get("reason")]
        )
        if s.get("missed"):
            warnings.append(f"{s['step']}: {status}: {s.get('reason') or 'no reason given'}")
    return Section(
        title, "", [("", ["step", "outcome", "seconds", "reason"], rows)], warnings=warnings
    )


def _fmt(value: Any) -> tuple[str, bool]:
    if isinstance(value, float):
        return (f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"), True
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}", True
    return html.escape("" if value is None else str(value)), False


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            text, num = _fmt(v)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{''.join(body)}</table>"


def _figure(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def write_html_report(path: Path, title: str, sections: Sequence[Section]) -> Path:
    """Write one HTML file with everything inlined; returns its path."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.extend(f'<p class="warn">{html.escape(w)}</p>' for w in s.warnings)
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        parts.extend(_table(*t) for t in s.tables)
        parts.extend(_figure(f) for f in s.figures)
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def new_figure(width: float = 7.0, height: float = 3.2) -> tuple[Any, Any]:
    """A matplotlib (figure, axes) on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))
