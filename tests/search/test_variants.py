"""Settings and free variants: enumeration, exact scoring from pools, derived trials in a
study, the generation budget and racing (scripted backend)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from jointopt.backends import CachedBackend, SampleStore, ScriptedBackend
from jointopt.core.generation import GenerationRequest
from jointopt.evaluation.evaluate import evaluate
from jointopt.search.config import load_config
from jointopt.search.plan import plan_study
from jointopt.search.space import Choice, Fixed, FloatRange, IntRange
from jointopt.search.study import run_study
from jointopt.search.variants import free_variants, max_pool_k, score_variants

N_EXAMPLES = 80


def respond(request: GenerationRequest, index: int, rng: random.Random) -> str:
    """Right with the probability the system prompt states (``quality 0.8``); wrong
    answers spread over a few neighbours; long-winded prompts ramble longer."""
    system = request.messages[0].content
    quality = float(system.split("quality ")[1].split()[0])
    text = request.messages[-1].content
    a, b = (int(x) for x in text.rstrip("?").split()[-3::2])
    answer = a + b if rng.random() < quality else a + b + rng.choice([-2, -1, 1, 2, 3])
    filler = " well" * (system.count("verbose") * 3)
    return f"So{filler} the answer is {answer}."


def write_study(folder: Path, prompts: list[tuple[str, float, int]], *, n_trials: int,
                **optimizer) -> Path:
    """A study over ``prompts`` (id, quality, verbosity) on an addition dataset."""
    rng = random.Random(0)
    rows = []
    # distinct questions: two examples with one prompt share a pool, drawn by whichever
    # asks first, so runs that visit examples in different orders could differ
    pairs = rng.sample([(a, b) for a in range(1, 51) for b in range(1, 51)], N_EXAMPLES)
    for i, (a, b) in enumerate(pairs):
        rows.append({"id": f"q{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                     "difficulty": str(1 + i % 2)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    space = {
        "prompts": [{"id": pid, "system": f"quality {q} " + "verbose " * v,
                     "user": "{{ question }}"} for pid, q, v in prompts],
        "strategies": {"single": {}, "majority": {"n": {"low": 2, "high": 5}}},
        "temperature": 0.7, "max_tokens": 24,
    }
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    config = {
        "name": "variants", "output_dir": str(folder / "run"),
        "model": {"backend": "scripted"},
        "task": {"dataset": {"path": "data.jsonl", "extractor": {"kind": "last_number"},
                             "matcher": {"kind": "numeric"}}},
        "search_space": "space.yaml",
        "optimizer": {"n_trials": n_trials, "seed": 0, **optimizer},
        "tracking": {"enabled": False},
        "validation": {"resamples": 200},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Counting(ScriptedBackend):
    """Counts the samples it draws."""

    def __init__(self) -> None:
        super().__init__(respond)
        self.samples = 0

    def generate(self, requests):
        self.samples += sum(r.n for r in requests)
        return super().generate(requests)


def test_free_variants_enumerate_pool_strategies_only():
    variants = free_variants({
        "single": {}, "majority": {"n": IntRange(2, 4)},
        "best_of_n": {"n": Choice((2, 8)), "scorer": Fixed("logprob")},
        "weighted_vote": {"n": FloatRange(2.0, 3.0)},  # not enumerable: left to the sampler
        "revision": {"rounds": IntRange(1, 2)},  # sequential: not scored from pools
    })
    labels = [v.label() for v in variants]
    assert labels == ["single()", "majority(n=2)", "majority(n=3)", "majority(n=4)",
                      "best_of_n(n=2,scorer=logprob)", "best_of_n(n=8,scorer=logprob)"]
    assert max_pool_k(variants) == 8


def test_variants_score_exactly_as_their_own_evaluation(tmp_path):
    config = load_config(write_study(tmp_path, [("a", 0.6, 0)], n_trials=1))
    plan = plan_study(config)
    variants = free_variants(plan.space.strategies)
    engine = CachedBackend(ScriptedBackend(respond), SampleStore(tmp_path / "s.sqlite"))
    from jointopt.core.policy import Allocation, Policy
    from jointopt.search.derived import variant_policy

    base = Policy(model="scripted", prompt=plan.space.prompts[0],
                  bins={"all": Allocation("single", temperature=0.7, max_tokens=24)})
    scores = score_variants(base, variants, plan.task, engine, pool_size=5)
    for j, variant in enumerate(variants):
        policy = variant_policy(base, {"all": variant})
        alone = evaluate(policy, plan.task, engine, pool_size=5)
        assert [r.correct for r in alone.records] == [r.correct for r in scores.records[j]]
        assert [r.tokens for r in alone.records] == [r.tokens for r in scores.records[j]]
    engine.store.close()


def test_a_study_records_every_variant_of_each_setting(tmp_path):
    prompts = [("a", 0.6, 0), ("b", 0.8, 1)]
    result = run_study(load_config(write_study(tmp_path, prompts, n_trials=3)),
                       backend=ScriptedBackend(respond))
    assert len(result.proposed) == 3
    derived = [t for t in result.trials if t.derived_from is not None]
    assert derived and all(t.tokens_generated == 0 for t in derived)
    # every evaluated setting holds all 5 variants (single, majority n=2..5) exactly once
    by_prompt: dict[str, set[str]] = {}
    for t in result.trials:
        by_prompt.setdefault(t.params["prompt"], set()).add(t.policy.describe())
    assert set(by_prompt) == {"a", "b"}
    assert all(len(labels) == 5 for labels in by_prompt.values())
    # a derived trial's values are what evaluating its policy gives
    plan = plan_study(load_config(tmp_path / "study.yaml"))
    engine = CachedBackend(ScriptedBackend(respond), SampleStore(plan.out_dir / "samples.sqlite"))
    for t in derived[:3]:
        again = evaluate(t.policy, plan.task, engine, pool_size=8)
        assert (again.accuracy, again.mean_tokens) == pytest.approx((t.accuracy, t.mean_tokens))
        assert engine.generated == 0
    engine.store.close()
    header = (plan.out_dir / "trials.csv").read_text().splitlines()[0]
    assert header.endswith("derived_from")


def test_expansion_can_be_turned_off(tmp_path):
    path = write_study(tmp_path, [("a", 0.6, 0)], n_trials=2, expand_variants=False)
    result = run_study(load_config(path), backend=ScriptedBackend(respond))
    assert len(result.trials) == 2 and all(t.derived_from is None for t in result.trials)


def test_the_generation_budget_stops_the_study(tmp_path):
    prompts = [(f"p{i}", 0.5, i) for i in range(6)]
    path = write_study(tmp_path, prompts, n_trials=50, max_generated_tokens=20_000)
    result = run_study(load_config(path), backend=ScriptedBackend(respond))
    spent = result.extra["tokens_generated"]
    assert spent >= 20_000
    costs = [t.tokens_generated for t in sorted(result.proposed, key=lambda t: t.number)]
    assert sum(costs[:-1]) < 20_000  # it stopped at the first trial past the budget
    assert len(result.proposed) < 50
    # settings were queued cheapest first: the least verbose prompt came first
    first = min(result.proposed, key=lambda t: t.number)
    assert first.params["prompt"] == "p0"


def test_racing_saves_samples_and_keeps_the_front(tmp_path):
    """10 settings, 8 clearly dominated (wrong more often and wordier): racing draws at
    least half fewer samples and finds the same front."""
    prompts = [("good", 0.85, 0), ("fine", 0.7, 1)] + [(f"bad{i}", 0.25, 2 + i)
                                                       for i in range(8)]
    runs = {}
    for racing in (False, True):
        folder = tmp_path / f"racing_{racing}"
        # A (never reached) budget queues every setting in both runs, cheapest first.
        path = write_study(folder, prompts, n_trials=10, racing={"enabled": racing},
                           max_generated_tokens=10 ** 9)
        backend = Counting()
        result = run_study(load_config(path), backend=backend)
        front = [(t.policy.describe(), t.params["prompt"], round(t.accuracy, 9),
                  round(t.mean_tokens, 6)) for t in result.pareto]
        runs[racing] = (backend.samples, front, result.extra["samples_saved"])
    (plain, plain_front, _), (raced, raced_front, saved) = runs[False], runs[True]
    assert raced_front == plain_front
    assert {p for _, p, _, _ in plain_front} <= {"good", "fine"}
    assert raced <= 0.5 * plain, (raced, plain)
    assert saved > 0


def test_per_bin_choices_record_the_exact_front_of_all_combinations():
    import itertools

    from jointopt.evaluation.evaluate import ExampleRecord
    from jointopt.search.results import non_dominated
    from jointopt.search.variants import Variant, VariantScores, setting_front

    rng = random.Random(5)
    variants = tuple(Variant("majority", (("n", n),)) for n in range(1, 6))
    bins = tuple(rng.choice(["easy", "hard"]) for _ in range(30))

    def record(i, j):  # more samples: more tokens, mostly more accuracy
        return ExampleRecord(f"e{i}", bins[i], None, min(1.0, rng.random() * (0.5 + j / 8)),
                             10.0, (j + 1) * rng.uniform(5, 50), 1, 1, 0, 0.0, pooled=True)

    records = tuple(tuple(record(i, j) for i in range(30)) for j in range(len(variants)))
    scores = VariantScores(variants, bins, records, tuple(f"e{i}" for i in range(30)))

    def value(choice):
        rows = [records[choice[b]][i] for i, b in enumerate(bins)]
        return sum(r.correct for r in rows), sum(r.tokens for r in rows)

    every = [dict(zip(("easy", "hard"), c)) for c in itertools.product(range(5), repeat=2)]
    brute = non_dominated(range(len(every)), accuracy=lambda j: value(every[j])[0],
                          tokens=lambda j: value(every[j])[1], number=lambda j: j)
    got = setting_front(scores, ["easy", "hard"])
    assert len(brute) > 2
    rounded = [(round(a, 9), round(t, 6)) for a, t in sorted(map(value, got))]
    assert rounded == [(round(a, 9), round(t, 6))
                       for a, t in sorted(value(every[j]) for j in brute)]
    assert len(setting_front(scores, ["all"])) == 5


def completed_order(result) -> list[str]:
    """Prompts of the study's complete proposed trials, in trial order."""
    return [t.params["prompt"] for t in sorted(result.proposed, key=lambda t: t.number)]


def test_screening_completes_promising_settings_before_cheap_poor_ones(tmp_path):
    """Cheap prompts are poor, the good one is wordy: completing cheapest first spends
    most of the budget on the poor ones before the good one builds the front; screening
    every setting first completes the good one early and draws fewer samples, with the
    same front."""
    prompts = [(f"poor{i}", 0.25, i // 2) for i in range(8)] + [("fine", 0.7, 4),
                                                                 ("good", 0.85, 4)]
    runs = {}
    for screen in (0.0, 0.1):
        folder = tmp_path / f"screen_{screen}"
        path = write_study(folder, prompts, n_trials=10, max_generated_tokens=10 ** 9,
                           racing={"enabled": True, "screen": screen})
        backend = Counting()
        result = run_study(load_config(path), backend=backend)
        front = [(t.policy.describe(), round(t.accuracy, 9), round(t.mean_tokens, 6))
                 for t in result.pareto]
        runs[screen] = (backend.samples, front, completed_order(result), result)
    (plain, plain_front, plain_order, _), (screened, front, order, result) = (runs[0.0],
                                                                              runs[0.1])
    assert front == plain_front
    assert plain_order.index("good") == 9  # cheapest first: the good prompt came last
    assert order.index("good") <= 2, order
    assert screened < plain, (screened, plain)
    # generation spent until the front's accurate end was known: well under half
    until = {screen: spent_until(run[3], "good") for screen, run in runs.items()}
    assert until[0.1] < 0.5 * until[0.0], until
    study = optuna_study(result)
    marks = [t for t in study.get_trials(deepcopy=False) if "screened" in t.user_attrs]
    assert len(marks) == len(prompts)  # every setting screened once, on 8 of 80 examples
    assert {t.state.name for t in marks} == {"PRUNED"}
    assert {t.user_attrs["screened"]["examples"] for t in marks} == {8}
    assert len(result.proposed) >= 10  # screens do not count towards n_trials


def optuna_study(result):
    import optuna

    return optuna.load_study(study_name=result.study_name, storage=result.storage)


def spent_until(result, prompt: str) -> float:
    """Tokens the study generated up to the first complete trial of ``prompt``."""
    trials = optuna_study(result).get_trials(deepcopy=False)
    last = min(t.number for t in trials
               if t.state.name == "COMPLETE" and t.params.get("prompt") == prompt)
    return sum(t.user_attrs.get("tokens_generated", 0.0) for t in trials if t.number <= last)
