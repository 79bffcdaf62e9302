"""Progress of ``jointopt run``: a live bar on a terminal (checked in a pseudo-terminal),
nothing but the results when the output is not a terminal, one line per trial with -v."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 6


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"""
name: progress
model: {{backend: scripted, model: scripted, engine: {{responder: reverse_words}}}}
task:
  builtin: {{family: reverse_words, levels: [1, 2], n_per_level: 6, seed: 0}}
search_space: {ROOT / "search_spaces/quickstart.yaml"}
optimizer: {{n_trials: {N_TRIALS}, sampler: random, seed: 0}}
tracking: {{enabled: false}}
""", encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="160",
               LINES="40")
    for key in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI"):
        env.pop(key, None)
    return env


def _command(config: Path, *flags: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from jointopt.cli.app import main; "
                                  "sys.exit(main(sys.argv[1:]))", *flags, "run", str(config),
            "--output-dir", str(config.parent / "run")]


def test_terminal_shows_a_live_bar_with_tokens_best_accuracy_and_eta(config):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(_command(config), stdin=slave, stdout=slave, stderr=slave,
                            env=_env(), close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[1A" in raw, "the bar is redrawn in place"
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert re.search(r"trials [━╸╺]+", out) and f"{N_TRIALS}/{N_TRIALS}" in out
    assert re.search(r"generated [\d,]+ tokens \([\d,]+ tok/s\)", out)
    assert re.search(r"best accuracy at tokens <=\d+: (-|\d\.\d\d)", out)
    assert re.search(r"ETA \d+:\d\d:\d\d", out)
    assert "Pareto front of progress" in out
    assert not re.search(r"^trial \d+: accuracy", out, re.M), "per-trial lines only with -v"


def test_not_a_terminal_prints_no_bar(config):
    proc = subprocess.run(_command(config), capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert "\x1b[" not in text and "tok/s" not in text
        assert not re.search(r"(trials|loading engine) [━╸╺]", text)
    assert "Pareto front of progress" in proc.stdout
    assert f"report: {(config.parent / 'run' / 'report.html').as_uri()}" in proc.stdout


def test_verbose_prints_one_line_per_trial(config):
    proc = subprocess.run(_command(config, "-v"), capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = re.findall(r"^trial (\d+): accuracy \d\.\d{3} \[.*tokens; .*$", proc.stdout, re.M)
    # one line per proposed trial (free variants recorded beside them take numbers too)
    assert len(lines) == len(set(lines)) == N_TRIALS
