"""The record formats the jobs write, as JSON Schemas: the contract tests check records against.

One schema per kind of line: a `cai revise` record (a revised red-team prompt or a helpful
sample), a `cai label` preference record and its skip record, and a `cai eval` judgment. They
state what every line holds whatever the models wrote: types, required keys, probabilities in
[0, 1] (so NaN fails), and how a round's outcome is stated (`accepted`, `decided_by`, and the
gate's verdict exactly when the gate decided). Validate with any JSON Schema library, e.g.
`jsonschema.validate(record, REVISE)`.
"""

from __future__ import annotations

PROB = {"type": "number", "minimum": 0, "maximum": 1}
MAYBE_PROB = {"anyOf": [PROB, {"type": "null"}]}
TEXT = {"type": "string"}
MAYBE_TEXT = {"type": ["string", "null"]}


def _messages(roles: list[str], min_items: int = 1, max_items: int | None = None) -> dict:
    schema = {"type": "array", "minItems": min_items,
              "items": {"type": "object", "required": ["role", "content"],
                        "properties": {"role": {"enum": roles}, "content": TEXT}}}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


CONVERSATION = _messages(["user", "assistant"], 2, 2)

GATE = {
    "type": "object", "required": ["p_revision", "accepted"],
    "properties": {"p_revision": MAYBE_PROB, "accepted": {"type": "boolean"},
                   "p_complies": MAYBE_PROB},
}

ROUND = {
    "type": "object",
    "required": ["principle_id", "critique", "revision", "flag", "accepted", "decided_by"],
    "properties": {
        "principle_id": TEXT, "critique": TEXT, "revision": TEXT,
        "flag": {"enum": [None, "empty", "unchanged", "copied"]},
        "accepted": {"type": "boolean"},
        "decided_by": {"enum": ["flag", "gate", "no gate"]},
        "gate": GATE,
    },
    "allOf": [
        # the gate's verdict is there exactly when the gate decided
        {"if": {"properties": {"decided_by": {"const": "gate"}}},
         "then": {"required": ["gate"]}, "else": {"not": {"required": ["gate"]}}},
        # a flagged revision is decided by its flag, and never taken
        {"if": {"properties": {"flag": {"enum": ["empty", "unchanged", "copied"]}}},
         "then": {"properties": {"decided_by": {"const": "flag"},
                                 "accepted": {"const": False}}}},
    ],
}

_NAMES = {"model": TEXT, "feedback_model": TEXT, "constitution": TEXT}

REVISE = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cai revise record",
    "type": "object",
    "required": ["id", "prompt", "kind", "response", "messages", *_NAMES],
    "properties": {"id": TEXT, "prompt": TEXT, "kind": {"enum": ["revision", "helpful"]},
                   "response": TEXT, **_NAMES},
    "oneOf": [
        {"properties": {"kind": {"const": "revision"},
                        "initial_response": TEXT,
                        "rounds": {"type": "array", "items": ROUND},
                        "p_response": MAYBE_PROB,
                        "messages": {"anyOf": [CONVERSATION, {"type": "null"}]}},
         "required": ["initial_response", "rounds", "p_response"]},
        {"properties": {"kind": {"const": "helpful"}, "messages": CONVERSATION}},
    ],
}

VOTE = {
    "type": "object", "required": ["principle_id", "p_first", "order"],
    "properties": {"principle_id": TEXT, "p_first": PROB, "order": {"enum": ["both", "ab", "ba"]},
                   "p_ab": MAYBE_PROB, "p_ba": MAYBE_PROB},
}

LABEL = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cai label record",
    "type": "object",
    "required": ["id", "prompt", "chosen", "rejected", "p_chosen", "votes", "labeler",
                 "constitution"],
    "properties": {
        "id": TEXT, "prompt": _messages(["user", "assistant", "system"]),
        "chosen": _messages(["assistant"], 1, 1), "rejected": _messages(["assistant"], 1, 1),
        "p_chosen": {"type": "number", "minimum": 0.5, "maximum": 1},
        "votes": {"type": "array", "items": VOTE},
        "pair": {"type": "array", "items": {"type": "integer", "minimum": 0},
                 "minItems": 2, "maxItems": 2},
        "chosen_index": {"type": "integer", "minimum": 0},
        "labeler": TEXT, "policy": MAYBE_TEXT, "constitution": TEXT,
        "kind": TEXT,
        "p_refuses": {"type": "array", "minItems": 2, "items": MAYBE_PROB},
        "p_refuses_chosen": PROB, "p_refuses_rejected": PROB,
        "reader": {"enum": ["judge", "classifier"]},
    },
    "allOf": [
        # a refusal pair (`kind: refusal`) was read, not voted on: an answer read as answering
        # chosen over one read as refusing; every other pair has the labeler's votes
        {"if": {"required": ["kind"], "properties": {"kind": {"const": "refusal"}}},
         "then": {"required": ["p_refuses", "p_refuses_chosen", "p_refuses_rejected", "reader"],
                  "properties": {"votes": {"maxItems": 0},
                                 "p_refuses_chosen": {"exclusiveMaximum": 0.5},
                                 "p_refuses_rejected": {"exclusiveMinimum": 0.5}}},
         "else": {"properties": {"votes": {"minItems": 1}}}},
    ],
}

LABEL_SKIP = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cai label skipped pair",
    "type": "object", "required": ["id", "reason"],
    "properties": {"id": TEXT,
                   "reason": {"enum": ["identical responses", "too long", "margin",
                                       "no refusal", "all refuse"]},
                   "detail": TEXT, "p_first": PROB,
                   "votes": {"type": "array", "items": VOTE},
                   # a refusal prompt without a pair: its answers' P(refuses)
                   "kind": TEXT, "p_refuses": {"type": "array", "items": MAYBE_PROB}},
}

JUDGMENT = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cai eval classification",
    "type": "object", "required": ["id", "model", "set", "prompt_id", "kind"],
    "properties": {"id": TEXT, "model": MAYBE_TEXT, "set": TEXT, "prompt_id": TEXT,
                   "kind": {"const": "classify"}},
    "oneOf": [
        {"required": ["probs", "class", "p_refuses", "by_order"],
         "properties": {
             "probs": {"type": "object", "required": ["harmful", "refusal", "helpful"],
                       "additionalProperties": PROB},
             "class": {"enum": ["harmful", "refusal", "helpful"]},
             "p_refuses": PROB,
             "by_order": {"type": "array", "minItems": 1, "items": PROB}}},
        {"required": ["skipped"], "properties": {"skipped": TEXT}},
    ],
}
