"""The vLLM backend on the real engine (marked ``engine``) and model resolution (no engine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jointopt.backends import models
from jointopt.errors import BackendError, ModelError
from jointopt.core.generation import ChatMessage, GenerationRequest
from jointopt.testing import BackendContract


def _req(text: str, **kw) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", text),), **kw)


# --------------------------------------------------------------------------- real engine


@pytest.mark.engine
class TestVLLMContract(BackendContract):
    @pytest.fixture
    def backend(self, engine):
        return engine


@pytest.mark.engine
def test_token_counts_match_the_tokenizer(engine):
    request = _req("List three fruits.", n=1, temperature=0.0, max_tokens=12)
    result = engine.generate([request])[0]
    tokenizer = engine.tokenizer
    prompt_ids = tokenizer(engine.render(request), add_special_tokens=False).input_ids
    assert result.prompt_tokens == len(prompt_ids)
    (completion,) = result.completions
    assert 1 <= completion.num_tokens <= 12
    assert completion.text == tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
    assert result.total_tokens == len(prompt_ids) + completion.num_tokens
    assert engine.model_id.startswith("smollm2-135m-instruct@")


@pytest.mark.engine
def test_native_n_and_tiny_max_tokens_end_with_length(engine):
    result = engine.generate([_req("Write a long story about a dragon.", n=4,
                                   temperature=1.0, max_tokens=2)])[0]
    assert len(result.completions) == 4
    for c in result.completions:
        assert c.num_tokens == 2 and c.finish_reason == "length"
        assert c.logprobs is not None and len(c.logprobs) == 2


@pytest.mark.engine
def test_logprobs_are_the_sampled_tokens(engine):
    greedy = engine.generate([_req("What is the capital of France?", temperature=0.0,
                                   max_tokens=8)])[0].completions[0]
    assert greedy.logprobs is not None and len(greedy.logprobs) == greedy.num_tokens
    assert all(math.isfinite(lp) and lp <= 0.0 for lp in greedy.logprobs)
    # Greedy picks the arg-max token: its probability is high for this prompt.
    assert greedy.mean_logprob > -1.5


@pytest.mark.engine
def test_mixed_batch_keeps_order_and_greedy_is_repeatable(engine):
    requests = [
        _req("Say hello.", n=1, temperature=0.0, max_tokens=5),
        _req("Count to ten.", n=3, temperature=0.8, max_tokens=3, logprobs=False),
        _req("Name an animal.", n=2, temperature=0.5, max_tokens=7, stop=("\n",)),
        GenerationRequest(messages=(ChatMessage("system", "Reply with digits only."),
                                    ChatMessage("user", "2+2=")),
                          n=1, temperature=0.0, max_tokens=4, continuation="The answer"),
        _req("Say hello.", n=1, temperature=0.0, max_tokens=5),
    ]
    results = engine.generate(requests)
    assert [r.request for r in results] == requests
    for request, result in zip(requests, results):
        assert len(result.completions) == request.n
        assert all(c.num_tokens <= request.max_tokens for c in result.completions)
        assert all((c.logprobs is None) == (not request.logprobs) for c in result.completions)
        assert all("\n" not in c.text for c in result.completions) or not request.stop
        assert result.wall_time >= 0.0
    assert results[0].completions[0].token_ids == results[4].completions[0].token_ids
    assert engine.render(requests[3]).endswith("<|im_start|>assistant\nThe answer")
    assert results[3].prompt_tokens > 0


@pytest.mark.engine
@pytest.mark.parametrize("field, value", [("n", 0), ("max_tokens", 0), ("temperature", -1.0),
                                          ("top_p", 0.0)])
def test_invalid_requests_fail_before_the_engine(engine, field, value):
    with pytest.raises(BackendError, match=field):
        engine.generate([_req("hi", **{field: value})])
    assert engine.generate([]) == []


# --------------------------------------------------------------------------- resolution


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_prepared(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    files = {"config.json": {"sha256": models.file_sha256(folder / "config.json"), "size": 2}}
    manifest = {"schema": models.MANIFEST_SCHEMA, "files": files, "source": {"sha256": "ab" * 32}}
    (folder / models.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_cache_dir_follows_the_environment(empty_cache):
    assert models.cache_dir() == empty_cache.resolve()


def test_unprepared_alias_says_how_to_prepare(empty_cache):
    with pytest.raises(ModelError) as info:
        models.resolve_model("smollm2-135m-instruct")
    assert "smollm2-135m-instruct" in str(info.value)
    assert "python -m jointopt.backends.models prepare" in str(info.value)


def test_aliases_resolve_to_the_prepared_folder(empty_cache):
    folder = empty_cache / "models" / "smollm2-135m-instruct"
    _fake_prepared(folder)
    assert models.resolve_model("smollm2-135m-instruct") == str(folder)
    assert models.resolve_model("embedded") == str(folder)
    assert models.is_prepared()
    (folder / "config.json").write_text("[]")  # same size, other content
    assert models.is_prepared() and not models.is_prepared(verify_checksums=True)


def test_unknown_name_suggests_an_alias(empty_cache):
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m-instruct'"):
        models.resolve_model("smollm2-135m")


def test_local_folders_and_hub_ids(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        models.resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(ModelError, match="not found"):
        models.resolve_model(str(tmp_path / "missing"))
    assert models.resolve_model("HuggingFaceTB/SmolLM2-1.7B-Instruct") == (
        "HuggingFaceTB/SmolLM2-1.7B-Instruct")
    with pytest.raises(ModelError):
        models.resolve_model("")


def test_cli_reports_unknown_alias(empty_cache, capsys):
    assert models.main(["prepare", "nonexistent-model"]) == 1
    assert "unknown embedded model alias" in capsys.readouterr().err


@pytest.mark.engine
def test_engine_runs_with_the_dtype_chosen_from_the_cpu(engine):
    from jointopt.backends.cpu_engine import choose_cpu_engine, read_cpu_info

    expected = choose_cpu_engine(read_cpu_info()).dtype
    assert engine.engine_choice.dtype == expected
    assert str(engine.llm.llm_engine.model_config.dtype) == f"torch.{expected}"
    record = engine.engine_record()
    assert record["engine_dtype"] == expected and record["engine_threads"] >= 1
