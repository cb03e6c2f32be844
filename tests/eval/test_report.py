"""cai.eval.report: the cells of the Markdown and HTML tables are escaped."""


def test_report_cells_are_escaped():
    from cai.eval.report import _html_table, _md_cell

    assert _md_cell("a|b\n<x> & y") == "a\\|b<br>&lt;x&gt; &amp; y"
    assert "<td>&lt;script&gt;</td>" in _html_table(["h"], [["<script>"]])


def test_models_at_one_point_share_one_label():
    """In the real pipeline run of tests/eval/report_metrics.json, base, sft and dpo all have
    harmlessness 1.0 and helpful rate 1.0: one label names the three, not three on top of each
    other."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cai.eval.report import _frontier

    metrics = json.loads((Path(__file__).parent / "report_metrics.json").read_text())
    fig = _frontier(metrics, plt)
    left, right = fig.axes
    assert [t.get_text() for t in right.texts if t.get_text()] == ["base, sft, dpo"]
    assert sorted(t.get_text() for t in left.texts if t.get_text()) == ["base", "dpo", "sft"]
    plt.close(fig)
