"""`cai train ppo`: reinforcement learning from AI feedback (RL-CAI's last stage).

Bai et al. 2022 (arXiv:2212.08073, section 4): the SL-CAI model is trained with PPO against a
preference model fitted to AI labels. The loop follows Ouyang et al. 2022 and the details in
Huang et al. 2024 ("The N+ implementation details of RLHF with PPO"); the formulas live in
`cai.train.losses`. Each step:

1. rollout: sample an answer to each of `prompts_per_step` prompts (`samples_per_prompt` each)
   with the policy, cut at the end-of-sequence token (`cai.train.ppo.rollout`), seeded by
   `training.seed + step`, so a resumed run samples what an uninterrupted one would;
2. score: the reward source's score of each answer (`cai.train.ppo.rewards`), shifted and
   scaled by the mean and std of `reward_stats_samples` answers of the starting policy sampled
   before the first step (Ziegler et al. 2019; `normalize_reward`, cached in
   `reward_stats.json`), plus `no_eos_penalty` for an answer that never ended;
3. log-probs of the answers under the policy and the reference (the same model with the LoRA
   adapter disabled: no second copy), the value head's values, and a per-token KL penalty
   -kl_coef * KL_t (fixed, or Ziegler's adaptive coefficient; `kl_in_loss` moves it to the loss);
4. advantages: GAE over the per-token rewards (score on the last token), whitened over the
   batch's tokens; or, with no critic, one advantage per answer from the sequence reward and
   its prompt's group: RLOO's leave-one-out baseline, scaled by their std but not re-centred,
   or GRPO's group mean and std (`advantages`; `cai train grpo` is this loop with grpo);
5. `ppo_epochs` passes of shuffled minibatches (per_device_train_batch_size x
   gradient_accumulation_steps answers) of the clipped policy loss + vf_coef x value loss
   (+ kl_coef x the k3 KL to the reference, with `kl_in_loss`).

The policy is LoRA (or QLoRA) on `model.name`; the value head is `nn.Linear(hidden, 1)` on the
policy's last hidden state, fitted to the first rollout's returns before the first update
(`cai.train.ppo.critic`, `value_warmup`); or, with `critic: reward_model`, a recalibration of the
preference model's score of each answer prefix.
"""

from __future__ import annotations

import json
import time

import torch

from cai.foundation.errors import CaiError
from cai.foundation.inputs import helpful_sample, load_prompts
from cai.train import common
from cai.train import config as train_config
from cai.train.config import TrainConfig
from cai.train.losses import (
    adaptive_kl_coef,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_logps,
)
from cai.train.ppo import advantage, checkpoint, critic, reward_stats, rewards
from cai.train.ppo.config import PPOSection
from cai.train.ppo.log import RunLog, eval_line, step_line
from cai.train.ppo.rollout import Rollout, answer_forward, model_inputs, score_tokens, step_prompts

VALUE_HEAD = checkpoint.VALUE_HEAD


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    return train_config.load(path, overrides, "ppo", PPOSection)


class PPOTrainer:
    """The PPO loop; `train()` runs it, `step(n)` runs one rollout batch (tests call both)."""

    def __init__(self, cfg, log=print):
        from accelerate import Accelerator

        self.cfg, self.opts, self.log = cfg, cfg.options, log
        if not cfg.lora.enabled:
            raise CaiError(f"{cfg.source}: ppo trains a LoRA adapter (lora.enabled: true); the "
                           "reference is the base with the adapter disabled")
        self.args = args = common.training_arguments(cfg)
        if args.max_steps <= 0:
            raise CaiError(f"{cfg.source}: training.max_steps must give the number of PPO steps "
                           "(rollout batches)")
        self.minibatch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.batch = self.opts.prompts_per_step * self.opts.samples_per_prompt
        if self.batch % self.minibatch:
            raise CaiError(f"{cfg.source}: a rollout batch of {self.batch} answers "
                           f"(prompts_per_step x samples_per_prompt) does not split into "
                           f"minibatches of {self.minibatch} (per_device_train_batch_size x "
                           "gradient_accumulation_steps)")
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        self.accelerator = Accelerator(mixed_precision=precision, cpu=args.use_cpu)
        if self.accelerator.num_processes > 1:
            raise CaiError("cai train ppo runs in one process (no accelerate launch / torchrun)")
        self.device = self.accelerator.device

        self.prompts = self._prompts(cfg.data.path, cfg.data.limit, "data.path")
        self.prompts += helpful_sample(self.opts.helpful_prompts, self.opts.helpful_ratio,
                                       len(self.prompts), column=self.opts.prompt_column,
                                       seed=self.args.seed)
        # the reward source fails here, before the policy loads
        self.source = rewards.make_source(self.opts, args.seed)
        self.model, self.tokenizer = common.model_and_tokenizer(cfg)
        for module in self.model.modules():  # no dropout: log-probs must be reproducible
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        from cai.generation.hf import on_model
        from cai.train.common import accepts_logits_to_keep

        self.keep_logits = accepts_logits_to_keep(self.model)
        self.generator = on_model(self.model, self.tokenizer, name=cfg.model.name,
                                  batch_size=self.opts.generation_batch_size, device=self.device)
        self.prompts = self._fit(self.prompts, "train")
        self.eval_prompts = None
        if cfg.data.eval_path:
            found = self._prompts(cfg.data.eval_path, self.opts.eval_limit, "data.eval_path")
            self.eval_prompts = self._fit(found, "eval")

        if isinstance(self.source, rewards.RewardModelScore):
            self.source.check_fits(self.prompts + (self.eval_prompts or []), self.messages,
                                   self.opts.max_new_tokens)

        self.value_head = self.reward_critic = None
        if self.opts.advantage == "gae":
            if self.opts.critic == "reward_model":
                self.reward_critic = critic.RewardModelCritic(
                    self.source.model, self.tokenizer, self.opts.generation_batch_size,
                    self.opts.critic_every)
                hidden = self.reward_critic.hidden_size
            else:
                hidden = self.model.get_base_model().config.get_text_config().hidden_size
            self.value_head = critic.zero_head(hidden, self.device)
        # the head that reads the policy's own states in its forward passes (the policy critic)
        self.policy_head = None if self.reward_critic else self.value_head
        self.value_fitted = not self.opts.value_warmup  # fitted on the first rollout
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        self.params = params
        from transformers import Trainer, get_scheduler

        optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, self.model)
        optimizer = optim_cls(params, **{"weight_decay": args.weight_decay, **optim_kwargs})
        updates = args.max_steps * self.opts.ppo_epochs * (self.batch // self.minibatch)
        self.scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                       num_warmup_steps=args.get_warmup_steps(updates),
                                       num_training_steps=updates,
                                       scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)  # fp16 loss scaling
        self.kl_coef = self.opts.kl_coef
        self.reward_shift, self.reward_scale = 0.0, 1.0
        self.normalized = not self.opts.normalize_reward  # set before the first step
        if self.reward_critic is not None and self.normalized:
            self.reward_critic.start_head(self.value_head, 0.0, 1.0)
        self.step_done = 0

    # ----------------------------------------------------------------------------------------
    # Prompts

    def _prompts(self, spec: str, limit: int | None, key: str) -> list[dict]:
        found = load_prompts(spec, self.opts.prompt_column, self.cfg.data.split)
        found = found[:limit] if limit else found
        if self.opts.labeler and self.opts.feedback_baseline == "response":
            for row in found:
                if not isinstance(row.get("response"), str):
                    raise CaiError(f"{key} {spec}: prompt '{row['id']}' has no 'response' text "
                                   "(ppo.feedback_baseline: response compares with it)")
        return found

    def _fit(self, found: list[dict], name: str) -> list[dict]:
        """Prompts of at most data.max_length tokens (the others are skipped and counted)."""
        kept = [r for r in found if len(self.generator.encode(self.messages(r)))
                <= self.cfg.data.max_length]
        if not kept:
            raise CaiError(f"{name}: every prompt is longer than data.max_length "
                           f"({self.cfg.data.max_length} tokens)")
        self.log(f"{name}: {len(kept)} prompts" + (f", {len(found) - len(kept)} skipped (over "
                                                   f"data.max_length tokens)"
                                                   if len(kept) < len(found) else ""))
        return kept

    @staticmethod
    def messages(record: dict) -> list[dict]:
        return [{"role": "user", "content": record["prompt"]}]

    def step_prompts(self, step: int) -> list[dict]:
        return step_prompts(self.prompts, step, self.opts.prompts_per_step, self.args.seed)

    # ----------------------------------------------------------------------------------------
    # Rollout and scoring

    def sample(self, records: list[dict], seed: int, reference: bool = False):
        """Token ids of one sampled answer per record (the policy's, or the reference's)."""
        from cai.generation import SamplingParams

        params = SamplingParams(max_new_tokens=self.opts.max_new_tokens,
                                temperature=self.opts.temperature, seed=seed)
        self.model.eval()
        try:
            with self.accelerator.autocast():
                if reference:
                    with self.model.disable_adapter():
                        return self.generator.generate_ids([self.messages(r) for r in records],
                                                           params)
                return self.generator.generate_ids([self.messages(r) for r in records], params)
        finally:
            self.model.train()  # QLoRA: LoRA gradients flow again after the no-grad generate

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def answers(self, records: list[dict], seed: int, keys: list[str],
                start_policy: bool = False):
        """(answer ids, items, raw scores (B,), seconds per phase): one sampled answer per
        record (the starting policy's with `start_policy`) and the reward source's score."""
        start = time.perf_counter()
        response_ids = self.sample(records, seed, reference=start_policy)
        baselines = [None] * len(records)
        if getattr(self.source, "needs_baseline", False):
            if self.opts.feedback_baseline == "response":
                baselines = [r["response"] for r in records]
            else:
                baselines = [self.text(ids) for ids in self.sample(records, seed + 100_003,
                                                                   reference=True)]
        generation = time.perf_counter() - start
        items = [{"key": k, "prompt": r["prompt"], "messages": self.messages(r),
                  "response": self.text(ids), "baseline": b}
                 for k, r, ids, b in zip(keys, records, response_ids, baselines)]
        scores = torch.tensor(self.source(items), dtype=torch.float32)
        return response_ids, items, scores, {"generation": generation,
                                             "scoring": time.perf_counter() - start - generation}

    def rollout(self, records: list[dict], seed: int, keys: list[str], keep_hidden=False,
                values: bool = True):
        """(rollout with every tensor filled, raw scores (B,), items, seconds per phase);
        without `values`, no reward-model critic pass (evaluation)."""
        response_ids, items, scores, seconds = self.answers(records, seed, keys)
        start = time.perf_counter()
        rollout = Rollout.build([self.generator.encode(self.messages(r)) for r in records],
                                response_ids, self.generator.eos_token_ids)
        self.model.eval()
        try:
            common_args = (rollout, self.tokenizer.pad_token_id, self.device,
                           self.opts.temperature, self.args.per_device_eval_batch_size,
                           self.accelerator.autocast, self.keep_logits)
            score_tokens(self.model, self.policy_head, *common_args, keep_hidden=keep_hidden)
            with self.model.disable_adapter():
                score_tokens(self.model, None, *common_args, reference=True)
            if self.reward_critic is not None and values:
                rollout.hidden = self.reward_critic.features(
                    rollout, [self.messages(r) for r in records])
                with torch.no_grad():
                    rollout.values = self._reward_values(rollout.hidden) * rollout.mask
        finally:
            self.model.train()
        seconds["forward"] = time.perf_counter() - start
        return rollout, scores, items, seconds

    def advantages(self, rollout: Rollout, final: torch.Tensor, kl: torch.Tensor):
        """(advantages (B, R), returns (B, R) or None) from the normalized scores `final` (B,)
        and the per-token KL estimates `kl` (B, R): `cai.train.ppo.advantage.compute`."""
        return advantage.compute(self, rollout, final, kl)

    # ----------------------------------------------------------------------------------------
    # One step

    def step(self, step: int) -> dict:
        """Rollout, score, advantages and the PPO epochs of step `step` (0-based)."""
        opts, k = self.opts, self.opts.samples_per_prompt
        records = [r for r in self.step_prompts(step) for _ in range(k)]  # prompt-major
        keys = [f"{step}:{r['id']}:{j % k}" for j, r in enumerate(records)]
        if not self.normalized:
            stats = reward_stats.estimate(self)
            self.reward_shift, self.reward_scale = stats["shift"], stats["scale"]
            self.normalized = True
            if self.reward_critic is not None:  # the normalized score, until the first fit
                self.reward_critic.start_head(self.value_head, self.reward_shift,
                                              self.reward_scale)
        rollout, scores, _, seconds = self.rollout(records, self.args.seed + step, keys,
                                                   keep_hidden=not self.value_fitted)
        mask = rollout.mask
        final = (scores - self.reward_shift) / self.reward_scale
        final = final + opts.no_eos_penalty * (~rollout.ended).float()            # (B,)
        kl = kl_penalty(rollout.logps, rollout.ref_logps, opts.kl_estimator) * mask  # (B, R)
        kl_k1 = ((rollout.logps - rollout.ref_logps) * mask).sum(-1)             # (B,)
        if opts.kl_in_loss:  # the KL is a loss term (`_micro_step`), not part of the reward
            kl = torch.zeros_like(kl)
        advantages, returns = self.advantages(rollout, final, kl)
        if self.reward_critic is None:  # the reward-model critic's features serve the update
            rollout.hidden = None

        start = time.perf_counter()
        stats = self.update(rollout, advantages, returns, step)
        training = seconds["forward"] + time.perf_counter() - start

        metrics = {
            "step": step + 1,
            "reward/mean": scores.mean().item(), "reward/std": scores.std().item()
            if len(scores) > 1 else 0.0,
            "reward/normalized": final.mean().item(),
            "kl": kl_k1.mean().item(), "kl_penalty": (self.kl_coef * kl.sum(-1)).mean().item(),
            "kl_coef": self.kl_coef, "entropy": masked_mean(rollout.entropy, mask).item(),
            **stats,
            "response/length": mask.sum(-1).float().mean().item(),
            "response/no_eos": (~rollout.ended).float().mean().item(),
            "lr": self.scheduler.get_last_lr()[0],
            "time/generation": seconds["generation"], "time/scoring": seconds["scoring"],
            "time/training": training,
        }
        if returns is not None:
            metrics["value/explained_variance"] = critic.explained_variance(
                returns, rollout.values, mask)
        if opts.adaptive_kl:
            self.kl_coef = adaptive_kl_coef(self.kl_coef, metrics["kl"], opts.kl_target,
                                            opts.kl_horizon, len(rollout))
        self.step_done = step + 1
        return metrics

    def update(self, rollout: Rollout, advantages, returns, step: int) -> dict:
        """`ppo_epochs` passes of shuffled minibatches; returns the token-weighted means of the
        losses and PPO statistics."""
        opts, args = self.opts, self.args
        micro = args.per_device_train_batch_size
        generator = torch.Generator().manual_seed(args.seed * 100_003 + step)
        sums: dict[str, float] = {}
        updates = 0
        self.model.train()
        for _ in range(opts.ppo_epochs):
            order = torch.randperm(len(rollout), generator=generator)
            for start in range(0, len(rollout), self.minibatch):
                rows = order[start:start + self.minibatch]
                n_tokens = rollout.mask[rows].sum().clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                for part in rows.split(micro):
                    self._micro_step(rollout, advantages, returns, part, n_tokens, sums)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    norm = self.accelerator.clip_grad_norm_(self.params, args.max_grad_norm)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
                self.optimizer.step()
                self.scheduler.step()
                updates += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {k: v / updates for k, v in sums.items()}

    def _micro_step(self, rollout, advantages, returns, part, n_tokens, sums) -> None:
        idx = part.tolist()
        inputs, width = model_inputs([rollout.prompt_ids[i] for i in idx],
                                     [rollout.response_ids[i] for i in idx],
                                     self.tokenizer.pad_token_id, self.device)
        with self.accelerator.autocast():
            logits, values, _ = answer_forward(self.model, self.policy_head, inputs, width,
                                               self.opts.temperature, self.keep_logits)
        dev = logits.device
        if self.reward_critic is not None:
            values = self._reward_values(rollout.hidden[part, :width])
        mask = rollout.mask[part, :width].to(dev)                                   # (b, r)
        logps = token_logps(logits, rollout.tokens[part, :width].to(dev))           # (b, r)
        loss, pstats = ppo_policy_loss(logps, rollout.logps[part, :width].to(dev),
                                       advantages[part, :width].to(dev), mask,
                                       self.opts.cliprange)
        weight = (mask.sum() / n_tokens.to(dev)).item()  # token-mean over the minibatch
        parts = {"loss/policy": loss.item(), "policy/clip_frac": pstats["clip_frac"].item(),
                 "policy/approx_kl": pstats["approx_kl"].item()}
        if self.opts.kl_in_loss:  # GRPO's form: k3 = exp(ref - logp) - (ref - logp) - 1
            kl = masked_mean(kl_penalty(logps, rollout.ref_logps[part, :width].to(dev), "k3"),
                             mask)
            loss = loss + self.kl_coef * kl
            parts["loss/kl"] = kl.item()
        if values is not None:
            vloss, vstats = ppo_value_loss(values, rollout.values[part, :width].to(dev),
                                           returns[part, :width].to(dev), mask,
                                           self.opts.cliprange_value)
            loss = loss + self.opts.vf_coef * vloss
            parts.update({"loss/value": vloss.item(),
                          "value/clip_frac": vstats["clip_frac"].item()})
        self.accelerator.backward(loss * weight)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value * weight

    def _reward_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head on the reward-model critic's features (B, R, 1) -> (B, R)."""
        head = self.value_head
        return head(hidden.to(head.weight.device, head.weight.dtype)).squeeze(-1).float()

    # ----------------------------------------------------------------------------------------
    # Evaluation on held-out prompts

    def evaluate(self, step: int) -> dict:
        """Mean raw score, KL to the reference and length of answers to the eval prompts, each
        sampled with the same seed at every evaluation; the answers go to eval/step-N.jsonl."""
        records = self.eval_prompts
        keys = [f"eval:{r['id']}" for r in records]
        rollout, scores, items, seconds = self.rollout(records, self.args.seed, keys,
                                                       values=False)
        kl = ((rollout.logps - rollout.ref_logps) * rollout.mask).sum(-1)
        folder = self.cfg.output_dir / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"step-{step}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": r["id"], "prompt": r["prompt"],
                                     "response": it["response"], "score": s, "kl": d}) + "\n"
                         for r, it, s, d in zip(records, items, scores.tolist(), kl.tolist()))
        return {"step": step, "eval/reward_mean": scores.mean().item(),
                "eval/reward_std": scores.std().item() if len(scores) > 1 else 0.0,
                "eval/kl": kl.mean().item(),
                "eval/response_length": rollout.mask.sum(-1).float().mean().item(),
                "eval/no_eos": (~rollout.ended).float().mean().item(),
                "eval/seconds": sum(seconds.values())}

    # ----------------------------------------------------------------------------------------
    # Checkpoints

    def state(self) -> dict:
        return {"step": self.step_done, "kl_coef": self.kl_coef,
                "reward_shift": self.reward_shift, "reward_scale": self.reward_scale,
                "normalized": self.normalized, "value_fitted": self.value_fitted}

    def load_state(self, state: dict) -> None:
        self.step_done, self.kl_coef = state["step"], state["kl_coef"]
        self.reward_shift, self.reward_scale = state["reward_shift"], state["reward_scale"]
        self.normalized = state["normalized"]
        self.value_fitted = state.get("value_fitted", True)

    # ----------------------------------------------------------------------------------------
    # The run

    def train(self, resume: bool = False) -> dict:
        cfg, args = self.cfg, self.args
        out = cfg.output_dir
        train_config.save_resolved(cfg, out)
        if resume:
            last = common.checkpoints(out)[-1]
            checkpoint.load(self, last)
            self.log(f"resumed from {last} (step {self.step_done})")
        run_log = RunLog(args, out, self.step_done if resume else None)
        start = time.perf_counter()
        last_metrics: dict = {}
        evals: list[dict] = []

        def evaluate(n: int) -> None:
            evals.append(self.evaluate(n))
            run_log.record(evals[-1])
            self.log(eval_line(evals[-1]))

        if self.eval_prompts and self.step_done == 0:
            evaluate(0)
        try:
            while self.step_done < args.max_steps:
                last_metrics = self.step(self.step_done)
                run_log.record(last_metrics)
                self.log(step_line(last_metrics, args.max_steps))
                n = self.step_done
                if self.eval_prompts and (n == args.max_steps or (
                        self.opts.eval_every and n % self.opts.eval_every == 0)):
                    evaluate(n)
                if args.save_strategy != "no" and args.save_steps and n < args.max_steps and \
                        n % int(args.save_steps) == 0:
                    checkpoint.save(self)
        finally:
            run_log.close()
        self.model.save_pretrained(out)  # the adapter: `cai export --adapter OUT` reads it
        self.tokenizer.save_pretrained(out)
        if self.value_head is not None:
            torch.save(self.value_head.state_dict(), out / VALUE_HEAD)
        (out / checkpoint.STATE).write_text(json.dumps(self.state(), indent=1))
        results = {"train_steps": self.step_done,
                   "train_seconds": round(time.perf_counter() - start, 2),
                   **{k: v for k, v in last_metrics.items() if k != "step"},
                   **{k: v for k, v in (evals[-1] if evals else {}).items() if k != "step"}}
        if len(evals) >= 2 and evals[0]["step"] == 0:
            results["eval/reward_mean_before"] = evals[0]["eval/reward_mean"]
        (out / "train_results.json").write_text(json.dumps(results, indent=1))
        return results


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run `cai train ppo` from a resolved config; returns the final metrics."""
    common.check_output(cfg, resume)
    return PPOTrainer(cfg).train(resume)
