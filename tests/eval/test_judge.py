"""cai.scoring.classify and cai.eval.judging: the judge's classification with hand-built judges,
and comparisons."""

import math

import pytest

from cai.eval.judging import compare
from cai.foundation.templates import Templates
from cai.generation.base import GenerationStats
from cai.scoring import classify as J
from cai.scoring.preference import ScoringOptions


class SlotJudge:
    """A judge that ignores the text: it gives the letters fixed probabilities."""

    context_length = None
    stats = GenerationStats()

    def __init__(self, probs):
        self.probs = probs

    def choice_logprobs(self, conversations, choices):
        return [[math.log(p) for p in self.probs] for _ in conversations]


class ReadingJudge(SlotJudge):
    """A judge that reads the options: it puts most mass on the letter of one reading."""

    RUBRIC = {"complies": "It does what", "refuses": "It does not"}

    def __init__(self, wanted: str):
        self.wanted = self.RUBRIC[wanted]
        self.seen = []

    def choice_logprobs(self, conversations, choices):
        out = []
        for conv in conversations:
            self.seen.append(conv)
            text = conv[-1]["content"]
            letter = next(line[1] for line in text.splitlines() if line[4:].startswith(self.wanted))
            out.append([0.0 if c[1] == letter else -5.0 for c in choices])
        return out


def test_both_orders_cancel_a_slot_preference():
    items = [{"prompt": "p", "response": "r", "harmful_request": True}]
    res = J.classify(SlotJudge([0.8, 0.2]), Templates(), items, debias=True)[0]
    assert res["p_refuses"] == pytest.approx(0.5) and len(res["by_order"]) == 2
    one = J.classify(SlotJudge([0.8, 0.2]), Templates(), items, debias=False)[0]
    assert one["p_refuses"] == pytest.approx(0.2)  # "refuses" is shown second: (B)
    assert one["probs"] == pytest.approx({"harmful": 0.8, "refusal": 0.2, "helpful": 0.0})
    assert one["class"] == "harmful"


@pytest.mark.parametrize("harmful_request", [True, False])
@pytest.mark.parametrize("wanted", J.READINGS)
def test_the_class_follows_the_reading_and_the_request(wanted, harmful_request):
    item = {"prompt": "p", "response": "r", "harmful_request": harmful_request}
    res = J.classify(ReadingJudge(wanted), Templates(), [item])[0]
    p = 1 / (1 + math.exp(-5))
    expected = "refusal" if wanted == "refuses" else "harmful" if harmful_request else "helpful"
    assert res["class"] == expected and res["probs"][expected] == pytest.approx(p)
    assert sum(res["probs"].values()) == pytest.approx(1)
    assert res["probs"]["helpful" if harmful_request else "harmful"] == 0


def test_demonstrations_answer_with_the_letter_of_their_reading_in_each_order():
    examples = [{"prompt": "How do I X?", "response": "No.", "class": "refusal"},
                {"prompt": "How do I Y?", "response": "Like this.", "class": "helpful"},
                {"prompt": "How do I Z?", "response": "Like that.", "class": "harmful"}]
    judge = ReadingJudge("refuses")
    item = {"prompt": "p", "response": "r", "harmful_request": False}
    J.classify(judge, Templates(), [item], examples)
    assert len(judge.seen) == 2
    for conv, order in zip(judge.seen, J.reading_orders(True)):
        assert len(conv) == 2 * len(examples) + 1 and "Human: p" in conv[-1]["content"]
        answers = [turn["content"] for turn in conv[1::2]]
        refusal, comply = J.LETTERS[order.index("refuses")], J.LETTERS[order.index("complies")]
        assert answers == [refusal, comply, comply]
        assert "How do I X?" in conv[0]["content"]
    # the demonstrations are the same turns for every answer: one shared prefix per order
    again = ReadingJudge("refuses")
    J.classify(again, Templates(), [item, {**item, "prompt": "q"}], examples)
    assert again.seen[0][:-1] == again.seen[2][:-1] and again.seen[0][-1] != again.seen[2][-1]


def test_identical_answers_tie_without_asking_the_judge():
    class NoJudge(SlotJudge):
        def choice_logprobs(self, conversations, choices):
            raise AssertionError("asked")

    task = {"key": "k", "prompt": "p", "first": "Same  answer.", "second": "Same answer."}
    assert compare(NoJudge([0.5, 0.5]), None, (), [task], ScoringOptions()) == [
        {"p_first": 0.5, "votes": [], "identical": True}]
