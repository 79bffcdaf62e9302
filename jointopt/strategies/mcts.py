"""Monte Carlo tree search over reasoning steps.

The tree
--------
A node is a *prefix*: the text the assistant turn starts with (root: empty). Its
children extend it by one *step*: a completion that ends at ``step_delimiter`` (the
delimiter is a stop string, so it is not in the completion text; the child's prefix is
``parent prefix + step + delimiter``, or without the delimiter if the step was cut by
the token budget).

One iteration
-------------
1. **Select**: from the root, follow UCT (:func:`uct_choice`) through expanded
   non-terminal nodes to a node that is not expanded yet (unvisited children first, in
   order; ties go to the earlier child).
2. **Expand and evaluate, in one round**: the iteration yields at most two requests,
   both continuing the selected node's prefix: the *expansion*
   (``n=branching``, ``stop=(step_delimiter,)``), which creates up to ``branching``
   children (identical sibling steps are merged, first kept), and the *evaluation*
   (``n=rollouts``, no stop), which completes the solution ``rollouts`` times. A terminal
   node is only evaluated; a terminal node already evaluated costs nothing and just
   backs its value up again.
3. **Value**: the rollouts' answers (``ctx.extract(prefix + rollout)``) give the node
   its answer (their plurality) and its value in [0, 1]:
   ``agreement`` (share of rollouts agreeing with the plurality answer), ``verifier``
   (share of rollouts whose answer passes the task's serve-time verifier), ``logprob``
   (mean over rollouts of ``exp`` of the mean token logprob of the whole solution: path
   steps plus rollout; 0 without an answer), or ``auto`` (verifier when the task has one,
   else agreement when ``rollouts >= 2``, else logprob).
4. **Backpropagate**: the value is added to every node on the path (visits + 1).

Terminal nodes
--------------
The backend reports ``finish_reason="stop"`` both for the delimiter and for end of
sequence, so a step alone cannot tell whether the model finished. A node is terminal
(never expanded) when

* its depth is ``max_depth`` (its rollouts complete the solution);
* its path used up the token budget (see below); a step cut by ``"length"`` always does;
* the prompt template has an ``answer_regex`` and the step (ended by ``"stop"``)
  matches it: the model wrote its marked final answer;
* its rollouts all came back empty with ``finish_reason="stop"``: the model ends right
  at this prefix, i.e. the step ended with end-of-sequence. This is learned in the same
  round as the node's expansion, whose children are then dropped (their cost counted).

Budget
------
``max_tokens`` caps a whole solution, as for one sample: a step or rollout from a node
may use ``max_tokens`` minus the completion tokens of the steps on its path (at least 1).
Each iteration draws at most ``branching + rollouts`` completions, so
``max_completions() = iterations * (branching + rollouts)`` is a true upper bound.
Expansions use seed ``ctx.seed`` and rollouts ``ctx.seed + 1`` so that, on engines that
honour per-request seeds, a node's rollouts are not copies of its children's steps.

Final answer
------------
``best_value``: the answer of the terminal node with the highest mean value (before any
terminal node is evaluated: of any node); ``most_visited``: follow the most visited child
from the root and take the deepest answer on that path; ``vote``: plurality over every
rollout answer in the tree, each weighted by the value of the node it evaluated. Ties go
to the node created (or answer seen) first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from jointopt.errors import StrategyError
from jointopt.core.generation import Completion
from jointopt.strategies.base import (
    Candidate,
    Run,
    Strategy,
    StrategyContext,
    StrategyOutcome,
    check_choice,
    check_float,
    check_int,
    require_verifier,
)
from jointopt.strategies.voting import plurality

__all__ = ["MCTS", "uct_choice", "uct_score"]

#: Guards against budget typos.
MAX_ITERATIONS = 1024
MAX_BRANCHING = 64
MAX_DEPTH = 64
MAX_ROLLOUTS = 64

VALUES = ("agreement", "verifier", "logprob", "auto")
FINALS = ("best_value", "most_visited", "vote")


def uct_score(parent_visits: int, visits: int, value_sum: float, c: float) -> float:
    """UCT of a child: ``Q + c * sqrt(ln(N) / n)``; ``inf`` when it was never visited."""
    if visits == 0:
        return math.inf
    return value_sum / visits + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def uct_choice(parent_visits: int, children: Sequence[tuple[int, float]], c: float) -> int:
    """Index of the child UCT selects among ``(visits, value_sum)`` pairs.

    The first unvisited child if any, else the highest :func:`uct_score`; ties go to the
    lower index.
    """
    best, best_score = 0, -math.inf
    for index, (visits, value_sum) in enumerate(children):
        score = uct_score(parent_visits, visits, value_sum, c)
        if score > best_score:
            best, best_score = index, score
    return best


@dataclass(eq=False)
class _Node:
    """A search-tree node (mutable state private to one run)."""

    id: int
    parent: "_Node | None"
    prefix: str
    depth: int
    #: Completion tokens of the steps on the path from the root.
    path_tokens: int = 0
    #: Logprobs of those tokens.
    path_logprobs: tuple[float, ...] = ()
    terminal: bool = False
    expanded: bool = False
    children: list["_Node"] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    #: Own evaluation (from its rollouts); None until evaluated.
    value: float | None = None
    #: Plurality answer of its rollouts.
    answer: str | None = None
    rollout_answers: tuple[str | None, ...] = ()

    @property
    def mean_value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


class MCTS(Strategy):
    """Tree search over reasoning steps with UCT selection (see the module docstring)."""

    name = "mcts"

    @dataclass(frozen=True)
    class Params:
        #: Select-expand-evaluate-backpropagate iterations (at most one round each).
        iterations: int = 8
        #: Candidate next steps sampled when a node is expanded.
        branching: int = 2
        #: UCT exploration constant (0 = greedy on mean value).
        c: float = 1.0
        #: Maximum number of steps in a path; nodes this deep are terminal.
        max_depth: int = 4
        #: Rollouts (full completions) that evaluate a node.
        rollouts: int = 2
        #: Text that ends a step (a stop string of expansion requests).
        step_delimiter: str = "\n"
        #: Node value: ``agreement``, ``verifier``, ``logprob`` or ``auto``.
        value: str = "auto"
        #: Final answer: ``best_value``, ``most_visited`` or ``vote``.
        final: str = "best_value"

        def __post_init__(self) -> None:
            check_int("mcts.iterations", self.iterations, 1, MAX_ITERATIONS)
            check_int("mcts.branching", self.branching, 1, MAX_BRANCHING)
            check_float("mcts.c", self.c, 0.0)
            if not math.isfinite(self.c):
                raise StrategyError("`c` must be finite", where="mcts.c", value=self.c,
                                    fix="use a value such as 1.0")
            check_int("mcts.max_depth", self.max_depth, 1, MAX_DEPTH)
            check_int("mcts.rollouts", self.rollouts, 1, MAX_ROLLOUTS)
            if not isinstance(self.step_delimiter, str) or not self.step_delimiter:
                raise StrategyError("`step_delimiter` must be a non-empty string",
                                    where="mcts.step_delimiter", value=self.step_delimiter,
                                    fix='use e.g. "\\n" or "\\n\\n"')
            check_choice("mcts.value", self.value, VALUES)
            check_choice("mcts.final", self.final, FINALS)

    def check_task(self, task) -> None:
        if self.params.value == "verifier":
            require_verifier(task, "mcts.value", self.params.value,
                             "value 'agreement', 'logprob' or 'auto'")

    def max_completions(self) -> int:
        p = self.params
        return p.iterations * (p.branching + p.rollouts)

    def value_kind(self, ctx: StrategyContext) -> str:
        """The value actually used on ``ctx``'s task (``auto`` resolved)."""
        if self.params.value != "auto":
            return self.params.value
        if ctx.task.verifier is not None:
            return "verifier"
        return "agreement" if self.params.rollouts >= 2 else "logprob"

    # ------------------------------------------------------------------ the search

    def run(self, ctx: StrategyContext) -> Run:
        p = self.params
        kind = self.value_kind(ctx)
        root = _Node(id=0, parent=None, prefix="", depth=0)
        nodes = [root]
        candidates: list[Candidate] = []
        rounds = 0
        for _ in range(p.iterations):
            path = [root]
            node = root
            while node.expanded and node.children and not node.terminal:
                node = node.children[uct_choice(
                    node.visits, [(ch.visits, ch.value_sum) for ch in node.children], p.c)]
                path.append(node)
            expand = not node.terminal and not node.expanded
            evaluate = node.value is None
            if not expand and not evaluate:
                self._backpropagate(path, node.value or 0.0)
                continue
            budget = max(1, ctx.max_tokens - node.path_tokens)
            requests = []
            if expand:
                requests.append(ctx.request(n=p.branching, max_tokens=budget,
                                            stop=(p.step_delimiter,), continuation=node.prefix))
            if evaluate:
                requests.append(ctx.request(n=p.rollouts, max_tokens=budget,
                                            continuation=node.prefix, seed=ctx.seed + 1))
            results = yield requests
            rounds += 1
            if expand:
                self._expand(ctx, node, results[0].completions, nodes)
            if evaluate:
                rollouts = results[-1].completions
                self._evaluate(ctx, kind, node, rollouts)
                if node.terminal and node.expanded:
                    # Children of a prefix the model ends at are dropped (cost counted).
                    nodes[:] = [n for n in nodes if n.parent is not node]
                    node.children.clear()
                candidates.extend(
                    Candidate(node.prefix + r.text, a, node.value)
                    for r, a in zip(rollouts, node.rollout_answers)
                )
            self._backpropagate(path, node.value or 0.0)
        answer = self._final(root, nodes)
        info = {
            "nodes": len(nodes),
            "evaluated": sum(n.value is not None for n in nodes),
            "terminal": sum(n.terminal for n in nodes),
            "depth": max(n.depth for n in nodes),
            "rounds": rounds,
            "value": kind,
        }
        return StrategyOutcome(answer, tuple(candidates), info)

    def _expand(self, ctx: StrategyContext, node: _Node, steps: Sequence[Completion],
                nodes: list[_Node]) -> None:
        p = self.params
        node.expanded = True
        seen: set[str] = set()
        for step in steps:
            ended = step.finish_reason == "stop"
            prefix = node.prefix + step.text + (p.step_delimiter if ended else "")
            if prefix in seen:
                continue
            seen.add(prefix)
            tokens = node.path_tokens + step.num_tokens
            marked = bool(ended and ctx.answer_regex and re.search(ctx.answer_regex, step.text))
            child = _Node(
                id=len(nodes), parent=node, prefix=prefix, depth=node.depth + 1,
                path_tokens=tokens,
                path_logprobs=node.path_logprobs + tuple(step.logprobs or ()),
                terminal=(node.depth + 1 >= p.max_depth or tokens >= ctx.max_tokens
                          or not ended or marked),
            )
            node.children.append(child)
            nodes.append(child)

    def _evaluate(self, ctx: StrategyContext, kind: str, node: _Node,
                  rollouts: Sequence[Completion]) -> None:
        answers = tuple(ctx.extract(node.prefix + r.text) for r in rollouts)
        node.rollout_answers = answers
        node.answer = plurality(answers)
        if kind == "agreement":
            agree = sum(a is not None and a == node.answer for a in answers)
            node.value = agree / len(answers)
        elif kind == "verifier":
            node.value = sum(bool(ctx.verify(a)) for a in answers) / len(answers)
        else:
            total = 0.0
            for r, a in zip(rollouts, answers):
                lps = node.path_logprobs + tuple(r.logprobs or ())
                if a is not None and lps:
                    total += math.exp(sum(lps) / len(lps))
            node.value = total / len(answers)
        if all(r.num_tokens == 0 and r.finish_reason == "stop" for r in rollouts):
            # The model ends right here: the last step ended with end-of-sequence.
            node.terminal = True

    @staticmethod
    def _backpropagate(path: Sequence[_Node], value: float) -> None:
        for n in path:
            n.visits += 1
            n.value_sum += value

    def _final(self, root: _Node, nodes: Sequence[_Node]) -> str | None:
        final = self.params.final
        evaluated = [n for n in nodes if n.value is not None]
        if final == "vote":
            answers, weights = [], []
            for n in evaluated:
                answers.extend(n.rollout_answers)
                weights.extend([n.value or 0.0] * len(n.rollout_answers))
            return plurality(answers, weights)
        if final == "most_visited":
            node, answer = root, root.answer
            while True:
                visited = [ch for ch in node.children if ch.visits > 0]
                if not visited:
                    return answer
                node = max(visited, key=lambda ch: ch.visits)  # first of equals
                if node.answer is not None:
                    answer = node.answer
        answered = [n for n in evaluated if n.answer is not None]
        pool = [n for n in answered if n.terminal] or answered
        if not pool:
            return None
        return max(pool, key=lambda n: n.mean_value).answer  # first of equals
