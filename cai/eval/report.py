"""The report of `cai eval`: OUT/report.md, a self-contained OUT/report.html and PNG charts.

Everything is drawn from `metrics.json` alone, so a report can be rebuilt without the models.
The charts (matplotlib, Agg backend) are saved in OUT and embedded in the HTML as base64 data
URIs; the markdown links them. The main one is the picture of Bai et al. 2022
(arXiv:2212.08073, figure 2): harmlessness against helpfulness, one point per model.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from cai.eval.summary import change_text

CHARTS = {"frontier.png": "Harmlessness against helpfulness",
          "win_rates.png": "Pairwise win rates",
          "rates.png": "Harmlessness and refusals",
          "ability.png": "Neutral ability (the alignment tax)"}
#: The charts shown after each table.
CHARTS_AFTER = {"Summary": ["frontier.png"], "Win rates": ["win_rates.png"],
                "Classes, refusals and lengths": ["rates.png"],
                "Alignment tax: neutral ability": ["ability.png"]}
#: Example answers are cut to this many characters.
EXAMPLE_CHARS = {"md": 300, "html": 2000}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(row: dict, key: str, ci_key: str) -> str:
    if row.get(key) is None:
        return "–"
    lo, hi = row[ci_key]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _elo_axes(metrics: dict) -> list[str]:
    """The Elo axes fitted on judged comparisons: none with one model or `--compare none`."""
    if len(metrics["models"]) < 2:
        return []
    return [axis for axis, e in metrics["elo"].items() if e.get("comparisons")]


def _elo(metrics: dict, axis: str, label: str):
    """A model's Elo on `axis`, or None when no comparison was judged (`--compare none`)."""
    if axis not in _elo_axes(metrics):
        return None
    return metrics["elo"][axis]["ratings"].get(label, {}).get("elo")


# --------------------------------------------------------------------------------------------
# Charts


def _frontier(metrics: dict, plt):
    """Elo (when comparisons were judged) and the judged rates side by side: each panel only
    when it has data, and no chart when neither has."""
    labels = [m["label"] for m in metrics["models"]]
    per = metrics["per_model"]
    panels = []
    if {"harmlessness", "helpfulness"} <= set(_elo_axes(metrics)):
        panels.append(_elo_panel)
    if all(per[k][key] is not None for k in labels for key in ("helpful_rate", "harmlessness")):
        panels.append(_rate_panel)
    if all(per[k].get("string_refusal", {}).get(s) is not None for k in labels
           for s in ("red_team", "borderline", "helpful")):
        panels.append(_refusal_panel)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    for draw, ax in zip(panels, axes[0]):
        draw(ax, metrics, labels)
    fig.suptitle("Harmlessness vs helpfulness (up and right is better)", fontsize=11)
    return fig


def _elo_panel(ax, metrics: dict, labels: list[str]) -> None:
    h = metrics["elo"]["helpfulness"]["ratings"]
    s = metrics["elo"]["harmlessness"]["ratings"]
    xs, ys = [h[k]["elo"] for k in labels], [s[k]["elo"] for k in labels]
    xerr = [[x - h[k]["ci"][0] for x, k in zip(xs, labels)],
            [h[k]["ci"][1] - x for x, k in zip(xs, labels)]]
    yerr = [[y - s[k]["ci"][0] for y, k in zip(ys, labels)],
            [s[k]["ci"][1] - y for y, k in zip(ys, labels)]]
    ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", color="C0", ecolor="0.6", capsize=3)
    _path(ax, xs, ys, labels)
    ax.set_xlabel("helpfulness Elo (helpful + borderline sets)")
    ax.set_ylabel("harmlessness Elo (red_team set)")
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    ax.set_title("Elo from pairwise judgments (first model = 0)", fontsize=10)


def _rate_panel(ax, metrics: dict, labels: list[str]) -> None:
    per = metrics["per_model"]
    _unit_scatter(ax, [per[k]["helpful_rate"] for k in labels],
                  [per[k]["harmlessness"] for k in labels], labels, "C1",
                  ("helpful-answer rate (helpful set, judge)",
                   "harmlessness rate (red_team, judge)", "Rates from the judge's classification"))


def _refusal_panel(ax, metrics: dict, labels: list[str]) -> None:
    """Refusals where they belong against refusals where they do not, by string match alone
    (no judge): the two-sided frontier, up and left is better."""
    rates = [metrics["per_model"][k]["string_refusal"] for k in labels]
    _unit_scatter(ax, [(r["borderline"] + r["helpful"]) / 2 for r in rates],
                  [r["red_team"] for r in rates], labels, "C2",
                  ("over-refusal: refusal-like on borderline + helpful (string)",
                   "refusal-like on red_team (string)",
                   "Refusing harm vs refusing the harmless (up and left is better)"))


def _unit_scatter(ax, xs, ys, labels, color: str, texts: tuple[str, str, str]) -> None:
    """One point per model on [0, 1] x [0, 1], labelled, with arrows in list order; `texts`:
    the x label, the y label and the title."""
    ax.scatter(xs, ys, color=color, zorder=3)
    _path(ax, xs, ys, labels)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(texts[0])
    ax.set_ylabel(texts[1])
    ax.grid(alpha=0.3)
    ax.set_title(texts[2], fontsize=10)


def _path(ax, xs, ys, labels) -> None:
    """Label each point and draw arrows in list order (before -> after). Models at the same
    point share one label ("base, sft"), so their names do not print over each other."""
    at: dict[tuple, list[str]] = {}
    for x, y, label in zip(xs, ys, labels):
        at.setdefault((round(x, 9), round(y, 9)), []).append(label)
    for (x, y), names in at.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=9)
    for k in range(len(xs) - 1):
        ax.annotate("", xy=(xs[k + 1], ys[k + 1]), xytext=(xs[k], ys[k]),
                    arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 1})


def _win_rates(metrics: dict, plt):
    rows = [(f"{r['a']} vs {r['b']} ({s})", r) for s, rs in metrics["pairwise"].items()
            for r in rs if r.get("win_rate") is not None]
    if not rows:  # one model, or --compare none
        return None
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(len(rows), 2)))
    names = [n for n, _ in rows]
    values = [r["win_rate"] for _, r in rows]
    err = [[v - r["ci"][0] for v, (_, r) in zip(values, rows)],
           [r["ci"][1] - v for v, (_, r) in zip(values, rows)]]
    hard = [r["hard_win_rate"] for _, r in rows]
    hard_err = [[v - r["hard_ci"][0] for v, (_, r) in zip(hard, rows)],
                [r["hard_ci"][1] - v for v, (_, r) in zip(hard, rows)]]
    y = list(range(len(rows)))
    ax.barh([k - 0.2 for k in y], values, height=0.38, xerr=err, capsize=3, color="C0",
            label="soft win rate (mean P(a better))")
    ax.barh([k + 0.2 for k in y], hard, height=0.38, xerr=hard_err, capsize=3, color="C0",
            alpha=0.4, error_kw={"ecolor": "0.5"},
            label="hard win rate (share of prompts a wins)")
    ax.axvline(0.5, color="0.3", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xlim(0, 1)
    level = round(100 * metrics.get("settings", {}).get("confidence", 0.95))
    ax.set_xlabel(f"win rate of a over b ({level}% bootstrap interval)")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def _rates(metrics: dict, plt):
    per = metrics["per_model"]
    labels = [m["label"] for m in metrics["models"]]
    groups = []
    if "red_team" in metrics["sets"]:
        groups += [("harmless\n(red_team, judge)", lambda p: p["harmlessness"]),
                   ("refusal\n(red_team, string)", lambda p: p["string_refusal"]["red_team"])]
    for s in ("borderline", "helpful"):
        if s in metrics["sets"]:
            groups += [(f"over-refusal\n({s}, judge)", lambda p, s=s: p["over_refusal"][s]),
                       (f"refusal\n({s}, string)", lambda p, s=s: p["string_refusal"][s])]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        values = [get(per[label]) for _, get in groups]
        xs = [g + (k - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width=width, label=label, color=f"C{k}")
        ax.bar_label(bars, labels=["–" if v is None else f"{v:.2f}" for v in values],
                     fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g for g, _ in groups], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of answers")
    ax.legend(fontsize=8)
    ax.set_title("Higher harmlessness and lower over-refusal are better", fontsize=10)
    fig.tight_layout()
    return fig


def _ability(metrics: dict, plt):
    """MC accuracy and perplexity, each panel only when every model was measured."""
    labels = [m["label"] for m in metrics["models"]]
    per = metrics["per_model"]
    mc = [(per[k]["ability"] or {}).get("mc") for k in labels]
    text = [(per[k]["ability"] or {}).get("text") for k in labels]
    panels = [(draw, got) for draw, got in ((_mc_panel, mc), (_text_panel, text)) if all(got)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for (draw, got), ax in zip(panels, axes[0]):
        draw(ax, labels, got)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def _mc_panel(ax, labels: list[str], mc: list[dict]) -> None:
    ax.bar(labels, [m["accuracy"] for m in mc], color=[f"C{k}" for k in range(len(labels))])
    ax.axhline(mc[0]["chance"], color="0.3", ls="--", lw=1, label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"Multiple choice ({mc[0]['n']} questions, log-likelihood)", fontsize=10)


def _text_panel(ax, labels: list[str], text: list[dict]) -> None:
    ax.bar(labels, [t["perplexity"] for t in text], color=[f"C{k}" for k in range(len(labels))])
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"Perplexity on neutral text ({text[0]['tokens']} tokens)", fontsize=10)


def draw_charts(metrics: dict, out: Path) -> dict[str, Path]:
    """Save each chart that has data as a PNG in `out` (and remove an older one that has
    none); returns {file name: path} of those drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for name, draw in (("frontier.png", _frontier), ("win_rates.png", _win_rates),
                       ("rates.png", _rates), ("ability.png", _ability)):
        fig = draw(metrics, plt)
        if fig is None:
            (out / name).unlink(missing_ok=True)
            continue
        paths[name] = out / name
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------
# Tables, rendered as markdown and as HTML


def _tables(metrics: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(section title, note, header, rows) of every table in the report."""
    labels = [m["label"] for m in metrics["models"]]
    per = metrics["per_model"]
    out = []
    rows = []
    for m in metrics["models"]:
        p = per[m["label"]]
        mc = (p["ability"] or {}).get("mc") or {}
        text = (p["ability"] or {}).get("text") or {}
        string = p.get("string_refusal", {})
        rows.append([m["label"], m["model"], _fmt(p["harmlessness"]),
                     _fmt(string.get("red_team")), _fmt(p["over_refusal"].get("borderline")),
                     _fmt(string.get("borderline")),
                     _fmt(p["over_refusal"].get("helpful")), _fmt(p["helpful_rate"]),
                     _fmt(_elo(metrics, "harmlessness", m["label"]), 0),
                     _fmt(_elo(metrics, "helpfulness", m["label"]), 0),
                     _fmt(mc.get("accuracy")), _fmt(text.get("perplexity"), 2)])
    judged = "judge" if _reliable(metrics) else "judge, UNRELIABLE"
    header = ["model", "path", f"harmless (red_team; {judged})",
              "refusal-like (red_team; string)", f"over-refusal (borderline; {judged})",
              "refusal-like (borderline; string)", f"over-refusal (helpful; {judged})",
              f"helpful rate ({judged})", f"harmlessness Elo ({judged})",
              f"helpfulness Elo ({judged})", "MC accuracy", "perplexity"]
    keep = [k for k in range(len(header)) if k < 2 or any(r[k] != "–" for r in rows)]
    out.append(("Summary", ("Rates are shares of answers: judged by the judge model, and by a "
                "plain string match for refusal-like text (no model). "
                + ("Elo is relative to the first model. " if _elo_axes(metrics) else "")
                + "Details below; definitions in docs/evaluation.md."
                + ("" if _reliable(metrics) else " The judged columns are not results: see the "
                   "judge's check above.")),
                [header[k] for k in keep], [[r[k] for k in keep] for r in rows]))
    level = round(100 * metrics.get("settings", {}).get("confidence", 0.95))
    rows = [[r["set"], f"{r['from']} to {r['model']}",
             r["measure"] + (" (UNRELIABLE)" if r["measure"].startswith("judged")
                             and not _reliable(metrics) else ""),
             *change_text(r).split(" ", 1), str(r["n"]), f"{r['up']} / {r['down']}"]
            for r in metrics.get("changes", [])]
    if rows:
        out.append(("Changes from the first model", (
            "Each later model against the first listed, prompt by prompt, in percentage "
            f"points, with a {level}% paired bootstrap interval over prompts. An interval "
            "that holds 0, or that spans a target, does not show the change: more prompts "
            "(--limit) narrow it. Prompts up / down: how many moved into / out of the class."),
            ["set", "models", "share", "change (points)", "interval", "prompts",
             "prompts up / down"], rows))
    rows = [[s, f"{r['a']} vs {r['b']}", _ci(r, "win_rate", "ci"),
             _ci(r, "hard_win_rate", "hard_ci"), str(r["n"]), str(r["identical"])]
            for s, rs in metrics["pairwise"].items() for r in rs]
    if rows:  # none with --compare none: no section, and no Elo in the summary
        out.append(("Win rates", (f"Win rate of a (listed later) over b, with {level}% "
                    "bootstrap intervals over prompts: soft = mean P(a better), hard = share "
                    "of prompts a wins (ties count 1/2)."),
                    ["set", "a vs b", "soft win rate", "hard win rate", "prompts", "identical"],
                    rows))
    rows = []
    for s in metrics["sets"]:
        for label in labels:
            st = per[label]["sets"][s]
            rows.append([s, label, str(st["n"]), _fmt(st["classes"]["harmful"]),
                         _fmt(st["classes"]["refusal"]), _fmt(st["classes"]["helpful"]),
                         _fmt(st["string_refusal_rate"]), _fmt(st["words"]["mean"], 1),
                         _fmt(st["words"]["median"], 1), _fmt(st["tokens"]["mean"], 1),
                         _fmt(st["tokens"]["median"], 1)])
    if rows:
        out.append(("Classes, refusals and lengths", ("Judge classes (share of answers), the "
                    "string-match refusal rate, and answer lengths."),
                    ["set", "model", "answers", "harmful", "refusal", "helpful",
                     "refusal (string)", "mean words", "median words", "mean tokens",
                     "median tokens"], rows))
    categories = dict.fromkeys(c for label in labels
                               for c in per[label].get("red_team_categories", {}))
    rows = [[cat, label, str(st["n"]), _fmt(st["harmful"]), _fmt(st["refusal"]),
             _fmt(st["string_refusal_rate"])]
            for cat in categories for label in labels
            for st in [per[label]["red_team_categories"].get(cat)] if st]
    if rows:
        out.append(("Red-team categories", ("Per harm category of the red-team set: the share "
                    f"of answers judged harmful and judged refusals ({judged}), and the "
                    "string-match refusal rate."),
                    ["category", "model", "answers", "harmful", "refusal",
                     "refusal (string)"], rows))
    check = (metrics.get("judge") or {}).get("check")
    if check:
        rows = [["all", str(check["n"]), _fmt(check["accuracy"])]]
        rows += [[f"class {k}", "", _fmt(v)] for k, v in check["by_class"].items()]
        rows += [[f"kind {k}", "", _fmt(v)] for k, v in check["by_kind"].items()]
        out.append(("Judge check", ("The judge's classification of answers whose class is "
                    "known (data/eval/judge_check.jsonl: answers written for this project, and "
                    "kinds policy-*, the embedded policy's own answers to training prompts), "
                    "accuracy overall, per true class and per kind."),
                    ["items", "answers", "accuracy"], rows))
    rows = []
    for label in labels:
        ab = per[label]["ability"] or {}
        mc, text = ab.get("mc") or {}, ab.get("text") or {}
        rows.append([label, _fmt(mc.get("accuracy")), _fmt(mc.get("accuracy_norm")),
                     _fmt(mc.get("chance")), _fmt(mc.get("n")), _fmt(text.get("perplexity"), 2),
                     _fmt(text.get("nll_per_token")), _fmt(text.get("tokens"))])
    if any(per[label]["ability"] for label in labels):  # none with --no-ability
        out.append(("Alignment tax: neutral ability", ("Multiple-choice accuracy by "
                    "log-likelihood (norm: per character) and perplexity on plain text."),
                    ["model", "MC accuracy", "MC accuracy (norm)", "chance", "questions",
                     "perplexity", "NLL / token", "tokens"], rows))
    return out


def _md_cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", "<br>")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _example_rows(metrics: dict, kind: str) -> list[tuple[str, list[str], list[list[str]]]]:
    labels = [m["label"] for m in metrics["models"]]
    out = []
    for s, items in metrics.get("examples", {}).items():
        if not items:
            continue
        rows = []
        for ex in items:
            cells = [ex["prompt"]]
            for label in labels:
                a = ex["answers"][label]
                text = a["response"]
                if len(text) > EXAMPLE_CHARS[kind]:
                    text = text[:EXAMPLE_CHARS[kind]].rstrip() + " …"
                cells.append(f"[{a['class'] or 'not judged'}] {text}")
            rows.append(cells)
        out.append((s, ["prompt", *labels], rows))
    return out


def _reliable(metrics: dict) -> bool:
    return bool((metrics.get("judge") or {}).get("reliable", True))


def _judge_line(metrics: dict) -> str:
    """The judge's check accuracy and, when its figures cannot be trusted, why."""
    j = metrics.get("judge") or {}
    check = j.get("check")
    line = (f"Judge check: accuracy {check['accuracy']:.2f} on {check['n']} answers with known "
            "classes (" + ", ".join(f"{k} {_fmt(v, 2)}" for k, v in check["by_class"].items())
            + ")." if check else "Judge check: not run.")
    sm = metrics.get("string_match_check")
    if sm:
        line += (" String-match refusal detector on the same answers: finds "
                 f"{_fmt(sm['refusal_recall'], 2)} of the refusals, calls "
                 f"{_fmt(sm['false_refusal_rate'], 2)} of the others refusals.")
    if not j.get("reliable", True):
        line += (" THE JUDGED FIGURES ARE UNRELIABLE: " + "; ".join(j["unreliable_because"])
                 + ". Read the string-match rates and the example answers instead.")
    return line


def _header(metrics: dict) -> list[str]:
    j, st = metrics["judge"], metrics["settings"]
    return [_judge_line(metrics), "Models, listed before -> after: "
            + ", ".join(f"{m['label']} ({m['model']})" for m in metrics["models"]) + ".",
            (f"Judge: {j['model']} ({j['engine']}, {j['dtype']}); constitution "
            f"{metrics['constitution']}; {st['principles']} question(s) per comparison, "
            f"{'both orders' if st['debias'] else 'one order'}, {st['few_shot']}-shot."),
            f"Answers: up to {st['max_new_tokens']} tokens at temperature {st['temperature']} "
            f"(top-p {st['top_p']}, seed {st['seed']}); prompts per set: "
            + ", ".join(f"{s} {v['prompts']}" for s, v in metrics["sets"].items()) + "."]


def markdown(metrics: dict, images: dict[str, Path]) -> str:
    """report.md; it links the charts in `images` (those drawn)."""
    parts = ["# cai eval report", "", *[f"{line}  " for line in _header(metrics)], ""]
    tables = _tables(metrics)
    for title, note, header, rows in tables:
        parts += [f"## {title}", "", note, "", _md_table(header, rows), ""]
        parts += [f"![{CHARTS[c]}]({c})\n" for c in CHARTS_AFTER.get(title, []) if c in images]
    examples = _example_rows(metrics, "md")
    if examples:
        parts += ["## Example answers", "", "Each answer starts with the judge's class.", ""]
    for s, header, rows in examples:
        parts += [f"### {s}", "", _md_table(header, rows), ""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_report(metrics: dict, images: dict[str, Path]) -> str:
    def img(name: str) -> str:
        data = base64.b64encode(images[name].read_bytes()).decode()
        return (f'<figure><img alt="{html.escape(CHARTS[name])}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(CHARTS[name])}'
                "</figcaption></figure>")

    body = ["<h1>cai eval report</h1>",
            *[f"<p>{html.escape(line)}</p>" for line in _header(metrics)]]
    for title, note, header, rows in _tables(metrics):
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>",
                 _html_table(header, rows)]
        body += [img(c) for c in CHARTS_AFTER.get(title, []) if c in images]
    examples = _example_rows(metrics, "html")
    if examples:
        body += ["<h2>Example answers</h2>", "<p>Each answer starts with the judge's class.</p>"]
    for s, header, rows in examples:
        body += [f"<h3>{html.escape(s)}</h3>", _html_table(header, rows, "examples")]
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
             "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;"
             "display:block;max-width:100%;overflow-x:auto;"  # a wide table scrolls by itself
             "font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;"
             "vertical-align:top}th{background:#f3f3f3}table.examples td{white-space:pre-wrap;"
             "max-width:380px}img{max-width:100%}figure{margin:1em 0}"
             "figcaption{color:#666;font-size:13px}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>cai eval report</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(metrics: dict, out: str | Path) -> dict[str, Path]:
    """Write the charts, report.md and report.html into `out`; returns their paths."""
    out = Path(out)
    images = draw_charts(metrics, out)
    (out / "report.md").write_text(markdown(metrics, images), encoding="utf-8")
    (out / "report.html").write_text(html_report(metrics, images), encoding="utf-8")
    return {**images, "report.md": out / "report.md", "report.html": out / "report.html"}
