"""`cai constitution try FILE --prompt TEXT --principle all`: what each principle does to one
answer, before a whole `cai revise` run.

The policy answers the prompt once; then every chosen principle gets one critique-revision
round on that same answer (one batch for all critiques, one for all revisions), and, with the
gate on, the gate's verdict on each revision. The chats, the boilerplate stripping, the flags and
the gate are `cai revise`'s own (`cai.revise.job`, `cai.revise.gate`), so what this shows is what
a run would do.
"""

from __future__ import annotations

import difflib
import shutil
import textwrap

from cai import constitution as constitutions
from cai.foundation.errors import CaiError
from cai.foundation.templates import Templates
from cai.generation import Generator, SamplingParams
from cai.revise.config import ReviseConfig
from cai.revise.gate import make_gate, revision_flag, strip_boilerplate
from cai.revise.job import Conversations, make_engines


def changed_fraction(before: str, after: str) -> float:
    """1 - the similarity of two texts' word sequences: 0 for the same words, 1 for none kept."""
    return 1 - difflib.SequenceMatcher(None, before.split(), after.split(),
                                       autojunk=False).ratio()


def try_principles(cfg: ReviseConfig, prompt: str, principle_ids: list[str] | None = None,
                   policy: Generator | None = None, feedback: Generator | None = None) -> dict:
    """One round per principle (all of the constitution's critique_revision ones when
    `principle_ids` is None) on the policy's one answer to `prompt`.

    Returns {"prompt", "answer", "rows": [{"principle_id", "critique", "revision", "flag",
    "changed", "gate": {"p_revision", "accepted"} (with the gate on and a revision to judge)}]}.
    """
    if not prompt.strip():
        raise CaiError("--prompt is empty")
    constitution = constitutions.load(cfg.constitution)
    principles = constitution.restrict("critique_revision", principle_ids)
    templates = Templates(cfg.prompts_dir)
    gate = make_gate(cfg, constitution, templates)
    convs = Conversations(constitution, templates, cfg.few_shot, cfg.seed)
    convs.critique("try", principles[0], prompt, "?")  # a template error fails before loading
    policy, feedback = make_engines(cfg, policy, feedback)

    def params(step: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, seed=cfg.seed + step)

    answer = policy.chat([[{"role": "user", "content": prompt}]], params(0))[0]
    critiques = feedback.chat([convs.critique("try", p, prompt, answer) for p in principles],
                              params(1))
    revisions = feedback.chat([convs.revision("try", p, prompt, answer, c)
                               for p, c in zip(principles, critiques)], params(2))
    rows = []
    for p, critique, raw in zip(principles, critiques, revisions):
        revision = strip_boilerplate(raw)
        rows.append({"principle_id": p.id, "critique": critique, "revision": revision,
                     "flag": revision_flag(revision, answer, convs.revisions),
                     "changed": round(changed_fraction(answer, revision), 3)})
    if gate:
        asked = [r for r in rows if r["flag"] is None]
        verdicts = gate.judge(feedback, [{"key": f"try:gate:{r['principle_id']}",
                                          "prompt": prompt, "first": r["revision"],
                                          "second": answer} for r in asked])
        for r, verdict in zip(asked, verdicts):
            r["gate"] = verdict
    return {"prompt": prompt, "answer": answer, "rows": rows,
            "gate_threshold": gate.threshold if gate else None}


def _change(row: dict) -> str:
    return row["flag"] or f"{row['changed']:.0%}"


def _verdict(row: dict, gated: bool) -> str:
    if not gated:
        return "-"
    gate = row.get("gate")
    if gate is None:
        return "not asked"  # an empty or unchanged revision: nothing to judge
    complies = gate.get("p_complies")
    if gate["p_revision"] is None and complies is None:
        return "too long"
    parts = ([] if gate["p_revision"] is None else [f"{gate['p_revision']:.3f}"]) + \
        ([] if complies is None else [f"complies {complies:.2f}"])  # a complying one: not compared
    return f"{' '.join(parts)} {'kept' if gate['accepted'] else 'dropped'}"


def format_table(result: dict, width: int | None = None) -> list[str]:
    """The table (principle, how much the revision changed the answer, the gate's verdict, the
    start of the critique and of the revision), then each principle's full texts."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    gated = result["gate_threshold"] is not None
    rows = result["rows"]
    head = ("principle", "change", "gate p(revision)" if gated else "gate", "critique / revision")
    cells = [(r["principle_id"], _change(r), _verdict(r, gated)) for r in rows]
    widths = [max(len(head[i]), *(len(c[i]) for c in cells)) for i in range(3)]
    text_width = max(30, width - sum(widths) - 6)

    def line(a, b, c, d):
        return f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()

    out = [f"prompt: {result['prompt']}", *textwrap.wrap(
        " ".join(result["answer"].split()) or "(empty)", width, initial_indent="first answer: ",
        subsequent_indent="  ")]
    if gated:
        out.append(f"gate: a revision is kept when P(revision better than the answer) > "
                   f"{result['gate_threshold']}")
    out += ["", line(*head), line(*("-" * w for w in widths), "-" * min(text_width, 19))]
    for r, (pid, change, verdict) in zip(rows, cells):
        out.append(line(pid, change, verdict, "critique: " + textwrap.shorten(
            " ".join(r["critique"].split()) or "(empty)", text_width - 10, placeholder=" …")))
        out.append(line("", "", "", "revision: " + textwrap.shorten(
            " ".join(r["revision"].split()) or "(empty)", text_width - 10, placeholder=" …")))
    for r in rows:
        out += ["", f"--- {r['principle_id']} ({_change(r)}, gate: {_verdict(r, gated)})"]
        for name in ("critique", "revision"):
            out += textwrap.wrap(" ".join(r[name].split()) or "(empty)", width,
                                 initial_indent=f"{name}: ", subsequent_indent="  ")
    return out
