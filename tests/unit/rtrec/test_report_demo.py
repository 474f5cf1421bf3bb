"""The demo's HTML report from a fixed run (no services): timeline, decision, sizes,
latency percentiles and per-column drift, each chart with its labels and thresholds."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtrec.app.demo.html_report import timeline_rows, write_report
from rtrec.app.demo.runner import DemoReport
from rtrec.app.report import drift_figure, latency_figure, timeline_figure

COLUMNS = [
    {
        "column": "item_pop_rank",
        "method": "wasserstein",
        "score": 0.42,
        "threshold": 0.1,
        "drifted": True,
    },
    {
        "column": "event_type",
        "method": "jensenshannon",
        "score": 0.02,
        "threshold": 0.1,
        "drifted": False,
    },
    {
        "column": "score_top1",
        "method": "wasserstein",
        "score": 0.25,
        "threshold": 0.3,
        "drifted": False,
    },
]


def _run() -> tuple[DemoReport, dict[str, Any]]:
    report = DemoReport()
    report.steps = [
        {
            "step": "generate data",
            "status": "done",
            "seconds": 2.0,
            "n_users": 2000,
            "n_items": 800,
            "n_events": 60000,
            "days": 30,
        },
        {"step": "replay", "status": "done", "seconds": 20.0, "published": 48000},
        {"step": "training", "status": "done", "seconds": 60.0, "version": 1, "promoted": True},
        {"step": "service up", "status": "done", "seconds": 3.0, "url": "http://x"},
        {"step": "burst", "status": "done", "seconds": 4.0, "requests": 400, "clicks_posted": 80},
        {
            "step": "drift",
            "status": "done",
            "seconds": 9.0,
            "reference_rows": 15000,
            "current_rows": 2100,
            "published_reference_rows": 15000,
            "published_current_rows": 2100,
        },
        {"step": "retraining", "status": "done", "seconds": 55.0, "version": 2, "promoted": True},
        {"step": "hot swap", "status": "done", "seconds": 1.0, "serving_version": 2},
        {
            "step": "airflow ui",
            "status": "skipped",
            "seconds": None,
            "reason": "not asked for",
            "missed": True,
        },
    ]
    report.offsets = [0.0, 2.0, 22.0, 82.0, 85.0, 89.0, 98.0, 153.0, 154.0]
    rng = np.random.default_rng(0)
    decision = {
        "version": 2,
        "promoted": True,
        "margin": 0.01,
        "reason": "gain +4% above margin",
        "evidence": {
            "challenger": 0.2345,
            "champion": 0.2251,
            "champion_version": 1,
            "challenger_system": "two_stage",
            "champion_system": "retrieval",
            "gain": 0.042,
            "ci_low": 0.012,
            "ci_high": 0.07,
            "slice": {"rows": 9000, "users": 700},
        },
    }
    extras = {
        "gates": [("retraining after the drift", decision)],
        "latencies": [*rng.lognormal(1.5, 0.3, 399), 2500.0],  # one outlier
        "latency_summary": {"p50_ms": 4.5},
        "drift": {
            "columns": COLUMNS,
            "drift_share": 1 / 3,
            "reference_rows": 15000,
            "current_rows": 2100,
            "judged": True,
            "reason": "feature drift",
            "summary": "drifted: feature drift",
            "as_of": {"mode": "wait", "note": "covered"},
            "outcome": {"reference_rate": 0.2, "current_rate": 0.25, "z": 5.1, "drifted": True},
        },
        "drift_published": [15000, 2100],
    }
    return report, extras


class _Sections(HTMLParser):
    """h2 titles -> the text of the tables under them."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self._tag, self._current = "", ""

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._tag = tag

    def handle_endtag(self, tag: str) -> None:
        self._tag = ""

    def handle_data(self, data: str) -> None:
        if self._tag == "h2":
            self._current = data
            self.sections[data] = []
        elif self._current and data.strip():
            self.sections[self._current].append(data.strip())


def test_report_has_timeline_decision_sizes_and_no_raw_json(tmp_path: Path) -> None:
    report, extras = _run()
    text = write_report(tmp_path / "r.html", report, extras).read_text()
    parser = _Sections()
    parser.feed(text)
    s = parser.sections
    titles = list(s)
    assert titles[:3] == ["Timeline", "Steps", "Data sizes"]
    assert "Serving latency" in titles and "Drift check after the shift" in titles
    gate = next(t for t in titles if t.startswith("Promotion gate"))
    assert "promoted" in s[gate] and "0.2345 (two_stage)" in s[gate]
    assert "v1 0.2251 (retrieval)" in s[gate]
    timeline = s["Timeline"]
    assert "trained v1, promoted; serving v1" not in timeline  # not served before "up"
    assert "trained v1, promoted" in timeline and "serving v1" in timeline
    assert "serving v2" in timeline and "153" in timeline  # swap at its offset
    assert "not asked for" in s["Steps"]  # every skipped step with its reason
    assert "events published" in s["Data sizes"] and "48,000" in s["Data sizes"]
    assert "p99.9" in s["Serving latency"] and "2,500" not in s["Serving latency"][0]
    drift = s["Drift check after the shift"]
    assert "item_pop_rank" in drift and "0.3" in drift  # each column's own threshold
    assert not re.search(r'\{"', text), "raw JSON in the report"
    assert text.count("data:image/png;base64,") == 3  # timeline, latency, drift


def test_timeline_rows_follow_the_served_version() -> None:
    report, _ = _run()
    rows = timeline_rows(report)
    assert [r["model"] for r in rows[2:4]] == ["trained v1, promoted", "serving v1"]
    assert rows[7]["model"] == "serving v2" and rows[7]["start_s"] == 153.0
    assert rows[8]["status"] == "skipped" and rows[8]["reason"] == "not asked for"


def test_timeline_figure_axes() -> None:
    rows = timeline_rows(_run()[0])
    ax = timeline_figure(rows).axes[0]
    assert ax.get_xlabel() == "seconds since the run started" and ax.get_ylabel() == "step"
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["step"] for r in rows]
    bars = ax.patches
    assert len(bars) == 8  # one per step done; the skipped one is a cross
    assert bars[7].get_x() == pytest.approx(153.0)
    notes = [t.get_text() for t in ax.texts]
    assert "serving v2" in notes and notes[-1] == "skipped: not asked for"


def test_drift_figure_draws_each_columns_threshold() -> None:
    ax = drift_figure(COLUMNS, 1 / 3).axes[0]
    assert ax.get_ylabel().startswith("drift distance") and ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == [c["column"] for c in COLUMNS]
    lines = [seg for coll in ax.collections for seg in coll.get_segments()]
    assert len(lines) == len(COLUMNS)
    for bar, seg, col in zip(ax.patches, lines, COLUMNS, strict=True):
        (x0, y0), (x1, y1) = seg
        assert y0 == y1 == pytest.approx(col["threshold"])  # its own threshold...
        assert x0 <= bar.get_x() and x1 >= bar.get_x() + bar.get_width()  # ...across its bar
        assert bar.get_height() == pytest.approx(col["score"])
    assert ax.get_ylim()[1] > max(c["score"] for c in COLUMNS)


def test_latency_figure_is_percentiles_on_a_log_axis() -> None:
    lat = [5.0] * 999 + [3000.0]
    fig, rows = latency_figure(lat, "latency")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks and all(re.fullmatch(r"[0-9.]+", t) for t in ticks), ticks  # not 10^3
    assert ax.get_ylabel() == "latency (ms, log scale)" and "percentile" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["p50", "p75", "p90", "p95", "p99", "p99.9"]
    assert rows[0] == ["p50", 5.0] and rows[-1] == ["max", 3000.0]


def test_report_shows_candidate_recall_per_source_and_the_rankers_gain(tmp_path: Path) -> None:
    report, extras = _run()
    extras["ranker_before_shift"] = {
        "candidates": 200,
        "ranker_rounds": 42,
        "fit_seconds": 12.5,
        "candidate_recall": {"merged": 0.61, "two_tower": 0.52, "item_item": 0.48},
        "gain_over_retrieval": {
            "ndcg@10": {"two_stage": 0.153, "retrieval": 0.14, "relative_gain": 0.0929},
            "recall@10": {"two_stage": 0.17, "retrieval": 0.16, "relative_gain": 0.0625},
        },
    }
    text = write_report(tmp_path / "r.html", report, extras).read_text()
    section = text[text.index("<h2>Two-stage before shift (gate slice)</h2>") :]
    section = section[: section.index("<h2>", 5)] if "<h2>" in section[5:] else section
    assert "42 trees" in section and "candidate recall@200" in section
    for source, value in (("merged", "0.61"), ("two_tower", "0.52"), ("item_item", "0.48")):
        assert re.search(rf"<td>{source}</td><td class=\"num\">{value}</td>", section)
    assert re.search(
        r"<td>ndcg@10</td><td class=\"num\">0.14</td><td class=\"num\">0.153</td>"
        r"<td class=\"num\">0.09290?</td>",
        section,
    )
    assert "Two-stage after shift" not in text  # no retraining figures: no section
