"""Search efficiency: hypervolume of the found front against the generation spent.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 10]

A seeded synthetic bank shaped like a recorded one: 25 prompts x 316 questions x 128
samples, with prompt-dependent accuracy (prompt skill against question difficulty),
prompt-dependent wrong-answer spread (so majority vote changes the ranking of prompts)
and per-prompt costs (prompt length, completion length). The space is prompt x majority
vote with n in 1..16 (n = 1 is a single sample): 400 policies, each scored exactly from
the first 16 samples of its pools (``jointopt.strategies.pool.majority_curve``).

Generation is accounted as a live engine would count it: a pool request costs its
prompt tokens once plus the completion tokens of the samples it adds. The unit is the
**exhaustive pooled cost**: filling every prompt's pool to 16 samples on every question.

Methods, each for ``--seeds`` sampler seeds (medians reported):

* ``jointopt``: the settings loop of a study that races settings. Every setting (here: a
  prompt) is screened on a short stratified prefix of the questions
  (:mod:`jointopt.search.promise`, the default ``racing.screen``); then, always the most
  promising setting per token still needed is raced over the remaining rungs against
  the current front (:mod:`jointopt.search.racing`, the default rungs and confidence)
  and, if it survives, completed with every free variant (n = 1..16) recorded as derived
  trials (``study.add_trial``) in an Optuna study driven by jointopt's sampler, which
  proposes once no screened setting could add to the front.
* ``tpe``: today's study: jointopt's TPE proposes (prompt, n); a trial grows its prompt's
  pools to ``max(8, n)`` samples.
* ``random``: the same with Optuna's random sampler.

The hypervolume (accuracy up, mean tokens down; reference: accuracy 0 and the largest
mean tokens of any policy) of the true values of every policy a method has scored, over
the exhaustive front's, at each spent fraction of the exhaustive pooled cost. The last line
is ``ratio=<jointopt's median HV ratio at <= 30% of the exhaustive pooled cost>``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np

from jointopt.search.config import OptimizerConfig, RacingConfig
from jointopt.search.promise import (Screen, hypervolume, next_setting, screen_points,
                                     screen_size)
from jointopt.search.racing import race_order, race_setting, rung_sizes
from jointopt.search.results import non_dominated
from jointopt.search.sampler import make_sampler
from jointopt.strategies.pool import PoolSample, majority_curve

PROMPTS, QUESTIONS, SAMPLES, N_MAX, MAX_TOKENS = 25, 316, 128, 16, 512
BASE_POOL = 8  # bank.pool_size of today's studies
FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


# --------------------------------------------------------------------------- the bank


class Bank:
    """Per (prompt, question): majority accuracy for n = 1..16, mean tokens per policy, and
    the tokens of each sample (what drawing it costs)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        skill = rng.normal(0.0, 0.7, PROMPTS)
        spread = rng.uniform(0.1, 0.9, PROMPTS)  # share of wrong answers off the attractor
        self.prompt_tokens = rng.integers(40, 600, PROMPTS)
        completion = rng.uniform(40, 320, PROMPTS) * np.exp(0.25 * skill)
        difficulty = rng.normal(0.0, 1.3, QUESTIONS)
        self.strata = [str(int(d > 0)) + str(int(d > 1)) for d in difficulty]
        p = 1 / (1 + np.exp(-(skill[:, None] + 0.6 - difficulty[None, :])))
        correct = rng.random((PROMPTS, QUESTIONS, SAMPLES)) < p[..., None]
        attract = rng.random((PROMPTS, QUESTIONS, SAMPLES)) > spread[:, None, None]
        wrong = np.where(attract, 1, rng.integers(2, 8, (PROMPTS, QUESTIONS, SAMPLES)))
        answers = np.where(correct, 0, wrong)
        self.sample_tokens = np.maximum(
            1, rng.poisson(completion[:, None, None], (PROMPTS, QUESTIONS, SAMPLES)))
        self.acc = np.zeros((PROMPTS, QUESTIONS, N_MAX))
        self.tok = np.zeros((PROMPTS, QUESTIONS, N_MAX))
        ks = np.arange(1, N_MAX + 1)
        for i in range(PROMPTS):
            for q in range(QUESTIONS):
                pool = [PoolSample(f"a{a}", a == 0, int(t)) for a, t in
                        zip(answers[i, q, :N_MAX], self.sample_tokens[i, q, :N_MAX])]
                self.acc[i, q] = majority_curve(pool)
                self.tok[i, q] = self.prompt_tokens[i] + ks * self.sample_tokens[
                    i, q, :N_MAX].mean()
        self._finish(MAX_TOKENS)

    @classmethod
    def from_pools(cls, acc: np.ndarray, tok: np.ndarray, sample_tokens: np.ndarray,
                   prompt_tokens: np.ndarray, strata: list[str], max_tokens: int) -> "Bank":
        """A bank of recorded pools: ``acc`` / ``tok`` [setting, question, n-1],
        ``sample_tokens`` [setting, question, sample], ``prompt_tokens`` [setting]."""
        bank = cls.__new__(cls)
        bank.acc, bank.tok, bank.sample_tokens = acc, tok, sample_tokens
        bank.prompt_tokens, bank.strata = prompt_tokens, strata
        bank._finish(max_tokens)
        return bank

    def _finish(self, max_tokens: int) -> None:
        self.settings, self.questions, self.n_max = self.acc.shape
        self.max_tokens = max_tokens
        self.true_acc = self.acc.mean(axis=1)  # [setting, n-1]
        self.true_tok = self.tok.mean(axis=1)
        self.exhaustive = float(self.fill_cost(range(self.settings), range(self.questions), 0,
                                               self.n_max))
        self.tok_ref = float(self.true_tok.max())
        self.hv_all = self.hypervolume({(i, n) for i in range(self.settings)
                                        for n in range(self.n_max)})

    def fill_cost(self, prompts, questions, have: int, want: int) -> float:
        """Tokens to grow the pools of ``prompts`` x ``questions`` from ``have`` to ``want``."""
        if want <= have:
            return 0.0
        prompts, questions = list(prompts), list(questions)
        sub = self.sample_tokens[np.ix_(prompts, questions)][..., have:want]
        if self.prompt_tokens.ndim == 2:  # per (setting, question)
            return float(sub.sum() + self.prompt_tokens[np.ix_(prompts, questions)].sum())
        return float(sub.sum() + self.prompt_tokens[prompts].sum() * len(questions))

    def prompt_cost(self, setting: int) -> float:
        """Mean prompt tokens of a setting (what queueing cheapest first knows)."""
        return float(np.mean(self.prompt_tokens[setting]))

    def hypervolume(self, policies) -> float:
        return hypervolume([(self.true_acc[i, n], self.true_tok[i, n]) for i, n in policies],
                           self.tok_ref)


# --------------------------------------------------------------------------- methods


def _study(sampler):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def run_jointopt(bank: Bank, seed: int, queue_first: bool = True,
                 trials: int | None = None) -> list[tuple[float, float]]:
    """(cost spent, HV ratio) after each step of jointopt's settings loop.

    With ``queue_first`` (a fresh study that races settings): every setting is screened
    on a short prefix of the questions (:mod:`jointopt.search.promise`), then the most
    promising setting per token still needed is raced over the remaining rungs against
    the current front (:mod:`jointopt.search.racing`) and, if it survives, completed with
    every free variant (n = 1..16) recorded as derived trials (``study.add_trial``); when
    no screened setting could add to the front, the sampler proposes. Without
    ``queue_first`` the sampler proposes from the first trial."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    racing = RacingConfig()
    study = _study(make_sampler(OptimizerConfig(seed=seed)))
    dists = {"prompt": CategoricalDistribution([f"p{i}" for i in range(bank.settings)]),
             "majority.n": IntDistribution(1, bank.n_max)}
    order = race_order(bank.strata, seed)
    first = screen_size(bank.questions, racing.screen, racing.screen_min_examples)
    sizes = [s for s in rung_sizes(bank.questions, racing.rungs, racing.min_examples)
             if s > first]
    spent, scored, drawn, out, curve = 0.0, set(), {}, set(), []

    def draw(i: int, questions) -> None:
        nonlocal spent
        new = [q for q in questions if q not in drawn.setdefault(i, set())]
        spent += bank.fill_cost([i], new, 0, bank.n_max)
        drawn[i].update(new)

    def rows(i: int, prefix) -> list[tuple[np.ndarray, np.ndarray]]:
        draw(i, prefix)
        return [(bank.acc[i, prefix, n], bank.tok[i, prefix, n]) for n in range(bank.n_max)]

    def complete(i: int, trial) -> None:
        """Race setting ``i`` against the current front, then complete it."""
        front = [(bank.acc[p, :, n], bank.tok[p, :, n]) for p, n in _front(bank, scored)]
        result = race_setting(lambda prefix: rows(i, prefix),
                              lambda prefix: [(c[prefix], t[prefix]) for c, t in front],
                              order, sizes, racing.confidence)
        if result.stopped_at is not None:
            out.add(i)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            draw(i, range(bank.questions))
            n0 = trial.params["majority.n"] - 1
            study.tell(trial, [bank.true_acc[i, n0], bank.true_tok[i, n0]])
            for n in range(bank.n_max):
                scored.add((i, n))
                if n != n0:
                    study.add_trial(optuna.trial.create_trial(
                        params={"prompt": f"p{i}", "majority.n": n + 1}, distributions=dists,
                        values=[bank.true_acc[i, n], bank.true_tok[i, n]],
                        user_attrs={"derived_from": trial.number}))
        curve.append((spent, bank.hypervolume(scored) / bank.hv_all))

    screens = {}
    if queue_first:
        for i in range(bank.settings):
            before = spent
            points = screen_points(rows(i, order[:first]))
            screens[i] = Screen(points, (spent - before) * (bank.questions - first) / first)
            curve.append((spent, bank.hypervolume(scored) / bank.hv_all))
    while True:
        waiting = {i: s for i, s in screens.items() if i not in out
                   and (i, 0) not in scored}
        front = [(bank.true_acc[i, n], bank.true_tok[i, n]) for i, n in _front(bank, scored)]
        i = next_setting(waiting, front, racing.optimism)
        if i is None:
            break
        complete(i, _enqueued(study, dists, i))
    for _ in range(trials if trials is not None else bank.settings):
        if len(scored) // bank.n_max + len(out) == bank.settings:
            break
        trial = study.ask(dists)
        i = int(trial.params["prompt"][1:])
        if (i, 0) in scored or i in out:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            curve.append((spent, bank.hypervolume(scored) / bank.hv_all))
            continue
        complete(i, trial)
    return curve


def _enqueued(study, dists, i: int):
    """The trial of setting ``i`` queued as the study queues the next promising setting."""
    study.enqueue_trial({"prompt": f"p{i}", "majority.n": 1})
    return study.ask(dists)


def _front(bank: Bank, scored) -> list[tuple[int, int]]:
    points = [(bank.true_acc[i, n], bank.true_tok[i, n], j, (i, n))
              for j, (i, n) in enumerate(sorted(scored))]
    return [p[3] for p in non_dominated(points, accuracy=lambda p: p[0],
                                        tokens=lambda p: p[1], number=lambda p: p[2])]


def run_plain(bank: Bank, seed: int, sampler: str, trials: int) -> list[tuple[float, float]]:
    """(cost spent, HV ratio) after each trial of today's study with ``sampler``."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    study = _study(make_sampler(OptimizerConfig(seed=seed, sampler=sampler)))
    dists = {"prompt": CategoricalDistribution([f"p{i}" for i in range(bank.settings)]),
             "majority.n": IntDistribution(1, bank.n_max)}
    pools = [0] * bank.settings
    spent, scored, curve = 0.0, set(), []
    for _ in range(trials):
        trial = study.ask(dists)
        i, n = int(trial.params["prompt"][1:]), trial.params["majority.n"]
        want = max(BASE_POOL, n)
        spent += bank.fill_cost([i], range(bank.questions), pools[i], want)
        pools[i] = max(pools[i], want)
        scored.add((i, n - 1))
        study.tell(trial, [bank.true_acc[i, n - 1], bank.true_tok[i, n - 1]])
        curve.append((spent, bank.hypervolume(scored) / bank.hv_all))
    return curve


def at_fraction(curve: list[tuple[float, float]], budget: float) -> float:
    """HV ratio reached without spending more than ``budget``."""
    return max((hv for cost, hv in curve if cost <= budget), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100,
                        help="trials of the tpe and random baselines per seed")
    parser.add_argument("--other-banks", type=int, default=4,
                        help="also report the 0.30 column on this many other bank seeds")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    bank = Bank(0)
    front = _front(bank, {(i, n) for i in range(PROMPTS) for n in range(N_MAX)})
    print(f"bank: {PROMPTS} prompts x {QUESTIONS} questions x {SAMPLES} samples; "
          f"{PROMPTS * N_MAX} policies, exhaustive front {len(front)} points over "
          f"{len({i for i, _ in front})} prompts; exhaustive pooled cost "
          f"{bank.exhaustive / 1e6:.1f}M tokens ({time.perf_counter() - start:.1f}s)")
    methods = {"jointopt": lambda s: run_jointopt(bank, s),
               "tpe": lambda s: run_plain(bank, s, "tpe", args.trials),
               "random": lambda s: run_plain(bank, s, "random", args.trials)}
    table = {}
    for name, run in methods.items():
        t0 = time.perf_counter()
        curves = [run(seed) for seed in range(args.seeds)]
        table[name] = [float(np.median([at_fraction(c, f * bank.exhaustive) for c in curves]))
                       for f in FRACTIONS]
        if name == "jointopt":
            final = [c[-1][0] / bank.exhaustive for c in curves]
            print(f"jointopt: every setting decided at {np.median(final):.3f} of the "
                  f"exhaustive pooled cost (median), final HV ratio "
                  f"{np.median([c[-1][1] for c in curves]):.4f}")
        print(f"{name}: {args.seeds} seeds in {time.perf_counter() - t0:.1f}s")
    print("median HV ratio at <= fraction of the exhaustive pooled cost")
    print(f"{'method':>10} " + " ".join(f"{f:>7.2f}" for f in FRACTIONS))
    for name, row in table.items():
        print(f"{name:>10} " + " ".join(f"{v:>7.4f}" for v in row))
    if args.other_banks:
        print(f"other banks (seeds 1..{args.other_banks}), median HV ratio at <= 0.30 over "
              f"{args.seeds} seeds:")
        for bank_seed in range(1, args.other_banks + 1):
            other = Bank(bank_seed)
            row = {name: np.median([at_fraction(run(s), 0.3 * other.exhaustive)
                                    for s in range(args.seeds)])
                   for name, run in (("jointopt", lambda s: run_jointopt(other, s)),
                                     ("tpe", lambda s: run_plain(other, s, "tpe", args.trials)),
                                     ("random", lambda s: run_plain(other, s, "random",
                                                                    args.trials)))}
            print(f"  bank {bank_seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    print(f"ratio={table['jointopt'][FRACTIONS.index(0.3)]:.4f}")


if __name__ == "__main__":
    main()
