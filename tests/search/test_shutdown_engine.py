"""SIGTERM to ``jointopt run`` on the real vLLM engine (a subprocess with its own engine).

Before the fix, SIGTERM (what a scheduler, systemd or ``kill`` sends) ended the main
process at once and left vLLM's EngineCore and Worker processes running at full CPU,
deaf to SIGTERM. Now: the process exits within 30 s, none of its processes (collected
from ``/proc`` by pid and start time just before the signal) is left, the trial in flight
is FAIL with the reason in the Optuna storage, and a rerun completes the study without
regenerating a sample the store already holds. The cheap scripted version of these checks
is ``test_shutdown.py``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from jointopt.processes import descendants, is_running
from test_resilience import by_state, child_env, jointopt, optuna_trials, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.engine_process]

# One prompt that makes the model talk up to max_tokens, and a temperature drawn afresh
# by every trial: each trial generates for several seconds (the window the signal needs).
SPACE = {
    "prompts": [{
        "id": "step_by_step",
        "system": "You are a careful assistant who thinks before answering.",
        "user": "{{ question }}\n\nThink step by step. Then write the final answer on the last "
                "line as \"Answer: <answer>\".",
        "answer_regex": "Answer:\\s*(.+)"}],
    "strategies": {"single": {}, "majority": {"n": {"low": 2, "high": 4}}},
    "temperature": {"low": 0.3, "high": 1.0},
    "max_tokens": 32,
}


def _skip_without_engine() -> None:
    from jointopt.backends.models import DEFAULT_ALIAS, is_prepared

    reason = None
    if importlib.util.find_spec("vllm") is None:
        reason = "vllm is not installed (run: bash scripts/setup.sh)"
    elif not is_prepared(DEFAULT_ALIAS):
        reason = ("the embedded model is not prepared "
                  "(run: .venv/bin/python -m jointopt.backends.models prepare)")
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the engine tests must run)", pytrace=False)
    if reason:
        pytest.skip(reason)


def write_config(folder: Path) -> Path:
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "term_engine", "output_dir": str(folder / "run"),
        "model": {"backend": "vllm", "model": "smollm2-135m-instruct", "seed": 0,
                  "max_model_len": 1024},
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2], "n_per_level": 3,
                             "seed": 0}},
        "search_space": "space.yaml",
        # one trial at a time: free variants would add derived trials around them
        "optimizer": {"n_trials": 2, "seed": 0, "heartbeat_interval": 2,
                      "expand_variants": False},
    }))
    return path


def stored_samples(folder: Path) -> set[tuple[str, int]]:
    with sqlite3.connect(folder / "run" / "samples.sqlite") as conn:
        return set(conn.execute("SELECT key, idx FROM samples"))


def test_sigterm_during_a_trial_on_the_real_engine(tmp_path):
    _skip_without_engine()
    config = write_config(tmp_path)
    proc = subprocess.Popen(jointopt("-v", "run", str(config), "--no-tracking"), cwd=tmp_path,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    def second_trial_started() -> bool:
        try:
            trials = optuna_trials(tmp_path, "term_engine")
        except Exception:  # noqa: BLE001 - the study is being created
            return False
        # the policy is recorded right before the trial's batch goes to the engine
        return (len(by_state(trials, "COMPLETE")) == 1
                and any("policy" in t.user_attrs for t in by_state(trials, "RUNNING")))

    try:
        wait_for(second_trial_started, 600, proc, "the second trial")
        time.sleep(1.5)  # well inside the trial's generation (several seconds)
        tree = descendants(proc.pid)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    print(f"exit {took:.1f} s after SIGTERM; process tree before it: "
          f"{[r.pid for r in tree]}\n{out[-1500:]}")
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert took < 30, f"exit took {took:.1f} s:\n{out}"
    assert len(tree) >= 2, f"an EngineCore and its worker were running: {tree}"
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker ends on its own
    while any(is_running(r) for r in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [r.pid for r in tree if is_running(r)], f"processes left running:\n{out}"
    # VLLMBackend.close ended the engine, not the command's last resort
    assert "left running" not in out, out

    trials = optuna_trials(tmp_path, "term_engine")
    assert not by_state(trials, "RUNNING")
    stopped = by_state(trials, "FAIL")
    assert len(stopped) == 1, [(t.number, t.state.name) for t in trials]
    assert "SIGTERM" in stopped[0].user_attrs["fail_reason"]
    assert not stopped[0].values and "accuracy" not in stopped[0].user_attrs
    kept = {t.number: t.values for t in by_state(trials, "COMPLETE")}
    before = stored_samples(tmp_path)
    assert before, "the first trial's samples are stored"

    result = subprocess.run(jointopt("run", str(config), "--no-tracking"), cwd=tmp_path,
                            env=child_env(COLUMNS="200"), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "left running" not in result.stderr, result.stderr
    trials = optuna_trials(tmp_path, "term_engine")
    complete = by_state(trials, "COMPLETE")
    assert len(complete) == 2 and not by_state(trials, "RUNNING")
    assert {t.number: t.values for t in complete if t.number in kept} == kept
    retry = [t for t in complete if t.user_attrs.get("retry_of") == stopped[0].number]
    assert len(retry) == 1 and retry[0].params == stopped[0].params
    after = stored_samples(tmp_path)
    assert before <= after
    # every completion the rerun generated is a new row of the store: nothing stored was
    # generated again
    new = len(after - before)
    assert new > 0, "the interrupted trial's batch was not stored, so its retry generated"
    assert f", {new} completions generated (" in result.stdout, result.stdout
