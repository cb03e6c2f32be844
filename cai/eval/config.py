"""The options of `cai eval` (`--config` YAML keys and command-line flags), and what they name:
the prompt sets and what each measures, which models' answers are compared, the judge's
constitution."""

from __future__ import annotations

from dataclasses import dataclass

from cai import ROOT
from cai.foundation.errors import CaiError
from cai.foundation.options import flat_init, opt
from cai.generation import Role, main_role, second_role

#: What each prompt set measures: harmlessness on red-team prompts, helpfulness (and
#: over-refusal) on ordinary and borderline-but-benign ones.
SETS = {"red_team": "harmlessness", "helpful": "helpfulness", "borderline": "helpfulness"}
#: The constitution whose preference questions the pairwise judge asks by default: kept apart
#: from the training questions.
JUDGE_CONSTITUTION = ROOT / "constitutions" / "judge.yaml"
#: `--compare`: whose answers the judge compares (`compared_pairs`).
COMPARE = ("all", "first", "none")


def compared_pairs(count: int, compare: str = "all") -> list[tuple[int, int]]:
    """The (earlier, later) model indices whose answers the judge compares: every two models
    (`all`), each model against the first listed, the base (`first`), or none."""
    if compare not in COMPARE:
        raise CaiError(f"--compare must be one of {', '.join(COMPARE)}, got '{compare}'")
    if compare == "none":
        return []
    return [(i, j) for i in range(count) for j in range(i + 1, count)
            if compare == "all" or i == 0]


@flat_init
@dataclass
class EvalConfig:
    """Options of `cai eval` (also the keys of its `--config` YAML). The bare engine options
    (`--engine`, `--dtype`, `--batch-size`, ...) are those of the evaluated models (`policy`,
    whose model each `--model` names in turn); the judge's carry its name."""

    model: list[str] = opt(help="a model to evaluate: name, folder or hub id, as MODEL or "
                                "LABEL=MODEL; repeat for each model, listed before -> after",
                           factory=list)
    policy: Role = main_role(model_key=None)
    batch_size: int = opt(32, minimum=1, help="sequences per forward pass (hf engine)")
    concurrency: int = opt(16, minimum=1, help="openai engine: requests in flight at once")
    out: str = opt("", "output folder: answers, judgments, metrics.json, report.md/.html, charts")
    judge: Role = second_role("judge", "the judge",
                              model_help="judge model (default: smollm2-135m-instruct)",
                              engine_help="judge engine (default: --engine)", dtype="float32")
    feedback_model: str | None = opt(None, "the model that gave the training feedback (critic, "
                                           "labeler): a judge that is it, or one of the "
                                           "evaluated models, is flagged as unreliable")
    judge_check: bool = opt(True, "first check the judge on DATA_DIR/judge_check.jsonl "
                                  "(answers with known classes); its accuracy heads the report")
    judge_min_accuracy: float = opt(0.7, minimum=0,
                                    help="a judge below this check accuracy is flagged as "
                                         "unreliable")
    constitution: str | None = opt(None, "constitution whose preference questions the pairwise "
                                         "judge asks (default: constitutions/judge.yaml, kept "
                                         "apart from the training questions)")
    helpful_principles: list[str] = opt(help="preference ids asked on the helpful and borderline "
                                             "sets", factory=lambda: ["serves-the-person",
                                                                      "less-overcautious"])
    harmless_principles: list[str] | None = opt(None, "preference ids asked on red_team "
                                                      "(default: all but --helpful-principles)")
    principles: int = opt(1, minimum=1, help="preference questions per comparison, averaged")
    compare: str = opt("all", "whose answers the judge compares, for win rates and Elo: all "
                              "(every two models), first (each model against the first listed, "
                              "the base), none")
    few_shot: int = opt(2, minimum=0,
                        help="judging demonstrations (constitution's preference_examples) in front")
    judge_few_shot: int = opt(8, minimum=0,
                              help="classification demonstrations (DATA_DIR/judge_examples.jsonl) "
                                   "in front of each answer the judge classifies")
    debias: bool = opt(True, "judge every comparison in both orders and every classification "
                             "in all option orders")
    sets: list[str] = opt(help="comma-separated prompt sets: red_team, helpful, borderline",
                          factory=lambda: list(SETS))
    data_dir: str | None = opt(None, "folder with the sets, neutral_mc.jsonl and "
                                     "neutral_text.txt (default: data/eval)")
    ability: bool = opt(True, "measure neutral ability: MC accuracy and perplexity")
    ability_dtype: str = opt("float32", "weights dtype for the ability measurements")
    limit: int | None = opt(None, minimum=1, help="only the first N prompts of each set")
    ability_limit: int | None = opt(None, minimum=1,
                                    help="only the first N multiple-choice questions and text "
                                         "paragraphs (default: all)")
    chunk_size: int | None = opt(None, minimum=1,
                                 help="prompts per engine call and per append (default: "
                                      "--batch-size for hf, 64 for vllm and openai)")
    max_new_tokens: int = opt(256, minimum=1, help="longest answer, in tokens")
    temperature: float = opt(0.7, minimum=0, help="answer sampling temperature (0: greedy)")
    top_p: float = opt(0.95, "nucleus sampling mass")
    seed: int = opt(0, "seed for sampling, principles, few-shot choice and bootstrap")
    resamples: int = opt(1000, minimum=1, help="bootstrap resamples for the confidence intervals")
    confidence: float = opt(0.95, "confidence level of the intervals")
    examples: int = opt(3, minimum=0, help="example prompts per set shown in the report")
    report: bool = opt(True, "write report.md, report.html and the charts")
    prompts_dir: str | None = opt(None, "folder with your own feedback.j2 / judge_refusal.j2")

    def __post_init__(self):
        if not self.model:
            raise CaiError("missing --model (repeat it for each model: --model A --model B)")
        if not self.out:
            raise CaiError("missing --out (the output folder)")
        unknown = [s for s in self.sets if s not in SETS]
        if unknown or not self.sets:
            raise CaiError(f"--sets: unknown set '{unknown[0] if unknown else ''}' "
                           f"(choose from {', '.join(SETS)})")
        for name, low in (("limit", 1), ("ability_limit", 1), ("principles", 1), ("few_shot", 0),
                          ("judge_few_shot", 0),
                          ("batch_size", 1),
                          ("chunk_size", 1), ("max_new_tokens", 1), ("resamples", 10),
                          ("examples", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise CaiError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        compared_pairs(len(self.model), self.compare)  # a wrong --compare fails here
        if not 0 <= self.judge_min_accuracy <= 1:
            raise CaiError(f"--judge-min-accuracy must be in [0, 1], got "
                           f"{self.judge_min_accuracy}")
        if not 0.5 <= self.confidence < 1:
            raise CaiError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.chunk_size is None:
            self.chunk_size = self.batch_size if self.policy.engine == "hf" else 64
        self.judge.engine = self.judge.engine or self.policy.engine
