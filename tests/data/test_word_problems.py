import re
from fractions import Fraction

import pytest

from lenvm_rl.data.word_problems import generate_word_problems, word_problem_dataset

# One binary operation in a worked line: "3 * 12 = 36".
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: Fraction(a, b)}


def test_same_seed_same_problems_other_seed_other_problems():
    assert generate_word_problems(50, seed=3) == generate_word_problems(50, seed=3)
    assert generate_word_problems(50, seed=3) != generate_word_problems(50, seed=4)
    assert generate_word_problems(5) == generate_word_problems(20)[:5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_step_is_exact_and_the_last_line_is_the_final_answer(seed):
    for problem in generate_word_problems(200, seed=seed):
        *steps, last = problem.answer.split("\n")
        assert last == f"#### {problem.final_answer}"
        assert isinstance(problem.final_answer, int) and problem.final_answer > 0
        assert steps, problem
        for line in steps:
            equations = EQUATION.findall(line)
            assert len(equations) == 1, line  # every step line shows exactly one checked operation
            a, op, b, result = equations[0]
            assert OPS[op](int(a), int(b)) == int(result), line
        assert int(equations[0][3]) == problem.final_answer, problem  # the last step gives the answer


def test_variety_of_templates_lengths_and_steps():
    problems = generate_word_problems(200)
    assert len({p.template for p in problems}) >= 8
    words = [len(p.question.split()) for p in problems]
    assert max(words) >= 2 * min(words)
    steps = {p.answer.count("\n") for p in problems}
    assert min(steps) == 1 and max(steps) >= 4
    assert len({p.question for p in problems}) >= 190


@pytest.mark.parametrize("n", [0, -2])
def test_n_below_one_is_rejected(n):
    with pytest.raises(ValueError, match=f"n must be >= 1, got {n}"):
        generate_word_problems(n)


def test_dataset_has_question_and_answer_columns():
    dataset = word_problem_dataset(7, seed=1)
    assert dataset.column_names == ["question", "answer"]
    assert len(dataset) == 7
    problems = generate_word_problems(7, seed=1)
    assert dataset[0] == {"question": problems[0].question, "answer": problems[0].answer}
