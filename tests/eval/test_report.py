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
    left, right, refusals = fig.axes
    assert [t.get_text() for t in right.texts if t.get_text()] == ["base, sft, dpo"]
    # the judge-free panel: x = mean of borderline and helpful string refusal, y = red_team's
    per = metrics["per_model"]
    points = refusals.collections[0].get_offsets()
    for (x, y), label in zip(points, ["base", "sft", "dpo"]):
        sr = per[label]["string_refusal"]
        assert x == (sr["borderline"] + sr["helpful"]) / 2 and y == sr["red_team"]
    assert sorted(t.get_text() for t in left.texts if t.get_text()) == ["base", "dpo", "sft"]
    plt.close(fig)


REFUSALS = "Refusing harm vs refusing the harmless (up and left is better)"


def _compare_none(metrics: dict) -> dict:
    """The metrics of the same run with `--compare none` (the default pipeline's): no pairwise
    rows, and Elo fitted on no comparisons (every model at 0)."""
    import copy

    m = copy.deepcopy(metrics)
    m["pairwise"] = {s: [] for s in m["pairwise"]}
    for axis in m["elo"].values():
        axis["comparisons"] = 0
        axis["ratings"] = {k: {"elo": 0.0, "ci": [0.0, 0.0]} for k in axis["ratings"]}
    return m


def test_only_what_has_data_is_drawn(tmp_path):
    """With comparisons the report has the Elo panel, the Elo columns and the win rates; with
    `--compare none` it has none of them (no empty panel), and the rest is unchanged."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cai.eval.report import _frontier, write_report

    metrics = json.loads((Path(__file__).parent / "report_metrics.json").read_text())
    for m, compared in ((metrics, True), (_compare_none(metrics), False)):
        fig = _frontier(m, plt)
        titles = [ax.get_title() for ax in fig.axes]
        plt.close(fig)
        out = tmp_path / str(compared)
        out.mkdir()
        paths = write_report(m, out)
        page, md = paths["report.html"].read_text(), paths["report.md"].read_text()
        if compared:
            assert titles == ["Elo from pairwise judgments (first model = 0)",
                              "Rates from the judge's classification", REFUSALS]
            assert "<h2>Win rates</h2>" in page and "harmlessness Elo" in page
            assert page.count("data:image/png") == 4 and "](win_rates.png)" in md
        else:
            assert titles == ["Rates from the judge's classification", REFUSALS]
            assert "Elo" not in page and "Elo" not in md and "Win rates" not in page
            assert page.count("data:image/png") == 3 and "win_rates.png" not in md
            assert sorted(p.name for p in out.glob("*.png")) == [
                "ability.png", "frontier.png", "rates.png"]
        assert "<h2>Alignment tax: neutral ability</h2>" in page


def test_a_report_without_ability_or_examples_has_no_such_sections(tmp_path):
    import json
    from pathlib import Path

    from cai.eval.report import write_report

    m = _compare_none(json.loads((Path(__file__).parent / "report_metrics.json").read_text()))
    for p in m["per_model"].values():
        p["ability"] = None
    m["examples"] = {s: [] for s in m["examples"]}
    paths = write_report(m, tmp_path)
    page = paths["report.html"].read_text()
    assert "Alignment tax" not in page and "Example answers" not in page
    assert "MC accuracy" not in page and "perplexity" not in page
    assert sorted(paths) == ["frontier.png", "rates.png", "report.html", "report.md"]
