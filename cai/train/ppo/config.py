"""The `ppo:` section of a `cai train ppo` (and `cai train grpo`) config: the reward source,
the rollouts, the PPO, RLOO or GRPO update and the KL penalty (the loop that reads it is
`cai.train.ppo.loop`)."""

from __future__ import annotations

from dataclasses import dataclass

from cai.foundation.errors import CaiError
from cai.foundation.options import opt

#: The reward sources, of which a `ppo:` section names exactly one.
SOURCES = ("reward_model", "labeler", "reward_function", "classifier")


@dataclass
class PPOSection:
    reward_model: str | None = opt(None, "reward: a `cai train rm` output folder; its score of "
                                         "prompt + answer")
    labeler: str | None = opt(None, "reward: direct AI feedback from this model (embedded name, "
                                    "folder or hub id): its P(the answer beats a baseline "
                                    "answer) under a sampled principle")
    reward_function: str | None = opt(None, "reward: module:function or file.py:function, "
                                            "called as f(prompts, responses) -> list of floats")
    classifier: str | None = opt(None, "reward: a constitutional classifier folder; the "
                                       "two-sided reward of its P(decline | prompt) and "
                                       "P(refuses | prompt, answer)")
    reward_weights: dict[str, float] | None = opt(None, "classifier: weight of each part of "
                                                        "the two-sided reward by principle id "
                                                        "(harmful-help, needless-refusal; "
                                                        "default 1 each)")
    normalize_reward: bool = opt(True, "shift and scale scores by the mean and std of "
                                       "reward_stats_samples answers of the starting policy")
    reward_stats_samples: int = opt(256, "answers of the starting policy sampled before "
                                         "training for the reward's shift and scale (cached "
                                         "in output_dir/reward_stats.json)")
    no_eos_penalty: float = opt(-1.0, "added to the (normalized) score of an answer that hits "
                                      "max_new_tokens without ending; 0 for none")
    feedback_baseline: str = opt("reference", "labeler: what the answer is compared with: "
                                              "'reference' (the reference model's sampled "
                                              "answer) or 'response' (the prompt record's field)")
    constitution: str | None = opt(None, "labeler: constitution YAML (default: the shipped one)")
    principle_ids: list[str] | None = opt(None, "labeler: preference principle ids to "  # noqa: RUF009
                                                "sample from (default: all)")
    feedback_principles: int = opt(1, "labeler: principles per comparison (their mean)")
    few_shot: int = opt(2, "labeler: labelling demonstrations in front")
    prompts_dir: str | None = opt(None, "labeler: folder with your own feedback*.j2 templates")
    labeler_dtype: str = opt("float32", "labeler: weights dtype")
    prompt_column: str = opt("prompt", "column holding the prompt, for dataset: prompt sets")
    helpful_prompts: list[str] | None = opt(None, "also roll out on these ordinary prompt sets "
                                                  "(pooled; ids prefixed helpful:), so that a "
                                                  "policy refusing everything is not rewarded")
    helpful_ratio: float = opt(0.5, minimum=0, help="helpful prompts per data.path prompt "
                                                    "(with helpful_prompts)")
    prompts_per_step: int = opt(8, "prompts in each rollout batch")
    samples_per_prompt: int = opt(1, "answers sampled per prompt (rloo, grpo: at least 2)")
    max_new_tokens: int = opt(64, "longest answer, in tokens")
    temperature: float = opt(1.0, "sampling temperature; log-probs use logits / temperature")
    generation_batch_size: int = opt(8, "sequences per generate call, reward-model and "
                                        "labeler batch")
    advantage: str = opt("gae", "gae (value head, per-token), rloo (leave-one-out baseline "
                                "over samples_per_prompt answers, no critic) or grpo (the "
                                "group's mean as baseline, divided by its std; no critic)")
    scale_by_std: bool = opt(True, "grpo: divide each answer's advantage by the std of its "
                                   "prompt's group (false: Dr. GRPO, the mean baseline only)")
    ppo_epochs: int = opt(4, "passes over each rollout batch")
    cliprange: float = opt(0.2, "policy ratio clip epsilon")
    cliprange_value: float = opt(0.2, "value clip around the sampling-time values")
    value_warmup: bool = opt(True, "gae: fit the value head to the first rollout's returns "
                                   "(ridge regression on its features) before the first "
                                   "update; else it starts at zero (the policy critic) or at "
                                   "the normalized score (the reward_model critic)")
    critic: str = opt("policy", "gae: what the value head reads: 'policy' (the policy's last "
                               "hidden states) or 'reward_model' (the preference model's "
                               "score of the answer so far, normalized, then recalibrated)")
    critic_every: int = opt(8, "critic reward_model: score the answer prefix every N tokens "
                               "(and before the last), each position reading the latest; 1 "
                               "scores every prefix (one preference-model pass per token)")
    vf_coef: float = opt(0.1, "weight of the value loss")
    gamma: float = opt(1.0, "GAE discount")
    lam: float = opt(0.95, "GAE lambda")
    whiten_advantages: bool = opt(True, "gae: whiten advantages over the batch's answer "
                                        "tokens; rloo: divide the per-answer advantages by "
                                        "their std (no re-centring); grpo: unused "
                                        "(scale_by_std)")
    kl_coef: float = opt(0.05, "KL penalty coefficient (the start value when adaptive)")
    kl_estimator: str = opt("k1", "per-token KL estimate in the reward's penalty: k1, k2 "
                                  "or k3")
    kl_in_loss: bool = opt(False, "put kl_coef x the k3 KL estimate to the reference in the "
                                  "loss (as GRPO does) instead of a penalty in the reward")
    adaptive_kl: bool = opt(False, "adapt kl_coef toward kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "adaptive: target sequence KL (nats)")
    kl_horizon: int = opt(10000, "adaptive: horizon in samples")
    eval_limit: int | None = opt(None, "only the first N prompts of data.eval_path")
    eval_every: int | None = opt(None, "also evaluate every N steps (always before the first "
                                       "step and after the last, with data.eval_path)")

    def __post_init__(self):
        chosen = [k for k in SOURCES if getattr(self, k)]
        if len(chosen) != 1:
            raise CaiError("ppo: name one reward source: ppo.reward_model (a `cai train rm` "
                           "folder), ppo.labeler (AI feedback), ppo.reward_function "
                           "(module:function) or ppo.classifier (a classifier folder)"
                           + (f"; got {', '.join(chosen)}" if chosen else ""))
        if self.reward_weights is not None:
            if not self.classifier:
                raise CaiError("ppo.reward_weights weighs the classifier's two-sided reward: "
                               "it needs ppo.classifier")
            from cai.scoring.rewards import check_weights

            check_weights(self.reward_weights, "ppo.reward_weights")
        if self.advantage not in ("gae", "rloo", "grpo"):
            raise CaiError(f"ppo.advantage must be gae, rloo or grpo, got '{self.advantage}'")
        if self.advantage in ("rloo", "grpo") and self.samples_per_prompt < 2:
            baseline = "the mean of the other answers" if self.advantage == "rloo" else \
                "the mean of the prompt's answers"
            raise CaiError(f"ppo.advantage {self.advantage} needs ppo.samples_per_prompt of at "
                           f"least 2 (the baseline is {baseline}), got {self.samples_per_prompt}")
        if self.critic not in ("policy", "reward_model"):
            raise CaiError(f"ppo.critic must be policy or reward_model, got '{self.critic}'")
        if self.critic == "reward_model" and not (self.reward_model and self.advantage == "gae"):
            raise CaiError("ppo.critic reward_model scores answer prefixes with the preference "
                           "model: it needs ppo.reward_model and ppo.advantage gae")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise CaiError(f"ppo.kl_estimator must be k1, k2 or k3, got '{self.kl_estimator}'")
        if self.feedback_baseline not in ("reference", "response"):
            raise CaiError("ppo.feedback_baseline must be reference or response, got "
                           f"'{self.feedback_baseline}'")
        if self.labeler and self.feedback_baseline == "response" and self.helpful_prompts:
            raise CaiError("ppo.helpful_prompts has no 'response' to compare with: use "
                           "ppo.feedback_baseline reference with it")
        for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs",
                     "generation_batch_size", "feedback_principles", "kl_horizon",
                     "critic_every"):
            if getattr(self, name) < 1:
                raise CaiError(f"ppo.{name} must be at least 1, got {getattr(self, name)}")
        if self.normalize_reward and self.reward_stats_samples < 2:
            raise CaiError("ppo.reward_stats_samples must be at least 2 (a mean and a std), got "
                           f"{self.reward_stats_samples}")
        if self.temperature <= 0:
            raise CaiError(f"ppo.temperature must be positive (PPO samples), got "
                           f"{self.temperature}")


@dataclass
class GRPOSection(PPOSection):
    """`cai train grpo`: the same `ppo:` section, with GRPO's defaults (group-relative
    advantages over 4 answers per prompt, no critic)."""

    samples_per_prompt: int = opt(4, "answers sampled per prompt: the group each answer's "
                                     "advantage is relative to (rloo, grpo: at least 2)")
    advantage: str = opt("grpo", "grpo (the group's mean as baseline, divided by its std; no "
                                 "critic), rloo (leave-one-out baseline) or gae (value head)")
