"""Search-space files: prompts x strategies x sampling budget x difficulty bins, as strict
pydantic models (read by :func:`load_space_file`, turned into a
:class:`~jointopt.search.space.SearchSpace` by :func:`~jointopt.search.space_build.space_from_dict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from jointopt.search.config_parse import StrictModel, parse_model, read_yaml

__all__ = ["SearchSpaceFile", "PromptConfig", "DifficultyConfig", "ProposeEntry",
           "ThinkingSettings", "load_space_file"]


class PromptConfig(StrictModel):
    """A prompt template in a search space."""

    id: str
    """Unique name."""
    user: str
    """Jinja2 text of the user turn (variables: the task's fields)."""
    system: str | None = None
    """Jinja2 text of the system turn."""
    shots: int = Field(0, ge=0)
    """Demonstrations taken from the task's demo pool."""
    shot_answer: str = "{{ target }}"
    """Jinja2 text of a demonstration's answer (variables: fields and ``target``)."""
    answer_regex: str | None = None
    """Pattern whose first group is the answer, tried before the task's extraction."""
    shot_selection: Literal["first", "nearest"] = "first"
    """``first``: the first ``shots`` demos for every input; ``nearest``: the demos closest
    in length to the input, the closest last (uses only the input: serve-time safe)."""
    description: str = ""
    """What the template does."""


ParamValue = Union[str, int, float, bool, None, dict[str, Any]]


class DifficultyConfig(StrictModel):
    """How inputs are split into difficulty bins, each with its own strategy and budget."""

    source: str = "none"
    """A difficulty source of :data:`jointopt._registry.DIFFICULTY_SOURCES`, or a
    ``"package.module:Class"`` path to one. ``none``: one allocation for every input. ``label``: the input's ``difficulty`` field
    picks the bin. ``probe``: the policy first draws ``probe_k`` samples with its prompt;
    their agreement picks the bin (thresholds fitted on the dev split), and the bin's
    strategy reuses them; usable at serve time. ``predictor``: a small logistic regression
    on the input's text features, fitted on the dev split's oracle bins, picks the bin;
    usable at serve time and generates nothing (cheap, but only as good as the text says
    how hard an input is: see ``difficulty_report.json``). ``oracle``: bins by each
    example's pass rate over ``oracle_samples`` samples with the space's first prompt
    (quantiles, Snell et al.); an analysis upper bound, not servable: inputs would need the
    label."""
    bins: list[str] | None = None
    """Bin labels; default: the difficulty labels found in the task's examples, sorted."""
    default_bin: str | None = None
    """Bin for inputs without a known label; default: the last bin (the most compute)."""
    n_bins: int = Field(3, ge=2, le=10)
    """``probe``, ``predictor`` and ``oracle``: number of bins (``"1"`` = easiest)."""
    probe_k: int = Field(4, ge=1, le=64)
    """``probe``: samples of the probe; their tokens are part of the policy's cost."""
    probe_temperature: float = Field(0.7, gt=0.0)
    """``probe``: sampling temperature of the probe (allocations with the same temperature
    and max_tokens reuse the probe's samples); ``predictor`` and ``oracle``: of the oracle
    samples."""
    probe_max_tokens: int = Field(16, ge=1)
    """``probe``: completion-token cap of the probe samples; ``predictor`` and ``oracle``:
    of the oracle samples."""
    oracle_samples: int = Field(8, ge=2)
    """``probe``, ``predictor`` and ``oracle``: samples per example for the oracle bins
    (pass rate); for ``probe`` and ``predictor`` they are what the predicted bins are
    compared with in the report, and ``predictor`` is trained on them."""


class ThinkingSettings(StrictModel):
    """The fixed part of every bin's thinking phase (the budget is ``thinking_budget``);
    see :class:`jointopt.core.thinking.ThinkingSpec`."""

    min: int = Field(0, ge=0)
    """Thinking tokens at least (forcing only): shorter thoughts are extended."""
    engine: Literal["auto", "vllm", "forcing"] = "auto"
    """``vllm``: the engine's own budget (needs a reasoning config); ``forcing``: two
    phases on any backend; ``auto``: vllm when the backend offers it."""
    start: str = "<think>\n"
    """Text that opens a thought."""
    end: str = "\n</think>\n\n"
    """Text that closes a thought (its stripped form is the thought's stop string)."""
    answer_cue: str = "Final answer: "
    """Text between the closed thought and the answer."""
    answer_max_tokens: int | None = Field(None, ge=1)
    """Completion-token cap of the answer; default: the bin's max_tokens."""
    continue_cue: str = "\nWait,"
    """Text appended to a thought that stopped before ``min`` tokens."""


class ProposeEntry(StrictModel):
    """A ``prompts:`` entry asking an LM to propose instruction templates:
    ``{propose: {k, n_examples?, seed?, model?, temperature?, max_tokens?, id_prefix?}}``
    (checked in detail by :class:`jointopt.integrations.proposals.ProposeSpec`)."""

    propose: dict[str, Any]
    """The proposal request; proposals are made once the engine is up and cached."""


def _prompt_kind(value: Any) -> str:
    """Which model a ``prompts:`` entry is checked against (so an error speaks of one)."""
    if isinstance(value, dict):
        return "ProposeEntry" if "propose" in value else "PromptConfig"
    return type(value).__name__


_PromptEntry = Annotated[
    Union[Annotated[PromptConfig, Tag("PromptConfig")],
          Annotated[ProposeEntry, Tag("ProposeEntry")]],
    Discriminator(_prompt_kind)]


class SearchSpaceFile(StrictModel):
    """A search-space file: prompts x strategies x sampling budget.

    A parameter is a constant, ``{choices: [...]}`` or ``{low, high, step?, log?}``.
    """

    prompts: list[_PromptEntry] = Field(min_length=1)
    """Candidate prompt templates, and ``{propose: {...}}`` entries for LM-proposed ones."""
    strategies: dict[str, dict[str, ParamValue] | None] = Field(min_length=1)
    """Strategy name -> its parameters (searched or fixed)."""
    temperature: ParamValue = 0.7
    """Sampling temperature."""
    max_tokens: ParamValue = 64
    """Completion-token cap per generation."""
    difficulty: DifficultyConfig = Field(default_factory=DifficultyConfig)
    """Per-difficulty allocation: with a source other than ``none``, every bin gets its own
    strategy, strategy parameters, temperature, max_tokens and thinking budget (the
    prompt is shared)."""
    thinking_budget: ParamValue = None
    """Thinking tokens before each answer (0 = answer directly), searched per bin, e.g.
    ``{choices: [0, 64, 256]}``; unset: no thinking phase."""
    thinking: ThinkingSettings | None = None
    """The fixed rest of the thinking phase (engine, markers, answer cue and cap)."""


def load_space_file(path: Path) -> SearchSpaceFile:
    """Read and validate a search-space file."""
    return parse_model(SearchSpaceFile, read_yaml(path, "search space"), str(path))
