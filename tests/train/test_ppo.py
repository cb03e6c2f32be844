"""`cai train ppo` on tiny models: learning (gae, rloo), resume, QLoRA, reward sources, CLI, export.

The policy is the tiny random model after a short full fine-tune on four canned answers
("Yes, gladly." and three others, equally often for every prompt), so it ends its answers and
starts out saying "yes" about a quarter of the time; the reward function pays 1 for "yes".
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TOPICS, read_records, refusal_pairs, run_cai, write_jsonl

from cai.foundation.errors import CaiError
from cai.train import common, sft
from cai.train.ppo import loop as ppo
from cai.train.ppo import rewards

ANSWERS = ["Yes, gladly.", "No, sorry.", "Maybe later.", "I am not sure."]
PROMPTS = [{"id": f"q{i}", "prompt": f"Question {i}: may I have item {i}?",
            "response": ANSWERS[i % 4]} for i in range(8)]
SAYS_YES = f"{Path(__file__)}:says_yes"


class Boom:
    """Unpickling this runs code: it creates the file `path` (what a hostile run folder does)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def says_yes(prompts, responses):
    """The test's reward: 1 for an answer with "yes" in it, else 0."""
    return [1.0 if "yes" in r.lower() else 0.0 for r in responses]


def wrong_length(prompts, responses):
    return [0.0]


def refuses(prompts, responses):
    """1 for an answer that declines (the slow real-model test's reward)."""
    return [float(any(w in r.lower() for w in ("sorry", "can't", "cannot"))) for r in responses]


def length(prompts, responses):
    """Longer is better: a reward that varies between the random tiny model's answers."""
    return [len(r) / 10 for r in responses]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core machine the tiny models' small matmuls ran the
    16-step learning test in 10 s with one thread and 112 s with two (the same numbers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy_model(tiny_model, tmp_path_factory):
    """The tiny model fully fine-tuned (30 steps) on the canned answers: it ends its answers
    (about 90% within 8 tokens) and says "yes" in about a fifth of them."""
    folder = tmp_path_factory.mktemp("ppo_sft")
    rows = [{"messages": [{"role": "user", "content": p["prompt"]},
                          {"role": "assistant", "content": ANSWERS[(i + j) % 4]}]}
            for i, p in enumerate(PROMPTS) for j in range(8)]
    data = write_jsonl(folder / "sft.jsonl", rows)
    cfg = sft.load_config(None, [(k, str(v)) for k, v in {
        "model.name": tiny_model, "data.path": data, "data.max_length": 128,
        "lora.enabled": False, "training.output_dir": folder / "model",
        "training.max_steps": 30, "training.per_device_train_batch_size": 16,
        "training.learning_rate": 1e-2, "training.lr_scheduler_type": "constant",
        "training.save_strategy": "no",
        "training.report_to": "none", "training.disable_tqdm": True,
        "training.logging_steps": 30, "training.seed": 0}.items()])
    sft.train(cfg)
    return folder / "model"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ppo_prompts") / "prompts.jsonl", PROMPTS)


def config(model, prompts, out, **options):
    """A resolved ppo config; options are `section__key=value`."""
    base = {"model.name": model, "data.path": prompts, "data.max_length": 256,
            "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0,
            "ppo.reward_function": SAYS_YES, "ppo.prompts_per_step": 8,
            "ppo.max_new_tokens": 8, "ppo.ppo_epochs": 2, "ppo.generation_batch_size": 8,
            "training.output_dir": out, "training.report_to": "none",
            "training.max_steps": 2, "training.learning_rate": 5e-3,
            "training.per_device_train_batch_size": 4, "training.save_strategy": "no",
            "training.seed": 0}
    base.update({k.replace("__", "."): v for k, v in options.items()})
    return ppo.load_config(None, [(k, str(v)) for k, v in base.items()])


def metrics(out: Path) -> list[dict]:
    return [m for m in read_records(out / "metrics.jsonl") if "reward/mean" in m]


@pytest.mark.parametrize("name,advantage", [("ppo.yaml", "rloo"), ("ppo-qlora-7b.yaml", "gae")])
def test_shipped_configs_load(name, advantage):
    cfg = ppo.load_config(ROOT / "configs" / name, [])
    assert cfg.options.reward_model and cfg.options.advantage == advantage
    assert common.training_arguments(cfg).learning_rate == cfg.training["learning_rate"]


def test_config_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(CaiError, match="rloo needs ppo.samples_per_prompt of at least 2"):
        config("m", "p", tmp_path, ppo__advantage="rloo")
    with pytest.raises(CaiError, match="name one reward source.*got reward_model, "
                                       "reward_function"):
        config("m", "p", tmp_path, ppo__reward_model="rm")
    with pytest.raises(CaiError, match="name one reward source"):
        config("m", "p", tmp_path, ppo__reward_function="")
    with pytest.raises(CaiError, match="kl_estimator must be k1, k2 or k3"):
        config("m", "p", tmp_path, ppo__kl_estimator="k4")
    with pytest.raises(CaiError, match="critic reward_model .* needs ppo.reward_model and "
                                       "ppo.advantage gae"):
        config("m", "p", tmp_path, ppo__critic="reward_model")
    with pytest.raises(CaiError, match="critic must be policy or reward_model"):
        config("m", "p", tmp_path, ppo__critic="value")


def test_generate_ids_stop_at_eos_and_chat_decodes_them(policy_model):
    from cai.generation import SamplingParams, make_generator

    gen = make_generator("hf", str(policy_model), dtype="float32", batch_size=3)
    convs = [[{"role": "user", "content": p["prompt"]}] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=1)
    ids = gen.generate_ids(convs, params)
    eos = gen.eos_token_ids
    assert len(ids) == len(convs)
    for answer in ids:
        assert 1 <= len(answer) <= 8 and not any(t in eos for t in answer[:-1])
        assert answer[-1] in eos or len(answer) == 8
    assert sum(a[-1] in eos for a in ids) >= 5  # the fine-tuned model ends its answers
    texts = gen.chat(convs, params)  # the same seed: the same tokens, decoded
    assert texts == [gen.tokenizer.decode(a[:-1] if a[-1] in eos else a,
                                          skip_special_tokens=True).strip() for a in ids]
    assert gen.stats.generated_tokens == sum(map(len, ids))


# --------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("advantage", ["gae", "rloo"])
def test_reward_rises_with_bounded_kl(policy_model, prompts, tmp_path, advantage):
    """16 answers a step (each prompt twice), 24 steps: the share of answers saying "yes" rises
    from about 0.3 to over 0.6 (first four steps against the last four). Measured here with
    training seeds 0-3: gae 0.28-0.41 -> 0.66-0.72, rloo 0.30-0.36 -> 0.63-0.70; 16 steps were
    not enough for every seed (0.30 -> 0.52). The start depends on the random stream (0.47 on a
    GPU), so the test asks for a rise and an end point, not a starting point."""
    out = tmp_path / advantage
    opts = {"ppo__advantage": advantage, "training__max_steps": 24,
            "training__learning_rate": 2e-3, "training__per_device_train_batch_size": 8}
    if advantage == "rloo":  # the two answers to a prompt are each other's baseline
        opts.update(ppo__prompts_per_step=8, ppo__samples_per_prompt=2)
    else:
        opts.update(ppo__prompts_per_step=16)
    results = ppo.train(config(policy_model, prompts, out, **opts))
    rows = metrics(out)
    assert [m["step"] for m in rows] == list(range(1, 25))
    first = sum(m["reward/mean"] for m in rows[:4]) / 4
    last = sum(m["reward/mean"] for m in rows[-4:]) / 4
    assert last > first + 0.15 and last > 0.6, (first, last)
    assert sum(m["response/no_eos"] for m in rows) / len(rows) < 0.25  # answers end
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # step 1 samples the reference
    assert max(abs(m["kl"]) for m in rows[-4:]) < 8.0  # nats per answer of ~5 tokens
    for key in ("entropy", "policy/clip_frac", "policy/approx_kl", "loss/policy",
                "response/length", "kl_coef", "time/generation", "time/scoring",
                "time/training"):
        assert all(key in m for m in rows), key
    assert ("value/explained_variance" in rows[0]) == (advantage == "gae")
    assert ("loss/value" in rows[0]) == (advantage == "gae")
    assert results["train_steps"] == 24
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / ppo.VALUE_HEAD).is_file() == (advantage == "gae")


def test_prompts_come_once_per_pass(policy_model, prompts, tmp_path):
    cfg = config(policy_model, prompts, tmp_path, ppo__prompts_per_step=3,
                 training__per_device_train_batch_size=1)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    seen = [r["id"] for step in range(8) for r in trainer.step_prompts(step)]  # 3 passes of 8
    for start in (0, 8, 16):
        assert sorted(seen[start:start + 8]) == sorted(p["id"] for p in PROMPTS)
    assert seen[:8] != seen[8:16]  # each pass has its own order


def test_helpful_prompts_are_mixed_into_the_rollouts(policy_model, prompts, tmp_path):
    """RL on red-team prompts alone rewards a policy that refuses everything (docs/training.md:
    borderline over-refusal 0.30 -> 0.95); ppo.helpful_prompts adds ordinary ones."""
    helpful = write_jsonl(tmp_path / "helpful.jsonl", [
        {"id": f"h{i}", "prompt": f"Name a colour, {i}."} for i in range(10)])
    cfg = config(policy_model, prompts, tmp_path / "out", ppo__helpful_prompts=helpful,
                 ppo__helpful_ratio=0.5, ppo__prompts_per_step=4)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    ids = [r["id"] for r in trainer.prompts]
    assert len(ids) == 12 and sum(i.startswith("helpful:h") for i in ids) == 4  # 0.5 x 8
    seen = {r["id"] for step in range(3) for r in trainer.step_prompts(step)}
    assert seen == set(ids)  # one pass of 12 over three steps of 4 reaches both kinds
    with pytest.raises(CaiError, match="helpful_prompts has no 'response'"):
        config("m", "p", tmp_path, ppo__reward_function="", ppo__labeler="m",
               ppo__feedback_baseline="response", ppo__helpful_prompts=helpful)


# --------------------------------------------------------------------------------------------
# Resume, CLI, export


def test_cli_resume_equals_uninterrupted_and_export(policy_model, prompts, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    opts = ["--model.name", policy_model, "--data.path", prompts, "--data.eval_path", "",
            "--lora.r", 8, "--lora.alpha", 16, "--ppo.reward_model", "",
            "--ppo.reward_function", SAYS_YES, "--ppo.max_new_tokens", 8,
            "--ppo.advantage", "gae", "--ppo.prompts_per_step", 8, "--ppo.samples_per_prompt", 1,
            "--ppo.ppo_epochs", 2, "--ppo.adaptive_kl", "true", "--ppo.kl_target", 0.01,
            "--training.max_steps", 4, "--training.save_steps", 2,
            "--training.learning_rate", 5e-3, "--training.lr_scheduler_type", "linear",
            "--training.report_to", "none"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    r = run_cai("train", "ppo", ROOT / "configs" / "ppo.yaml", *opts,
                "--training.output_dir", whole)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("step ") >= 4 and "cai train ppo: 4 steps" in r.stdout
    for name in ("checkpoint-2/adapter_model.safetensors", "checkpoint-2/optimizer.pt",
                 "checkpoint-2/value_head.pt", "checkpoint-2/ppo_state.json",
                 "adapter_config.json", "cai_config.yaml", "train_results.json"):
        assert (whole / name).exists(), name
    kl_coefs = [m["kl_coef"] for m in metrics(whole)]
    assert kl_coefs[0] == 0.05 and kl_coefs[-1] != kl_coefs[0]  # adaptive, and saved

    resumed.mkdir()  # a run killed after step 3: its last checkpoint and its metrics
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    lines = (whole / "metrics.jsonl").read_text().splitlines()
    # killed while appending the line of step 4: half a line at the end
    (resumed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:12])
    r = run_cai("train", "ppo", ROOT / "configs" / "ppo.yaml", *opts,
                "--training.output_dir", resumed)
    assert r.returncode == 2 and "pass --resume" in r.stderr
    r = run_cai("train", "ppo", ROOT / "configs" / "ppo.yaml", *opts,
                "--training.output_dir", resumed, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = metrics(whole), metrics(resumed)
    assert [m["step"] for m in b] == [1, 2, 3, 4]  # step 3 of the killed run is replaced
    for key in ("reward/mean", "kl", "loss/policy", "loss/value", "kl_coef"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], abs=1e-5), key
    wa, wb = load_file(whole / "adapter_model.safetensors"), \
        load_file(resumed / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert any(v.abs().max() > 0 for k, v in wa.items() if "lora_B" in k)  # it trained

    # a checkpoint file that would run code when unpickled is refused, and nothing runs
    marker = tmp_path / "ran"
    torch.save({"python": Boom(marker)}, resumed / "checkpoint-2" / "rng_state.pt")
    r = run_cai("train", "ppo", ROOT / "configs" / "ppo.yaml", *opts,
                "--training.output_dir", resumed, "--resume", "--training.max_steps", 5)
    assert r.returncode == 2 and "refusing to load it" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not marker.exists()

    merged = tmp_path / "merged"
    r = run_cai("export", "--adapter", whole, "--out", merged, "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    ids = torch.tensor([[1, 520, 2683, 28, 1010, 314]])
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(policy_model).eval()
        plain = base(ids).logits
        policy = PeftModel.from_pretrained(base, whole).eval()(ids).logits
    assert torch.allclose(exported, policy, atol=1e-4)
    assert not torch.allclose(exported, plain, atol=1e-3)


def test_cli_user_errors_are_one_line(tiny_model, prompts, tmp_path):
    def train(*options):
        return run_cai("train", "ppo", ROOT / "configs" / "ppo.yaml", "--model.name", tiny_model,
                       "--data.path", prompts, "--data.eval_path", "",
                       "--ppo.advantage", "gae", "--ppo.prompts_per_step", 8,
                       "--ppo.samples_per_prompt", 1,
                       "--training.output_dir", tmp_path / "out", "--training.max_steps", 1,
                       "--training.report_to", "none", *options)

    cases = [
        (["--ppo.reward_model", tmp_path / "missing"],
         f"ppo.reward_model: {tmp_path / 'missing'}: no such folder (a `cai train rm` output)"),
        (["--ppo.reward_model", "", "--ppo.reward_function", "no_such_module_xyz:f"],
         ("ppo.reward_function: cannot import 'no_such_module_xyz' (No module named "
          "'no_such_module_xyz')")),
        (["--ppo.reward_model", "", "--ppo.reward_function", f"{Path(__file__)}:nope"],
         f"ppo.reward_function: '{Path(__file__)}' has no function 'nope'"),
        (["--ppo.reward_model", "", "--ppo.reward_function", "says_yes"],
         "ppo.reward_function: 'says_yes' is not module:function"),
        (["--ppo.reward_model", "", "--ppo.reward_function", f"{Path(__file__)}:wrong_length",
          "--ppo.max_new_tokens", 4],
         (f"ppo.reward_function {Path(__file__)}:wrong_length: returned 1 rewards for 8 "
          "responses")),
        (["--ppo.advantage", "rloo"],
         ("ppo.advantage rloo needs ppo.samples_per_prompt of at least 2 (the baseline is "
          "the mean of the other answers), got 1")),
        (["--ppo.prompts_per_step", 6, "--training.per_device_train_batch_size", 4],
         (f"{ROOT / 'configs' / 'ppo.yaml'}: a rollout batch of 6 answers (prompts_per_step "
          "x samples_per_prompt) does not split into minibatches of 4 "
          "(per_device_train_batch_size x gradient_accumulation_steps)")),
    ]
    for options, message in cases:
        r = train(*options)
        assert r.returncode == 2, (options, r.stderr[-2000:])
        assert r.stderr.count("cai: error:") == 1, options  # one line, no traceback
        assert r.stderr.splitlines()[-1] == f"cai: error: {message}", options
        assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------
# QLoRA


def test_qlora_policy_gets_lora_gradients_after_a_rollout(tiny_model, prompts, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra")

    cfg = config(tiny_model, prompts, tmp_path, quantization__load_in_4bit=True,
                 ppo__reward_function=f"{Path(__file__)}:length", ppo__max_new_tokens=4,
                 ppo__ppo_epochs=1)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
    records = trainer.step_prompts(0)
    rollout, _, _, _ = trainer.rollout(records, 0, [r["id"] for r in records])  # generate()
    assert trainer.model.training
    rows = torch.arange(len(rollout))
    advantages = rollout.mask.float()  # +1 everywhere: push every sampled token up
    trainer._micro_step(rollout, advantages, rollout.values + rollout.mask, rows,
                        rollout.mask.sum(), {})
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert len(grads) == 14
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert trainer.value_head.weight.grad.abs().sum() > 0
    trainer.optimizer.zero_grad()
    trainer.step(1)  # a whole step after another rollout moves every adapter
    assert all(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)


# --------------------------------------------------------------------------------------------
# Reward sources


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    """A `cai train rm` model (4 steps) on the tiny model's refusal-vs-compliance pairs."""
    folder = tmp_path_factory.mktemp("ppo_rm")
    data = write_jsonl(folder / "pairs.jsonl", refusal_pairs(TOPICS[:8]))
    out = folder / "rm"
    r = run_cai("train", "rm", ROOT / "configs" / "rm.yaml", "--model.name", tiny_model,
                "--data.path", data, "--data.eval_fraction", 0, "--data.max_length", 128,
                "--lora.r", 8, "--lora.alpha", 16, "--training.output_dir", out,
                "--training.max_steps", 4, "--training.per_device_train_batch_size", 8,
                "--training.learning_rate", 5e-3, "--training.eval_strategy", "no",
                "--training.save_strategy", "no", "--training.report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_the_critic_warm_up_says_how_much_it_explains(policy_model, prompts, tmp_path):
    """The warm-up fit logs how much of the first rollout's returns the fitted head explains,
    in sample, and says so when that is little (a reward-model critic whose prefix scores do
    not predict the final score explained 0.00 for a whole run, docs/training.md); without the
    warm-up nothing is logged."""
    logged = []
    cfg = config(policy_model, prompts, tmp_path, ppo__reward_function=f"{Path(__file__)}:length",
                 ppo__prompts_per_step=16, ppo__max_new_tokens=12, ppo__reward_stats_samples=32)
    trainer = ppo.PPOTrainer(cfg, log=logged.append)
    trainer.step(0)
    trainer.step(1)
    lines = [line for line in logged if line.startswith("critic warm-up:")]
    assert len(lines) == 1  # once, before the first update only
    fit = float(lines[0].split("explains ")[1].split(" ")[0])
    assert -1e-6 <= fit <= 1.0  # least squares with a bias: never below the mean's 0
    assert ("hardly predict" in lines[0]) == (fit < 0.1)
    quiet = []
    off = config(policy_model, prompts, tmp_path / "off", ppo__value_warmup=False,
                 ppo__reward_function=f"{Path(__file__)}:length", ppo__prompts_per_step=16,
                 ppo__max_new_tokens=12, ppo__reward_stats_samples=32)
    ppo.PPOTrainer(off, log=quiet.append).step(0)
    assert not any(line.startswith("critic warm-up:") for line in quiet)


def test_reward_model_rewards_normalized_by_a_dedicated_pass(
        policy_model, prompts, reward_model, tmp_path):
    """The shift and scale come from 256 answers of the starting policy sampled before the
    first step (not from the first rollout batch of 8), are saved in the run folder, and a
    rerun reads them back instead of sampling again."""
    from cai.train.rm import load_reward_model

    cfg = config(policy_model, prompts, tmp_path, ppo__reward_function="",
                 ppo__reward_model=reward_model, ppo__no_eos_penalty=0)
    assert cfg.options.reward_stats_samples == 256
    logged = []
    trainer = ppo.PPOTrainer(cfg, log=logged.append)
    assert trainer.value_head.weight.abs().max() == 0 and trainer.value_head.bias.item() == 0

    records = trainer.step_prompts(0)
    rollout, scores, items, _ = trainer.rollout(records, 5, [r["id"] for r in records])
    rm = load_reward_model(reward_model)
    convs = [[{"role": "user", "content": r["prompt"]},
              {"role": "assistant", "content": it["response"]}] for r, it in zip(records, items)]
    assert scores.tolist() == pytest.approx(rm.score(convs), abs=1e-5)
    for it, ids, ended in zip(items, rollout.response_ids, rollout.ended.tolist()):
        assert it["response"] == trainer.tokenizer.decode(ids[:-1] if ended else ids).strip()

    first = trainer.step(0)
    saved = json.loads((tmp_path / "reward_stats.json").read_text())
    assert saved["samples"] == 256
    assert (trainer.reward_shift, trainer.reward_scale) == (saved["shift"], saved["scale"])
    assert first["reward/normalized"] == pytest.approx(
        (first["reward/mean"] - saved["shift"]) / saved["scale"], abs=1e-5)
    # not the first batch's own statistics: its normalized mean is not forced to 0
    assert (trainer.reward_shift, trainer.reward_scale) != pytest.approx(
        (first["reward/mean"], first["reward/std"]), abs=1e-6)
    assert any("from 256 answers of the starting policy" in line for line in logged)

    logged.clear()
    again = ppo.PPOTrainer(cfg, log=logged.append)
    again.step(0)
    assert (again.reward_shift, again.reward_scale) == (saved["shift"], saved["scale"])
    assert any(line.startswith("reward normalization: from") for line in logged)


def test_prompt_and_answer_must_fit_the_reward_models_max_length(
        policy_model, prompts, reward_model, tmp_path):
    """The preference model was trained with max_length 128: an answer budget that cannot fit
    after a prompt is refused up front, naming the prompt (before: the answer was cut)."""
    cfg = config(policy_model, prompts, tmp_path, ppo__reward_function="",
                 ppo__reward_model=reward_model, ppo__max_new_tokens=120)
    with pytest.raises(CaiError, match=r"prompt 'q\d' takes \d+ tokens .* ppo.max_new_tokens "
                                       r"120 .* max_length 128"):
        ppo.PPOTrainer(cfg, log=lambda *_: None)


@pytest.mark.xfail(strict=False, reason=(
    "fragile since the 2026-12-04 package set (transformers 5.24/5.25, huggingface_hub 2.4, "
    "tokenizers 0.23.3): the tiny policy's 16 answers hold 74 answer tokens, cross-validation "
    "picks ridge 100 and the fit explains 0.03 of the returns (0.25 with says_yes); even the "
    "weakest ridge explains at most 0.15-0.34 in sample (length, says_yes, refuses): the tiny "
    "policy's states do not carry these rewards. The same code passed CI on 2026-12-02. "
    "test_value_head_fit_on_a_fixed_buffer_... checks the critic where they can. Issue 16."))
def test_value_head_fitted_before_the_first_update_explains_the_returns(
        policy_model, prompts, tmp_path):
    """The critic starts at zero and is fitted to the first rollout's returns: on that fixed
    buffer its values explain over half the returns' variance, after one solve. (Before: the
    values started at 0 or at a copied preference head, explained variance 0 or below, and
    the clipped value loss moved them by at most cliprange_value a rollout.)"""
    cfg = config(policy_model, prompts, tmp_path, ppo__reward_function=f"{Path(__file__)}:length",
                 ppo__prompts_per_step=16, ppo__max_new_tokens=12, training__max_steps=3,
                 ppo__reward_stats_samples=32)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    steps = [trainer.step(n) for n in range(3)]
    assert steps[0]["value/explained_variance"] > 0.5, steps[0]
    assert trainer.value_head.weight.abs().max() > 0
    assert trainer.state()["value_fitted"]
    off = config(policy_model, prompts, tmp_path / "off", ppo__value_warmup=False,
                 ppo__reward_function=f"{Path(__file__)}:length", ppo__prompts_per_step=16,
                 ppo__max_new_tokens=12, ppo__reward_stats_samples=32)
    cold = ppo.PPOTrainer(off, log=lambda *_: None).step(0)
    assert cold["value/explained_variance"] == pytest.approx(0.0, abs=1e-6)  # values all 0


def test_value_head_fit_on_a_fixed_buffer_explains_returns_its_features_can_carry(
        policy_model, prompts, tmp_path):
    """The critic's start, on a fixed rollout buffer whose returns a linear head *can* explain
    (a seeded linear function of the buffer's own hidden states, plus noise): one fit from the
    zero head explains over half their variance, and the fitted head, run through the
    trainer's own scoring forward pass (not the states captured at sampling time), gives the
    same values. This is the test issue 16 asked for; the xfailed test above asks the harder
    question of a real reward, which the tiny policy's features do not predict."""
    from cai.train.ppo import critic
    from cai.train.ppo.rollout import score_tokens

    cfg = config(policy_model, prompts, tmp_path, ppo__prompts_per_step=16,
                 ppo__max_new_tokens=12, ppo__reward_stats_samples=32)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    records = trainer.step_prompts(0)
    keys = [f"0:{r['id']}:{j}" for j, r in enumerate(records)]
    rollout, _, _, _ = trainer.rollout(records, 0, keys, keep_hidden=True)
    mask = rollout.mask
    assert trainer.value_head.weight.abs().max() == 0  # it starts at zero
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rollout.hidden.shape[-1], generator=g)
    signal = rollout.hidden @ w                                                  # (B, R)
    returns = (signal + 0.3 * signal[mask].std() * torch.randn(signal.shape, generator=g)) * mask

    def explained(values):
        err = (returns - values)[mask]
        return 1 - (err.var() / returns[mask].var()).item()

    assert explained(torch.zeros_like(returns)) == pytest.approx(0.0, abs=1e-6)
    fitted = critic.fit_head(trainer.value_head, rollout.hidden, returns, mask)
    assert explained(fitted) > 0.5
    trainer.model.eval()
    with torch.no_grad():
        score_tokens(trainer.model, trainer.value_head, rollout, trainer.tokenizer.pad_token_id,
                     trainer.device, trainer.opts.temperature,
                     trainer.args.per_device_eval_batch_size, trainer.accelerator.autocast,
                     trainer.keep_logits)
    assert torch.allclose(rollout.values[mask], fitted[mask], atol=1e-3 * fitted.abs().max())
    assert explained(rollout.values) > 0.5


def test_rloo_advantages_are_per_answer_and_not_recentred(policy_model, prompts, tmp_path):
    """RLOO: one advantage per answer, on every one of its tokens, centred per prompt by the
    leave-one-out baseline and only scaled by whitening. (Before: whitening over tokens
    re-centred them, so a long answer's tokens outweighed a short one's and each prompt's
    advantages no longer summed to 0.)"""
    from cai.train.ppo.rollout import Rollout

    cfg = config(policy_model, prompts, tmp_path, ppo__advantage="rloo",
                 ppo__prompts_per_step=2, ppo__samples_per_prompt=2)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    lengths = [1, 6, 2, 3]
    rollout = Rollout.build([[1]] * 4, [[5] * n for n in lengths], eos_ids=[])
    final = torch.tensor([1.0, 0.0, 0.5, 2.0])
    kl = torch.zeros(rollout.mask.shape)
    advantages, returns = trainer.advantages(rollout, final, kl)
    assert returns is None
    per_answer = torch.tensor([1.0, -1.0, -1.5, 1.5])  # R_i minus the other answer's R
    expected = per_answer / per_answer.std()
    for row, n in enumerate(lengths):
        assert advantages[row, :n].tolist() == pytest.approx([expected[row].item()] * n)
        assert advantages[row, n:].abs().sum() == 0
    assert advantages[:2, 0].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_feedback_rewards_are_the_labelers_debiased_preference(tiny_model, prompts, tmp_path):
    source = rewards.FeedbackScore(str(tiny_model), few_shot=1, seed=0)
    a, b = "No, sorry.", "Sure! First get the tools."
    items = [{"key": "k", "prompt": PROMPTS[0]["prompt"], "response": x, "baseline": y}
             for x, y in ((a, b), (b, a), (a, a))]
    ab, ba, same = source(items)
    assert 0 < ab < 1 and ab != 0.5
    assert ab + ba == pytest.approx(1.0, abs=1e-6)  # both orders averaged: no position bias
    assert same == pytest.approx(0.5, abs=1e-6)

    for baseline in ("response", "reference"):
        cfg = config(tiny_model, prompts, tmp_path / baseline, ppo__reward_function="",
                     ppo__labeler=tiny_model, ppo__feedback_baseline=baseline,
                     ppo__few_shot=0, ppo__max_new_tokens=4, ppo__ppo_epochs=1)
        trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
        m = trainer.step(0)
        assert 0 < m["reward/mean"] < 1 and m["reward/std"] > 0, baseline

    no_response = write_jsonl(tmp_path / "bare.jsonl", [{"id": "x", "prompt": "Hi"}])
    cfg = config(tiny_model, no_response, tmp_path / "bare", ppo__reward_function="",
                 ppo__labeler=tiny_model, ppo__feedback_baseline="response")
    with pytest.raises(CaiError, match="prompt 'x' has no 'response' text"):
        ppo.PPOTrainer(cfg, log=lambda *_: None)


def test_eval_prompts_are_scored_before_and_after(policy_model, prompts, tmp_path):
    out = tmp_path / "eval"
    results = ppo.train(config(policy_model, prompts, out, data__eval_path=prompts,
                               ppo__eval_limit=4, training__max_steps=2))
    evals = [m for m in read_records(out / "metrics.jsonl") if "eval/reward_mean" in m]
    assert [m["step"] for m in evals] == [0, 2]
    answers = read_records(out / "eval" / "step-0.jsonl")
    assert [a["id"] for a in answers] == ["q0", "q1", "q2", "q3"]
    assert sum(a["score"] for a in answers) / 4 == pytest.approx(evals[0]["eval/reward_mean"])
    assert all(a["kl"] == pytest.approx(0.0, abs=1e-4) for a in answers)  # before: reference
    assert results["eval/reward_mean_before"] == evals[0]["eval/reward_mean"]
    assert results["eval/reward_mean"] == evals[1]["eval/reward_mean"]


@pytest.mark.slow
def test_real_model_ppo_runs_evaluates_and_exports(tmp_path):
    """`cai train ppo configs/ppo.yaml` on the embedded SmolLM2-135M: 3 steps, held-out
    evaluation before and after, then `cai export --merge`."""
    out = tmp_path / "ppo"
    r = run_cai("train", "ppo", ROOT / "configs" / "ppo.yaml", "--ppo.reward_model", "",
                "--ppo.reward_function", f"{Path(__file__)}:refuses",
                "--data.eval_path", ROOT / "data" / "eval" / "red_team.jsonl",
                "--ppo.eval_limit", 8, "--ppo.max_new_tokens", 32,
                "--training.max_steps", 3, "--training.output_dir", out,
                "--training.report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "eval reward" in r.stdout and "eval KL" in r.stdout
    rows = metrics(out)
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-3)
    assert all(m["response/length"] > 1 and m["time/generation"] > 0 for m in rows)
    assert len(read_records(out / "eval" / "step-3.jsonl")) == 8
    merged = tmp_path / "merged"
    r = run_cai("export", "--adapter", out, "--out", merged, "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (merged / "model.safetensors").is_file()


def test_reward_model_critic_values_are_its_scores_of_the_answer_so_far(
        policy_model, prompts, reward_model, tmp_path):
    """`ppo.critic: reward_model`: the value of answer position t is the preference model's
    score of the prompt with answer[:t] as a finished answer, normalized like the reward at
    the start ((score - shift) / scale); at an ended answer's last token that prefix is the
    whole answer, so the value is its normalized reward. Then the value loss recalibrates the
    head's two numbers; the policy critic's path is untouched."""
    from cai.train.rm import load_reward_model

    cfg = config(policy_model, prompts, tmp_path, ppo__reward_function="",
                 ppo__reward_model=reward_model, ppo__no_eos_penalty=0,
                 ppo__critic="reward_model", ppo__critic_every=1, ppo__reward_stats_samples=32,
                 ppo__prompts_per_step=8, ppo__max_new_tokens=12)
    trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
    head = trainer.value_head
    assert head.weight.shape == (1, 1) and head.weight.item() == 0 and not trainer.value_fitted
    first = trainer.step(0)  # the reward's shift and scale, the head's start, one update
    shift, scale = trainer.reward_shift, trainer.reward_scale
    assert trainer.value_fitted and math.isfinite(first["value/explained_variance"])
    assert head.weight.item() != pytest.approx(1 / scale, rel=1e-6)  # the value loss moved it

    trainer.reward_critic.start_head(head, shift, scale)
    records = trainer.step_prompts(1)
    rollout, scores, _, _ = trainer.rollout(records, 7, [r["id"] for r in records])
    rm = load_reward_model(reward_model)
    checked = 0
    for b, record in enumerate(records):
        ids = rollout.response_ids[b]
        convs = [[{"role": "user", "content": record["prompt"]},
                  {"role": "assistant", "content": trainer.text(ids[:t])}]
                 for t in range(len(ids))]
        want = (torch.tensor(rm.score(convs)) - shift) / scale
        assert rollout.values[b, :len(ids)].tolist() == pytest.approx(want.tolist(), abs=1e-4)
        if rollout.ended[b]:  # the prefix before the end-of-sequence token is the answer
            assert rollout.values[b, len(ids) - 1].item() == pytest.approx(
                (scores[b].item() - shift) / scale, abs=1e-4)
            checked += 1
        assert (rollout.values[b, len(ids):] == 0).all()
    assert checked >= 2
    # every 3rd prefix: each position reads the latest scored one, the last position its own
    # (scored in other batches than above: equal up to float rounding, far below the gaps
    # between neighbouring prefixes' scores)
    trainer.reward_critic.every = 3
    every = trainer.reward_critic.features(rollout, [trainer.messages(r) for r in records])
    for b, ids in enumerate(rollout.response_ids):
        last = len(ids) - 1
        for t in range(last):
            assert every[b, t, 0].item() == pytest.approx(rollout.hidden[b, t - t % 3, 0].item(),
                                                          abs=1e-6)
        assert every[b, last, 0].item() == pytest.approx(rollout.hidden[b, last, 0].item(),
                                                         abs=1e-6)
    evaluated, _, _, _ = trainer.rollout(records, 7, [r["id"] for r in records], values=False)
    assert evaluated.hidden is None  # evaluation skips the critic's pass
