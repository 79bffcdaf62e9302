"""Optimize an existing DSPy program jointly with its inference strategy.

:func:`optimize_program` searches, with a multi-objective Optuna study (metric accuracy
up, tokens down), over

* the instructions of every predictor of the program: its own instruction, instructions
  given in the search space, and instructions proposed by an LM
  (:func:`jointopt.integrations.proposals.propose_instructions`);
* the inference strategy: ``single``, ``majority`` or ``best_of_n`` with their ``n``,
  and the sampling ``temperature`` and ``max_tokens`` (per difficulty bin when asked).

A trial sets the instructions on the predictors and answers every training example by
running the *whole program* ``n`` times (rollouts with distinct ``rollout_id`` and seed,
at the trial's temperature and max_tokens), then aggregates the output field: majority
vote, or best-of-n by the mean token logprob of the rollout's LM calls (the first rollout
when the backend gives no logprobs). Tokens are those the backend counted, prompt plus
completion, of every LM call of every rollout (parse-failure fallbacks included).

The tuned program is a copy of the input program with the chosen instructions set and
an :class:`InferencePolicy` parameter attached as ``program.inference_policy``. DSPy's
``program.save(path)`` writes it under the key ``"inference_policy"`` next to the
predictors' state, and ``program.load(path)`` restores it into any program that has the
attribute. A program built fresh (``dspy.ChainOfThought("question -> answer")``) loads
its instructions with ``program.load(path)``; its policy comes from :func:`load_policy`
(or :func:`attach_policy`). :func:`run_program` answers inputs with a program's policy.

Search-space mapping form (``search_space=`` as a dict or YAML)::

    strategies:
      single: {}
      majority: {n: {low: 2, high: 6}}
      best_of_n: {n: {choices: [2, 4]}}
    temperature: {low: 0.3, high: 1.0}
    max_tokens: {choices: [64, 128]}
    instructions:                       # extra candidates (optional)
      - Answer with the final answer only.
      - propose: {k: 3, n_examples: 3, seed: 0}

Modules: ``program`` (the tuned program's values, policy save/load, trainset check),
``space`` (the search space), ``rollouts`` (:func:`run_program`), ``candidates``
(instruction candidates), ``trials`` (a trial's pieces and the Optuna study) and
``optimize`` (:func:`optimize_program`).
"""

from jointopt.search.dspy_program.program import (
    POLICY_ATTRIBUTE,
    InferencePolicy,
    InstructionCandidate,
    ProgramInterface,
    ProgramResult,
    ProgramTrial,
    attach_policy,
    check_trainset,
    load_policy,
    policy_of,
    program_interface,
)
from jointopt.search.dspy_program.space import PROGRAM_STRATEGIES, ProgramSpaceConfig
from jointopt.search.dspy_program.rollouts import run_program
from jointopt.search.dspy_program.optimize import optimize_program

__all__ = [
    "InstructionCandidate",
    "ProgramInterface",
    "ProgramTrial",
    "ProgramResult",
    "InferencePolicy",
    "ProgramSpaceConfig",
    "optimize_program",
    "run_program",
    "program_interface",
    "check_trainset",
    "attach_policy",
    "policy_of",
    "load_policy",
    "POLICY_ATTRIBUTE",
    "PROGRAM_STRATEGIES",
]
