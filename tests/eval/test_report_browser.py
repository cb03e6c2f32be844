"""`cai eval`'s report.html as people see it: rendered by headless Chromium (Debian's
`chromium` package), from the metrics of a real pipeline run (tests/eval/report_metrics.json).
Skipped where no Chromium is installed, except in CI (CI=true), where it fails: CI installs it
(scripts/setup-ci-tools.sh)."""

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cai.eval.report import CHARTS, write_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None and not IN_CI, reason="no chromium on PATH")]
# No network: without the background-networking flags Chromium's own connections are refused.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Runs in the page once it has loaded; what it finds goes into an attribute of <body>, which
# --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const body = document.body.getBoundingClientRect();
  document.body.setAttribute("data-probe", JSON.stringify({
    images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
    tables: [...document.querySelectorAll("table")].map(t => [t.rows.length,
      t.getBoundingClientRect().right <= body.right + 1]),
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent),
    page_fits: document.documentElement.scrollWidth <= window.innerWidth}));
});
</script>"""


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk: width, height


def test_the_report_renders_with_its_charts_and_tables(tmp_path):
    assert CHROMIUM, "CI=true and no chromium on PATH (scripts/setup-ci-tools.sh installs it)"
    metrics = json.loads((Path(__file__).parent / "report_metrics.json").read_text())
    paths = write_report(metrics, tmp_path)
    page = paths["report.html"].read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    # every chart decoded, at the size it was drawn
    assert [alt for alt, *_ in seen["images"]] == [CHARTS[n] for n in
                                                   ("frontier.png", "win_rates.png", "rates.png",
                                                    "ability.png")]
    for (alt, complete, width, height), name in zip(seen["images"], CHARTS):
        assert complete and (width, height) == png_size(paths[name]), alt
    # every table is there with its rows, and none spills out of the page
    assert len(seen["tables"]) == page.count("<table") >= 8
    assert all(rows >= 2 and inside for rows, inside in seen["tables"])
    assert seen["page_fits"]
    assert seen["headings"][:2] == ["Summary", "Win rates"]
    assert "Example answers" in seen["headings"]
