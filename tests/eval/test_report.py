"""cai.eval.report: the cells of the Markdown and HTML tables are escaped."""


def test_report_cells_are_escaped():
    from cai.eval.report import _html_table, _md_cell

    assert _md_cell("a|b\n<x> & y") == "a\\|b<br>&lt;x&gt; &amp; y"
    assert "<td>&lt;script&gt;</td>" in _html_table(["h"], [["<script>"]])
