"""Where PPO's rewards come from: a preference model, direct AI feedback, a Python function, or
a constitutional classifier.

Every source is called the same way, once per rollout batch:

    source(items) -> list[float]      one raw score per item, in order

where an item is `{"key", "prompt", "messages", "response", "baseline"}`: the prompt text, the
prompt as chat messages, the policy's answer (text, end-of-sequence token removed), the
baseline answer the feedback source compares it with (None for the other sources), and a key
unique to the sample in the run (it seeds the feedback source's principle draw).

- `RewardModelScore`: a `cai train rm` model's score of prompt + answer (Bai et al. 2022,
  section 4: RL-CAI's reward is the preference model's score).
- `FeedbackScore`: the labeler's probability that the policy's answer is better than the
  baseline answer under a principle sampled from the constitution, both presentation orders
  averaged (the `cai label` machinery: `cai.scoring.preference.score`), a reward in [0, 1]
  (direct RLAIF, Lee et al. 2023, section 2.3).
- `FunctionScore`: `module:function` (or `path/to/file.py:function`) called as
  `f(prompts: list[str], responses: list[str]) -> list[float]`, for experiments and tests.
- `ClassifierScore`: the two-sided reward (`cai.scoring.rewards.two_sided_reward`) of a
  constitutional classifier's P(decline | prompt) and P(refuses | prompt, answer): refusing
  pays where the request is one to decline, answering pays elsewhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path

from cai.foundation.errors import CaiError


class RewardModelScore:
    needs_baseline = False

    def __init__(self, folder: str, batch_size: int = 8, device: str | None = None):
        from cai.train.rm import load_reward_model

        if not Path(folder).is_dir():
            raise CaiError(f"ppo.reward_model: {folder}: no such folder (a `cai train rm` "
                           "output)")
        self.model = load_reward_model(folder, device=device)
        self.batch_size = batch_size

    def check_fits(self, records: list[dict], messages, max_new_tokens: int) -> None:
        """A one-line error when a prompt plus `max_new_tokens` answer tokens is longer than the
        preference model's max_length (it would score a cut conversation)."""
        limit = self.model.max_length
        if not limit:
            return
        for record in records:
            n = self.model.prompt_length(messages(record))
            if n + max_new_tokens > limit:
                raise CaiError(
                    f"ppo: prompt '{record['id']}' takes {n} tokens in the preference model's "
                    f"template; with ppo.max_new_tokens {max_new_tokens} that exceeds its "
                    f"max_length {limit} (lower ppo.max_new_tokens or data.max_length, or "
                    "train the preference model with a larger data.max_length)")

    def __call__(self, items: list[dict]) -> list[float]:
        convs = [it["messages"] + [{"role": "assistant", "content": it["response"]}]
                 for it in items]
        return self.model.score(convs, batch_size=self.batch_size)


class FeedbackScore:
    needs_baseline = True

    def __init__(self, labeler: str | None, *, constitution: str | None = None,
                 principle_ids: list[str] | None = None, principles: int = 1,
                 few_shot: int = 2, prompts_dir: str | None = None, dtype: str = "float32",
                 batch_size: int = 8, seed: int = 0):
        from cai.generation import make_generator
        from cai.scoring.preference import Feedback, ScoringOptions, load_inputs

        # the constitution and templates fail here, before any model loads
        found, self.pool, templates = load_inputs(constitution, principle_ids, prompts_dir)
        self.feedback = Feedback(found, templates, few_shot, cot=False, seed=seed)
        self.options = ScoringOptions(principles=principles, seed=seed)  # both orders, no CoT
        self.labeler = make_generator("hf", labeler, dtype=dtype, batch_size=batch_size)
        self.too_long = 0  # comparisons over the labeler's context (scored 0.5)

    def __call__(self, items: list[dict]) -> list[float]:
        from cai.scoring.labels import ensemble
        from cai.scoring.preference import score

        tasks = [{"key": it["key"], "prompt": it["prompt"], "first": it["response"],
                  "second": it["baseline"]} for it in items]
        out = []
        for votes, _ in score(self.labeler, self.feedback, tasks, self.pool, self.options):
            if votes is None:
                self.too_long += 1
                out.append(0.5)  # no information either way
            else:
                out.append(ensemble([v["p_first"] for v in votes]))  # P(policy's answer better)
        return out


class FunctionScore:
    needs_baseline = False

    def __init__(self, spec: str):
        self.spec = spec
        self.function = load_function(spec)

    def __call__(self, items: list[dict]) -> list[float]:
        values = self.function([it["prompt"] for it in items], [it["response"] for it in items])
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise CaiError(f"ppo.reward_function {self.spec}: must return a list of numbers, "
                           f"got {type(values).__name__}") from None
        if len(values) != len(items):
            raise CaiError(f"ppo.reward_function {self.spec}: returned {len(values)} rewards for "
                           f"{len(items)} responses")
        if not all(math.isfinite(v) for v in values):
            raise CaiError(f"ppo.reward_function {self.spec}: returned a reward that is not a "
                           "finite number")
        return values


class ClassifierScore:
    """r = two_sided_reward(P(decline | prompt), P(refuses | prompt, answer), weights), each
    prompt's P(decline) computed once (the same prompts come back every pass)."""

    needs_baseline = False

    def __init__(self, folder: str, weights: dict | None = None):
        from cai.scoring.classifier import Classifier
        from cai.scoring.rewards import check_weights

        self.weights = check_weights(weights, "ppo.reward_weights")
        self.classifier = Classifier.load(folder)  # a one-line error if it is not one
        missing = [k for k in ("request", "answer") if k not in self.classifier.heads]
        if missing:
            raise CaiError(f"ppo.classifier: {folder} has no {' and no '.join(missing)} head "
                           "(the two-sided reward reads both)")
        self.declines: dict[str, float] = {}  # prompt text -> P(decline)

    def __call__(self, items: list[dict]) -> list[float]:
        from cai.scoring.rewards import two_sided_reward

        prompts = [it["prompt"] for it in items]
        new = list(dict.fromkeys(p for p in prompts if p not in self.declines))
        if new:
            self.declines.update(zip(new, self.classifier.p_decline(new)))
        refuses = self.classifier.p_refuses(prompts, [it["response"] for it in items])
        return [two_sided_reward(self.declines[p], r, self.weights)
                for p, r in zip(prompts, refuses)]


def load_function(spec: str):
    """The callable named by `module:function` or `path/to/file.py:function`."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name.isidentifier():
        raise CaiError(f"ppo.reward_function: '{spec}' is not module:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise CaiError(f"ppo.reward_function: {path}: no such file")
        module_spec = importlib.util.spec_from_file_location(f"cai_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except ImportError as e:
            raise CaiError(f"ppo.reward_function: {path}: {e}") from None
    else:
        added = os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())  # a module next to the config, as with python -m
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise CaiError(f"ppo.reward_function: cannot import '{module_name}' ({e})") from None
        finally:
            if added:
                sys.path.remove(os.getcwd())
    function = getattr(module, name, None)
    if not callable(function):
        raise CaiError(f"ppo.reward_function: '{module_name}' has no function '{name}'")
    return function


def make_source(opts, seed: int, device: str | None = None):
    """The reward source the `ppo:` section names (exactly one of reward_model, labeler,
    reward_function, classifier; checked by the section)."""
    if opts.reward_model:
        return RewardModelScore(opts.reward_model, opts.generation_batch_size, device)
    if opts.reward_function:
        return FunctionScore(opts.reward_function)
    if opts.classifier:
        return ClassifierScore(opts.classifier, opts.reward_weights)
    return FeedbackScore(opts.labeler, constitution=opts.constitution,
                         principle_ids=opts.principle_ids, principles=opts.feedback_principles,
                         few_shot=opts.few_shot, prompts_dir=opts.prompts_dir,
                         dtype=opts.labeler_dtype, batch_size=opts.generation_batch_size,
                         seed=seed)
