"""Certified policies end to end on the scripted backend: a study with a calibration
split, `jointopt certify`, `jointopt export --pick certified`, and the proxy that takes
labelled feedback from a harder distribution, detects the violation and switches."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import httpx
import pytest
import yaml

from jointopt.backends import ScriptedBackend
from jointopt.backends.openai import OpenAIBackend
from jointopt.cli.app import main
from jointopt.core.policy_file import load_policy_file
from jointopt.errors import ConfigError
from jointopt.search.certify import certify_study
from jointopt.search.config import load_config
from jointopt.search.plan import plan_study, task_hash
from jointopt.search.study import run_study
from jointopt.serving.proxy import ServerThread, create_app, create_engine_app
from jointopt.serving.monitor import MonitorSettings
from jointopt.serving.runtime import load_policy

pytestmark = pytest.mark.timeout(300)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]


def length_responder(request, index, rng: random.Random) -> str:
    """Reverses word lists: almost always right up to four words, right 45% of the time
    from five words on (wrong answers are random orders, so large votes still find the
    right one there)."""
    words = request.messages[-1].content.split(":")[-1].strip().split(", ")
    right = ", ".join(reversed(words))
    p_right = 0.93 if len(words) <= 4 else 0.45
    if rng.random() < p_right:
        return right
    wrong = right
    while wrong == right:
        wrong = ", ".join(rng.sample(words, len(words)))
    return wrong


def _config(tmp_path: Path, **validation) -> Path:
    space = {"prompts": [{"id": "direct", "user": "{{ question }}"},
                         {"id": "strict", "system": "Answer with the final answer only.",
                          "user": "{{ question }}"}],
             "strategies": {"single": {}, "majority": {"n": {"low": 3, "high": 7}}},
             "temperature": 0.7, "max_tokens": 16}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = {
        "name": "certified", "output_dir": str(tmp_path / "run"),
        "model": {"backend": "scripted", "model": "scripted",
                  "engine": {"responder": "test_certify:length_responder"}},
        "task": {"builtin": {"family": "reverse_words", "levels": [1, 2, 3],
                             "n_per_level": 80, "seed": 0}},
        "search_space": "space.yaml",
        "optimizer": {"n_trials": 10, "seed": 0},
        "tracking": {"enabled": True},
        "validation": validation,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_calibration_split_is_carved_first_and_optional(tmp_path):
    plain = plan_study(load_config(_config(tmp_path)))
    assert plain.calibration_task is None and len(plain.task.examples) == 240
    path = _config(tmp_path, calibration_fraction=0.5, test_fraction=0.2)
    plan = plan_study(load_config(path))
    cal, dev, test = (set(e.id for e in t.examples)
                      for t in (plan.calibration_task, plan.task, plan.test_task))
    assert len(cal) == 120 and not cal & dev and not cal & test and len(cal | dev | test) == 240
    assert plan_study(load_config(path)).calibration_task == plan.calibration_task


def test_certify_refuses_without_calibration_data(tmp_path, capsys):
    path = _config(tmp_path)
    with pytest.raises(ConfigError, match="no calibration split") as info:
        certify_study(path, target=0.9, risk=0.05)
    assert info.value.where == "validation.calibration_fraction"
    assert not (tmp_path / "run").exists()  # refused before any storage or engine exists
    assert main(["certify", str(path), "--target", "0.9"]) == 2
    assert "calibration_fraction" in capsys.readouterr().err


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("certified")
    path = _config(tmp_path, calibration_fraction=0.5)
    run_study(load_config(path))
    assert main(["certify", str(path), "--target", "0.8", "--risk", "0.1"]) == 0
    out = tmp_path / "export"
    assert main(["export", str(path), "--pick", "certified", "--out", str(out),
                 "--no-mlflow"]) == 0
    return path, out


def test_certificate_is_in_the_study_mlflow_and_policy_file(certified):
    path, out = certified
    plan = plan_study(load_config(path))
    policy = load_policy_file(out / "policy.yaml")
    cert = policy.metadata["certificate"]
    assert cert["target"] == 0.8 and cert["risk"] == 0.1
    assert cert["n_calibration"] == 120
    assert cert["dataset_hash"] == task_hash(plan.calibration_task)
    tested = cert["tested"]
    assert tested == sorted(tested, key=lambda t: -t["dev_accuracy"])  # the fixed order
    certified_trials = [t for t in tested if t["certified"]]
    assert certified_trials and all(t["p_value"] <= 0.1 for t in certified_trials)
    chosen = min(certified_trials, key=lambda t: t["mean_tokens"])
    assert cert["chosen_trial"] == chosen["trial"]
    assert policy.metadata["provenance"]["trial_number"] == chosen["trial"]
    assert policy.metadata["provenance"]["pick"] == "certified"
    # fallbacks: the other certified policies, the next safer (more tokens) first
    fallbacks = cert["fallbacks"]
    assert [f["trial"] for f in fallbacks] == [
        t["trial"] for t in reversed(certified_trials) if t["trial"] != chosen["trial"]]
    assert fallbacks and fallbacks[0]["mean_tokens"] > chosen["mean_tokens"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{plan.out_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("certified")
    runs = client.search_runs([exp.experiment_id], "tags.`jointopt.role` = 'certify'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["target"] == "0.8" and run.data.params["n_calibration"] == "120"
    assert run.data.metrics["certified"] == 1.0
    assert run.data.tags["jointopt.certified_trial"] == str(chosen["trial"])
    local = client.download_artifacts(run.info.run_id, "certificate.json", str(plan.out_dir))
    logged = json.loads(Path(local).read_text())
    assert logged["chosen_trial"] == chosen["trial"]


def test_an_uncertifiable_target_says_how_close_it_came(certified, capsys):
    path, _ = certified
    assert main(["certify", str(path), "--target", "0.999", "--risk", "0.01",
                 "--no-tracking"]) == 1
    assert "no policy is certified" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="certifies no policy"):
        from jointopt.export.policy import export_policy

        export_policy(path, pick="certified", out_dir=path.parent / "none",
                      register_prompt=False)


def test_per_bin_targets_from_the_command_line(certified, capsys):
    path, _ = certified
    assert main(["certify", str(path), "--bin-target", "1=0.8", "--bin-target", "3=0.8",
                 "--risk", "0.1", "--no-tracking"]) == 0
    assert "1 >= 0.8 and 3 >= 0.8 at risk 0.1" in capsys.readouterr().out
    from jointopt.search.certify import study_certificate
    from jointopt.search.study import load_study

    cert = study_certificate(load_study(plan_study(load_config(path))))
    assert cert["bin_targets"] == {"1": 0.8, "3": 0.8} and cert["target"] is None
    assert set(cert["tested"][0]["bin_p_values"]) == {"1", "3"}
    assert main(["certify", str(path), "--bin-target", "9=0.8", "--no-tracking"]) == 2


def _question(rng: random.Random, size: int = 6) -> tuple[str, str]:
    words = rng.sample(["red", "cat", "sun", "map", "cup", "dog", "fig", "oak", "jam",
                        "owl"], size)
    return f"Reverse the order of these words: {', '.join(words)}", ", ".join(reversed(words))


@contextlib.contextmanager
def _proxy(policy_file: Path, **app_options):
    """The exported policy behind the proxy, on a scripted OpenAI-compatible upstream."""
    upstream = create_engine_app(ScriptedBackend(length_responder), model_name="scripted")
    with ServerThread(upstream) as engine:
        backend = OpenAIBackend(engine.url, max_retries=0)
        runner = load_policy(policy_file, backend=backend)
        try:
            with ServerThread(create_app(runner, **app_options)) as proxy:
                yield proxy
        finally:
            backend.close()
    

def test_proxy_detects_a_violation_on_harder_traffic_and_switches(certified):
    _, out = certified
    policy = load_policy_file(out / "policy.yaml")
    first = str(policy.metadata["certificate"]["chosen_trial"])
    safer = str(policy.metadata["certificate"]["fallbacks"][0]["trial"])
    rng = random.Random(0)
    with _proxy(out / "policy.yaml", model_name="certified") as proxy:
        events, served_by = [], []
        for i in range(60):
            question, reference = _question(rng)
            reply = httpx.post(proxy.url + "/v1/chat/completions", timeout=20, json={
                "model": "x", "messages": [{"role": "user", "content": question}]})
            assert reply.status_code == 200
            body = reply.json()
            answer = body["choices"][0]["message"]["content"]
            # half the feedback as a verdict, half as the reference answer
            label = ({"correct": answer == reference} if i % 2 else
                     {"reference": reference})
            fb = httpx.post(proxy.url + "/v1/feedback", json={"id": body["id"], **label})
            assert fb.status_code == 200, fb.text
            events.append(fb.json()["event"])
            served_by.append(fb.json()["policy"])
        metrics = httpx.get(proxy.url + "/metrics").text
        again = httpx.post(proxy.url + "/v1/feedback", json={"id": body["id"],
                                                             "correct": True})
    assert "switched" in events
    switch_at = events.index("switched")
    # evidence first: at risk 0.1, even three wrong answers in a row are the least that
    # puts the upper bound of accuracy below 0.8 (0.685)
    assert 2 <= switch_at < 40
    assert served_by[switch_at] == first and served_by[-1] != first
    assert served_by[switch_at + 1] == safer
    assert f'jointopt_active_policy{{policy="{safer}"' in metrics
    assert 'jointopt_policy_switches_total' in metrics and "jointopt_tokens_total" in metrics
    upper = next(line for line in metrics.splitlines()
                 if line.startswith(f'jointopt_accuracy_upper{{policy="{first}"'))
    assert float(upper.rsplit(" ", 1)[1]) < 0.8
    assert again.status_code == 400  # one feedback per response


def test_alert_only_keeps_the_policy(certified):
    _, out = certified
    rng = random.Random(1)
    with _proxy(out / "policy.yaml", monitor=MonitorSettings(action="alert")) as proxy:
        for _ in range(40):
            question, reference = _question(rng)
            body = httpx.post(proxy.url + "/v1/completions", timeout=20, json={
                "model": "x", "prompt": question}).json()
            httpx.post(proxy.url + "/v1/feedback",
                       json={"id": body["id"], "reference": reference})
        metrics = httpx.get(proxy.url + "/metrics").text
    assert "jointopt_violation_alert 1" in metrics
    assert "jointopt_policy_switches_total 0" in metrics


def test_traffic_like_the_calibration_data_keeps_the_policy(certified):
    _, out = certified
    rng = random.Random(2)
    with _proxy(out / "policy.yaml") as proxy:
        for i in range(60):
            question, reference = _question(rng, 2 + i % 3)
            body = httpx.post(proxy.url + "/v1/chat/completions", timeout=20, json={
                "model": "x", "messages": [{"role": "user", "content": question}]}).json()
            fb = httpx.post(proxy.url + "/v1/feedback",
                            json={"id": body["id"], "reference": reference}).json()
            assert fb["event"] is None
        metrics = httpx.get(proxy.url + "/metrics").text
    assert "jointopt_policy_switches_total 0" in metrics
    assert "jointopt_violation_alert 0" in metrics
    assert "jointopt_requests_total{" in metrics and 'outcome="correct"} ' in metrics


def test_a_bad_fallback_is_refused_at_load_naming_it(certified, tmp_path):
    _, out = certified
    data = yaml.safe_load((out / "policy.yaml").read_text())
    data["metadata"]["certificate"]["fallbacks"][0]["policy"]["bins"]["all"]["strategy"] = \
        "majorty"
    bad = tmp_path / "policy.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="majorty") as info:
        load_policy_file(bad)
    assert "fallbacks[0]" in info.value.where
    # a file without the section still loads (the section is optional)
    del data["metadata"]["certificate"]
    bad.write_text(yaml.safe_dump(data))
    assert "certificate" not in load_policy_file(bad).metadata


def test_certify_runs_from_a_replayed_bank(certified, tmp_path):
    from jointopt.search.record import record_bank

    path, _ = certified
    plan = plan_study(load_config(path))
    from jointopt.search.objective import build_backend

    bank = tmp_path / "bank.jsonl"
    record_bank(plan, build_backend(plan.config), samples=8, out=bank)
    replay = yaml.safe_load(path.read_text())
    replay["model"] = {"backend": "replay", "bank": str(bank)}
    replay["output_dir"] = str(tmp_path / "replayed")
    replay["tracking"] = {"enabled": False}
    replay_path = path.parent / "replay.yaml"
    replay_path.write_text(yaml.safe_dump(replay))
    run_study(load_config(replay_path))
    result = certify_study(replay_path, target=0.8, risk=0.1)
    assert result.chosen is not None
    assert result.certificate["n_calibration"] == 120
