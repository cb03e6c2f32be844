"""cai.train.data: assistant-only labels on two chat templates, truncation, packing, collation."""

import json

import pytest
import torch
from conftest import CONV, CONVERSATIONS, SMOL_MARKED

from cai.foundation.errors import CaiError
from cai.train.data import (
    Collator,
    load_conversations,
    load_examples,
    pack,
    tokenize_all,
    tokenize_conversation,
)
from cai.train.losses import IGNORE_INDEX, token_logps

# Zephyr's layout, with SmolLM2's <|endoftext|> as the end of a turn
ZEPHYR = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|endoftext|>' "
          "+ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
# Llama 3's layout: a BOS, headers, trimmed content, end-of-turn text with no newline after it
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
          "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
# The same layouts with HF's generation markers, so transformers itself can tell us
# which tokens are the assistant's (our masking must not need them); SmolLM2's is
# conftest.SMOL_MARKED
MARKED = {
    "zephyr": ZEPHYR.replace(
        "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|endoftext|>' + '\n' }}",
        "{{ '<|' + m['role'] + '|>\n' }}{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] + '<|endoftext|>' }}{% endgeneration %}"
        "{% else %}{{ m['content'] + '<|endoftext|>' }}{% endif %}{{ '\n' }}"),
    "llama3": LLAMA3.replace("{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
                             "m['content'] | trim + '<|eot_id|>' }}",
                             "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
                             "{% if m['role'] == 'assistant' %}{% generation %}"
                             "{{ m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
                             "{% else %}{{ m['content'] | trim + '<|eot_id|>' }}{% endif %}"),
}


@pytest.fixture
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def labelled(tok, ids, labels):
    return [(tok.decode([i]), int(lab != IGNORE_INDEX)) for i, lab in zip(ids, labels)]


def test_smollm2_template_labels_token_by_token(tok):
    ids, labels = tokenize_conversation(tok, CONV)
    got = labelled(tok, ids, labels)
    system = ["<|im_start|>", "system", "\n", "You", " are", " a", " helpful", " AI", " assistant",
              " named", " Sm", "ol", "LM", ",", " trained", " by", " H", "ugging", " Face",
              "<|im_end|>", "\n"]
    header = ["<|im_start|>", "ass", "istant", "\n"]
    expected = ([(t, 0) for t in system]
                + [(t, 0) for t in ["<|im_start|>", "user", "\n", "Hi", "<|im_end|>", "\n"]]
                + [(t, 0) for t in header]
                + [(t, 1) for t in ["Hello", " there", ".", "<|im_end|>"]] + [("\n", 0)]
                + [(t, 0) for t in ["<|im_start|>", "user", "\n", "By", "e", "<|im_end|>", "\n"]]
                + [(t, 0) for t in header]
                + [(t, 1) for t in ["Good", "bye", "!", "<|im_end|>"]] + [("\n", 0)])
    assert got == expected
    assert all(lab == i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX)


def test_zephyr_template_labels_token_by_token(tok):
    tok.chat_template = ZEPHYR
    got = labelled(tok, *tokenize_conversation(tok, CONV))
    head = lambda role: [("<", 0), ("|", 0), (role, 0), ("|", 0), (">", 0), ("\n", 0)]  # noqa
    expected = (head("user") + [("Hi", 0), ("<|endoftext|>", 0), ("\n", 0)]
                + [("<", 0), ("|", 0), ("ass", 0), ("istant", 0), ("|", 0), (">", 0), ("\n", 0)]
                + [("Hello", 1), (" there", 1), (".", 1), ("<|endoftext|>", 1), ("\n", 0)]
                + head("user") + [("By", 0), ("e", 0), ("<|endoftext|>", 0), ("\n", 0)]
                + [("<", 0), ("|", 0), ("ass", 0), ("istant", 0), ("|", 0), (">", 0), ("\n", 0)]
                + [("Good", 1), ("bye", 1), ("!", 1), ("<|endoftext|>", 1), ("\n", 0)])
    assert got == expected


@pytest.mark.parametrize("template", ["smollm2", "zephyr", "llama3"])
def test_masks_equal_transformers_generation_markers(tok, template):
    """Our template-agnostic spans equal the assistant mask that transformers computes from
    `{% generation %}` markers, token by token, on three different layouts."""
    plain = {"smollm2": tok.chat_template, "zephyr": ZEPHYR, "llama3": LLAMA3}[template]
    marked = SMOL_MARKED if template == "smollm2" else MARKED[template]
    for conv in CONVERSATIONS:
        tok.chat_template = marked
        ref = tok.apply_chat_template(conv, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        tok.chat_template = plain
        ids, labels = tokenize_conversation(tok, conv)
        assert ids == list(ref["input_ids"])
        assert [int(x != IGNORE_INDEX) for x in labels] == list(ref["assistant_masks"]), conv


def test_all_tokens_when_not_assistant_only(tok):
    ids, labels = tokenize_conversation(tok, CONV, assistant_only=False)
    assert labels == ids


def test_truncation_counts(tok):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    late = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine " * 100}]
    convs = [CONV, long, late]
    examples, stats = tokenize_all(tok, convs, max_length=60, truncation="cut")
    # `long` loses its only assistant tokens: dropped; `late` keeps some: cut
    assert (stats.examples, stats.cut, stats.dropped) == (2, 1, 1)
    assert all(len(e["input_ids"]) <= 60 for e in examples)
    assert "1 cut to max_length, 1 dropped" in stats.summary()
    examples, stats = tokenize_all(tok, convs, max_length=60, truncation="drop")
    assert (stats.examples, stats.cut, stats.dropped) == (1, 0, 2)


def test_pack_best_fit_and_positions():
    ex = [{"input_ids": [n] * n, "labels": [n] * n} for n in (5, 3, 4, 2, 6)]
    rows = pack(ex, max_length=10, seed=0)
    assert sorted(len(r["input_ids"]) for r in rows) == [10, 10]  # 6+4 and 5+3+2
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert all(r["labels"][s] == IGNORE_INDEX for s in starts)  # no cross-example target
        # positions restart at each example and count up within it
        for s, e in zip(starts, starts[1:] + [len(r["input_ids"])]):
            assert r["position_ids"][s:e] == list(range(e - s))
            assert len(set(r["input_ids"][s:e])) == 1  # one example per segment
    assert pack(ex, 10, seed=0) == rows  # deterministic


@pytest.mark.parametrize("flatten", [False, True])
def test_packing_gives_same_per_example_loss_as_unpacked(tiny_model, tok, flatten):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    convs = [CONV] + CONVERSATIONS[1:] + [[{"role": "user", "content": f"Q{i}"},
                                           {"role": "assistant", "content": "A " * i}]
                                          for i in range(1, 6)]
    examples, _ = tokenize_all(tok, convs, max_length=128)
    rows = pack(examples, max_length=128, seed=1)
    assert len(rows) < len(examples)  # some rows really hold several examples

    def per_example_nll(batch):
        """Summed NLL per example segment, keyed by the example's token ids."""
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits  # (B, T, V)
        logps = token_logps(logits[:, :-1], labels[:, 1:])  # (B, T-1)
        out = {}
        positions = batch.get("position_ids")
        for r in range(labels.shape[0]):
            pos = positions[r] if positions is not None else torch.arange(labels.shape[1])
            starts = (pos == 0).nonzero().flatten().tolist() + [labels.shape[1]]
            for s, e in zip(starts, starts[1:]):
                key = tuple(batch["input_ids"][r, s:e].tolist())
                out[key] = -logps[r, s:e - 1].sum().item()
        return out

    collate = Collator(tok.pad_token_id, flatten=flatten)
    with torch.no_grad():
        packed = {}
        for i in range(0, len(rows), 2):
            batch = collate(rows[i:i + 2])
            batch.pop("n_tokens")
            assert "attention_mask" not in batch
            packed.update(per_example_nll(batch))
        alone = {}
        for ex in examples:
            batch = Collator(tok.pad_token_id)([ex])
            batch.pop("n_tokens")
            alone.update(per_example_nll(batch))
    for key, value in alone.items():
        assert key in packed
        assert abs(packed[key] - value) < 1e-4 * max(1.0, abs(value)), key


def test_collator_pads_right_with_mask(tok):
    a = {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}
    b = {"input_ids": [4], "labels": [4]}
    batch = Collator(pad_token_id=0)([a, b])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["n_tokens"].item() == 4


def test_load_conversations_sources_and_errors(tmp_path):
    folder = tmp_path / "revise"
    folder.mkdir()
    rows = [{"id": "a", "messages": CONV}, {"id": "b", "messages": CONVERSATIONS[1]}]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_conversations(str(folder)) == [CONV, CONVERSATIONS[1]]  # a `cai revise` folder
    assert load_conversations(str(folder / "data.jsonl"), limit=1) == [CONV]
    assert load_conversations(f"dataset:{folder}") == [CONV, CONVERSATIONS[1]]  # datasets lib
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
                   + "\n")
    with pytest.raises(CaiError, match=rf"{bad}:1: no assistant message"):
        load_conversations(str(bad))
    bad.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(CaiError, match=rf"{bad}:1: each message needs"):
        load_conversations(str(bad))
    with pytest.raises(CaiError, match="no such file"):
        load_conversations(str(tmp_path / "missing.jsonl"))


def test_anchor_flags_follow_each_row_through_packing_and_collation(tok, tmp_path):
    """`sft.kl_only_kinds`: a row's `kind` picks the examples whose tokens carry anchor 1, and
    the flags stay on those tokens when examples are packed and batches padded."""
    kinds = ["revision", "helpful", None]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"kind": k, "messages": c}) + "\n"
                            for k, c in zip(kinds, CONVERSATIONS)))
    convs, anchored = load_examples(str(path), anchor_kinds=("helpful",))
    assert convs == CONVERSATIONS and anchored == [False, True, False]
    examples, stats = tokenize_all(tok, convs, max_length=512, anchored=anchored)
    assert stats.anchored == 1 and "1 of the examples trained by the KL term only" in \
        stats.summary()
    for ex, flag in zip(examples, anchored):
        assert ex["anchor"] == [int(flag)] * len(ex["input_ids"])
    assert "anchor" not in tokenize_all(tok, convs, max_length=512)[0][0]
    rows = pack(examples, max_length=512)
    ids_of = {tuple(ex["input_ids"]): ex["anchor"][0] for ex in examples}
    assert sum(sum(r["anchor"]) for r in rows) == len(examples[1]["input_ids"])
    for row in rows:  # each example's tokens keep its own flag
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            assert set(row["anchor"][a:b]) == {ids_of[tuple(row["input_ids"][a:b])]}
    batch = Collator(tok.pad_token_id)(examples[:2])
    assert batch["anchor"].tolist() == [
        [0] * batch["input_ids"].shape[1],
        [1] * len(examples[1]["input_ids"])
        + [0] * (batch["input_ids"].shape[1] - len(examples[1]["input_ids"]))]
    flat = Collator(tok.pad_token_id, flatten=True)(examples[:2])
    assert flat["anchor"].tolist() == [examples[0]["anchor"] + examples[1]["anchor"]]
