"""cai.scoring.preference: the few-shot demonstrations of the multiple-choice prompt."""

from cai import constitution as C
from cai.foundation.templates import Templates
from cai.scoring import preference as FJ


def test_demonstrations_swap_answer_and_reasoning_together():
    c = C.parse("""\
name: t
preference:
  - id: better
    question: "Which is better?"
preference_examples:
  - prompt: "P"
    response_a: "first text"
    response_b: "second text"
    reasoning: "(A) is clear, (B) is not. So (A)."
    answer: A
""", "t.yaml")
    f = FJ.Feedback(c, Templates(), 1, True, seed=0)
    seen = set()
    for key in range(20):
        user, reasoning, _, answer = f.demonstrations(str(key), "Which?")
        swapped = "(A) Assistant: second text" in user["content"]
        seen.add(swapped)
        assert answer["content"] == ("(B)" if swapped else "(A)")
        assert reasoning["content"] == ("(B) is clear, (A) is not. So (B)." if swapped
                                        else "(A) is clear, (B) is not. So (A).")
        assert "\n\nWhich?\n\n" in user["content"]  # no question of its own: the one asked
    assert seen == {True, False}
    assert FJ.Feedback(c, Templates(), 0, False, 0).demonstrations("k", "Q") == []
