from pathlib import Path

from rtrec.app.report import Section, new_figure, write_html_report


def test_report_is_self_contained(tmp_path: Path) -> None:
    fig, ax = new_figure()
    ax.hist([1, 2, 2, 3, 3, 3])
    out = write_html_report(
        tmp_path / "r.html",
        "Demo <run>",
        [
            Section(
                "Latency", "p99 below target", [("ms", ["stage", "p99"], [["http", 4.25]])], [fig]
            )
        ],
    )
    text = out.read_text()
    assert "Demo &lt;run&gt;" in text  # escaped
    assert "data:image/png;base64," in text
    assert '<td class="num">4.25</td>' in text
    assert "http://" not in text and 'src="/' not in text  # nothing fetched from outside


def test_steps_show_why_a_step_did_not_happen_never_zero_seconds(tmp_path: Path) -> None:
    from rtrec.app.report import steps_section

    section = steps_section(
        [
            {"step": "drift check", "status": "done", "seconds": 12.5},
            {
                "step": "retraining",
                "status": "skipped",
                "seconds": None,
                "reason": "not triggered: not judged: windows have 15172 and 0 rows",
                "missed": True,
            },
            {"step": "swap", "status": "not promoted", "seconds": None, "reason": "gate: -3%"},
        ]
    )
    (_, header, rows) = section.tables[0]
    assert list(header) == ["step", "outcome", "seconds", "reason"]
    assert rows[1] == ["retraining", "skipped", None, rows[1][3]]
    assert rows[2][1:] == ["not promoted", None, "gate: -3%"]
    assert section.warnings == [
        "retraining: skipped: not triggered: not judged: windows have 15172 and 0 rows"
    ]  # a refused model is an outcome, not a warning
    text = write_html_report(tmp_path / "r.html", "demo", [section]).read_text()
    assert '<p class="warn">retraining: skipped: not triggered' in text
    assert '<td class="num">12.5</td>' in text
    assert '<td class="num">0</td>' not in text and "0.0" not in text
