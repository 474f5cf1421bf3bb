"""The demo's HTML report: timeline, steps (skipped ones with their reason), data
sizes, quality, the gate's decisions, latency percentiles and the drift check, built from
the steps' outputs and the run's extras (:mod:`rtrec.app.report` renders it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtrec.app.demo.burst import CLIENTS
from rtrec.app.demo.runner import DemoReport
from rtrec.app.report import (
    Section,
    drift_figure,
    latency_figure,
    steps_section,
    timeline_figure,
    write_html_report,
)


def write_report(path: Path, report: DemoReport, extras: dict[str, Any]) -> Path:
    """Write the run's HTML report to ``path`` and return it."""
    sections = []
    timeline = timeline_rows(report)
    if timeline:
        sections.append(_timeline_section(timeline))
    sections.append(steps_section(report.steps))
    sizes = sizes_rows(report)
    if sizes:
        sections.append(Section("Data sizes", "", [("", ["step", "what", "count"], sizes)]))
    sections += _quality_sections(extras)
    sections += ranker_sections(extras)
    if extras.get("gates"):
        sections.append(gate_section(extras["gates"]))
    lat = extras.get("latencies")
    if lat:
        fig, rows = latency_figure(lat, "/recommend latency seen by the client")
        sections.append(
            Section(
                "Serving latency",
                f"{len(lat):,} requests from {CLIENTS} concurrent keep-alive clients.",
                [("", ["percentile", "ms"], rows)],
                [fig],
            )
        )
    drift = extras.get("drift")
    if drift:
        sections.append(_drift_section(drift, extras.get("drift_published", [None, None])))
    if extras.get("experiment"):
        sections.append(experiment_section(extras["experiment"]))
    return write_html_report(path, "rtrec demo", sections)


def experiment_section(ab: dict[str, Any]) -> Section:
    """The A/B readout at the decision: per variant exposure and click-through with its
    95 % interval, then the comparison and what the decision DAG did."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.2%}"

    rows = [
        [
            v,
            a["impressions"],
            a["users"],
            a["clicks"],
            f"{pct(a['ctr_per_impression']['rate'])} [{pct(a['ctr_per_impression']['low'])}, "
            f"{pct(a['ctr_per_impression']['high'])}]",
            "-" if a.get("mrr") is None else f"{a['mrr']:.3f}",
        ]
        for v, a in ab["variants"].items()
    ]
    lift = ab.get("lift") or {}
    comparison = [
        [
            "-" if lift.get("estimate") is None else f"{lift['estimate']:+.1%}",
            "-" if lift.get("low") is None else f"[{lift['low']:+.1%}, {lift['high']:+.1%}]",
            f"{ab['p_value']:.3g}",
            f"{ab['srm_p_value']:.3g}",
            ab["verdict"],
            ab.get("decision", "not taken"),
        ]
    ]
    return Section(
        f"A/B test {ab['experiment']}",
        "Simulated users clicked with the generator's known taste; the readout was read "
        f"once, after every answer and click sent was joined ({ab.get('seconds', '?')} s "
        "of traffic).",
        [
            ("variants", ["variant", "answers", "users", "clicks", "ctr [95 %]", "mrr"], rows),
            (
                "comparison",
                ["lift", "95 % interval", "p", "SRM p", "verdict", "decision"],
                comparison,
            ),
        ],
    )


def _timeline_section(timeline: list[dict[str, Any]]) -> Section:
    """The timeline table and its chart."""
    header = ["step", "start (s)", "seconds", "outcome", "model", "reason"]
    keys = ["step", "start_s", "seconds", "status", "model", "reason"]
    return Section(
        "Timeline",
        "Each step from its start (seconds after the run began); versions are the "
        "MLflow model versions trained and served.",
        [("", header, [[r[k] for k in keys] for r in timeline])],
        [timeline_figure(timeline)],
    )


def _quality_sections(extras: dict[str, Any]) -> list[Section]:
    """Quality before and after the shift, or why it was not measured."""
    sections = []
    for label in ("before_shift", "after_shift"):
        q = extras.get(f"quality_{label}")
        if q:
            rows = [
                [m, v.get("ndcg@10"), v.get("recall@10"), v.get("map@10")] for m, v in q.items()
            ]
            sections.append(
                Section(
                    f"Quality {label.replace('_', ' ')} (gate slice, full ranking)",
                    "",
                    [("", ["model", "ndcg@10", "recall@10", "map@10"], rows)],
                )
            )
        elif extras.get(f"quality_{label}_missing"):
            why = extras[f"quality_{label}_missing"]
            sections.append(Section(f"Quality {label.replace('_', ' ')}", f"not measured: {why}"))
    return sections


def ranker_sections(extras: dict[str, Any]) -> list[Section]:
    """Per training: the second stage's candidate recall per source and its gain over
    retrieval order, both on the gate slice (the train task's ``ranker`` XCom)."""
    sections = []
    for label in ("before_shift", "after_shift"):
        r = extras.get(f"ranker_{label}")
        if not r or not r.get("candidate_recall"):
            continue
        n = r.get("candidates", "?")
        recall = [[src, value] for src, value in r["candidate_recall"].items()]
        gain = [
            [k, g["retrieval"], g["two_stage"], g["relative_gain"]]
            for k, g in r["gain_over_retrieval"].items()
        ]
        trees = f"{r.get('ranker_rounds', '?')} trees, fitted in {r.get('fit_seconds', '?')} s"
        sections.append(
            Section(
                f"Two-stage {label.replace('_', ' ')} (gate slice)",
                f"Candidate sources merged into {n} candidates per user, then the LightGBM "
                f"ranker ({trees}). Recall@{n}: the share of each user's gate-slice items "
                "among the candidates (merged) and in each source's own list. Retrieval "
                "order is the two-tower alone: what serving answers when the ranker is "
                "unavailable.",
                [
                    (f"candidate recall@{n}", ["source", "recall"], recall),
                    (
                        "gain over retrieval order",
                        ["metric", "retrieval order", "two-stage", "relative gain"],
                        gain,
                    ),
                ],
            )
        )
    return sections


def _drift_section(drift: dict[str, Any], published: list[Any]) -> Section:
    """The drift check: windows judged against published, per-column distances with
    their thresholds, the outcome rate, and the offline log's coverage."""
    cols = drift["columns"]
    figures = [drift_figure(cols, drift["drift_share"])] if cols else []
    as_of = drift.get("as_of") or {}
    return Section(
        "Drift check after the shift",
        f"{drift.get('summary', drift['reason'])} — offline log "
        f"({as_of.get('mode', '?')}): {as_of.get('note', '')}",
        _drift_tables(drift, published),
        figures,
        warnings=[] if drift.get("judged", True) else [drift["reason"]],
    )


def _drift_tables(drift: dict[str, Any], published: list[Any]) -> list[Any]:
    """(caption, header, rows) of the windows, the columns and the outcome rate."""
    windows = [
        ["reference", drift["reference_rows"], published[0]],
        ["current", drift["current_rows"], published[1]],
    ]
    tables: list[Any] = [("windows", ["window", "events judged", "events published"], windows)]
    columns = [
        [
            c["column"],
            c["method"],
            c["score"],
            c["threshold"],
            "drifted" if c["drifted"] else "stable",
        ]
        for c in drift["columns"]
    ]
    if columns:
        tables.append(
            ("columns", ["column", "method", "distance", "threshold", "verdict"], columns)
        )
    outcome = drift.get("outcome")
    if outcome:
        row = [
            outcome["reference_rate"],
            outcome["current_rate"],
            outcome["z"],
            "moved" if outcome["drifted"] else "steady",
        ]
        tables.append(
            ("outcome rate (clicks per view)", ["reference", "current", "z", "verdict"], [row])
        )
    return tables


def timeline_rows(report: DemoReport) -> list[dict[str, Any]]:
    """Each step with its start offset, duration, outcome and the model versions it
    trained and served (the champion serves from "service up" on; a swap changes it)."""
    rows = []
    champion = serving = None
    for i, s in enumerate(report.steps):
        notes = []
        if s.get("version") is not None:
            promoted = s.get("promoted")
            if promoted:
                champion = s["version"]
            verdict = {True: "promoted", False: "kept the champion"}.get(promoted, "")
            notes.append(f"trained v{s['version']}" + (f", {verdict}" if verdict else ""))
        if "url" in s and champion is not None:  # the service loads the champion
            serving = champion
        if s.get("serving_version") is not None:
            serving = s["serving_version"]
        if serving is not None:
            notes.append(f"serving v{serving}")
        offset = report.offsets[i] if i < len(report.offsets) else 0.0
        rows.append(
            {
                "step": s["step"],
                "start_s": offset,
                "seconds": s.get("seconds"),
                "status": s.get("status", "done"),
                "model": "; ".join(notes),
                "reason": s.get("reason") if s.get("status", "done") != "done" else "",
            }
        )
    return rows


SIZE_KEYS = {
    "n_users": "users",
    "n_items": "items",
    "n_events": "events generated",
    "days": "days of data",
    "published": "events published",
    "requests": "HTTP requests",
    "clicks_posted": "feedback clicks posted",
    "reference_rows": "reference window: events judged",
    "published_reference_rows": "reference window: events published",
    "current_rows": "current window: events judged",
    "published_current_rows": "current window: events published",
}
"""Step outputs that are data sizes, and what the report calls them."""


def sizes_rows(report: DemoReport) -> list[list[Any]]:
    """Each step's data sizes (``SIZE_KEYS``) as report rows: step, what, count."""
    return [
        [s["step"], label, s[key]]
        for s in report.steps
        for key, label in SIZE_KEYS.items()
        if s.get(key) is not None
    ]


def gate_section(gates: list[tuple[str, dict[str, Any]]]) -> Any:
    """Each training run's promotion decision with its evidence (rtrec.training.gate)."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.2%}"

    rows = []
    for label, d in gates:
        e = d.get("evidence") or {}
        sl = e.get("slice") or {}
        champ = e.get("champion_version")
        rows.append(
            [
                label,
                f"v{d.get('version')}",
                "promoted" if d.get("promoted") else "kept the champion",
                f"{sl.get('rows', '?')} events, {sl.get('users', '?')} users",
                f"{e.get('challenger', float('nan')):.4f} ({e.get('challenger_system', '?')})",
                "-"
                if champ is None
                else f"v{champ} {e.get('champion', float('nan')):.4f} "
                f"({e.get('champion_system', '?')})",
                f"{pct(e.get('gain'))} [{pct(e.get('ci_low'))}, {pct(e.get('ci_high'))}]",
                f"{d.get('margin') or 0:.1%}",
            ]
        )
    header = [
        "run",
        "version",
        "decision",
        "gate slice",
        "challenger ndcg@10 (system)",
        "champion ndcg@10 (system)",
        "gain [95% CI]",
        "margin",
    ]
    text = "; ".join(f"{label}: {d.get('reason', '')}" for label, d in gates)
    return Section(
        "Promotion gate (gate slice, users x items bootstrap)", text, [("", header, rows)]
    )
