"""The options of `cai label` (`--config` YAML keys and command-line flags), and what the
scoring core reads of them."""

from __future__ import annotations

from dataclasses import dataclass

from cai.foundation.errors import CaiError
from cai.foundation.options import flat_init, opt
from cai.generation import Role, main_role, second_role
from cai.scoring.preference import ScoringOptions


@flat_init
@dataclass
class LabelConfig:
    """Options of `cai label` (also the keys of its `--config` YAML). The bare engine options
    (`--policy`, `--engine`, ...) are the policy's; the labeler's carry its name."""

    prompts: str = opt("", ".jsonl (id, prompt), .txt (one per line) or dataset:NAME_OR_DIR")
    responses: str | None = opt(None, "label existing responses instead of sampling: a .jsonl "
                                      "with id, prompt and a 'responses' list, or `cai revise` "
                                      "output (initial_response vs response)")
    check: str | None = opt(None, "quality check instead: score a .jsonl of pairs (id, prompt, "
                                  "better, worse) and report accuracy and calibration")
    out: str = opt("", "output folder: data.jsonl, manifest.json, skipped.jsonl "
                       "(with --check: check.json, optional)")
    constitution: str | None = opt(None, "constitution YAML (default: constitutions/default.yaml)")
    principle_ids: list[str] | None = opt(None, "comma-separated preference ids to sample from")
    principles: int = opt(1, minimum=1,
                          help="principles sampled per pair; p_chosen is their mean (ensemble)")
    samples: int = opt(2, minimum=2, help="responses sampled per prompt (K >= 2)")
    pairs: int | None = opt(None, minimum=1,
                            help="pairs per prompt, drawn at random (default: all K(K-1)/2)")
    debias: bool = opt(True, "score each pair in both orders and average (position debiasing)")
    cot: bool = opt(False, "chain of thought: the labeler reasons before its choice")
    cot_clamp: list[float] = opt(help="with --cot, clamp each probability to LOW,HIGH "
                                      "(default: 0.4,0.6, as in the paper)",
                                 factory=lambda: [0.4, 0.6])
    cot_max_new_tokens: int = opt(256, minimum=1,
                                  help="longest chain-of-thought reasoning, in tokens")
    cot_temperature: float = opt(0.0, minimum=0,
                                 help="sampling temperature of the reasoning (0: greedy)")
    few_shot: int = opt(2, minimum=0,
                        help="labelling demonstrations (constitution's preference_examples) "
                             "in front")
    margin: float = opt(0.0, minimum=0,
                        help="drop pairs with |p_chosen - 0.5| < MARGIN (counted in skipped.jsonl)")
    limit: int | None = opt(None, minimum=1, help="only the first N prompts (after sharding)")
    shard: str | None = opt(None, "I/N: this machine's deterministic share of the prompts")
    policy: Role = main_role("policy", help={
        "model": "model sampling the responses (default: smollm2-135m-instruct)",
        "engine": "policy engine: hf, vllm or openai",
        "dtype": "hf/vllm weights of the policy",
        "base_url": "openai engine: the policy's server, e.g. http://127.0.0.1:8000/v1",
        "engine_options": "extra policy engine options (config file only)"})
    labeler: Role = second_role("labeler", "the labeler",
                                model_help="feedback model (default: smollm2-135m-instruct)",
                                engine_help="labeler engine (default: the policy's)",
                                dtype="float32")
    batch_size: int = opt(8, minimum=1, help="sequences per forward pass (hf engine)")
    concurrency: int = opt(16, minimum=1, help="openai engine: requests in flight at once")
    chunk_size: int = opt(16, minimum=1,
                          help="prompts per engine call and per append to data.jsonl")
    max_new_tokens: int = opt(256, minimum=1, help="longest sampled response, in tokens")
    temperature: float = opt(1.0, minimum=0,
                             help="policy sampling temperature (the paper sampled at 1.0)")
    top_p: float = opt(0.95, "policy nucleus sampling mass")
    seed: int = opt(0, "seed for sampling, pairs, principles, orders and few-shot choice")
    prompts_dir: str | None = opt(None, "folder with your own feedback*.j2 templates")
    prompt_column: str = opt("prompt", "column holding the prompt, for dataset: prompt sets")
    helpful_prompts: list[str] | None = opt(None, "also label pairs on these ordinary prompt "
                                                  "sets (comma-separated, pooled), with the "
                                                  "helpfulness questions, e.g. data/helpful.jsonl")
    helpful_ratio: float = opt(0.5, minimum=0, help="helpful prompts per red-team prompt (with "
                                                    "--helpful-prompts)")
    helpful_principle_ids: list[str] = opt(help="preference ids asked on the helpful prompts",
                                           factory=lambda: ["more-helpful", "less-preachy"])
    refusal_prompts: list[str] | None = opt(None, "also make refusal pairs on these harmless "
                                                  "prompt sets (comma-separated, pooled), e.g. "
                                                  "data/borderline.jsonl: an answer read as "
                                                  "answering chosen over one read as refusing")
    refusal_ratio: float = opt(0.5, minimum=0, help="refusal prompts per red-team prompt (with "
                                                    "--refusal-prompts)")
    refusal_samples: int = opt(4, minimum=2, help="answers sampled per refusal prompt")
    refusal_classifier: str | None = opt(None, "read P(refuses) with this `cai train "
                                               "classifier` folder's answer head instead of "
                                               "asking the labeler (cheaper)")

    def __post_init__(self):
        if not self.check:
            if bool(self.prompts) == bool(self.responses):
                raise CaiError("give --prompts (to sample responses) or --responses (to label "
                               "existing ones), not both" if self.prompts else
                               "missing --prompts (or --responses, or --check)")
            if not self.out:
                raise CaiError("missing --out (the output folder)")
        for name, low in (("samples", 2), ("principles", 1), ("chunk_size", 1), ("batch_size", 1),
                          ("few_shot", 0), ("cot_max_new_tokens", 1), ("pairs", 1),
                          ("refusal_samples", 2)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise CaiError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if self.helpful_ratio < 0:
            raise CaiError(f"--helpful-ratio must be >= 0, got {self.helpful_ratio}")
        if self.refusal_ratio < 0:
            raise CaiError(f"--refusal-ratio must be >= 0, got {self.refusal_ratio}")
        if self.refusal_prompts and self.responses and not self.check:
            raise CaiError("--refusal-prompts needs --prompts: the policy samples the answers "
                           "of refusal pairs (--responses gives no policy)")
        if self.refusal_classifier and not self.refusal_prompts:
            raise CaiError("--refusal-classifier reads refusal pairs: give --refusal-prompts too")
        if not 0 <= self.margin < 0.5:
            raise CaiError(f"--margin must be in [0, 0.5), got {self.margin}")
        if len(self.cot_clamp) != 2 or not 0 <= self.cot_clamp[0] <= 0.5 <= self.cot_clamp[1] <= 1:
            raise CaiError(f"--cot-clamp must be LOW,HIGH with 0 <= LOW <= 0.5 <= HIGH <= 1, "
                           f"got {','.join(map(str, self.cot_clamp))}")
        self.labeler.engine = self.labeler.engine or self.policy.engine

    def scoring(self) -> ScoringOptions:
        """What the scoring core reads of these options."""
        return ScoringOptions(principles=self.principles, seed=self.seed, debias=self.debias,
                              cot=self.cot, cot_clamp=tuple(self.cot_clamp),
                              cot_max_new_tokens=self.cot_max_new_tokens,
                              cot_temperature=self.cot_temperature)
