"""Conversations -> token ids and labels on assistant tokens; truncation, packing, collation.

Masking. Labels go on the tokens each assistant message adds to the rendered conversation,
found without any help from the template (no `{% generation %}` markers needed): the text of
the conversation up to message i with the generation prompt (`...<|im_start|>assistant\\n`) is
a prefix of the text up to and including message i, and the characters between the two are that
assistant turn: its content, its end-of-turn token, and any template whitespace after it. The
whole conversation is tokenized once (with character offsets); a token is labelled when it
holds a character of an assistant turn (as transformers' own `{% generation %}` masks do), and
trailing whitespace-only tokens of a turn are not targets (the model stops at the end-of-turn
token and never generates them).

Packing. Examples are placed best-fit-decreasing into rows of `max_length` tokens; position ids
restart at 0 for each example, which transformers turns into a block-diagonal causal mask
(sdpa/eager, and flash-attention's varlen path when the batch is flattened into one row), so no
token attends across examples; the first token of each example is never a target.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from cai.foundation.errors import CaiError
from cai.foundation.inputs import read_rows
from cai.train.losses import IGNORE_INDEX

# --------------------------------------------------------------------------------------------
# Reading


def load_conversations(spec: str, column: str = "messages", split: str = "train",
                       limit: int | None = None) -> list[list[dict]]:
    """Conversations from a .jsonl file, a `cai revise` output folder or dataset:NAME_OR_DIR."""
    return load_examples(spec, column, split, limit)[0]


def load_examples(spec: str, column: str = "messages", split: str = "train",
                  limit: int | None = None,
                  anchor_kinds: tuple[str, ...] = ()) -> tuple[list[list[dict]], list[bool]]:
    """(conversations, anchored): `anchored[i]` is true when row i's `kind` (a `cai revise`
    field: revision or helpful) is one of `anchor_kinds` (trained by the KL term only)."""
    rows = read_rows(spec, split, "a .jsonl or a `cai revise` folder")
    if spec.startswith("dataset:") and rows and column not in rows[0][1]:
        raise CaiError(f"{spec}: no column '{column}' (columns: {', '.join(rows[0][1])})")
    out, anchored, unrevised = [], [], 0
    for where, row in rows[:limit] if limit is not None else rows:
        if isinstance(row, dict) and column in row and row[column] is None \
                and row.get("kind") == "revision":
            unrevised += 1  # `cai revise`: the gate took none of this prompt's revisions
            continue
        messages = row.get(column) if isinstance(row, dict) else None
        _check_messages(messages, where, column)
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
        anchored.append(row.get("kind") in anchor_kinds)
    if unrevised:
        print(f"{spec}: {unrevised} prompts left out, none of their revisions passed the gate")
    if not out:
        raise CaiError(f"{spec}: no conversations")
    return out, anchored


def _check_messages(messages, where: str, column: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise CaiError(f"{where}: '{column}' must be a non-empty list of {{role, content}}")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise CaiError(f"{where}: each message needs a text 'role' and 'content', got {m!r}"
                           [:300])
    if not any(m["role"] == "assistant" for m in messages):
        raise CaiError(f"{where}: no assistant message to train on")


# --------------------------------------------------------------------------------------------
# Tokenizing and masking


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of each assistant turn in `text` (the rendered conversation)."""
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = end = None
        try:
            before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
            through = _render(tokenizer, messages[:i + 1])
            if text.startswith(through) and through.startswith(before) and len(before) >= cursor:
                start, end = len(before), len(through)
        except Exception:  # a template that refuses a partial conversation: search instead
            pass
        if start is None:  # the template renders earlier turns differently once more follow
            start = text.find(m["content"], cursor)
            if start < 0 or not m["content"]:
                raise CaiError("cannot find an assistant turn in the rendered conversation; the "
                               "chat template rewrites earlier turns (check its output)")
            end = start + len(m["content"])
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
        cursor = end
    return spans


def tokenize_conversation(tokenizer, messages: list[dict], assistant_only: bool = True,
                          first_target: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels are -100 outside the assistant turns.

    `first_target`: only assistant turns from message index `first_target` on are targets (a
    preference pair's completion after a multi-turn prompt).
    """
    text = _render(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if not assistant_only:
        return ids, list(ids)
    labels = [IGNORE_INDEX] * len(ids)
    spans = assistant_char_spans(tokenizer, messages, text)
    spans = spans[sum(m["role"] == "assistant" for m in messages[:first_target]):]
    t = 0
    for start, end in spans:
        while t < len(ids) and offsets[t][1] <= start:
            t += 1
        inside = []  # tokens with at least one character in the turn
        while t < len(ids) and offsets[t][0] < end:
            inside.append(t)
            t += 1
        while inside and not tokenizer.decode([ids[inside[-1]]]).strip():
            inside.pop()  # template whitespace after the end-of-turn token
        for k in inside:
            labels[k] = ids[k]
    return ids, labels


@dataclass
class DataStats:
    examples: int = 0
    cut: int = 0
    dropped: int = 0
    tokens: int = 0
    target_tokens: int = 0
    rows: int = 0
    anchored: int = 0

    def summary(self, name: str = "train") -> str:
        text = f"{name}: {self.examples} examples, {self.tokens} tokens ({self.target_tokens} " \
               f"trained on)"
        if self.anchored:
            text += f", {self.anchored} of the examples trained by the KL term only"
        if self.rows:
            text += f", packed into {self.rows} rows"
        if self.cut or self.dropped:
            text += f"; {self.cut} cut to max_length, {self.dropped} dropped"
        return text


def tokenize_all(tokenizer, conversations, max_length: int, truncation: str = "cut",
                 assistant_only: bool = True,
                 anchored: list[bool] | None = None) -> tuple[list[dict], DataStats]:
    """Tokenized examples `{input_ids, labels}` no longer than `max_length`, and the counts.

    `truncation="cut"` keeps the first `max_length` tokens (an example left with no target
    token is dropped); `"drop"` skips every example that is too long. With `anchored` (one flag
    per conversation) every example also gets `anchor`, one 0/1 per token: 1 on the targets of
    an anchored example, which the SFT loss leaves to the KL term (`sft.kl_only_kinds`).
    """
    examples, stats = [], DataStats()
    for n, messages in enumerate(conversations):
        ids, labels = tokenize_conversation(tokenizer, messages, assistant_only)
        if len(ids) > max_length:
            if truncation == "drop":
                stats.dropped += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            if all(x == IGNORE_INDEX for x in labels[1:]):
                stats.dropped += 1
                continue
            stats.cut += 1
        example = {"input_ids": ids, "labels": labels}
        if anchored is not None:
            example["anchor"] = [int(anchored[n])] * len(ids)
            stats.anchored += anchored[n]
        examples.append(example)
        stats.tokens += len(ids)
        stats.target_tokens += sum(x != IGNORE_INDEX for x in labels[1:])
    stats.examples = len(examples)
    return examples, stats


# --------------------------------------------------------------------------------------------
# Packing and batching


def pack(examples: list[dict], max_length: int, seed: int = 0) -> list[dict]:
    """Rows of at most `max_length` tokens, each holding whole examples (best fit decreasing).

    Each row has `position_ids` restarting at 0 per example (this keeps attention inside each
    example) and `IGNORE_INDEX` on each example's first token (it has no context in its own
    example). Ties are broken by a seeded shuffle, so the rows are the same on every run.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for i in order:
        n = len(examples[i]["input_ids"])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, row = free.pop(k)
        else:
            space, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, row))
    out = []
    for members in rows:
        row = {"input_ids": [], "labels": [], "position_ids": []}
        if "anchor" in examples[0]:
            row["anchor"] = []
        for i in members:
            ex = examples[i]
            row["input_ids"] += ex["input_ids"]
            row["labels"] += [IGNORE_INDEX] + ex["labels"][1:]
            row["position_ids"] += range(len(ex["input_ids"]))
            if "anchor" in row:
                row["anchor"] += ex["anchor"]
        out.append(row)
    return out


@dataclass
class Collator:
    """Pads a list of examples (or packed rows) into a batch.

    Unpacked examples: right padding with an attention mask. Packed rows: no attention mask; the
    padding after a row gets position ids of its own, so it is a separate (ignored) segment.
    `flatten=True` joins the batch into one row (for flash-attention's varlen kernels, which
    only detect packed sequences in a batch of one).
    """

    pad_token_id: int
    flatten: bool = False

    def __call__(self, batch: list[dict]) -> dict:
        packed = self.flatten or "position_ids" in batch[0]
        positions = [ex.get("position_ids") or list(range(len(ex["input_ids"]))) for ex in batch]
        n_tokens = sum(len(ex["input_ids"]) for ex in batch)
        anchored = "anchor" in batch[0]
        if self.flatten:
            out = {"input_ids": torch.tensor([[t for ex in batch for t in ex["input_ids"]]]),
                   "labels": torch.tensor([[x for ex in batch
                                            for x in [IGNORE_INDEX] + ex["labels"][1:]]]),
                   "position_ids": torch.tensor([[p for ps in positions for p in ps]]),
                   "n_tokens": torch.tensor(n_tokens)}
            if anchored:
                out["anchor"] = torch.tensor([[a for ex in batch for a in ex["anchor"]]])
            return out
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        pos = torch.zeros((len(batch), width), dtype=torch.long)
        anchor = torch.zeros((len(batch), width), dtype=torch.long) if anchored else None
        for r, (ex, ps) in enumerate(zip(batch, positions)):
            n = len(ex["input_ids"])
            if anchored:
                anchor[r, :n] = torch.tensor(ex["anchor"])
            ids[r, :n] = torch.tensor(ex["input_ids"])
            labels[r, :n] = torch.tensor(ex["labels"])
            mask[r, :n] = 1
            pos[r, :n] = torch.tensor(ps)
            pos[r, n:] = torch.arange(width - n)
        out = {"input_ids": ids, "labels": labels}
        if packed:
            out["position_ids"] = pos
        else:
            out["attention_mask"] = mask
        if anchored:
            out["anchor"] = anchor
        out["n_tokens"] = torch.tensor(n_tokens)
        return out


# --------------------------------------------------------------------------------------------
# From a config


def build(data_cfg, tokenizer, assistant_only: bool = True, log=print,
          anchor_kinds: tuple[str, ...] = ()):
    """(train rows, eval examples or None) from the `data:` section.

    `anchor_kinds`: rows of these kinds get `anchor` flags (`tokenize_all`); held-out rows
    are scored by the NLL alone either way.
    """
    conversations, anchored = load_examples(data_cfg.path, data_cfg.messages_column,
                                            data_cfg.split, data_cfg.limit, anchor_kinds)
    if anchor_kinds and not any(anchored):
        raise CaiError(f"{data_cfg.path}: no row of kind {', '.join(anchor_kinds)} "
                       f"(sft.kl_only_kinds)")
    if anchor_kinds and all(anchored):
        raise CaiError(f"{data_cfg.path}: every row is of kind {', '.join(anchor_kinds)} "
                       f"(sft.kl_only_kinds): nothing left to learn from")
    held_out = None
    if data_cfg.eval_path:
        held_out = load_conversations(data_cfg.eval_path, data_cfg.messages_column,
                                      data_cfg.split)
    elif data_cfg.eval_fraction:
        order = list(range(len(conversations)))
        random.Random(data_cfg.seed).shuffle(order)
        n_eval = max(1, round(len(order) * data_cfg.eval_fraction))
        held_out = [conversations[i] for i in sorted(order[:n_eval])]
        conversations = [conversations[i] for i in sorted(order[n_eval:])]
        anchored = [anchored[i] for i in sorted(order[n_eval:])]
    train, stats = tokenize_all(tokenizer, conversations, data_cfg.max_length,
                                data_cfg.truncation, assistant_only,
                                anchored if anchor_kinds else None)
    if not train:
        raise CaiError(f"{data_cfg.path}: no example left after truncation to "
                       f"{data_cfg.max_length} tokens")
    if data_cfg.packing:
        train = pack(train, data_cfg.max_length, data_cfg.seed)
        stats.rows = len(train)
    log(stats.summary("train"))
    evaluation = None
    if held_out:
        evaluation, eval_stats = tokenize_all(tokenizer, held_out, data_cfg.max_length,
                                              data_cfg.truncation, assistant_only)
        log(eval_stats.summary("eval"))
    return train, evaluation
