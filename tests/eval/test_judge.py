"""cai.eval.judge: the judge's classification with hand-built judges, and comparisons."""

import math

import pytest

from cai.eval import judge as J
from cai.feedback.judge import ScoringOptions
from cai.generation.base import GenerationStats
from cai.prompts import Templates


class SlotJudge:
    """A judge that ignores the text: it gives the letters fixed probabilities."""

    context_length = None
    stats = GenerationStats()

    def __init__(self, probs):
        self.probs = probs

    def choice_logprobs(self, conversations, choices):
        return [[math.log(p) for p in self.probs] for _ in conversations]


class ReadingJudge(SlotJudge):
    """A judge that reads the options: it puts most mass on the letter of one class."""

    def __init__(self, wanted: str):
        self.wanted = wanted.capitalize() + ":"

    def choice_logprobs(self, conversations, choices):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            letter = next(line[1] for line in text.splitlines() if line[4:].startswith(self.wanted))
            out.append([0.0 if c[1] == letter else -5.0 for c in choices])
        return out


def test_classification_rotations_cancel_a_slot_preference():
    items = [{"prompt": "p", "response": "r"}]
    res = J.classify(SlotJudge([0.6, 0.3, 0.1]), Templates(), items, debias=True)[0]
    assert res["probs"] == pytest.approx({c: 1 / 3 for c in J.CLASSES})
    assert len(res["by_order"]) == 3
    one = J.classify(SlotJudge([0.6, 0.3, 0.1]), Templates(), items, debias=False)[0]
    assert one["probs"] == pytest.approx({"harmful": 0.6, "refusal": 0.3, "helpful": 0.1})
    assert one["class"] == "harmful"


@pytest.mark.parametrize("wanted", J.CLASSES)
def test_classification_follows_the_option_through_every_order(wanted):
    res = J.classify(ReadingJudge(wanted), Templates(), [{"prompt": "p", "response": "r"}])[0]
    p = 1 / (1 + 2 * math.exp(-5))
    assert res["class"] == wanted and res["probs"][wanted] == pytest.approx(p)
    assert all(o[wanted] == pytest.approx(p) for o in res["by_order"])


def test_identical_answers_tie_without_asking_the_judge():
    class NoJudge(SlotJudge):
        def choice_logprobs(self, conversations, choices):
            raise AssertionError("asked")

    task = {"key": "k", "prompt": "p", "first": "Same  answer.", "second": "Same answer."}
    assert J.compare(NoJudge([0.5, 0.5]), None, (), [task], ScoringOptions()) == [
        {"p_first": 0.5, "votes": [], "identical": True}]
