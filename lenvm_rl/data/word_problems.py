"""Offline grade-school math word problems in the style of GSM8K.

For the demo and the tests, which must run without a network: value pretraining of a length
model needs prompts whose answers vary in length, and these problems take 1 to 7 arithmetic
steps. Online users load ``openai/gsm8k`` instead (``load_prompts("openai/gsm8k:main")``).

Every problem comes with a worked solution in the GSM8K layout: one line per step, each
showing one exact integer operation such as ``3 * 12 = 36``, then a final line ``#### 36``.
The templates are written here; no GSM8K text is used.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

__all__ = ["WordProblem", "generate_word_problems", "word_problem_dataset"]


@dataclass(frozen=True)
class WordProblem:
    """A question, its worked solution ending in ``#### <final_answer>``, and the template used."""

    question: str
    answer: str
    final_answer: int
    template: str


@dataclass(frozen=True)
class _Person:
    name: str
    subj: str  # she / he
    obj: str   # her / him


_PEOPLE = [_Person(name, "she", "her") for name in
           ("Ava", "Maya", "Zoe", "Priya", "Hana", "Lena", "Sofia", "Ines", "Mei", "Amara")] + \
          [_Person(name, "he", "him") for name in
           ("Liam", "Noah", "Omar", "Diego", "Felix", "Kofi", "Ravi", "Theo", "Jonas", "Leo")]

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


class _Solution:
    """The worked lines of an answer; each line shows one exact integer operation."""

    def __init__(self):
        self.lines: list[str] = []
        self.value = 0

    def step(self, before: str, a: int, op: str, b: int, after: str) -> int:
        """Append the line ``before a op b = value after`` and return ``value``."""
        if op == "/":
            self.value, remainder = divmod(a, b)
            assert remainder == 0, f"{a} / {b} is not exact"
        else:
            self.value = _OPS[op](a, b)
        self.lines.append(" ".join(part for part in (before, f"{a} {op} {b} = {self.value}", after) if part))
        return self.value

    def text(self) -> str:
        return "\n".join([*self.lines, f"#### {self.value}"])


def _rate(rng: random.Random) -> tuple[str, _Solution]:
    actor, verb, unit, period = rng.choice([
        ("A printer", "print", "pages", "minute"),
        ("A bakery", "bake", "loaves of bread", "hour"),
        ("A bottling machine", "fill", "bottles", "minute"),
        ("A toy factory", "make", "teddy bears", "hour"),
    ])
    rate, time = rng.randint(3, 40), rng.randint(2, 12)
    question = f"{actor} can {verb} {rate} {unit} every {period}. How many {unit} does it {verb} in {time} {period}s?"
    work = _Solution()
    work.step(f"In {time} {period}s it can {verb}", rate, "*", time, f"{unit}.")
    return question, work


def _change(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    item = rng.choice(["notebooks", "pens", "comic books", "sandwiches", "flower pots", "packs of cards"])
    count, price = rng.randint(2, 9), rng.randint(2, 10)
    bill = next(b for b in (10, 20, 50, 100) if b > count * price + 1)
    question = (f"{p.name} buys {count} {item} that cost ${price} each. {p.subj.capitalize()} pays with a "
                f"${bill} bill. How much change does {p.subj} get?")
    work = _Solution()
    cost = work.step(f"The {item} cost", count, "*", price, "dollars.")
    work.step(f"{p.name} gets", bill, "-", cost, "dollars in change.")
    return question, work


def _sharing(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    item = rng.choice(["marbles", "stickers", "crayons", "cookies", "seashells"])
    boxes, per_box, friends = rng.randint(2, 9), rng.randint(4, 15), rng.randint(2, 6)
    while boxes * per_box % friends:
        per_box += 1
    question = (f"{p.name} has {boxes} boxes of {item} with {per_box} {item} in each box. {p.subj.capitalize()} "
                f"shares all of them equally among {friends} friends. How many {item} does each friend get?")
    work = _Solution()
    total = work.step(f"{p.name} has", boxes, "*", per_box, f"{item}.")
    work.step("Each friend gets", total, "/", friends, f"{item}.")
    return question, work


def _area(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    place, supply, unit = rng.choice([("garden", "bag of grass seed", "bags"), ("patio", "box of tiles", "boxes"),
                                      ("bedroom floor", "can of floor varnish", "cans")])
    length, width = rng.randint(4, 20), rng.randint(3, 12)
    covers = rng.choice([d for d in range(2, min(26, length * width)) if length * width % d == 0])
    question = (f"{p.name}'s {place} is a rectangle {length} meters long and {width} meters wide. One {supply} "
                f"covers {covers} square meters. How many {unit} does {p.subj} need to cover the whole {place}?")
    work = _Solution()
    area = work.step(f"The {place} has an area of", length, "*", width, "square meters.")
    work.step(f"{p.name} needs", area, "/", covers, f"{unit}.")
    return question, work


def _practice_hours(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    activity = rng.choice(["the piano", "the violin", "chess", "swimming", "drawing"])
    minutes, days, weeks = rng.choice([15, 20, 30, 40, 45, 50]), rng.randint(3, 7), rng.randint(2, 8)
    while minutes * days * weeks % 60:
        weeks += 1
    question = (f"{p.name} practices {activity} for {minutes} minutes a day, {days} days a week. "
                f"How many hours does {p.subj} practice in {weeks} weeks?")
    work = _Solution()
    weekly = work.step(f"Each week {p.subj} practices", minutes, "*", days, "minutes.")
    total = work.step(f"In {weeks} weeks that is", weekly, "*", weeks, "minutes.")
    work.step("An hour has 60 minutes, so that is", total, "/", 60, "hours.")
    return question, work


def _savings(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    thing = rng.choice(["bike", "skateboard", "telescope", "guitar", "tent"])
    job = rng.choice(["walking dogs", "mowing lawns", "washing cars", "delivering newspapers"])
    net, weeks, spend = rng.randint(3, 15), rng.randint(3, 12), rng.randint(2, 10)
    saved = 5 * rng.randint(2, 12)
    price = saved + net * weeks
    question = (f"{p.name} wants to buy a {thing} that costs ${price}. {p.subj.capitalize()} has already saved "
                f"${saved}. Every week {p.subj} earns ${net + spend} {job} and spends ${spend} of it on snacks. "
                f"How many weeks will it take {p.obj} to save enough for the {thing}?")
    work = _Solution()
    weekly = work.step(f"Each week {p.subj} saves", net + spend, "-", spend, "dollars.")
    needed = work.step(f"{p.subj.capitalize()} still needs", price, "-", saved, "dollars.")
    work.step("It will take", needed, "/", weekly, "weeks.")
    return question, work


def _discount(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    item = rng.choice(["jacket", "lamp", "backpack", "pair of shoes", "board game"])
    price, percent, count = 10 * rng.randint(2, 30), rng.choice([20, 30, 40, 60, 70]), rng.randint(1, 4)
    buys = "one" if count == 1 else f"{count} of them"
    question = (f"A {item} normally costs ${price}. During a sale the store takes {percent}% off the price. "
                f"{p.name} buys {buys} during the sale. How much does {p.subj} pay?")
    work = _Solution()
    tenth = work.step("10% of the price is", price, "/", 10, "dollars.")
    discount = work.step(f"So {percent}% of the price is", percent // 10, "*", tenth, "dollars.")
    sale_price = work.step(f"On sale one {item} costs", price, "-", discount, "dollars.")
    if count > 1:
        work.step(f"{p.name} pays", count, "*", sale_price, "dollars.")
    return question, work


def _fractions(rng: random.Random) -> tuple[str, _Solution]:
    group, members, first, second, rest = rng.choice([
        ("class", "students", "take the bus to school", "walk", "ride bikes"),
        ("orchard", "trees", "are apple trees", "are pear trees", "are plum trees"),
        ("parking lot", "cars", "are red", "are blue", "are white"),
        ("library shelf", "books", "are novels", "are comics", "are atlases"),
    ])
    parts = {2: "half", 3: "third", 4: "fourth", 5: "fifth"}
    k1, k2 = rng.randint(2, 5), rng.randint(2, 4)
    total = k1 * k2 * rng.randint(2, 6)
    question = (f"A {group} has {total} {members}. One {parts[k1]} of them {first}. One {parts[k2]} of the rest "
                f"{second}, and all the others {rest}. How many {members} {rest}?")
    work = _Solution()
    a = work.step("", total, "/", k1, f"{members} {first}.")
    left = work.step("That leaves", total, "-", a, f"{members}.")
    b = work.step("", left, "/", k2, f"{members} {second}.")
    work.step("So", left, "-", b, f"{members} {rest}.")
    return question, work


def _ages(rng: random.Random) -> tuple[str, _Solution]:
    a, b, c = rng.sample(_PEOPLE, 3)
    age, times = rng.randint(3, 15), rng.choice([2, 3])
    younger = rng.randint(1, age * times // 2)
    question = (f"{a.name} is {age} years old. {b.name} is {'twice' if times == 2 else 'three times'} as old as "
                f"{a.name}, and {c.name} is {younger} years younger than {b.name}. "
                f"What is the sum of their three ages?")
    work = _Solution()
    b_age = work.step(f"{b.name} is", age, "*", times, "years old.")
    c_age = work.step(f"{c.name} is", b_age, "-", younger, "years old.")
    pair = work.step(f"{a.name} and {b.name} together are", age, "+", b_age, "years old.")
    work.step("The sum of their ages is", pair, "+", c_age, "years.")
    return question, work


def _shopping_list(rng: random.Random) -> tuple[str, _Solution]:
    p = rng.choice(_PEOPLE)
    items = rng.sample(["apples", "bags of rice", "jars of honey", "loaves of bread", "bottles of juice",
                        "packs of pasta", "boxes of tea", "melons"], rng.randint(2, 4))
    counts = [rng.randint(2, 8) for _ in items]
    prices = [rng.randint(1, 9) for _ in items]
    listed = [f"{n} {item} at ${price} each" for n, item, price in zip(counts, items, prices)]
    question = (f"{p.name} goes to the market and buys {', '.join(listed[:-1])} and {listed[-1]}. "
                f"How much does {p.subj} spend in total?")
    work = _Solution()
    costs = [work.step(f"The {item} cost", n, "*", price, "dollars.") for n, item, price in zip(counts, items, prices)]
    total = costs[0]
    for cost in costs[1:]:
        total = work.step("Together that makes", total, "+", cost, "dollars.")
    return question, work


_TEMPLATES = {
    "rate": _rate,
    "change": _change,
    "sharing": _sharing,
    "area": _area,
    "practice_hours": _practice_hours,
    "savings": _savings,
    "discount": _discount,
    "fractions": _fractions,
    "ages": _ages,
    "shopping_list": _shopping_list,
}


def generate_word_problems(n: int, *, seed: int = 0) -> list[WordProblem]:
    """``n`` word problems with worked integer solutions, the same ones for the same ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        name = rng.choice(list(_TEMPLATES))
        question, work = _TEMPLATES[name](rng)
        problems.append(WordProblem(question, work.text(), work.value, name))
    return problems


def word_problem_dataset(n: int, *, seed: int = 0) -> datasets.Dataset:
    """``generate_word_problems(n, seed=seed)`` as a ``datasets.Dataset`` with ``question`` and ``answer``."""
    import datasets

    problems = generate_word_problems(n, seed=seed)
    return datasets.Dataset.from_dict({"question": [p.question for p in problems],
                                       "answer": [p.answer for p in problems]})
