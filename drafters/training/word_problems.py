"""Seeded grade-school math word problems in prose (GSM8K-like), for math drafter training.

Users send math as short stories with numbers ("Maya buys 3 packs of 12 pencils ..."), not as
bare arithmetic. reasoning-gym mostly produces the latter, so this module writes the former
from templates: a template is a story with slots (names, items, places, numbers) and a question;
numbers are drawn so every quantity in the story stays a positive integer. The generated texts
are training prompts only: `drafters.training.data.drop_overlapping` still removes any that shares a word
8-gram with an evaluation prompt.
"""
from __future__ import annotations

import random

NAMES = ("Maya", "Liam", "Sofia", "Noah", "Aisha", "Mateo", "Chloe", "Ethan", "Priya", "Lucas", "Hana", "Omar",
         "Grace", "Diego", "Zoe", "Kenji", "Amara", "Felix", "Nora", "Tariq", "Elena", "Ben", "Ines", "Ravi")
ITEMS = (("pencil", "pencils"), ("apple", "apples"), ("sticker", "stickers"), ("cookie", "cookies"),
         ("marble", "marbles"), ("book", "books"), ("cupcake", "cupcakes"), ("balloon", "balloons"),
         ("toy car", "toy cars"), ("seashell", "seashells"), ("muffin", "muffins"), ("bead", "beads"),
         ("card", "cards"), ("flower", "flowers"), ("egg", "eggs"), ("orange", "oranges"))
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("basket", "baskets"), ("jar", "jars"),
              ("crate", "crates"), ("tray", "trays"), ("bundle", "bundles"))
PLACES = ("the farmers market", "the school fair", "the bakery", "the bookstore", "the toy shop",
          "the grocery store", "the craft fair", "the garden center")
JOBS = ("babysitting", "walking dogs", "mowing lawns", "tutoring", "washing cars", "selling lemonade")


def _story(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    one, many = rng.choice(ITEMS)
    box, boxes = rng.choice(CONTAINERS)
    place, job = rng.choice(PLACES), rng.choice(JOBS)
    n, m, k = rng.randint(2, 12), rng.randint(3, 30), rng.randint(2, 9)
    price, total = rng.randint(2, 15), rng.randint(40, 300)
    pct = rng.choice((10, 20, 25, 30, 40, 50, 75))
    hours, rate = rng.randint(2, 12), rng.randint(5, 25)
    templates = (
        f"{a} buys {n} {boxes} of {many}. Each {box} holds {m} {many}. {a} gives {k} {many} to {b}. "
        f"How many {many} does {a} have left?",
        f"At {place}, one {one} costs ${price}. {a} buys {n} {many} and pays with a ${price * n + rng.randint(1, 50)} bill. "
        f"How much change does {a} get?",
        f"{a} earns ${rate} per hour {job}. Last week {a} worked {hours} hours, and this week {k} hours more than last week. "
        f"How much money did {a} earn in the two weeks?",
        f"{a} has {total} {many}. {a} gives {pct}% of them to {b} and then buys {m} more. "
        f"How many {many} does {a} have now?",
        f"{a} and {b} collect {many}. {a} has {m} {many}, and {b} has {k} times as many as {a}. "
        f"How many {many} do they have together?",
        f"A {box} of {many} costs ${price * 4}. There is a {pct}% discount today. {a} buys {n} {boxes}. "
        f"How much does {a} spend?",
        f"{a} reads {m} pages a day. The book has {m * hours + k} pages. After {hours} days, how many pages are left to read?",
        f"A baker makes {total} {many}. {a} sells {m} in the morning and twice as many in the afternoon. "
        f"How many {many} are not sold?",
        f"{a} is saving for a bike that costs ${total + 100}. {a} has ${total // 2} and saves ${rate} each week. "
        f"How many weeks will it take {a} to have enough money?",
        f"There are {n} rows of chairs in the hall with {m} chairs in each row. {k * n} chairs are taken away. "
        f"How many chairs are left?",
        f"{a} runs {k} miles on Monday, {k + 2} miles on Tuesday and half as many miles on Wednesday as on Tuesday. "
        f"How many miles does {a} run in the three days?",
        f"A {box} holds {m} {many}. {a} has {total} {many} to pack. How many {boxes} does {a} need, "
        f"and how many {many} are left over?",
        f"{a} is {k + 5} years old. {b} is {n} years older than {a}. In {m} years, what will be the sum of their ages?",
        f"{a} plants {n} rows of {many} with {m} in each row. A storm ruins {pct}% of them. How many are left?",
        f"{a} buys {n} {many} for ${price} each and {k} {boxes} for ${price + 3} each. {a} has ${total}. "
        f"How much money does {a} have left?",
        f"A train travels {rate * 4} miles per hour for {hours} hours and then {rate * 2} miles per hour for {k} hours. "
        f"How far does it travel in total?",
        f"{a} scored {m}, {m + k}, and {m + 2 * k} points in three games. What was {a}'s average score?",
        f"A rectangle garden is {m} feet long and {n + 3} feet wide. {a} wants to put a fence around it. "
        f"Fencing costs ${price} per foot. How much will the fence cost?",
        f"{a} had some {many}. After giving {k} to each of {n} friends, {a} had {m} left. How many {many} did {a} have at first?",
        f"{a} makes {n} trays of {many} with {m} on each tray. {a} eats {k} and shares the rest equally among "
        f"{rng.choice((2, 3, 4))} friends, keeping the remainder. How many does each friend get?",
        f"The price of a {one} went up from ${price} to ${price + k}. By what percent did the price increase?",
        f"{a} drinks {k} glasses of water a day. Each glass holds {rng.choice((200, 250, 300))} milliliters. "
        f"How many liters does {a} drink in {n} weeks?",
        f"{a} walks to school in {m} minutes and {b} takes {k} minutes less. If school starts at 8:30 am, "
        f"when must {b} leave home to arrive exactly on time?",
        f"In a class of {total // 4 + 10} students, {pct}% play soccer and {k} of the others play chess. "
        f"How many students play neither?",
    )
    return rng.choice(templates)


def word_problems(n: int, seed: int = 0) -> list[str]:
    """n distinct seeded word problems."""
    rng = random.Random(seed)
    out, seen = [], set()
    for _ in range(50 * n):
        text = _story(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct word problems (got {len(out)})")


# Instructions for the target to write new problems itself (a second source, in its own style).
WRITE_TOPICS = ("shopping", "baking", "a school trip", "saving money", "a garden", "sports practice", "a road trip",
                "a birthday party", "a library", "a farm", "a bake sale", "building a fence", "a lemonade stand",
                "a train ride", "collecting stamps", "a science fair", "painting a room", "a zoo visit")


def writing_requests(n: int, seed: int = 0) -> list[str]:
    """n seeded requests asking the target to write one grade-school word problem."""
    rng = random.Random(seed)
    return [
        f"Write one grade-school math word problem about {rng.choice(WRITE_TOPICS)} that uses the numbers "
        f"{rng.randint(2, 20)} and {rng.randint(10, 200)} and needs {rng.choice(('two', 'three', 'two or three'))} "
        f"steps to solve. Write only the problem, ending with a question."
        for _ in range(n)
    ]


def clean_written_problem(text: str) -> str | None:
    """The problem the target wrote, or None when it is unusable (too short, no question)."""
    text = text.strip().strip('"').strip()
    for prefix in ("Problem:", "Word problem:", "Here is a word problem:", "Here's a word problem:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix):].strip()
    if "?" not in text or len(text) < 40:
        return None
    return text[: text.rindex("?") + 1]
