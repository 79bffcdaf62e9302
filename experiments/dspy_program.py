"""Tune a DSPy program jointly with its inference strategy, on the embedded model.

    .venv/bin/python experiments/dspy_program.py                 # real engine (CPU: minutes)
    .venv/bin/python experiments/dspy_program.py --n-trials 8 --propose 2
    .venv/bin/python experiments/dspy_program.py --scripted      # offline smoke run

A ``dspy.ChainOfThought("question -> answer")`` program is optimized on a built-in task
(its ``question`` field): its instruction (its own, a hand-written one, and optionally
LM-proposed ones) jointly with the strategy (single / majority / best-of-n, n, max_tokens),
scored by exact match on generated examples with real generations from vLLM. The script
prints the Pareto points (accuracy vs. mean tokens per question) and the chosen policy,
and saves the tuned program with DSPy's own ``program.save`` (the policy is saved with it
under ``"inference_policy"``; read it back with ``jointopt.search.dspy_program.load_policy``).

vLLM spawns an engine process that re-imports this file: keep the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
from pathlib import Path


def _scripted_responder(request, index: int, rng: random.Random) -> str:
    """A stand-in model for ``--scripted``: right 60% of the time, in DSPy's format."""
    text = request.messages[-1].content
    if "instructions for an AI assistant" in request.messages[0].content:
        return "[[ ## instruction ## ]]\nReply with the final answer only.\n\n[[ ## completed ## ]]"
    words = re.search(r"these words: (.*?)\n", text + "\n")
    numbers = [int(x) for x in re.findall(r"\d+", text.split("Respond with")[0])]
    if words:
        right = ", ".join(reversed([w.strip() for w in words.group(1).split(",")]))
    else:
        right = str(sum(numbers))
    answer = right if rng.random() < 0.6 else "I am not sure"
    return f"[[ ## reasoning ## ]]\nStep by step.\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-trials", type=int, default=4, help="Optuna trials (default: 4)")
    parser.add_argument("--family", default="reverse_words",
                        help="built-in task family with a `question` input (default: reverse_words)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1], help="difficulty levels")
    parser.add_argument("--n-per-level", type=int, default=6, help="examples per level")
    parser.add_argument("--propose", type=int, default=0,
                        help="instructions to propose with the model (default: 0)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model alias or folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/dspy_program", help="output folder")
    parser.add_argument("--scripted", action="store_true",
                        help="use a scripted stand-in model instead of vLLM (offline smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    # DSPy warns on every truncated reply; the trials record how many replies did not parse.
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)

    import dspy

    from jointopt.search.dspy_program import optimize_program
    from jointopt.errors import JointoptError
    from jointopt.tasks import make_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        task = make_task(args.family, levels=tuple(args.levels), n_per_level=args.n_per_level,
                         seed=args.seed, n_demos=4)
    except JointoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trainset = [dspy.Example(question=e.inputs["question"], answer=e.target,
                             level=e.difficulty).with_inputs("question") for e in task.examples]

    def metric(example, prediction, trace=None) -> bool:
        return task.matcher.matches(task.extract(str(prediction.answer)), example.answer)

    search_space = {
        "strategies": {"single": {}, "majority": {"n": {"choices": [3, 5]}},
                       "best_of_n": {"n": {"choices": [3]}}},
        "temperature": 0.7,
        "max_tokens": {"choices": [48, 96]},
        "instructions": ["Reply with the final answer only, exactly in the requested format."],
    }
    if args.propose:
        search_space["instructions"].append({"propose": {"k": args.propose, "n_examples": 2,
                                                         "seed": args.seed}})

    if args.scripted:
        from jointopt.backends import ScriptedBackend

        backend = ScriptedBackend(_scripted_responder, model_id="scripted")
    else:
        from jointopt.backends.vllm import VLLMBackend

        try:
            backend = VLLMBackend(model=args.model, seed=args.seed, max_model_len=1024)
        except JointoptError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        # Small models often break DSPy's field markers; a JSON retry rarely helps them and
        # doubles the cost, so the chat adapter runs without its JSON fallback here.
        with dspy.context(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
            result = optimize_program(
                dspy.ChainOfThought("question -> answer"), trainset, metric,
                backend=backend, search_space=search_space, n_trials=args.n_trials,
                seed=args.seed, storage=f"sqlite:///{(out / 'optuna.db').as_posix()}",
                study_name=f"{args.family}-{backend.model_id}-propose{args.propose}",
                proposal_cache=out / "proposals.json", num_threads=8,
            )
    except JointoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()

    print(f"\nPareto front ({len(result.study.trials)} trials, {len(trainset)} questions):")
    print(f"{'trial':>5}  {'accuracy':>8}  {'tokens':>8}  params")
    for point in result.pareto:
        print(f"{point.number:>5}  {point.accuracy:>8.3f}  {point.mean_tokens:>8.1f}  "
              f"{dict(point.params)}")
    print("\nChosen policy:")
    print(result.policy.to_yaml())
    path = out / "program.json"
    result.program.save(str(path))
    print(f"saved the tuned program to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
