"""The ``predictor`` difficulty source: a text model picks the bin, generating nothing.

:class:`DifficultyPredictor` is a tiny multinomial logistic regression on text features
of the inputs (:func:`text_features`), trained on the dev examples labelled with oracle
bins (:mod:`jointopt.difficulty.oracle`); a policy stores it in its difficulty spec. A
study reports how its bins agree with oracle bins on dev (the fit) and on the held-out
split (what serving can expect).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from jointopt.core.policy import DifficultySpec
from jointopt.difficulty.agreement import agreement
from jointopt.difficulty.base import (DifficultySource, StudyFit, bin_label_key, check_number,
                                      numbered_bins)
from jointopt.difficulty.oracle import OracleSettings, oracle_labels
from jointopt.errors import ConfigError
from jointopt.tasks.base import Example

if TYPE_CHECKING:
    from jointopt.backends.base import Backend
    from jointopt.core.prompts import PromptTemplate
    from jointopt.tasks import Task

__all__ = ["FEATURES", "DifficultyPredictor", "PredictorSource", "text_features"]

#: Names of the text features :func:`text_features` computes, in order.
FEATURES = ("chars", "words", "digits", "list_items", "distinct_words")
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s", re.MULTILINE)


class PredictorSource(DifficultySource):
    """A text model (:class:`DifficultyPredictor`) picks the bin, generating nothing; it is
    fitted on the dev split's oracle bins (the space's first prompt, the oracle settings)."""

    name: ClassVar[str] = "predictor"
    Settings: ClassVar[type] = OracleSettings
    fit_generates: ClassVar[bool] = True
    needs_fit: ClassVar[bool] = True

    def _spec(self, predictor: "DifficultyPredictor") -> DifficultySpec:
        bins = numbered_bins(self.settings.n_bins)
        return DifficultySpec(source=self.key, bins=bins, default_bin=bins[-1],
                              predictor=predictor)

    def fit(self, task: "Task", backend: "Backend", *, prompt: "PromptTemplate",
            seed: int = 0) -> DifficultySpec:
        dev_bins = oracle_labels(prompt, task, backend, self.settings, seed)
        return self._spec(DifficultyPredictor.fit(task.examples, dev_bins))

    def fit_study(self, task: "Task", backend: "Backend", *,
                  prompts: Sequence["PromptTemplate"], seed: int = 0,
                  test_task: "Task | None" = None) -> StudyFit:
        """One predictor for every prompt, and how its bins agree with oracle bins on dev
        and, when ``test_task`` is given, on the held-out examples."""
        p, prompt = self.settings, prompts[0]
        dev_bins = oracle_labels(prompt, task, backend, p, seed)
        spec = self._spec(DifficultyPredictor.fit(task.examples, dev_bins))
        report: dict[str, Any] = {
            "source": self.key, "n_bins": len(spec.bins), "features": list(FEATURES),
            "oracle_prompt": prompt.id, "oracle_samples": int(p.oracle_samples),
            "dev": agreement({e.id: spec.bin_of(e) for e in task.examples}, dev_bins).to_dict(),
        }
        if test_task is not None and test_task.examples:
            test_bins = oracle_labels(prompt, test_task, backend, p, seed)
            report["test"] = agreement({e.id: spec.bin_of(e) for e in test_task.examples},
                                       test_bins).to_dict()
        return StudyFit(specs={t.id: spec for t in prompts}, report=report, agreements={
            f"predictor_{{}}.{split}": report[split]
            for split in ("dev", "test") if split in report})

    @classmethod
    def check_spec(cls, spec: DifficultySpec) -> None:
        predictor = spec.predictor
        if isinstance(predictor, Mapping):
            predictor = DifficultyPredictor.from_dict(predictor)
            object.__setattr__(spec, "predictor", predictor)
        if not isinstance(predictor, DifficultyPredictor):
            raise ConfigError("source 'predictor' needs a fitted predictor",
                              where="difficulty.predictor", value=predictor,
                              fix="give the output of DifficultyPredictor.to_dict()")
        unknown = sorted(set(predictor.classes) - set(spec.bins))
        if unknown:
            raise ConfigError("the predictor predicts bins the policy does not have",
                              where="difficulty.predictor.classes", value=unknown,
                              fix=f"list them in difficulty.bins (has: {list(spec.bins)})")

    @classmethod
    def spec_fields(cls, spec: DifficultySpec) -> dict[str, Any]:
        return {"predictor": spec.predictor.to_dict()}

    @classmethod
    def bin_of(cls, spec: DifficultySpec, example: Example) -> str:
        return spec.predictor.predict(example)


def text_features(example: Example) -> tuple[float, ...]:
    """Raw text features of an example's inputs, in the order of :data:`FEATURES`.

    The input values are joined (field names sorted, newline separated) and measured:

    * ``chars``: number of characters;
    * ``words``: number of ``\\w+`` tokens;
    * ``digits``: number of digit characters;
    * ``list_items``: commas plus lines starting with a bullet (``-``, ``*``, ``•``) or an
      enumerator (``1.``, ``2)``);
    * ``distinct_words``: number of distinct lower-cased words.

    Each count ``c`` is returned as ``log(1 + c)``.
    """
    if not isinstance(example, Example):
        raise ConfigError("expected an Example", where="example", value=example,
                          fix="pass jointopt.tasks.Example objects")
    text = "\n".join(example.inputs[k] for k in sorted(example.inputs))
    words = _WORD_RE.findall(text)
    raw = (
        len(text),
        len(words),
        sum(ch.isdigit() for ch in text),
        text.count(",") + len(_BULLET_RE.findall(text)),
        len({w.lower() for w in words}),
    )
    return tuple(math.log1p(c) for c in raw)


def _tuple_floats(values: Any, where: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError("must be a list of numbers", where=where, value=values,
                          fix="use the output of DifficultyPredictor.to_dict()")
    return tuple(check_number(v, f"{where}[{i}]") for i, v in enumerate(values))


@dataclass(frozen=True)
class DifficultyPredictor:
    """Multinomial logistic regression from :func:`text_features` to difficulty bins.

    Features are standardised with ``means`` and ``scales``; class ``c`` scores
    ``weights[c][0] + sum_j weights[c][j + 1] * z_j`` and the highest score wins (first
    class on ties). Build one with :meth:`fit`; store it with :meth:`to_dict` /
    :meth:`from_dict`.

    Attributes:
        classes: bin labels, sorted (numeric labels by value).
        means: per-feature mean on the training examples.
        scales: per-feature standard deviation (1.0 for a constant feature).
        weights: one row per class: bias, then one weight per feature.
        features: feature names (:data:`FEATURES`).
    """

    classes: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        classes = self.classes
        if (isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence)
                or not classes or not all(isinstance(c, str) and c for c in classes)
                or len(set(classes)) != len(classes)):
            raise ConfigError("`classes` must be distinct non-empty strings",
                              where="difficulty_predictor.classes", value=classes,
                              fix="use the output of DifficultyPredictor.to_dict()")
        features = tuple(self.features) if isinstance(self.features, Sequence) else None
        if features != FEATURES:
            raise ConfigError(f"unknown feature set; this version computes {list(FEATURES)}",
                              where="difficulty_predictor.features", value=self.features,
                              fix="refit the predictor with this version of jointopt")
        means = _tuple_floats(self.means, "difficulty_predictor.means")
        scales = _tuple_floats(self.scales, "difficulty_predictor.scales")
        for name, vals in (("means", means), ("scales", scales)):
            if len(vals) != len(FEATURES):
                raise ConfigError(f"`{name}` must have {len(FEATURES)} entries",
                                  where=f"difficulty_predictor.{name}", value=vals,
                                  fix="refit the predictor")
        if any(s <= 0 for s in scales):
            raise ConfigError("`scales` must be positive", where="difficulty_predictor.scales",
                              value=scales, fix="refit the predictor")
        if (isinstance(self.weights, (str, bytes)) or not isinstance(self.weights, Sequence)
                or len(self.weights) != len(classes)):
            raise ConfigError(f"`weights` must have one row per class ({len(classes)})",
                              where="difficulty_predictor.weights", value=self.weights,
                              fix="refit the predictor")
        weights = tuple(_tuple_floats(row, f"difficulty_predictor.weights[{i}]")
                        for i, row in enumerate(self.weights))
        if any(len(row) != len(FEATURES) + 1 for row in weights):
            raise ConfigError(f"every weight row must have {len(FEATURES) + 1} entries "
                              "(bias, then one per feature)",
                              where="difficulty_predictor.weights", value=weights,
                              fix="refit the predictor")
        object.__setattr__(self, "classes", tuple(classes))
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def fit(cls, examples: Sequence[Example], bins: Mapping[str, str], *,
            l2: float = 1e-3, iterations: int = 2000,
            learning_rate: float = 0.5) -> DifficultyPredictor:
        """Train on ``examples`` labelled by ``bins`` (e.g. :func:`~jointopt.difficulty.oracle.oracle_bins` on dev).

        Full-batch gradient descent on the mean softmax cross-entropy plus
        ``l2 / 2 * ||W||^2`` (the bias is not penalised), from zero weights for a fixed
        number of ``iterations`` -- deterministic. Ids in ``bins`` without an example
        are ignored.

        Raises:
            ConfigError: no examples, duplicate ids, an example without a bin, or a bad
                hyperparameter.
        """
        examples = list(examples)
        if not examples:
            raise ConfigError("cannot fit on no examples", where="examples", value=[],
                              fix="pass the dev examples with oracle bins")
        if not isinstance(bins, Mapping):
            raise ConfigError("`bins` must map example id to bin label", where="bins",
                              value=bins, fix="use oracle_bins(...)")
        l2 = check_number(l2, "l2")
        lr = check_number(learning_rate, "learning_rate")
        if l2 < 0:
            raise ConfigError("`l2` must be >= 0", where="l2", value=l2, fix="use e.g. 1e-3")
        if lr <= 0:
            raise ConfigError("`learning_rate` must be > 0", where="learning_rate", value=lr,
                              fix="use e.g. 0.5")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ConfigError("`iterations` must be an integer >= 1", where="iterations",
                              value=iterations, fix="use e.g. 2000")
        seen: set[str] = set()
        labels = []
        for i, ex in enumerate(examples):
            if not isinstance(ex, Example):
                raise ConfigError("expected an Example", where=f"examples[{i}]", value=ex,
                                  fix="pass jointopt.tasks.Example objects")
            if ex.id in seen:
                raise ConfigError("duplicate example id", where=f"examples[{i}]", value=ex.id,
                                  fix="make example ids unique")
            seen.add(ex.id)
            if ex.id not in bins:
                raise ConfigError("example has no bin", where=f"bins[{ex.id!r}]",
                                  value=sorted(bins)[:5],
                                  fix="compute bins for the same examples you fit on")
            label = bins[ex.id]
            if not isinstance(label, str) or not label:
                raise ConfigError("a bin label must be a non-empty string",
                                  where=f"bins[{ex.id!r}]", value=label,
                                  fix="use the labels of oracle_bins ('1', '2', ...)")
            labels.append(label)
        classes = tuple(sorted(set(labels), key=bin_label_key))
        x = np.array([text_features(ex) for ex in examples], dtype=float)
        means = x.mean(axis=0)
        scales = x.std(axis=0)
        scales = np.where(scales > 1e-12, scales, 1.0)
        z = np.hstack([np.ones((len(x), 1)), (x - means) / scales])
        y = np.zeros((len(x), len(classes)))
        y[np.arange(len(x)), [classes.index(lab) for lab in labels]] = 1.0
        w = np.zeros((len(classes), z.shape[1]))
        penalty = np.full(z.shape[1], l2)
        penalty[0] = 0.0
        for _ in range(iterations):
            p = _softmax(z @ w.T)
            grad = (p - y).T @ z / len(z) + w * penalty
            w -= lr * grad
        return cls(classes=classes, means=tuple(float(v) for v in means),
                   scales=tuple(float(v) for v in scales),
                   weights=tuple(tuple(float(v) for v in row) for row in w))

    def probabilities(self, example: Example) -> dict[str, float]:
        """``{bin label: probability}`` for one example."""
        z = (np.array(text_features(example)) - np.array(self.means)) / np.array(self.scales)
        scores = np.array(self.weights) @ np.concatenate([[1.0], z])
        p = _softmax(scores[None, :])[0]
        return {c: float(v) for c, v in zip(self.classes, p)}

    def predict(self, example: Example) -> str:
        """The most probable bin label of one example (first class on ties)."""
        z = (np.array(text_features(example)) - np.array(self.means)) / np.array(self.scales)
        scores = np.array(self.weights) @ np.concatenate([[1.0], z])
        return self.classes[int(np.argmax(scores))]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for policy files; :meth:`from_dict` restores it exactly."""
        return {
            "kind": "logistic",
            "features": list(self.features),
            "classes": list(self.classes),
            "means": list(self.means),
            "scales": list(self.scales),
            "weights": [list(row) for row in self.weights],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DifficultyPredictor:
        """Rebuild a predictor from :meth:`to_dict` output.

        Raises:
            ConfigError: a missing key, wrong kind, or inconsistent shapes.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("a difficulty predictor must be a mapping",
                              where="difficulty_predictor", value=data,
                              fix="use the output of DifficultyPredictor.to_dict()")
        if data.get("kind", "logistic") != "logistic":
            raise ConfigError("unknown difficulty predictor kind",
                              where="difficulty_predictor.kind", value=data.get("kind"),
                              fix="use kind 'logistic'")
        for key in ("classes", "means", "scales", "weights"):
            if key not in data:
                raise ConfigError(f"missing key {key!r}", where=f"difficulty_predictor.{key}",
                                  fix="use the output of DifficultyPredictor.to_dict()")
        classes = data["classes"]
        return cls(
            classes=tuple(classes) if isinstance(classes, list) else classes,
            means=data["means"], scales=data["scales"], weights=data["weights"],
            features=tuple(data.get("features", FEATURES)),
        )


def _softmax(scores: np.ndarray) -> np.ndarray:
    s = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)
