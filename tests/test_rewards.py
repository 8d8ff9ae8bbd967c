"""Table-driven reward tests; each case says why. Includes the failure cases of the published reward code."""

import math

import pytest

from iranker.rewards import (
    INVALID_ANSWER,
    direct_ranking_reward,
    direct_ranking_reward_func,
    exclusion_reward,
    exclusion_reward_func,
    exclusion_score,
    format_reward,
)

POOL = {"A": 0, "B": 3, "C": 1}


@pytest.mark.parametrize("response, expected, why", [
    ("<think>A is off topic</think><answer>[A]</answer>", 1.0, "eliminates the lowest grade"),
    ("<think>..</think><answer>[C]</answer>", 2 / 3, "grade 1 of 0..3: partial credit"),
    ("<think>..</think><answer>[B]</answer>", 0.0, "eliminates the best candidate"),
    ("<answer>[A]</answer>", INVALID_ANSWER, "no think block: invalid"),
    ("<think>..</think><answer>[D]</answer>", INVALID_ANSWER, "label not in the pool"),
    ("A", INVALID_ANSWER, "one character is not an answer"),
    ("", INVALID_ANSWER, "empty response"),
    ("<think>x</think><answer>[A]</answer><answer>[B]</answer>", INVALID_ANSWER, "two answers"),
])
def test_exclusion_reward(response, expected, why):
    assert exclusion_reward(response, POOL) == pytest.approx(expected), why


def test_exclusion_score_of_an_all_equal_pool_is_full_credit():
    assert exclusion_score("A", {"A": 1, "B": 1}) == 1.0


@pytest.mark.parametrize("response, expected, why", [
    ("<think>x</think><answer>[A]</answer>", 0.0, "well-formed"),
    ("<think>x</think>\n<answer>[A]</answer>\n", 0.0, "whitespace between blocks is fine"),
    ("<answer>[A]</answer>", -1.0, "missing think"),
    ("<think>x</think><think>y</think><answer>[A]</answer>", -1.0, "two think blocks"),
    ("<think>x</think>", -1.0, "missing answer"),
    ("Sure! <think>x</think><answer>[A]</answer>", -1.0, "text before the blocks"),
])
def test_format_reward(response, expected, why):
    assert format_reward(response) == expected, why


GRADES = {"A": 0, "B": 2, "C": 1}


@pytest.mark.parametrize("response, expected, why", [
    ("[B] > [C] > [A]", 1.0, "ideal order"),
    ("[B]", 2 / (2 + 1 / math.log2(3)) - 0.2, "right top, two labels missing: C's gain lost, penalty per missing"),
    ("B", INVALID_ANSWER, "a one-character answer earns no ranking reward"),
    ("[A] > [C] > [B]", None, "worst order: low but valid"),
    ("[B] > [B] > [C] > [A]", 0.9, "duplicate penalised"),
])
def test_direct_ranking_reward(response, expected, why):
    r = direct_ranking_reward(response, GRADES)
    if expected is None:
        assert 0 < r < 0.7, why
    else:
        assert r == pytest.approx(expected), why


def test_tag_examples_in_the_prompt_do_not_change_the_score():
    """Scoring prompt + response would find the prompt's `<answer>[C]</answer>` example; ours never sees it."""
    completions = ["<think>..</think><answer>[A]</answer>", "no answer at all"]
    grades = [POOL, POOL]
    plain = exclusion_reward_func(["rank these"] * 2, completions, pool_grades=grades)
    with_tags = exclusion_reward_func(["e.g. <think>...</think><answer>[C]</answer>"] * 2, completions,
                                      pool_grades=grades)
    assert plain == with_tags == [1.0, INVALID_ANSWER]


def test_trl_style_functions_accept_chat_completions():
    comp = [[{"role": "assistant", "content": "<think>x</think><answer>[B] > [C] > [A]</answer>"}]]
    assert direct_ranking_reward_func(["p"], comp, label_grades=[GRADES]) == [1.0]
