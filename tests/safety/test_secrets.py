"""Secrets stay secret; hostile input is refused before any compute.

* API keys come from the environment or a file, are sent to the server, and never reach
  MLflow (params, tags, artifacts), the Optuna storage, reports, exported files or logs,
  even when the server echoes the key in an error message.
* Keys written into a study config are refused without being shown.
* Templates run sandboxed: Python internals and file reads are refused with a TemplateError.
* Oversize inputs and budgets above the configured caps are refused, naming the field, the
  value and the fix; YAML is loaded safely.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jointopt.search.config import load_config
from jointopt.errors import ConfigError, DataError, JointoptError, TemplateError
from jointopt.search.objective import build_backend
from jointopt.search.plan_checks import check_credentials
from jointopt.search.plan import plan_study

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "sk-PLANTED-6f1d2c9e8b7a4f3e2d1c0b9a"
SPACE = {"prompts": [{"id": "direct", "user": "{{ question }}"}],
         "strategies": {"single": {}, "majority": {"n": {"low": 2, "high": 3}}},
         "temperature": {"low": 0.05, "high": 1.0}, "max_tokens": 16}


def write(folder: Path, *, space: dict | None = None, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    data = {"name": "secret", "output_dir": str(folder / "run"),
            "task": {"builtin": {"family": "reverse_words", "levels": [1], "n_per_level": 3,
                                 "n_demos": 2}},
            "search_space": "space.yaml", "tracking": {"enabled": False}}
    data.update(sections)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def plan(folder: Path, **sections):
    return plan_study(load_config(write(folder, **sections)))


# ------------------------------------------------------------------------------ redaction


def test_redact_masks_keys_tokens_and_url_passwords():
    from jointopt.safety.secrets import redact, register, safe_url

    register("hunter2-registered-value")
    text = redact(f"key {PLANTED}; Authorization: Bearer abcdef123456789; api_key=qwerty12345 "
                  "postgresql://bob:s3cr3t@db:5432/x and hunter2-registered-value")
    for secret in (PLANTED, "abcdef123456789", "qwerty12345", "s3cr3t", "hunter2-registered"):
        assert secret not in text
    assert "postgresql://bob:***@db:5432/x" in text
    assert redact("http://127.0.0.1:8000/v1 max_tokens: 32") == \
        "http://127.0.0.1:8000/v1 max_tokens: 32"
    assert safe_url("postgresql+psycopg2://u:pw@h/db") == "postgresql+psycopg2://u:***@h/db"



def test_log_records_and_tracebacks_are_redacted(log_redaction, caplog):
    from jointopt.safety.secrets import register

    register("registered-secret-value-42")
    log = logging.getLogger("jointopt.test")
    with caplog.at_level(logging.INFO):
        log.info("calling with %s and %s", PLANTED, "registered-secret-value-42")
        try:
            raise RuntimeError(f"server said: invalid key {PLANTED}")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "calling with *** and ***" in caplog.text
    assert PLANTED not in text and "registered-secret-value-42" not in text
    assert "server said: invalid key ***" in text


# ------------------------------------------------------------------------------ config


def test_keys_in_the_config_are_refused_without_being_shown(tmp_path):
    cases = [
        ({"engine": {"headers": {"Authorization": f"Bearer {PLANTED}"}}},
         "model.engine.headers.Authorization"),
        ({"engine": {"api_key": "abc123def456"}}, "model.engine.api_key"),
        ({"base_urls": [f"https://user:{PLANTED}@api.example.com/v1"]}, "model.base_urls[0]"),
        ({"base_urls": ["https://tokenonly@api.example.com/v1"]}, "model.base_urls[0]"),
        ({"api_key_env": PLANTED}, "model.api_key_env"),
    ]
    for extra, where in cases:
        model = {"backend": "openai", "model": "m", "base_urls": ["http://127.0.0.1:8000/v1"],
                 **extra}
        with pytest.raises(ConfigError) as info:
            plan(tmp_path, model=model)
        message = str(info.value)
        assert where in message, message
        assert PLANTED not in message and "abc123def456" not in message
        assert "tokenonly" not in message
        assert "api_key_env" in message  # the fix names the right place


def test_server_urls_are_checked_before_any_compute(tmp_path):
    with pytest.raises(ConfigError, match=r"model.base_urls\[1\].*http:// or https://"):
        plan(tmp_path, model={"backend": "openai", "model": "m",
                              "base_urls": ["http://127.0.0.1:8000/v1", "ftp://x"]})
    with pytest.raises(ConfigError, match="needs the URL of at least one server"):
        plan(tmp_path, model={"backend": "openai", "model": "m"})
    with pytest.raises(JointoptError, match="(?s)unknown backend.*did you mean 'openai'"):
        plan(tmp_path, model={"backend": "opnai"})
    with pytest.raises(ConfigError, match="only applies to backend: openai"):
        plan(tmp_path, model={"backend": "scripted", "base_urls": ["http://h:1/v1"]})


def test_api_key_from_env_or_file_is_sent_as_a_header(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTOPT_TEST_KEY", PLANTED)
    model = {"backend": "openai", "model": "m", "base_urls": ["http://127.0.0.1:9/v1"],
             "api_key_env": "JOINTOPT_TEST_KEY"}
    config = load_config(write(tmp_path, model=model))
    plan_study(config)
    backend = build_backend(config)
    try:
        assert backend._client.headers["Authorization"] == f"Bearer {PLANTED}"
        assert PLANTED not in repr(backend)
    finally:
        backend.close()

    (tmp_path / "key.txt").write_text(PLANTED + "\n")
    os.chmod(tmp_path / "key.txt", 0o600)
    model = {**model, "api_key_env": None, "api_key_file": "key.txt"}
    config = load_config(write(tmp_path, model=model))
    backend = build_backend(config)
    try:
        assert backend._client.headers["Authorization"] == f"Bearer {PLANTED}"
    finally:
        backend.close()

    monkeypatch.delenv("JOINTOPT_TEST_KEY")
    model = {**model, "api_key_env": "JOINTOPT_TEST_KEY", "api_key_file": None}
    config = load_config(write(tmp_path, model=model))
    plan_study(config)  # an export on a machine without the key still works
    with pytest.raises(ConfigError, match="JOINTOPT_TEST_KEY is not set"):
        check_credentials(config)
    (tmp_path / "key.txt").unlink()
    config = load_config(write(tmp_path, model={**model, "api_key_env": None,
                                                "api_key_file": "key.txt"}))
    with pytest.raises(ConfigError, match="API key file not found"):
        check_credentials(config)


def test_a_planted_key_reaches_no_file_and_no_log(tmp_path):
    """The key travels to the server, which echoes it in 401 errors (as real ones do); it
    must not appear in the Optuna storage, MLflow (database and artifacts), the reports,
    the exported files, nor in anything the commands print (at debug verbosity)."""
    from fastapi.responses import JSONResponse

    from jointopt.serving.proxy import ServerThread, create_engine_app
    from jointopt.testing import scripted_backend

    app = create_engine_app(scripted_backend(engine_kwargs={"responder": "reverse_words"}))
    state = {"reject": True, "seen": set()}

    @app.middleware("http")
    async def check_key(request, call_next):
        auth = request.headers.get("authorization", "")
        state["seen"].add(auth)
        if state["reject"] and request.url.path.endswith("/chat/completions"):
            token = auth.removeprefix("Bearer ")
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {token}"}},
                                status_code=401)
        return await call_next(request)

    env = dict(os.environ, JOINTOPT_PLANTED_KEY=PLANTED, MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outputs = []

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "jointopt.cli.app", "-vv", *args],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=180)
        outputs.append(result.stdout + result.stderr)
        return result

    with ServerThread(app) as server:
        config = write(tmp_path, model={
            "backend": "openai", "model": "scripted", "base_urls": [server.url + "/v1"],
            "api_key_env": "JOINTOPT_PLANTED_KEY", "engine": {"max_retries": 0}},
            optimizer={"n_trials": 3, "max_consecutive_failures": 2},
            tracking={"enabled": True})
        first = cli("run", str(config))
        assert first.returncode == 2, outputs[-1]
        assert "Incorrect API key provided: ***" in first.stderr
        state["reject"] = False
        assert cli("run", str(config)).returncode == 0, outputs[-1]
        assert cli("export", str(config), "--out", str(tmp_path / "export")).returncode == 0, \
            outputs[-1]
    assert state["seen"] == {f"Bearer {PLANTED}"}, "the key was sent"

    needle = PLANTED.encode()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any("mlartifacts" in p.parts
                                                               for p in files)
    assert any(p.name == "policy.yaml" and "export" in p.parts for p in files)
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert leaked == []
    assert not [o for o in outputs if PLANTED in o]
    # the suffix alone would show a partial leak (e.g. a key cut by a length limit)
    assert not [o for o in outputs if PLANTED[-12:] in o]

    import optuna

    study = optuna.load_study(study_name="secret",
                              storage=f"sqlite:///{tmp_path / 'run' / 'optuna.db'}")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all("Incorrect API key provided: ***" in t.user_attrs["fail_reason"]
                          for t in failed)


# ------------------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("template, message", [
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ question.__class__.__base__.__subclasses__() }}", "unsafe"),
    ("{% include '/etc/passwd' %}", "may not load other templates or files"),
    ("{% import '/etc/passwd' as p %}{{ p }}", "may not load other templates or files"),
    ("{% extends '/etc/hostname' %}", "may not load other templates or files"),
    ("{{ range(10**9) | list }}", "Range too big"),
])
def test_templates_are_sandboxed(tmp_path, template, message):
    space = {**SPACE, "prompts": [{"id": "evil", "user": template}]}
    with pytest.raises(TemplateError) as info:
        plan(tmp_path, space=space)
    text = str(info.value)
    assert message in text and "prompt 'evil'.user" in text and "fix:" in text
    assert "root:" not in text


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "study.yaml"
    path.write_text(f"name: x\ntask: !!python/object/apply:os.system ['touch {marker}']\n"
                    "search_space: s.yaml\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    assert not marker.exists()


def test_oversize_inputs_and_budgets_are_refused(tmp_path):
    with pytest.raises(DataError) as info:
        plan(tmp_path, optimizer={"max_input_chars": 20})
    text = str(info.value)
    assert "optimizer.max_input_chars = 20" in text and "characters of input" in text
    assert "task: example" in text and "fix:" in text

    space = {**SPACE, "strategies": {"majority": {"n": {"low": 2, "high": 500}}}}
    with pytest.raises(ConfigError) as info:
        plan(tmp_path, space=space, optimizer={"max_completions_per_input": 64})
    text = str(info.value)
    assert "strategies.majority" in text and "500 completions per input" in text
    assert "optimizer.max_completions_per_input = 64" in text and "fix: lower" in text

    space = {**SPACE, "max_tokens": {"choices": [16, 100000]}}
    with pytest.raises(ConfigError) as info:
        plan(tmp_path, space=space)
    text = str(info.value)
    assert "max_tokens" in text and "100000" in text and "optimizer.max_tokens_cap" in text

    plan(tmp_path)  # the defaults accept an ordinary study
