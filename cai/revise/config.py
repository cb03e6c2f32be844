"""The options of `cai revise` (`--config` YAML keys and command-line flags)."""

from __future__ import annotations

from dataclasses import dataclass

from cai.foundation.errors import CaiError
from cai.foundation.options import flat_init, opt
from cai.generation import Role, main_role, second_role


@flat_init
@dataclass
class ReviseConfig:
    """Options of `cai revise` (also the keys of its `--config` YAML). The bare engine options
    (`--model`, `--engine`, ...) are the policy's; the feedback model's carry its name."""

    policy: Role = main_role()
    batch_size: int = opt(32, minimum=1, help="sequences per forward pass (hf engine)")
    concurrency: int = opt(16, minimum=1, help="openai engine: requests in flight at once")
    prompts: str = opt("", ".jsonl (id, prompt), .txt (one per line) or dataset:NAME_OR_DIR")
    out: str = opt("", "output folder: data.jsonl, pairs.jsonl, manifest.json, skipped.jsonl")
    constitution: str | None = opt(None, "constitution YAML (default: constitutions/default.yaml)")
    principles: list[str] | None = opt(None, "comma-separated critique_revision ids to sample from")
    rounds: int = opt(4, minimum=0, help="critique-revision rounds per prompt (the paper used 4)")
    few_shot: int = opt(2, minimum=0,
                        help="demonstrations from the constitution in front of each request")
    limit: int | None = opt(None, minimum=1, help="only the first N prompts (after sharding)")
    shard: str | None = opt(None, "I/N: this machine's deterministic share of the prompts")
    chunk_size: int | None = opt(None, minimum=1,
                                 help="prompts per engine call and per append to data.jsonl "
                                      "(default: --batch-size for hf, 64 for vllm and openai)")
    max_new_tokens: int = opt(256, minimum=1,
                              help="longest answer, critique or revision, in tokens")
    temperature: float = opt(0.7, minimum=0,
                             help="sampling temperature (paper: 1.0; lower keeps a 135M model "
                                  "on topic)")
    top_p: float = opt(0.95, "nucleus sampling mass")
    seed: int = opt(0, "seed for principles, few-shot choice and sampling")
    prompts_dir: str | None = opt(None, "folder with your own critique.j2 / revision.j2 / "
                                        "feedback.j2")
    prompt_column: str = opt("prompt", "column holding the prompt, for dataset: prompt sets")
    feedback: Role = second_role(
        "feedback", "the feedback model",
        model_help="feedback model: writes the critiques and revisions and runs the gate "
                   "(default: --model, as in the paper)",
        engine_help="feedback model's engine (default: --engine)")
    gate: bool = opt(True, "keep a revision only if the feedback model prefers it to the answer "
                           "it replaces (asked in both orders)")
    gate_principles: list[str] | None = opt(None, "preference ids the gate asks (default: all)")
    gate_questions: int = opt(1, minimum=1,
                              help="preference questions per gate comparison, averaged")
    gate_threshold: float = opt(0.5, minimum=0,
                                help="keep a revision when P(revision better) is above this")
    gate_max_complies: float | None = opt(None, minimum=0,
                                          help="also keep it only when the feedback model's "
                                               "P(it does what the red-team request asked) is "
                                               "below this (cai eval's judge question; off by "
                                               "default)")
    helpful_prompts: list[str] | None = opt(None, "also answer these ordinary prompt sets "
                                                  "(comma-separated, pooled) with the policy, no "
                                                  "critique, as helpful SFT samples, e.g. "
                                                  "data/helpful.jsonl")
    helpful_ratio: float = opt(1.0, minimum=0, help="helpful samples per red-team prompt (with "
                                                    "--helpful-prompts)")
    helpful_temperature: float | None = opt(None, minimum=0,
                                            help="sampling temperature of the helpful samples "
                                                 "(default: --temperature; 0 = greedy, the "
                                                 "policy's own most likely answer)")

    def __post_init__(self):
        if not self.prompts:
            raise CaiError("missing --prompts (a .jsonl, .txt or dataset:NAME)")
        if not self.out:
            raise CaiError("missing --out (the output folder)")
        if self.chunk_size is None:  # hf gains nothing from more than a batch; servers do
            self.chunk_size = self.batch_size if self.policy.engine == "hf" else 64
        for name in ("rounds", "chunk_size", "batch_size", "gate_questions"):
            if getattr(self, name) < (0 if name == "rounds" else 1):
                raise CaiError(f"--{name.replace('_', '-')} is too small: {getattr(self, name)}")
        if self.few_shot < 0:
            raise CaiError(f"--few-shot must be >= 0, got {self.few_shot}")
        if not 0 <= self.gate_threshold < 1:
            raise CaiError(f"--gate-threshold must be in [0, 1), got {self.gate_threshold}")
        if self.gate_max_complies is not None and not 0 < self.gate_max_complies <= 1:
            raise CaiError(f"--gate-max-complies must be in (0, 1], got "
                           f"{self.gate_max_complies}")
        if self.helpful_ratio < 0:
            raise CaiError(f"--helpful-ratio must be >= 0, got {self.helpful_ratio}")
