"""Plots of a study's results: accuracy against tokens for every trial, with the Pareto
front (and its held-out test scores) on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jointopt.search.results import TrialSummary

__all__ = ["plot_pareto"]


def plot_pareto(trials: Sequence["TrialSummary"], front: Sequence["TrialSummary"],
                path: Path) -> Path:
    """Scatter of every trial (accuracy vs mean tokens) with the Pareto front drawn on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    strategies = sorted({t.policy.strategy_label for t in trials if t.policy})
    for strategy in strategies:
        pts = [t for t in trials if t.policy and t.policy.strategy_label == strategy]
        ax.scatter([t.mean_tokens for t in pts], [t.accuracy for t in pts], alpha=0.55,
                   label=strategy, s=28)
    if front:
        ax.step([t.mean_tokens for t in front], [t.accuracy for t in front], where="post",
                color="black", linewidth=1.4, label="Pareto front (dev)")
        tested = [t for t in front if t.test]
        if tested:
            acc = [t.test["accuracy"] for t in tested]
            tok = [t.test["mean_tokens"].value for t in tested]
            ax.errorbar(tok, [a.value for a in acc],
                        yerr=[[a.value - a.low for a in acc], [a.high - a.value for a in acc]],
                        fmt="s", color="crimson", capsize=3, markersize=4,
                        label=f"same policies on test ({acc[0].level:.0%} CI)")
            ax.step(tok, [a.value for a in acc], where="post", color="crimson",
                    linewidth=1.0, linestyle="--")
        for t in front:
            ax.annotate(f"#{t.number}",
                        (t.mean_tokens, t.accuracy), fontsize=7, xytext=(4, -10),
                        textcoords="offset points")
    ax.set_xlabel("mean tokens per example (prompt + completion)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
