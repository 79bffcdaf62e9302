"""The policy proxy under attack: authentication, secrets, limits, hostile policy files.

* Client keys: none or a wrong one is a 401, the right one a 200; keys never reach a log.
* Planted upstream secrets (a URL password, an upstream API key, an upstream that echoes
  the Authorization header in its errors) reach no response body or header, no
  ``/health`` or ``/v1/models``, and no log line at DEBUG, INFO or WARNING, including
  uvicorn's access log; the same drill with masking switched off does find them, so the
  check is able to see a leak.
* Limits: body cap (413), input cap (413), concurrency (503 + Retry-After), rate (429),
  port range, non-loopback bind without keys.
* Access log: one formatted line per request, no "Logging error" traceback.
* Streaming with the official openai client (answer and usage).
* Policy files: verifiers only from allowed modules (``this:s`` imports nothing), templates
  that walk attributes and budgets above the caps are refused at load time.
"""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from jointopt.backends import ScriptedBackend
from jointopt.backends.openai import OpenAIBackend
from jointopt.errors import ConfigError
from jointopt.core.policy import Allocation, DifficultySpec, Policy
from jointopt.core.policy_file import load_policy_file, save_policy
from jointopt.core.prompts import PromptTemplate
from jointopt.serving.runtime import load_policy, task_spec
from jointopt.serving.proxy import ServeSettings, ServerThread, create_app, create_engine_app, serve
from jointopt.serving.security import check_bind, check_port
from jointopt.testing import noisy_responder, toy_task

pytestmark = pytest.mark.timeout(60)

CLIENT_KEY = "client-PLANTED-7d2e9f41c0b8a635"
OTHER_KEY = "client-other-0f9e8d7c6b5a4321"
UPSTREAM_KEY = "upkey-PLANTED-4b1f9e2a7c55d0e3"
URL_PASSWORD = "pw-PLANTED-93ac71e5"
BASIC = base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode()
NEEDLES = (CLIENT_KEY, UPSTREAM_KEY, URL_PASSWORD, BASIC)
QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


def _policy(serving: dict | None = None, **kw) -> Policy:
    metadata = {"task": task_spec(toy_task(), 1)}
    if serving:
        metadata["serving"] = serving
    return Policy(model="m", prompt=PromptTemplate(id="toy", user="{{ question }}", shots=1),
                  bins=kw.pop("bins", {"all": Allocation("majority", 0.7, 16, {"n": 3})}),
                  difficulty=DifficultySpec(), metadata=metadata)


def _local_app(settings: ServeSettings | None = None, backend=None, **policy_kw):
    runner = load_policy(_policy(**policy_kw),
                         backend=backend or ScriptedBackend(noisy_responder(0.7)))
    return create_app(runner, settings or ServeSettings(api_keys=(CLIENT_KEY,)))


def _auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



class _Capture(logging.Handler):
    """Formats every record as the server's handlers would (uvicorn's access formatter for
    the access log) and keeps the lines and any formatting error."""

    def __init__(self, level: int) -> None:
        from uvicorn.logging import AccessFormatter

        super().__init__(level)
        self.access = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s',
                                      use_colors=False)
        self.plain = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        self.lines: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        formatter = self.access if record.name == "uvicorn.access" else self.plain
        try:
            self.lines.append((record.name, formatter.format(record)))
        except Exception as exc:  # noqa: BLE001 - what a StreamHandler would print
            self.errors.append(f"{record.name}: {exc!r}")


@contextmanager
def _captured(level: int):
    """Capture the root, ``uvicorn`` and ``uvicorn.access`` loggers at ``level`` (start
    the ServerThreads after entering: uvicorn's config resets its loggers)."""
    capture = _Capture(level)
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.access")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(level)
    try:
        yield capture
    finally:
        for lg, lvl in saved:
            lg.removeHandler(capture)
            lg.setLevel(lvl)


# ------------------------------------------------------------------------------ auth


def test_no_key_and_wrong_key_are_401_the_right_key_200(log_redaction):
    with _captured(logging.DEBUG) as logs, ServerThread(_local_app(), log_level="debug") as s:
        url = s.url + "/v1/chat/completions"
        missing = httpx.post(url, json={"messages": QUESTION})
        wrong = httpx.post(url, json={"messages": QUESTION}, headers=_auth(OTHER_KEY))
        basic = httpx.post(url, json={"messages": QUESTION},
                           headers={"Authorization": f"Basic {CLIENT_KEY}"})
        right = httpx.post(url, json={"messages": QUESTION}, headers=_auth(), timeout=20)
        models = httpx.get(s.url + "/v1/models")
        health = httpx.get(s.url + "/health")  # load-balancer probes need no key
    for response in (missing, wrong, basic, models):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert wrong.json()["error"]["message"] == "invalid API key"
    assert right.status_code == 200 and right.json()["choices"][0]["message"]["content"]
    assert health.status_code == 200
    text = "\n".join(line for _, line in logs.lines)
    assert OTHER_KEY not in text and CLIENT_KEY not in text and not logs.errors


def test_openai_client_with_a_key_streams_the_answer_and_usage():
    with ServerThread(_local_app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=CLIENT_KEY, max_retries=0,
                               timeout=20)
        plain = client.chat.completions.create(model="x", messages=QUESTION)
        chunks = list(client.chat.completions.create(
            model="x", messages=QUESTION, stream=True, stream_options={"include_usage": True}))
        text_chunks = list(client.completions.create(
            model="x", prompt="What is 20 + 22?", stream=True,
            stream_options={"include_usage": True}))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key=OTHER_KEY,
                          max_retries=0).chat.completions.create(model="x", messages=QUESTION,
                                                                 stream=True)
    assert plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in text_chunks if c.choices) == streamed
    assert text_chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_keys_load_from_a_file_and_the_environment(tmp_path, monkeypatch):
    from jointopt.serving.security import load_api_keys

    path = tmp_path / "keys.txt"
    path.write_text(f"# clients\n{CLIENT_KEY}\n\n{OTHER_KEY}\n")
    path.chmod(0o600)
    monkeypatch.setenv("JOINTOPT_API_KEYS", "env-key-0123456789abcdef, env-key-fedcba9876543210")
    keys = load_api_keys(path)
    assert len(keys) == 4 and keys.match(OTHER_KEY) == 1 and keys.match("nope") is None
    assert CLIENT_KEY not in repr(keys) and CLIENT_KEY not in repr(ServeSettings(api_keys=keys))
    monkeypatch.setenv("JOINTOPT_API_KEYS", "short")
    with pytest.raises(ConfigError, match="at least 16 characters") as info:
        load_api_keys(None)
    assert "short" not in str(info.value).replace("too short", "")
    path.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_api_keys(path)


def test_non_loopback_bind_without_keys_is_refused(log_redaction, tmp_path):
    check_bind("127.0.0.1", authenticated=False)
    check_bind("::1", authenticated=False)
    check_bind("localhost", authenticated=False)
    check_bind("0.0.0.0", authenticated=True)
    check_bind("0.0.0.0", authenticated=False, allow_unauthenticated=True)
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        with pytest.raises(ConfigError, match="--allow-unauthenticated"):
            check_bind(host, authenticated=False)
    policy = save_policy(_policy(), tmp_path / "policy.yaml")
    with pytest.raises(ConfigError, match="non-loopback"):
        serve(policy, "http://127.0.0.1:9/v1", host="0.0.0.0", port=_free_port())


def test_port_must_be_in_range(log_redaction, tmp_path):
    assert check_port(0) == 0 and check_port(65535) == 65535
    for bad in (70000, -1, 65536, "8100", True):
        with pytest.raises(ConfigError, match="1 to 65535"):
            check_port(bad)
    policy = save_policy(_policy(), tmp_path / "policy.yaml")
    with pytest.raises(ConfigError, match="port"):
        serve(policy, "http://127.0.0.1:9/v1", port=70000)


# ------------------------------------------------------------------------------ secrets


def _echoing_upstream(state: dict) -> ServerThread:
    """A scripted OpenAI server that, when ``state["fail"]``, answers 401 with the request's
    Authorization header in the error message (as real servers do)."""
    from fastapi.responses import JSONResponse

    app = create_engine_app(ScriptedBackend(noisy_responder(0.7)), model_name="toy-model")

    @app.middleware("http")
    async def echo(request, call_next):
        if state["fail"]:
            auth = request.headers.get("authorization", "")
            return JSONResponse(status_code=401, content={"error": {
                "message": f"Incorrect API key provided. You sent: Authorization: {auth}"}})
        return await call_next(request)

    return ServerThread(app)


def _drill(level: int, monkeypatch) -> tuple[list[str], list[str], _Capture]:
    """Every text a client or the server log sees while three proxies meet an upstream
    that works, then fails echoing credentials, and an unreachable one."""
    monkeypatch.setenv("JOINTOPT_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    state = {"fail": False}
    upstream = _echoing_upstream(state).start()
    port = upstream.port
    backends = [
        OpenAIBackend(f"http://alice:{URL_PASSWORD}@127.0.0.1:{port}/v1", "toy-model",
                      max_retries=0),
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", "toy-model", max_retries=0,
                      api_key_env="JOINTOPT_TEST_UPSTREAM_KEY"),
        OpenAIBackend(f"http://alice:{URL_PASSWORD}@127.0.0.1:{_free_port()}/v1", "toy-model",
                      max_retries=1, backoff=0.01, connect_timeout=1),
    ]
    settings = ServeSettings(api_keys=(CLIENT_KEY,))
    proxies = [ServerThread(create_app(load_policy(_policy(), backend=b), settings),
                            log_level="debug") for b in backends]
    responses: list[str] = []

    def record(response: httpx.Response) -> httpx.Response:
        responses.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    try:
        with _captured(level) as logs:
            for proxy in proxies:
                proxy.start()
            for fail in (False, True):
                state["fail"] = fail
                for proxy in proxies:
                    record(httpx.get(proxy.url + "/health", timeout=10))
                    record(httpx.get(proxy.url + "/v1/models", headers=_auth()))
                    record(httpx.post(proxy.url + "/v1/chat/completions", timeout=20,
                                      headers=_auth(), json={"messages": QUESTION}))
                    record(httpx.post(proxy.url + "/v1/chat/completions", timeout=20,
                                      headers=_auth(OTHER_KEY), json={"messages": QUESTION}))
            for proxy in proxies:
                proxy.stop()
    finally:
        for proxy in proxies:
            proxy.stop()
        for backend in backends:
            backend.close()
        upstream.stop()
    return responses, [line for _, line in logs.lines], logs


def _leaks(texts: list[str]) -> list[str]:
    found = [n for n in NEEDLES if any(n in t for t in texts)]
    # a cut secret (an excerpt limit) still leaks its tail
    found += [n + " (tail)" for n in NEEDLES if any(n[-10:] in t for t in texts)]
    return found


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
def test_planted_upstream_secrets_reach_no_client_and_no_log(log_redaction, monkeypatch, level):
    responses, lines, logs = _drill(level, monkeypatch)
    assert _leaks(responses + lines) == []
    assert not logs.errors
    statuses = [t.split(" ", 1)[0] for t in responses]
    # 3 proxies x 2 rounds x (health, models, chat, chat with a wrong key)
    assert len(statuses) == 24 and statuses.count("401") == 6
    assert statuses.count("502") == 4  # the unreachable upstream twice, the echoing one twice
    health = [t for t in responses if '"upstream"' in t]
    assert health and all("127.0.0.1" not in t and "alice" not in t for t in health)
    errors = [t for t in responses if t.startswith("502")]
    assert all("error id err-" in t for t in errors)
    # each error's details are logged once under its id, masked
    for error in errors:
        error_id = error.split("error id ")[1].split(";")[0]
        assert len([line for line in lines if error_id in line]) == 1
    assert any("You sent: Authorization: Basic ***" in line for line in lines)
    assert any("You sent: Authorization: Bearer ***" in line for line in lines)
    if level <= logging.INFO:
        assert any(name == "uvicorn.access" for name, _ in logs.lines)


def test_the_drill_does_see_a_leak_when_masking_is_off(log_redaction, monkeypatch):
    """The leak check is not vacuous: with the masker switched off, the same drill leaks."""
    from jointopt.safety import secrets

    monkeypatch.setattr(secrets, "redact", lambda text: text if isinstance(text, str)
                        else str(text))
    responses, lines, _ = _drill(logging.WARNING, monkeypatch)
    assert _leaks(responses + lines)


def test_masking_keeps_words_and_masks_values():
    from jointopt.safety.secrets import redact

    message = "model.engine.api_key: unknown key 'api_key'"
    assert redact(message) == message
    assert redact("fix: did you mean 'api_key_env'? known keys: api_key_env, token") == \
        "fix: did you mean 'api_key_env'? known keys: api_key_env, token"
    assert redact("api_key=Qwerty12345") == "api_key=***"
    assert redact("password: hunter22") == "password: ***"
    assert redact(f"Authorization: Basic {BASIC}") == "Authorization: Basic ***"
    assert redact("Authorization: Bearer abcdefgh12345") == "Authorization: Bearer ***"


# ------------------------------------------------------------------------------ access log


def test_access_log_is_one_formatted_line_per_request(log_redaction):
    from jointopt.safety import secrets

    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/models?api_key=Qwerty12345", "1.1", 200), None)
    line = _Capture(logging.INFO).access.format(secrets.mask_record(record))
    assert line == '127.0.0.1:5000 - "GET /v1/models?api_key=*** HTTP/1.1" 200 OK'

    app = _local_app(ServeSettings(api_keys=(CLIENT_KEY,), max_body_bytes=1000))
    server = ServerThread(app, log_level="info")
    with _captured(logging.INFO) as logs, server:
        calls = [
            lambda: httpx.get(server.url + "/health"),
            lambda: httpx.get(server.url + "/v1/models"),
            lambda: httpx.get(server.url + "/v1/models", headers=_auth()),
            lambda: httpx.post(server.url + "/v1/chat/completions", headers=_auth(),
                               json={"messages": QUESTION}, timeout=20),
            lambda: httpx.post(server.url + "/v1/chat/completions", headers=_auth(),
                               content=b"x" * 5000),
            lambda: httpx.get(server.url + "/nowhere", headers=_auth()),
        ]
        statuses = [call().status_code for call in calls]
    access = [line for name, line in logs.lines if name == "uvicorn.access"]
    assert statuses == [200, 401, 200, 200, 413, 404]
    assert len(access) == len(calls) and not logs.errors
    assert all(line.endswith(f"{status} " + {200: "OK", 401: "Unauthorized",
                                            413: "Request Entity Too Large",
                                            404: "Not Found"}[status])
               for line, status in zip(access, statuses))
    assert not [line for _, line in logs.lines if "Traceback" in line]


# ------------------------------------------------------------------------------ limits


def test_a_10mb_body_is_413_by_length_and_when_chunked():
    with ServerThread(_local_app()) as server:
        url = server.url + "/v1/chat/completions"
        big = httpx.post(url, headers=_auth(), timeout=30, json={
            "messages": [{"role": "user", "content": "x" * 10_000_000}]})

        def chunks():
            for _ in range(20):
                yield b"x" * 100_000

        chunked = httpx.post(url, headers=_auth(), content=chunks(), timeout=30)
        small = httpx.post(url, headers=_auth(), json={"messages": QUESTION}, timeout=20)
    assert big.status_code == 413 and "at most 1048576 bytes" in big.json()["error"]["message"]
    assert chunked.status_code == 413
    assert small.status_code == 200


def test_the_input_character_cap_comes_from_the_policy_or_the_settings():
    long_question = [{"role": "user", "content": "What is 1 + 1? " + "x" * 80}]
    with ServerThread(_local_app(serving={"max_input_chars": 50})) as server:
        too_long = httpx.post(server.url + "/v1/chat/completions", headers=_auth(),
                              json={"messages": long_question})
        fine = httpx.post(server.url + "/v1/chat/completions", headers=_auth(), timeout=20,
                          json={"messages": QUESTION})
    assert too_long.status_code == 413
    message = too_long.json()["error"]["message"]
    assert "95 characters" in message and "limit of 50" in message and "max_input_chars" in message
    assert fine.status_code == 200
    settings = ServeSettings(api_keys=(CLIENT_KEY,), max_input_chars=10)
    with ServerThread(_local_app(settings, serving={"max_input_chars": 50})) as server:
        capped = httpx.post(server.url + "/v1/completions", headers=_auth(),
                            json={"prompt": "What is 20 + 22?"})
    assert capped.status_code == 413 and "limit of 10" in capped.json()["error"]["message"]


def test_over_concurrency_is_503_with_retry_after():
    started, release = threading.Event(), threading.Event()

    def respond(request, index, rng):
        started.set()
        release.wait(10)
        return "The answer is 42."

    settings = ServeSettings(api_keys=(CLIENT_KEY,), max_concurrency=1, max_waiting=0)
    app = _local_app(settings, backend=ScriptedBackend(respond),
                     bins={"all": Allocation("single", 0.0, 8)})
    with ServerThread(app) as server:
        url = server.url + "/v1/chat/completions"
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(httpx.post(
            url, headers=_auth(), json={"messages": QUESTION}, timeout=20)))
        worker.start()
        assert started.wait(10)
        busy = httpx.post(url, headers=_auth(), json={"messages": QUESTION}, timeout=5)
        release.set()
        worker.join(20)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "max_waiting" in busy.json()["error"]["message"]
    assert first[0].status_code == 200


def test_rate_limit_per_key_is_429():
    settings = ServeSettings(api_keys=(CLIENT_KEY, OTHER_KEY), rate_limit=2)
    with ServerThread(_local_app(settings)) as server:
        mine = [httpx.get(server.url + "/v1/models", headers=_auth()) for _ in range(3)]
        other = httpx.get(server.url + "/v1/models", headers=_auth(OTHER_KEY))
    assert [r.status_code for r in mine] == [200, 200, 429]
    assert int(mine[2].headers["retry-after"]) >= 1
    assert "2 requests per 60s" in mine[2].json()["error"]["message"]
    assert other.status_code == 200


def test_bad_limit_settings():
    for field, value in (("max_body_bytes", 0), ("rate_limit", -1), ("max_waiting", -1),
                         ("max_input_chars", 0)):
        with pytest.raises(ConfigError, match=field):
            ServeSettings(**{field: value})


# ------------------------------------------------------------------------------ policy files


def _policy_file(tmp_path: Path, edit) -> Path:
    path = save_policy(_policy(), tmp_path / "policy.yaml")
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_verifier_outside_the_allow_list_is_refused_before_any_import(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)
    path = _policy_file(tmp_path, lambda d: d["metadata"]["task"].update(verifier="this:s"))
    with pytest.raises(ConfigError, match="not on the allow-list") as info:
        load_policy(path, backend=ScriptedBackend())
    assert "--allow-verifier this" in str(info.value) and "verifier" in str(info.value)
    assert "this" not in sys.modules
    assert capsys.readouterr().out == ""  # the Zen of Python was not printed

    (tmp_path / "my_verifiers.py").write_text(
        "def check(example, answer):\n    return answer.isdigit()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_verifiers", raising=False)
    mine = _policy_file(tmp_path, lambda d: d["metadata"]["task"].update(
        verifier="my_verifiers:check"))
    with pytest.raises(ConfigError, match="allow-list"):
        load_policy(mine, backend=ScriptedBackend())
    assert "my_verifiers" not in sys.modules
    runner = load_policy(mine, backend=ScriptedBackend(), allow_verifiers=["my_verifiers"])
    assert runner.task.verifier.__name__ == "check"
    # an allowed module cannot lend a function it merely imported
    reach = _policy_file(tmp_path, lambda d: d["metadata"]["task"].update(
        verifier="jointopt.core.task_spec:importlib.import_module"))
    with pytest.raises(ConfigError, match="defined in an allowed module"):
        load_policy(reach, backend=ScriptedBackend())
    with pytest.raises(ConfigError, match="dotted module name"):
        load_policy(mine, backend=ScriptedBackend(), allow_verifiers=["my_verifiers:check"])


@pytest.mark.parametrize("template", [
    "{{ ''.__class__ }}",
    "{{ question.__class__.__mro__ }}",
    "{{ question['__class__'] }}",
    "{{ question | attr('__class__') }}",
    "{% set name = '_' ~ '_class__' %}{{ question | attr(name) }}",  # only the render sees it
])
def test_attribute_walking_templates_are_refused_at_load_time(tmp_path, template):
    path = _policy_file(tmp_path, lambda d: d["prompt"].update(user=template))
    with pytest.raises(ConfigError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert "prompt.user" in message and ("private attributes" in message
                                         or "unsafe operation" in message)


def test_budgets_above_the_caps_are_refused_naming_field_value_and_fix(tmp_path):
    path = _policy_file(tmp_path, lambda d: d["bins"]["all"].update(max_tokens=int(1e9)))
    with pytest.raises(ConfigError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert "bins.all.max_tokens" in message and "1000000000" in message
    assert "65536" in message and "fix:" in message
    path = _policy_file(tmp_path, lambda d: d["bins"]["all"].update(
        strategy="parallel_revision", params={"chains": 64, "rounds": 32}))
    with pytest.raises(ConfigError, match="2048 completions per input") as info:
        load_policy_file(path)
    assert "bins.all.params" in str(info.value) and "fix:" in str(info.value)
    path = _policy_file(tmp_path, lambda d: d["metadata"].update(
        serving={"max_input_chars": 0}))
    with pytest.raises(ConfigError, match="max_input_chars"):
        load_policy_file(path)


def test_an_internal_error_is_a_generic_500_and_its_traceback_is_masked(log_redaction):
    from jointopt.safety import secrets

    secrets.register(UPSTREAM_KEY)  # as OpenAIBackend registers its key

    def respond(request, index, rng):
        raise RuntimeError(f"boom with {UPSTREAM_KEY}")

    server = ServerThread(_local_app(backend=ScriptedBackend(respond),
                                     bins={"all": Allocation("single", 0.0, 8)}))
    with _captured(logging.INFO) as logs, server:
        response = httpx.post(server.url + "/v1/chat/completions", headers=_auth(),
                              json={"messages": QUESTION}, timeout=20)
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert message.startswith("internal error (error id err-") and "boom" not in message
    lines = [line for _, line in logs.lines]
    logged = [line for line in lines if message.split("error id ")[1].split(";")[0] in line]
    assert len(logged) == 1 and "Traceback" in logged[0] and "boom with ***" in logged[0]
    assert _leaks(lines + [response.text]) == []
