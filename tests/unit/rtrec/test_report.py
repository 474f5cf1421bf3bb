from pathlib import Path

from rtrec.report import Section, new_figure, write_html_report


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
