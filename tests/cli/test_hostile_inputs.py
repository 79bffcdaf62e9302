"""Hostile and careless input: every case ends in ONE clear message from the real CLI.

Each case builds its files in a fresh folder, runs ``jointopt.cli.app.main`` in-process and
checks: exit code 2, a message that names the field/file/line and the value, no
traceback, no engine started (the backend factory and uvicorn are guarded), nothing
written (the folder tree is unchanged: no optuna.db, mlflow.db or output folder), and
that it was fast. The summary line ("hostile inputs: N cases, N clear") is printed at the
end of the module.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from jointopt.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024

# ---------------------------------------------------------------------------- builders

BOMB = """\
x-bomb:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _space(**changes) -> dict:
    space = yaml.safe_load((ROOT / "search_spaces/quickstart.yaml").read_text())
    space.update(changes)
    return space


DATA_SPACE = {"prompts": [{"id": "p", "user": "{{ question }}"}], "strategies": {"single": {}},
              "temperature": 0.7, "max_tokens": 16}


def _config(tmp: Path, config: dict | None = None, space: dict | str | None = None,
            *, raw: str | None = None) -> Path:
    """study.yaml (+ space.yaml) in ``tmp``; ``raw`` replaces the config text."""
    space_text = space if isinstance(space, str) else yaml.safe_dump(space or _space())
    (tmp / "space.yaml").write_text(space_text)
    base = {"name": "t", "output_dir": str(tmp / "out"),
            "task": {"builtin": {"family": "reverse_words", "n_per_level": 2}},
            "search_space": "space.yaml"}
    base.update(config or {})
    path = tmp / "study.yaml"
    path.write_text(raw if raw is not None else yaml.safe_dump(base, sort_keys=False))
    return path


def _dataset(tmp: Path, content: str | bytes, name: str = "data.jsonl", **dataset) -> Path:
    target = tmp / name
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    return _config(tmp, {"task": {"dataset": {"path": name, **dataset}}}, DATA_SPACE)


def _raw_config(text: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        return _config(tmp, raw=text.replace("OUT", str(tmp / "out")))
    return build


HEAD = """name: t
output_dir: OUT
search_space: space.yaml
task:
  builtin: {family: reverse_words, n_per_level: 2}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _blocker(tmp: Path) -> Path:
    """A regular file where a folder would have to be."""
    (tmp / "blocker").write_text("not a folder\n")
    return tmp / "blocker"


def _policy(tmp: Path, text: str, name: str = "policy.yaml") -> list[str]:
    (tmp / name).write_bytes(text.encode("utf-8", "surrogateescape"))  # \udcXX -> byte XX
    return ["serve", "--policy", str(tmp / name), "--upstream", "http://127.0.0.1:9/v1",
            "--upstream-model", "m"]


def _sparse(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        fh.truncate(size)


def _big_config(tmp: Path) -> Path:
    path = _config(tmp)
    line = "# " + "x" * 1021 + "\n"
    with path.open("a") as fh:
        fh.write(line * (50 * 1024))  # 50 MB of comments after a valid config
    return path


def _bad_utf8_config(tmp: Path) -> Path:
    path = _config(tmp, raw=HEAD.replace("OUT", str(tmp / "out")))
    path.write_bytes(path.read_bytes() + b"description: caf\xe9\n")  # Latin-1, not UTF-8
    return path


def _bank(tmp: Path, header_text: str) -> Path:
    (tmp / "bank.jsonl").write_text(header_text)
    return _config(tmp, {"model": {"backend": "replay", "bank": "bank.jsonl"}})


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One hostile input: how to build it, what the message must name, which commands."""

    build: Callable[[Path], "Path | list[str]"]
    needles: tuple[str, ...]
    commands: tuple[str, ...] = ("validate", "run")
    env: tuple[tuple[str, str], ...] = ()
    seconds: float = 10.0


CASES: dict[str, Case] = {
    # 6. hangs: alias bombs, oversized files, deep nesting
    "alias bomb in model.engine": Case(
        _raw_config(HEAD + "model:\n  engine:\n" + "".join("    " + ln + "\n"
                                                            for ln in BOMB.splitlines()[1:])),
        ("study.yaml:", "alias bomb", "*"), seconds=1.0),
    "alias bomb in the search space": Case(
        lambda t: _config(t, space=yaml.safe_dump(_space()) + BOMB),
        ("space.yaml:", "alias bomb"), seconds=1.0),
    "alias bomb in a policy file": Case(
        lambda t: _policy(t, "schema_version: 1\n" + BOMB), ("policy.yaml:", "alias bomb"),
        commands=("serve",), seconds=1.0),
    "recursive alias": Case(_raw_config(HEAD + "model:\n  engine: &e {x: *e}\n"),
                            ("study.yaml:7", "recursive", "*e")),
    "too many aliases": Case(
        _raw_config(HEAD + "model:\n  engine:\n    v: &v 1\n    l: [" +
                    ", ".join(["*v"] * 1500) + "]\n"),
        ("study.yaml:", "more than 1000 alias uses")),
    "50 MB config": Case(_big_config, ("study.yaml", "above the limit of 5.0 MB",
                                       "JOINTOPT_MAX_CONFIG_MB"), seconds=2.0),
    "oversized search space": Case(
        lambda t: _config(t, space=yaml.safe_dump(_space()) + "#" * (6 * MB) + "\n"),
        ("space.yaml", "above the limit", "JOINTOPT_MAX_CONFIG_MB")),
    "oversized policy file": Case(
        lambda t: _policy(t, "schema_version: 1\n#" + "x" * (6 * MB) + "\n"),
        ("policy.yaml", "above the limit", "JOINTOPT_MAX_CONFIG_MB"), commands=("serve",)),
    "config nested 200 deep": Case(
        _raw_config(HEAD + "model:\n  engine:\n    x: " + "[" * 200 + "]" * 200 + "\n"),
        ("study.yaml:8", "nested more than 64 levels")),
    "size cap set to nonsense": Case(lambda t: _config(t), ("JOINTOPT_MAX_CONFIG_MB", "'lots'"),
                                     env=(("JOINTOPT_MAX_CONFIG_MB", "lots"),)),
    # 7. what validate passed and run failed on
    "unwritable MLflow URI": Case(
        lambda t: _config(t, {"tracking": {"tracking_uri":
                                           f"sqlite:///{_blocker(t)}/mlflow.db"}}),
        ("tracking.tracking_uri", "blocker", "is a file")),
    "MLflow URI in a read-only place": Case(
        lambda t: _config(t, {"tracking": {"tracking_uri": "sqlite:////proc/jointopt/mlflow.db"}}),
        ("tracking.tracking_uri", "/proc", "not writable")),
    "MLflow URI unknown scheme": Case(
        lambda t: _config(t, {"tracking": {"tracking_uri": "mlfow://host/x"}}),
        ("tracking.tracking_uri", "'mlfow'", "unknown MLflow tracking URL scheme")),
    "MLflow server down": Case(
        lambda t: _config(t, {"tracking": {"tracking_uri": f"http://127.0.0.1:{_free_port()}"}}),
        ("tracking.tracking_uri", "cannot reach the MLflow tracking server")),
    "storage unknown scheme": Case(
        lambda t: _config(t, {"optimizer": {"storage": "foo://x/y"}}),
        ("optimizer.storage", "'foo'", "unknown storage URL scheme"), seconds=2.0),
    "storage scheme typo": Case(
        lambda t: _config(t, {"optimizer": {"storage": "postgresq://u@h/db"}}),
        ("optimizer.storage", "did you mean 'postgresql'")),
    "storage server down": Case(
        lambda t: _config(t, {"optimizer": {
            "storage": f"postgresql+psycopg2://u@127.0.0.1:{_free_port()}/db"}}),
        ("optimizer.storage", "127.0.0.1")),
    "storage sqlite folder is a file": Case(
        lambda t: _config(t, {"optimizer": {"storage": f"sqlite:///{_blocker(t)}/optuna.db"}}),
        ("optimizer.storage", "blocker", "is a file")),
    "storage not a URL": Case(lambda t: _config(t, {"optimizer": {"storage": "optuna.db"}}),
                              ("optimizer.storage", "not a storage URL", "'optuna.db'")),
    "bad --storage flag": Case(
        lambda t: ["run", str(_config(t)), "--storage", "foo://x"],
        ("--storage (optimizer.storage)", "'foo://x'"), commands=("-",)),
    "output folder is a file": Case(lambda t: _config(t, {"output_dir": str(_blocker(t))}),
                                    ("output_dir", "blocker", "is a file")),
    "hub model exists nowhere": Case(
        lambda t: _config(t, {"model": {"model": "nonexistent-org/nonexistent-model"}}),
        ("model.model", "'nonexistent-org/nonexistent-model'", "Hugging Face cache"),
        env=(("HF_HUB_OFFLINE", "1"),)),
    "model folder without config.json": Case(
        lambda t: (t / "weights").mkdir() or _config(t, {"model": {"model": str(t / "weights")}}),
        ("model", "config.json")),
    "unknown model alias": Case(lambda t: _config(t, {"model": {"model": "smollm3"}}),
                                ("model", "'smollm3'")),
    "upstream bad URL": Case(
        lambda t: _config(t, {"model": {"backend": "openai", "model": "m",
                                        "base_urls": ["ftp://host/v1"]}}),
        ("model.base_urls[0]", "ftp://host/v1")),
    "upstream URL with a password": Case(
        lambda t: _config(t, {"model": {"backend": "openai", "model": "m",
                                        "base_urls": ["http://me:hunter22@h:8000/v1"]}}),
        ("model.base_urls[0]", "credentials")),
    "upstream down": Case(
        lambda t: _config(t, {"model": {"backend": "openai", "model": "m", "base_urls":
                                        [f"http://127.0.0.1:{_free_port()}/v1"]}}),
        ("model.base_urls", "none of the OpenAI-compatible servers can be reached")),
    # 8. smaller
    "--n-trials 0": Case(lambda t: ["run", str(_config(t)), "--n-trials", "0"],
                         ("--n-trials", "(got 0)"), commands=("-",)),
    "--n-trials -3 (worker)": Case(lambda t: ["worker", str(_config(t)), "--n-trials", "-3"],
                                   ("--n-trials", "(got -3)"), commands=("-",)),
    "dataset path is a folder": Case(
        lambda t: (t / "data").mkdir() or _config(t, {"task": {"dataset": {"path": "data"}}},
                                                  DATA_SPACE),
        ("task.dataset.path", "'data'", "is a folder")),
    "export --out onto a file": Case(
        lambda t: ["export", str(_config(t)), "--out", str(_blocker(t))],
        ("--out", "blocker", "is a file"), commands=("-",)),
    "record --out onto a folder": Case(
        lambda t: (t / "bank").mkdir() or ["record", str(_config(t)), "--samples", "2",
                                            "--out", str(t / "bank")],
        ("--out", "bank", "is a folder"), commands=("-",)),
    "compare with an unwritable MLflow URI": Case(
        lambda t: ["compare", str(_config(t, {
            "compare": {"prompt": _space()["prompts"][0]["id"], "curves": {"single": [{}]}},
            "tracking": {"tracking_uri": f"sqlite:///{_blocker(t)}/mlflow.db"}}))],
        ("tracking.tracking_uri", "is a file"), commands=("-",)),
    "JSON array in a .jsonl": Case(
        lambda t: _dataset(t, json.dumps([{"question": "a", "answer": "1"}])),
        ("data.jsonl:1", "JSON array", ".json")),
    "duplicate key in a flow mapping": Case(
        _raw_config(HEAD + "optimizer: {seed: 0, seed: 1}\n"),
        ("study.yaml:6", "'seed'", "given twice", "columns 13 and 22")),
    "duplicate key on two lines": Case(
        _raw_config(HEAD + "optimizer:\n  seed: 0\n  n_trials: 3\n  seed: 1\n"),
        ("study.yaml:9", "'seed'", "lines 7 and 9")),
    "duplicate key in the search space": Case(
        lambda t: _config(t, space=yaml.safe_dump(_space()) + "temperature: 0.1\n"),
        ("space.yaml:", "'temperature'", "given twice")),
    "duplicate key in a JSONL record": Case(
        lambda t: _dataset(t, '{"question": "a", "answer": "1", "answer": "2"}\n'),
        ("data.jsonl:1", "'answer'", "given twice")),
    "policy file that is not UTF-8": Case(
        lambda t: _policy(t, "schema_version: 1\nmodel: \udcff\udcfe\n"),
        ("policy.yaml:2", "not valid UTF-8"), commands=("serve",)),
    "duplicate key in a JSON policy": Case(
        lambda t: _policy(t, '{\n  "schema_version": 1,\n  "schema_version": 1\n}\n',
                          "policy.json"),
        ("policy.json:3", "'schema_version'", "lines 2 and 3"), commands=("serve",)),
    # corpus: datasets
    "truncated JSONL": Case(
        lambda t: _dataset(t, '{"question": "a", "answer": "1"}\n{"question": "b", "ans'),
        ("data.jsonl:2", "not valid JSON")),
    "blank JSONL": Case(lambda t: _dataset(t, "\n   \n\t\n"), ("data.jsonl", "no records")),
    "empty JSONL": Case(lambda t: _dataset(t, ""), ("data.jsonl", "no records")),
    "wrong field name": Case(lambda t: _dataset(t, '{"question": "a", "anwser": "1"}\n'),
                             ("data.jsonl:1", "'answer'", "'anwser'")),
    "wrong field type": Case(lambda t: _dataset(t, '{"question": ["a"], "answer": "1"}\n'),
                             ("data.jsonl:1", "'question'", "array")),
    "bad UTF-8 JSONL": Case(
        lambda t: _dataset(t, b'{"question": "a", "answer": "1"}\n{"question": "\xff"}\n'),
        ("data.jsonl:2", "not valid UTF-8")),
    "bad UTF-8 config": Case(_bad_utf8_config, ("study.yaml:6", "not valid UTF-8")),
    "huge JSONL (300 MB)": Case(
        lambda t: (_sparse(t / "data.jsonl", 300 * MB) or
                   _config(t, {"task": {"dataset": {"path": "data.jsonl"}}}, DATA_SPACE)),
        ("data.jsonl", "above the limit of 200.0 MB", "JOINTOPT_MAX_DATA_MB"), seconds=2.0),
    "huge JSONL line": Case(
        lambda t: _dataset(t, '{"question": "a", "answer": "1"}\n{"question": "'
                           + "x" * (5 * MB) + '", "answer": "1"}\n'),
        ("data.jsonl:2", "longer than the limit", "JOINTOPT_MAX_LINE_MB")),
    "JSONL record nested 500 deep": Case(
        lambda t: _dataset(t, '{"question": "a", "answer": "1", "x": ' + "[" * 500
                           + "]" * 500 + "}\n"),
        ("data.jsonl:1", "nested")),
    "duplicate example ids": Case(
        lambda t: _dataset(t, '{"id": "a", "question": "q", "answer": "1"}\n'
                              '{"id": "a", "question": "r", "answer": "2"}\n', id_field="id"),
        ("data.jsonl:2", "duplicate id", "'a'")),
    "bank header with a duplicate key": Case(
        lambda t: _bank(t, '{"format": "jointopt-bank", "format": "x"}\n'),
        ("bank.jsonl:1", "'format'", "given twice")),
    "bank header line of 5 MB": Case(
        lambda t: _bank(t, '{"format": "' + "x" * (5 * MB) + '"}\n'),
        ("bank.jsonl:1", "longer than the limit")),
    # corpus: templates
    "template reads __class__": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "x", "user":
                                                    "{{ ''.__class__.__mro__[1] }}"}])),
        ("prompt 'x'.user", "__class__")),
    "template reaches globals": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "x", "user":
                                                    "{{ cycler.__init__.__globals__.os }}"}])),
        ("prompt 'x'.user", "__init__")),
    "template includes a file": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "x", "user":
                                                    "{% include '/etc/passwd' %}"}])),
        ("prompt 'x'.user", "include")),
    "template builds 1 GB": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "x", "user":
                                                    "{{ 'x' * 1000000000 }}"}])),
        ("prompt 'x'.user", "1000000000")),
    "template loops 10^10 times": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "x", "user":
                                                    "{% for i in range(100000) %}{% for j in "
                                                    "range(100000) %}{% endfor %}{% endfor %}"
                                                    "{{ words }}"}])),
        ("prompt 'x'.user", "100000 loop iterations")),
    # corpus: schema
    "unknown key": Case(lambda t: _config(t, {"optimizer": {"n_trails": 5}}),
                        ("n_trails", "did you mean 'n_trials'")),
    "unknown key in a prompt": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "x", "user": "{{ words }}",
                                                    "sytem": "hi"}])),
        ("sytem", "did you mean 'system'")),
    "wrong type": Case(lambda t: _config(t, {"optimizer": {"n_trials": "many"}}),
                       ("optimizer.n_trials", "'many'")),
    "out of range: test_fraction": Case(
        lambda t: _config(t, {"validation": {"test_fraction": 1.5}}),
        ("validation.test_fraction", "1.5")),
    "out of range: max_model_len": Case(lambda t: _config(t, {"model": {"max_model_len": 8}}),
                                        ("model.max_model_len", "8")),
    "out of range: n in the space": Case(
        lambda t: _config(t, space=_space(strategies={"majority": {"n": {"low": 0, "high": 3}}})),
        ("majority.n", "(got 0)")),
    "duplicate prompt ids": Case(
        lambda t: _config(t, space=_space(prompts=[{"id": "a", "user": "{{ words }}"}] * 2)),
        ("prompts[1].id", "duplicate prompt id", "'a'")),
    "empty config": Case(_raw_config(""), ("study.yaml", "mapping")),
    "config is a list": Case(_raw_config("- a\n- b\n"), ("study.yaml", "mapping", "'list'")),
    "YAML syntax error": Case(_raw_config(HEAD + "optimizer: {seed: 0\n"),
                              ("study.yaml:", "invalid YAML")),
    "config path is a folder": Case(lambda t: (t / "cfg").mkdir() or t / "cfg",
                                    ("cfg", "is a folder")),
    "search space missing": Case(lambda t: _config(t, {"search_space": "nope.yaml"}),
                                 ("nope.yaml", "not found")),
}


# ---------------------------------------------------------------------------- harness


class EngineStarted(Exception):
    pass


_results: dict[str, bool] = {}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    if _results:
        clear = sum(_results.values())
        line = f"hostile inputs: {len(_results)} cases, {clear} clear"
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("\n" + line)


@pytest.fixture
def guarded(monkeypatch):
    """Any backend construction or server start is recorded and refused."""
    started: list[str] = []

    def refuse(*args, **kwargs):
        started.append("engine")
        raise EngineStarted("an engine was started")

    import jointopt.search.compare as compare
    import jointopt.search.objective as study

    monkeypatch.setattr(study, "build_backend", refuse)
    monkeypatch.setattr(study, "backend_from_settings", refuse)
    monkeypatch.setattr(compare, "build_backend", refuse)
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", refuse)
    return started


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def _params():
    for name, case in CASES.items():
        for command in case.commands:
            yield pytest.param(name, command, id=f"{name} [{command}]")


@pytest.mark.parametrize(("name", "command"), list(_params()))
def test_hostile_input_ends_in_one_clear_message(name, command, tmp_path, monkeypatch, capsys,
                                                 guarded):
    case = CASES[name]
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # stray relative writes (runs/, mlruns/) would land here
    built = case.build(work)
    argv = built if isinstance(built, list) else [command, str(built)]
    had_vllm = "vllm" in sys.modules
    before = _tree(work)
    started = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    _results[f"{name} [{command}]"] = False
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: "), err
    assert err.count("error: ") == 1, err
    assert "fix:" in err, err
    for needle in case.needles:
        assert needle in err, (needle, err)
    assert not guarded, "an engine or server was started"
    assert had_vllm or "vllm" not in sys.modules, "vllm was imported"
    assert _tree(work) == before, "files were written or changed"
    assert not list(work.rglob("*.db")) and not (work / "out").exists()
    assert elapsed < case.seconds, f"took {elapsed:.2f} s"
    _results[f"{name} [{command}]"] = True


def test_the_table_covers_every_class_of_the_drill():
    names = " ".join(CASES).lower()
    for word in ("alias bomb", "50 mb", "mlflow", "storage", "exists nowhere", "--n-trials",
                 "folder", "--out", "json array", "duplicate key", "truncated", "blank",
                 "empty", "wrong field", "utf-8", "huge", "template", "unknown key",
                 "wrong type", "out of range", "duplicate example ids", "duplicate prompt ids",
                 "upstream", "policy"):
        assert word in names, word


def test_a_config_with_anchors_and_merge_keys_still_validates(tmp_path, capsys):
    path = _config(tmp_path, raw=HEAD.replace("OUT", str(tmp_path / "out"))
                   + "optimizer: &opt {seed: 3, sampler: tpe}\n"
                   + "validation:\n  <<: {seed: 5}\n  level: 0.9\n")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_guard_loads_merge_keys_and_anchors():
    from jointopt.safety.safe_load import parse_yaml

    data = parse_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\nd: *b\n", "f.yaml")
    assert data == {"base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}, "d": {"x": 1, "y": 2}}


def test_size_cap_can_be_raised(tmp_path, monkeypatch, capsys):
    path = _config(tmp_path, space=yaml.safe_dump(_space()) + "#" * (6 * MB) + "\n")
    monkeypatch.setenv("JOINTOPT_MAX_CONFIG_MB", "8")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_a_json_array_in_a_json_file_is_still_read(tmp_path, capsys):
    records = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    path = _dataset(tmp_path, json.dumps(records), name="data.json")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_validate_checks_what_run_needs_and_passes_a_good_setup(tmp_path, capsys):
    path = _config(tmp_path, {"optimizer": {"storage": f"sqlite:///{tmp_path}/db/optuna.db"},
                              "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/t/mlflow.db"}})
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert not (tmp_path / "db").exists() and not (tmp_path / "t").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        path = _config(tmp_path, {"output_dir": str(locked / "out")})
        assert main(["validate", str(path)]) == 2
        assert "output_dir" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


FRESH_PROCESS = ("alias bomb in model.engine", "unwritable MLflow URI", "storage unknown scheme",
                 "hub model exists nowhere")


@pytest.mark.parametrize("name", FRESH_PROCESS)
def test_run_refuses_in_a_fresh_process_without_importing_vllm(name, tmp_path):
    """The same cases through a real process: no vllm import, nothing written, fast."""
    import subprocess

    case = CASES[name]
    work = tmp_path / "case"
    work.mkdir()
    path = case.build(work)
    before = _tree(work)
    code = ("import sys, jointopt.cli.app as c; rc = c.main(['run', sys.argv[1]]); "
            "print('vllm' in sys.modules); sys.exit(rc)")
    env = {**os.environ, **dict(case.env)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=work, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    for needle in case.needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert _tree(work) == before
    assert time.perf_counter() - started < 60
