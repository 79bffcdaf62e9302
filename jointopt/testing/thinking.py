"""A scripted "model" for which thinking pays on ``word_problems``: offline studies of the
thinking budget (``model.engine.responder: thinking``).

It solves the story exactly and answers right with a probability that grows with how
long it thought: a problem of ``s`` steps takes ``NEED_PER_STEP * s`` thought tokens to
work out; answering directly is right 90% of the time on one step and 5% on more, and
each thought token up to the need moves that towards 95%. Thoughts end by themselves
(with ``</think>``) once they reach the need, so larger budgets cost no more than needed.
"""

from __future__ import annotations

import random
import re

from jointopt.core.generation import GenerationRequest

__all__ = ["NEED_PER_STEP", "solve_story", "thinking_responder"]

#: Thought tokens one step of a word problem takes.
NEED_PER_STEP = 24
_STEPS = [
    (re.compile(r"has (\d+) "), lambda s, a: a),
    (re.compile(r"finds (\d+) more"), lambda s, a: s + a),
    (re.compile(r"gives (\d+) "), lambda s, a: s - a),
    (re.compile(r"buys (\d+) boxes with (\d+) "), lambda s, k, m: s + k * m),
    (re.compile(r"sells (\d+) bags? of (\d+) "), lambda s, k, m: s - k * m),
]
_TOKEN = re.compile(r"\s*(\w+|[^\w\s])")


def solve_story(text: str) -> tuple[int | None, int]:
    """The final stock of a ``word_problems`` story and its number of steps."""
    stock, steps = None, -1
    for sentence in re.split(r"(?<=[.?])\s+", text):
        for pattern, apply in _STEPS:
            match = pattern.search(sentence)
            if match:
                stock = apply(stock, *(int(g) for g in match.groups()))
                steps += 1
                break
    return stock, max(steps, 0)


def thinking_responder(request: GenerationRequest, index: int, rng: random.Random) -> str:
    """Thought, answer or direct answer for a ``word_problems`` request (see the module)."""
    value, steps = solve_story(request.messages[-1].content)
    if value is None:
        return "I do not know."
    need = NEED_PER_STEP * max(steps, 1)
    context = request.continuation
    if "<think>" in context and "</think>" not in context:  # thinking (or extending)
        done = len(_TOKEN.findall(context.split("<think>", 1)[1]))
        return " step" * max(need - done, 1) + " </think> so"
    thought = context.split("<think>", 1)[1].split("</think>", 1)[0] if "</think>" in context else ""
    share = min(1.0, len(_TOKEN.findall(thought)) / need)
    direct = 0.9 if steps <= 1 else 0.05
    if rng.random() < direct + (0.95 - direct) * share:
        return str(value)
    return str(value + rng.choice((-10, -2, -1, 1, 2, 10)))
