"""Tests of jointopt.tasks.loaders: happy paths and every reported data error."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from jointopt.errors import ConfigError, DataError
from jointopt.tasks import (
    AnswerExtractor,
    AnswerMatcher,
    Example,
    load_examples,
    make_dataset_task,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, name: str, records) -> Path:
    return _write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


def _error(path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_examples(path, **kw)
    text = str(err.value)
    assert "fix:" in text
    return text


# ------------------------------------------------------------------------------ happy paths


def test_jsonl_happy_path(tmp_path):
    path = _write(
        tmp_path,
        "qa.jsonl",
        '{"question": "2+2?", "answer": 4, "difficulty": 1}\n'
        "\n"  # blank lines are skipped (and still counted for line numbers)
        '{"question": "Capital of France?", "answer": "Paris", "source": "x"}\n'
        '{"question": "half", "answer": 0.5, "difficulty": "hard"}\n'
        '{"question": "float int", "answer": 3.0, "difficulty": null}\n',
    )
    examples = load_examples(path, input_fields=["question"])
    assert [e.id for e in examples] == ["qa:1", "qa:3", "qa:4", "qa:5"]
    assert [e.target for e in examples] == ["4", "Paris", "0.5", "3"]
    assert [e.difficulty for e in examples] == ["1", None, "hard", None]
    assert examples[1].inputs == {"question": "Capital of France?"}
    assert all(isinstance(e, Example) for e in examples)


def test_jsonl_default_inputs_exclude_target_id_and_difficulty(tmp_path):
    path = _jsonl(
        tmp_path,
        "d.jsonl",
        [
            {"id": "a", "context": "c1", "question": "q1", "answer": "x", "difficulty": "1"},
            {"id": "b", "context": "c2", "question": "q2", "answer": "y", "more": [1, 2]},
        ],
    )
    examples = load_examples(path)
    assert tuple(examples[0].inputs) == ("context", "question")
    assert [e.id for e in examples] == ["d:1", "d:2"]  # id_field=None numbers by line
    with_ids = load_examples(path, id_field="id")
    assert [e.id for e in with_ids] == ["a", "b"]


def test_custom_target_and_bool_values(tmp_path):
    path = _jsonl(tmp_path, "b.jsonl", [{"text": "x", "label": True, "uid": 7}])
    (ex,) = load_examples(path, target_field="label", id_field="uid", difficulty_field=None)
    assert ex.target == "true" and ex.id == "7" and ex.inputs == {"text": "x"}


def test_json_array_file(tmp_path):
    path = _write(tmp_path, "arr.json", json.dumps([{"q": "a", "answer": "1"}, {"q": "b", "answer": 2}]))
    examples = load_examples(path)
    assert [(e.id, e.target) for e in examples] == [("arr:0", "1"), ("arr:1", "2")]
    bad = _write(tmp_path, "bad.json", json.dumps([{"q": "a", "answer": "1"}, 5]))
    assert "bad.json: item 1" in _error(bad)


def test_csv_happy_path(tmp_path):
    path = _write(
        tmp_path,
        "data.csv",
        "\ufeffquestion,answer,difficulty\n"  # a byte-order mark as spreadsheets write it
        '"Add 1, 2",3,easy\n'
        "\n"
        '"multi\nline",4,\n'
        "plain,5,hard\n",
    )
    examples = load_examples(path)
    assert [e.inputs["question"] for e in examples] == ["Add 1, 2", "multi\nline", "plain"]
    assert [e.target for e in examples] == ["3", "4", "5"]
    assert [e.difficulty for e in examples] == ["easy", None, "hard"]
    assert examples[0].id == "data:2"
    assert examples[2].id == "data:6"
    assert len({e.id for e in examples}) == 3


def test_format_argument_overrides_suffix(tmp_path):
    path = _write(tmp_path, "data.txt", "q,answer\na,1\n")
    assert load_examples(path, format="csv")[0].target == "1"
    with pytest.raises(DataError, match=r"data\.txt.*suffix"):
        load_examples(path)
    with pytest.raises(ConfigError, match="(?i)did you mean 'csv'"):
        load_examples(path, format="cvs")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- errors


def test_missing_file_names_path_and_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _error("nowhere/data.jsonl")
    assert text.startswith("nowhere/data.jsonl:")
    assert "not found" in text
    assert os.getcwd() in text  # relative to what


def test_empty_file(tmp_path):
    for name, content in (("e.jsonl", ""), ("blank.jsonl", "\n  \n"), ("e.csv", ""), ("h.csv", "q,answer\n")):
        text = _error(_write(tmp_path, name, content))
        assert name in text and "no records" in text


def test_malformed_json_line(tmp_path):
    path = _write(tmp_path, "m.jsonl", '{"q": "a", "answer": "1"}\n{"q": "b", "answer": }\n')
    text = _error(path)
    assert f"{path}:2:" in text
    assert "not valid JSON" in text and "Expecting value" in text


def test_non_object_line(tmp_path):
    path = _write(tmp_path, "n.jsonl", '{"q": "a", "answer": "1"}\n\n[1, 2]\n')
    text = _error(path)
    assert f"{path}:3:" in text and "JSON object" in text and "list" in text


def test_missing_target_lists_fields_present(tmp_path):
    path = _jsonl(tmp_path, "t.jsonl", [{"q": "a", "answer": "1"}, {"q": "b", "anwser": "2"}])
    text = _error(path)
    assert f"{path}:2:" in text
    assert "target field 'answer'" in text
    assert "['anwser', 'q']" in text
    assert "did you mean 'anwser'" in text.lower()


def test_missing_input_field(tmp_path):
    path = _jsonl(tmp_path, "i.jsonl", [{"q": "a", "ctx": "c", "answer": "1"}, {"q": "b", "answer": "2"}])
    text = _error(path)
    assert f"{path}:2:" in text and "input field 'ctx'" in text and "['answer', 'q']" in text
    text = _error(path, input_fields=["question"])
    assert f"{path}:1:" in text and "input field 'question'" in text


def test_missing_id_field(tmp_path):
    path = _jsonl(tmp_path, "id.jsonl", [{"q": "a", "answer": "1", "uid": "x"}, {"q": "b", "answer": "2"}])
    text = _error(path, id_field="uid", input_fields=["q"])
    assert f"{path}:2:" in text and "id field 'uid'" in text


def test_duplicate_ids(tmp_path):
    path = _jsonl(
        tmp_path,
        "dup.jsonl",
        [{"id": 1, "q": "a", "answer": "1"}, {"id": 2, "q": "b", "answer": "2"}, {"id": 1, "q": "c", "answer": "3"}],
    )
    text = _error(path, id_field="id")
    assert f"{path}:3:" in text and "duplicate id" in text and f"{path}:1" in text and "'1'" in text


@pytest.mark.parametrize("bad", [{"a": 1}, [1, 2], None])
def test_non_scalar_or_null_values(tmp_path, bad):
    path = _jsonl(tmp_path, "s.jsonl", [{"q": "a", "answer": "1"}, {"q": bad, "answer": "2"}])
    text = _error(path)
    assert f"{path}:2:" in text and "'q'" in text


def test_non_scalar_target(tmp_path):
    path = _jsonl(tmp_path, "st.jsonl", [{"q": "a", "answer": ["1", "2"]}])
    text = _error(path)
    assert f"{path}:1:" in text and "'answer'" in text and "array" in text


def test_empty_target(tmp_path):
    path = _write(tmp_path, "et.csv", "q,answer\na,1\nb,\n")
    text = _error(path)
    assert f"{path}:3:" in text and "empty" in text


def test_csv_row_errors(tmp_path):
    long_row = _write(tmp_path, "long.csv", "q,answer\na,1\nb,2,extra\n")
    text = _error(long_row)
    assert f"{long_row}:3:" in text and "3 cells" in text
    short_row = _write(tmp_path, "short.csv", "q,ctx,answer\na,b,1\nb\n")
    text = _error(short_row)
    assert f"{short_row}:3:" in text and "1 cells" in text
    dup = _write(tmp_path, "dup.csv", "q,q,answer\na,b,1\n")
    assert f"{dup}:1:" in _error(dup)
    missing_col = _write(tmp_path, "mc.csv", "question,label\na,1\n")
    text = _error(missing_col)
    assert f"{missing_col}:2:" in text and "'answer'" in text and "['label', 'question']" in text


def test_invalid_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"q": "a", "answer": "1"}\n{"q": "caf\xe9", "answer": "2"}\n')
    text = _error(path)
    assert f"{path}:2:" in text and "UTF-8" in text


def test_argument_errors(tmp_path):
    path = _jsonl(tmp_path, "a.jsonl", [{"q": "a", "answer": "1"}])
    with pytest.raises(ConfigError, match="input_fields"):
        load_examples(path, input_fields=[])
    with pytest.raises(ConfigError, match="input_fields"):
        load_examples(path, input_fields="q")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="target field cannot also be an input"):
        load_examples(path, input_fields=["q", "answer"])


# -------------------------------------------------------------------------- dataset tasks


def test_make_dataset_task_with_demos(tmp_path, caplog):
    data = _jsonl(tmp_path, "eval.jsonl", [{"q": "2+2", "answer": 4}, {"q": "3+3", "answer": 6}])
    demos = _jsonl(
        tmp_path,
        "train.jsonl",
        [{"q": "1+1", "answer": 2, "note": "x"}, {"q": "2+2", "answer": 4}],  # second leaks
    )
    with caplog.at_level(logging.WARNING, logger="jointopt.tasks.loaders"):
        task = make_dataset_task(
            data,
            name="adds",
            description="Add two numbers.",
            extractor=AnswerExtractor("last_number"),
            matcher=AnswerMatcher("numeric"),
            demos_path=demos,
        )
    assert task.fields == ("q",)
    assert [e.id for e in task.examples] == ["eval:1", "eval:2"]
    assert [d.inputs for d in task.demos] == [{"q": "1+1"}]
    assert "dropped 1 demo" in caplog.text
    assert task.is_correct(task.examples[0], task.extract("It is 4."))
    assert task.verifier is None


def test_make_dataset_task_without_demos_and_demo_errors(tmp_path):
    data = _jsonl(tmp_path, "eval.jsonl", [{"q": "a", "answer": "x"}])
    task = make_dataset_task(
        data,
        name="t",
        description="d",
        extractor=AnswerExtractor("first_line"),
        matcher=AnswerMatcher("normalized"),
    )
    assert task.demos == ()
    demos = _jsonl(tmp_path, "demos.jsonl", [{"question": "b", "answer": "y"}])
    with pytest.raises(DataError) as err:
        make_dataset_task(
            data,
            name="t",
            description="d",
            extractor=AnswerExtractor("first_line"),
            matcher=AnswerMatcher("normalized"),
            demos_path=demos,
        )
    assert f"{demos}:1:" in str(err.value) and "input field 'q'" in str(err.value)
