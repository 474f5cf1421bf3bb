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


STATUS_COLORS = {"done": "#2e7d32", "not promoted": "#ef6c00"}
"""Bar colour per step outcome; anything else (skipped, incomplete) is drawn red."""


def timeline_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """The run as a timeline: one bar per step from its start offset for its duration,
    labelled with the model version it trained or served; a step that did not happen is
    a red cross at the time it was reached, labelled with its outcome.

    ``rows``: dicts with ``step``, ``start_s``, ``seconds`` (None when not done),
    ``status``, ``model`` (text, may be empty) and ``reason`` (for a step not done).
    """
    fig, ax = new_figure(9.0, 0.45 * len(rows) + 1.4)
    end = max([r["start_s"] + (r["seconds"] or 0) for r in rows] + [1.0])
    for y, r in enumerate(rows):
        status = r.get("status", "done")
        label = r.get("model") or ""
        if r.get("seconds") is not None:
            ax.barh(
                y,
                max(r["seconds"], end / 400),
                left=r["start_s"],
                height=0.6,
                color=STATUS_COLORS.get(status, "#c62828"),
            )
            x = r["start_s"] + r["seconds"]
        else:
            ax.plot(
                r["start_s"],
                y,
                marker="x",
                markersize=9,
                color=STATUS_COLORS.get(status, "#c62828"),
            )
            x = r["start_s"]
            why = str(r.get("reason") or "")
            label = f"{status}: {why[:60]}" if why else status
        if label:
            ax.annotate(
                label, (x, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8
            )
    ax.set_yticks(range(len(rows)), [r["step"] for r in rows], fontsize=8)
    ax.invert_yaxis()  # first step on top
    ax.set_xlim(0, end * 1.25)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("step")
    ax.set_title("What happened when, and which model version")
    ax.grid(axis="x", alpha=0.3)
    return fig


def drift_figure(columns: Sequence[dict[str, Any]], drift_share: float) -> Any:
    """Per-column drift distance as bars, each with its own threshold as a short line
    across its bar (columns are judged against different thresholds); drifted bars red.

    ``columns``: dicts with ``column``, ``score``, ``threshold``, ``drifted``.
    """
    fig, ax = new_figure(8.0, 3.8)
    xs = range(len(columns))
    ax.bar(
        xs,
        [c["score"] for c in columns],
        width=0.6,
        color=["#c62828" if c["drifted"] else "#1565c0" for c in columns],
    )
    for x, c in zip(xs, columns, strict=True):
        ax.hlines(
            c["threshold"],
            x - 0.4,
            x + 0.4,
            colors="black",
            linestyles="--",
            label="threshold of the column" if x == 0 else None,
        )
    ax.set_xticks(list(xs), [c["column"] for c in columns], rotation=30, ha="right")
    ax.set_xlabel("monitored column")
    ax.set_ylabel("drift distance (Wasserstein / Jensen-Shannon)")
    top = max([c["score"] for c in columns] + [c["threshold"] for c in columns] + [0.01])
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"Drift per column ({drift_share:.0%} of columns drifted; red: drifted)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


LATENCY_PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)


def latency_figure(latencies_ms: Sequence[float], title: str) -> tuple[Any, list[list[Any]]]:
    """Latency percentiles p50..p99.9 on a log-scaled ms axis (one slow request must not
    squash the rest, as it does a histogram's); returns the figure and the table rows
    ``[percentile, ms]``, max included."""
    import numpy as np

    lat = np.asarray(latencies_ms, dtype=float)
    values = [float(np.percentile(lat, p)) for p in LATENCY_PERCENTILES]
    names = [f"p{p:g}" for p in LATENCY_PERCENTILES]
    fig, ax = new_figure(7.0, 3.6)
    ax.plot(range(len(values)), values, marker="o")
    for x, v in enumerate(values):
        ax.annotate(
            f"{v:.1f}", (x, v), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8
        )
    ax.set_xticks(range(len(values)), names)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1000, not 10^3
    ax.set_xlabel(f"percentile of {len(lat):,} requests")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    rows = [[n, round(v, 2)] for n, v in zip(names, values, strict=True)]
    rows.append(["max", round(float(lat.max()), 2)])
    return fig, rows
