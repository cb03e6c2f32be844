"""`cai train grpo` and the PPO loop's grpo advantage on tiny models: the config and its errors,
the per-answer advantages, a behaviour learnt on one kind of prompt only, the k3 KL in the
loss, and the constitutional classifier's two-sided reward as a reward source.

The policy is the tiny random model after a short full fine-tune on canned answers, four to
each kind of prompt (KIND_A and KIND_B), one of each four saying "Yes": it tells the kinds
apart (their other answers differ) and starts with "Yes" a quarter to a third of the time.
"""

from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cai, write_jsonl

from cai.foundation.errors import CaiError
from cai.train import sft, trainer
from cai.train.ppo import grpo, rewards
from cai.train.ppo import loop as ppo

ANSWERS = ["Yes, gladly.", "No, sorry.", "Maybe later.", "I am not sure."]
ANSWERS_B = ["Yes, it is blue.", "The sea is deep.", "Waves are high there.", "Fish live in it."]
KIND_A = [f"KIND_A: may I borrow the red book number {i}?" for i in range(6)]
KIND_B = [f"KIND_B: tell me about the blue sea, part {i}." for i in range(6)]
PROMPTS = [{"id": f"a{i}", "prompt": p} for i, p in enumerate(KIND_A)] + \
    [{"id": f"b{i}", "prompt": p} for i, p in enumerate(KIND_B)]
KIND_REWARD = f"{Path(__file__)}:yes_on_kind_a"


def answers(record: dict) -> list[str]:
    """The canned answers of a prompt's kind: each kind has its own, one of them saying yes."""
    return ANSWERS if record["id"].startswith("a") else ANSWERS_B


def yes_on_kind_a(prompts, responses):
    """1 for an answer starting with "yes" to a KIND_A prompt; KIND_B prompts pay 0 whatever
    the answer, so their groups carry no signal."""
    return [float("KIND_A" in p and r.lower().startswith("yes"))
            for p, r in zip(prompts, responses)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread (the tiny models' small matmuls run slower on two, tests/train/test_ppo)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy_model(tiny_model, tmp_path_factory):
    """The tiny model fully fine-tuned on each kind's canned answers: 150 steps, since after 30
    or 60 it did not yet tell the kinds apart (the same first-token probabilities on both),
    and GRPO then moved both kinds alike."""
    folder = tmp_path_factory.mktemp("grpo_sft")
    rows = [{"messages": [{"role": "user", "content": p["prompt"]},
                          {"role": "assistant", "content": answers(p)[(i + j) % 4]}]}
            for i, p in enumerate(PROMPTS) for j in range(8)]
    cfg = sft.load_config(None, [(k, str(v)) for k, v in {
        "model.name": tiny_model, "data.path": write_jsonl(folder / "sft.jsonl", rows),
        "data.max_length": 128, "lora.enabled": False, "training.output_dir": folder / "model",
        "training.max_steps": 150, "training.per_device_train_batch_size": 16,
        "training.learning_rate": 1e-2, "training.lr_scheduler_type": "constant",
        "training.save_strategy": "no", "training.report_to": "none",
        "training.disable_tqdm": True, "training.logging_steps": 150,
        "training.seed": 0}.items()])
    sft.train(cfg)
    return folder / "model"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("grpo_prompts") / "prompts.jsonl", PROMPTS)


def config(model, prompts, out, **options):
    """A resolved `cai train grpo` config; options are `section__key=value`."""
    base = {"model.name": model, "data.path": prompts, "data.max_length": 256,
            "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0,
            "ppo.reward_function": KIND_REWARD, "ppo.prompts_per_step": 4,
            "ppo.max_new_tokens": 6, "ppo.ppo_epochs": 2, "ppo.generation_batch_size": 16,
            "ppo.normalize_reward": False, "ppo.no_eos_penalty": 0,
            "training.output_dir": out, "training.report_to": "none",
            "training.max_steps": 2, "training.learning_rate": 5e-3,
            "training.per_device_train_batch_size": 8, "training.save_strategy": "no",
            "training.seed": 0}
    base.update({k.replace("__", "."): v for k, v in options.items()})
    return grpo.load_config(None, [(k, str(v)) for k, v in base.items()])


# --------------------------------------------------------------------------------------------
# The config


def test_grpo_is_the_ppo_loop_with_grpo_defaults(tmp_path):
    cfg = config("m", "p", tmp_path)
    assert trainer("grpo") is grpo and cfg.algo == "grpo"
    assert (cfg.options.advantage, cfg.options.samples_per_prompt) == ("grpo", 4)
    assert cfg.options.scale_by_std and not cfg.options.kl_in_loss
    assert "ppo" in cfg.as_dict() and "grpo" not in cfg.as_dict()  # the same ppo: section
    assert config("m", "p", tmp_path, ppo__advantage="rloo").options.advantage == "rloo"
    shipped = grpo.load_config(ROOT / "configs" / "grpo.yaml", [])
    assert shipped.options.classifier and shipped.options.advantage == "grpo"
    assert shipped.options.reward_weights == {"harmful-help": 1.0, "needless-refusal": 1.0}
    # `cai train ppo` takes the same option
    assert ppo.load_config(ROOT / "configs" / "ppo.yaml",
                           [("ppo.advantage", "grpo")]).options.advantage == "grpo"


def test_grpo_config_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(CaiError, match=r"^ppo.advantage grpo needs ppo.samples_per_prompt of "
                                       r"at least 2 \(the baseline is the mean of the prompt's "
                                       r"answers\), got 1$"):
        config("m", "p", tmp_path, ppo__samples_per_prompt=1)
    with pytest.raises(CaiError, match="name one reward source.*ppo.classifier .*got "
                                       "reward_function, classifier"):
        config("m", "p", tmp_path, ppo__classifier="clf")
    with pytest.raises(CaiError, match="ppo.advantage must be gae, rloo or grpo, got 'ppg'"):
        config("m", "p", tmp_path, ppo__advantage="ppg")
    with pytest.raises(CaiError, match="reward_weights .* needs ppo.classifier"):
        config("m", "p", tmp_path, ppo__reward_weights="{harmful-help: 2}")
    with pytest.raises(CaiError, match="ppo.reward_weights: unknown reward part 'harm'"):
        config("m", "p", tmp_path, ppo__reward_function="", ppo__classifier="clf",
               ppo__reward_weights="{harm: 2}")
    weights = config("m", "p", tmp_path, ppo__reward_function="", ppo__classifier="clf",
                     ppo__reward_weights="{harmful-help: 2}").options.reward_weights
    assert weights == {"harmful-help": 2}  # a mapping on the command line

    def train(*options):
        return run_cai("train", "grpo", ROOT / "configs" / "grpo.yaml", "--model.name", "m",
                       "--training.output_dir", tmp_path / "out", *options)

    for options, message in (
            (["--ppo.samples_per_prompt", 1],
             "ppo.advantage grpo needs ppo.samples_per_prompt of at least 2 (the baseline is "
             "the mean of the prompt's answers), got 1"),
            (["--ppo.reward_function", "mod:fn"],
             "ppo: name one reward source: ppo.reward_model (a `cai train rm` folder), "
             "ppo.labeler (AI feedback), ppo.reward_function (module:function) or "
             "ppo.classifier (a classifier folder); got reward_function, classifier")):
        r = train(*options)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.splitlines() == [f"cai: error: {message}"]  # one line, no traceback


# --------------------------------------------------------------------------------------------
# Advantages and learning


def test_grpo_advantages_are_per_answer_group_relative(policy_model, prompts, tmp_path):
    """One advantage per answer, on every one of its tokens: (r - group mean) / group std, or
    with scale_by_std false (Dr. GRPO) r - group mean; no further whitening."""
    from cai.train.ppo.rollout import Rollout

    lengths = [1, 3, 2, 4, 2, 2, 5, 1]
    rollout = Rollout.build([[1]] * 8, [[5] * n for n in lengths], eos_ids=[])
    final = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])  # two groups of 4
    kl = torch.zeros(rollout.mask.shape)
    h, s = 3 ** 0.5 / 2, 1.5 ** 0.5  # 0.5 / sqrt(1/3), 1 / sqrt(2/3): Bessel-corrected stds
    for scale, expected in ((True, [h, -h, -h, h, s, -s, 0, 0]),
                            (False, [0.5, -0.5, -0.5, 0.5, 1, -1, 0, 0])):
        cfg = config(policy_model, prompts, tmp_path, ppo__prompts_per_step=2,
                     ppo__scale_by_std=scale, training__per_device_train_batch_size=4)
        advantages, returns = ppo.PPOTrainer(cfg, log=lambda *_: None).advantages(
            rollout, final, kl)
        assert returns is None
        for row, n in enumerate(lengths):
            assert advantages[row, :n].tolist() == pytest.approx([expected[row]] * n, rel=1e-3)
            assert advantages[row, n:].abs().sum() == 0


def p_yes(trainer, texts: list[str], adapter: bool = True) -> float:
    """The mean probability of "Yes" as the answer's first token (the policy's, or with the
    adapter off the starting model's), read from the model's logits."""
    from cai.train.ppo.rollout import answer_forward, model_inputs

    yes = trainer.tokenizer("Yes", add_special_tokens=False)["input_ids"]
    assert yes == trainer.tokenizer("Yes, gladly.", add_special_tokens=False)["input_ids"][:1]
    ids = [trainer.generator.encode(trainer.messages({"prompt": t})) for t in texts]
    inputs, width = model_inputs(ids, [yes] * len(ids), trainer.tokenizer.pad_token_id,
                                 trainer.device)
    trainer.model.eval()
    with torch.no_grad(), nullcontext() if adapter else trainer.model.disable_adapter():
        logits, _, _ = answer_forward(trainer.model, None, inputs, width, 1.0)
    trainer.model.train()
    return logits[:, 0].softmax(-1)[:, yes[0]].mean().item()


def test_grpo_learns_a_behaviour_only_where_it_is_rewarded(policy_model, prompts, tmp_path):
    """"Yes" pays on KIND_A prompts only: there, groups whose answers differ move P(Yes) up;
    on KIND_B every answer scores 0, so each group's advantages are exactly 0 and only the
    (k3, in the loss) KL term and what the shared weights carry over act there. Measured
    here with training seeds 0-7 (12 steps of 4 prompts x 4 answers): P(Yes) on KIND_A
    0.38 -> 0.78-0.85, on KIND_B 0.27 -> 0.17-0.34."""
    cfg = config(policy_model, prompts, tmp_path, training__max_steps=12,
                 ppo__kl_in_loss=True, ppo__kl_coef=0.05)
    run = ppo.PPOTrainer(cfg, log=lambda *_: None)
    before = p_yes(run, KIND_A, adapter=False), p_yes(run, KIND_B, adapter=False)
    assert all(0.1 < p < 0.5 for p in before), before
    steps = [run.step(n) for n in range(12)]
    after = p_yes(run, KIND_A), p_yes(run, KIND_B)
    assert after[0] > before[0] + 0.25 and after[0] > 0.6, (before, after)
    assert abs(after[1] - before[1]) < min(0.15, 0.5 * (after[0] - before[0])), (before, after)
    assert all(m["kl_penalty"] == 0 and "loss/kl" in m for m in steps)  # the KL is in the loss
    assert all("loss/value" not in m for m in steps) and run.value_head is None  # no critic


def test_cli_trains_with_the_shipped_config(policy_model, prompts, tmp_path):
    """`cai train grpo configs/grpo.yaml` with a reward function instead of the classifier (an
    empty value clears a key the file sets)."""
    out = tmp_path / "run"
    r = run_cai("train", "grpo", ROOT / "configs" / "grpo.yaml", "--model.name", policy_model,
                "--data.path", prompts, "--data.eval_path", "", "--ppo.classifier", "",
                "--ppo.reward_weights", "", "--ppo.helpful_prompts", "",
                "--ppo.reward_function", KIND_REWARD, "--ppo.normalize_reward", "false",
                "--ppo.prompts_per_step", 2, "--ppo.max_new_tokens", 4,
                "--training.max_steps", 1, "--training.output_dir", out,
                "--training.report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cai train grpo: 1 steps, reward" in r.stdout and str(out) in r.stdout
    resolved = (out / "cai_config.yaml").read_text()
    assert resolved.startswith("# resolved config of `cai train grpo`")
    assert "\nppo:\n" in resolved and "advantage: grpo" in resolved
    assert (out / "adapter_model.safetensors").is_file() and not (out / ppo.VALUE_HEAD).exists()


# --------------------------------------------------------------------------------------------
# The classifier's two-sided reward


@pytest.fixture(scope="module")
def classifier_folder(tiny_model, tmp_path_factory) -> Path:
    """A constitutional classifier on the tiny model (layer 1: 2 x 64 features), with heads
    fitted to random features and labels."""
    from cai.scoring.classifier import Backbone, Classifier, fit_head

    g = torch.Generator().manual_seed(0)
    heads = {kind: fit_head(torch.randn(32, 128, generator=g), torch.rand(32, generator=g))
             for kind in ("request", "answer")}
    folder = tmp_path_factory.mktemp("classifier")
    config = {"backbone": str(tiny_model), "layers": [1], "thresholds": {}}
    Classifier(config, heads, Backbone(str(tiny_model))).save(folder)
    return folder


def test_classifier_reward_is_the_two_sided_reward_of_its_probabilities(
        classifier_folder, tmp_path):
    from cai.scoring.classifier import Classifier
    from cai.scoring.rewards import two_sided_reward

    weights = {"harmful-help": 2.0, "needless-refusal": 0.5}
    cfg = config("m", "p", tmp_path, ppo__reward_function="",
                 ppo__classifier=classifier_folder, ppo__reward_weights=str(weights))
    source = rewards.make_source(cfg.options, seed=0)
    assert isinstance(source, rewards.ClassifierScore)
    prompts = [KIND_A[0], KIND_B[0], KIND_A[0], KIND_A[1]]
    answers = ["Yes, gladly.", "No, sorry.", "I can't help with that.", "Maybe later."]
    items = [{"key": str(i), "prompt": p, "messages": [], "response": a, "baseline": None}
             for i, (p, a) in enumerate(zip(prompts, answers))]
    got = source(items)

    clf = Classifier.load(classifier_folder)
    unique = list(dict.fromkeys(prompts))  # P(decline) once per prompt, in this order
    decline = dict(zip(unique, clf.p_decline(unique)))
    refuses = clf.p_refuses(prompts, answers)
    want = [two_sided_reward(decline[p], r, weights) for p, r in zip(prompts, refuses)]
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 6) for v in got)) == 4 and all(-2 <= v <= 2 for v in got)

    asked = []  # P(decline) is cached by prompt text: asked again only for a new prompt
    source.classifier.p_decline = lambda texts: asked.append(texts) or [0.5] * len(texts)
    source(items + [{**items[0], "prompt": "A new prompt."}])
    assert asked == [["A new prompt."]]

    with pytest.raises(CaiError, match="not a classifier folder"):
        rewards.ClassifierScore(str(tmp_path))
