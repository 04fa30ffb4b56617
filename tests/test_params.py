"""params.yaml validation: every error kind exits 2 with a line naming the dotted key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.params import ParamsError, Task, load_params, yaml_value

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.train.classification.cell in {"simple_rnn", "lstm", "gru"}
    assert params.train.classification.register_model is None  # `register: null`: follow the store
    assert params.download.section(Task.translation).source.kind == "debian"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "train.classification.cell",
            "lstmm",
            "train.classification.cell: expected one of simple_rnn, lstm, gru, got 'lstmm'",
        ),
        (
            "train.classification.units",
            0,
            "train.classification.units: expected a value >= 1, got 0",
        ),
        (
            "train.language_model.dropout",
            1.5,
            "train.language_model.dropout: expected a value < 1.0, got 1.5",
        ),
        (
            "tokenize.translation.vocab_size",
            "many",
            "tokenize.translation.vocab_size: expected a valid integer",
        ),
        (
            "train.translation.bidirectional",
            "sometimes",
            "train.translation.bidirectional: expected a valid boolean",
        ),
        ("train.classification.unitz", 3, "train.classification.unitz: unknown key"),
        (
            "train.classification.pooling",
            "attention",
            "train.classification.pooling: expected one of last, max_mean, got 'attention'",
        ),
        (
            "train.language_model.embedding_dropout",
            1.0,
            "train.language_model.embedding_dropout: expected a value < 1.0, got 1.0",
        ),
        # Values that used to slip through: coerced strings/booleans, huge seeds, inf, absurd rates.
        ("train.classification.units", "8", "train.classification.units: expected a valid integer"),
        (
            "train.classification.epochs",
            True,
            "train.classification.epochs: expected a valid integer",
        ),
        (
            "train.classification.bidirectional",
            "yes",
            "train.classification.bidirectional: expected a valid boolean",
        ),
        (
            "train.classification.seed",
            2**40,
            "train.classification.seed: expected a value <= 4294967295",
        ),
        (
            "train.classification.learning_rate",
            float("inf"),
            "learning_rate: expected a finite number",
        ),
        (
            "tokenize.classification.vocab_size",
            16,
            "tokenize.classification.vocab_size: expected a value >= 32",
        ),
        (
            "download.classification.source.sha256",
            "abc",
            "download.classification.source.sha256: expected a string matching",
        ),
        (
            "download.translation.min_words",
            30,
            "download.translation: min_words (30) must be <= max_words (12)",
        ),
        (
            "train.speech.register",
            "maybe",
            "train.speech.register: expected a valid boolean, got 'maybe'",
        ),
        (
            "train.language_model.jit_compile",
            "always",
            "train.language_model.jit_compile: expected one of True, False, auto, got 'always'",
        ),
        (
            "evaluate.language_model.stride",
            65,
            "evaluate.language_model.stride: expected at most train.language_model.max_len "
            "(64), got 65",
        ),
        (
            "evaluate.language_model.stride",
            0,
            "evaluate.language_model.stride: expected a value >= 1",
        ),
    ],
)
def test_bad_value_exits_2_naming_the_key(write_params, key, value, expected, tmp_path) -> None:
    path = write_params({key: value})
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["download", "classification", "--out", str(out), "--params", str(path)]
    )
    assert result.exit_code == 2
    assert expected in result.output
    assert not out.exists()


def test_exponent_floats_read_as_numbers_as_in_yaml_1_2(tmp_path: Path) -> None:
    """`learning_rate: 2e-3` is a number to DVC (YAML 1.2) and to ML practice; PyYAML's YAML 1.1
    would read it as a string and fail validation."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    edited = text.replace("    learning_rate: 0.002\n", "    learning_rate: 2e-3\n", 1)
    edited = re.sub(r"(?m)^    lexicon_epsilon: .*$", "    lexicon_epsilon: 1.0E4", edited, count=1)
    assert edited.count("2e-3") == 1 and edited.count("1.0E4") == 1
    path = tmp_path / "params.yaml"
    path.write_text(edited, encoding="utf-8")
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    # 1.0E4 is a number too: out of range, not "not a number".
    assert caught.value.problems == [
        "train.translation.lexicon_epsilon: expected a value <= 1.0, got 10000.0"
    ]
    path.write_text(edited.replace("1.0E4", "1e-4"), encoding="utf-8")
    params = load_params(path)
    assert params.train.classification.learning_rate == 0.002
    assert params.train.translation.lexicon_epsilon == 1e-4
    assert yaml_value("3e-5") == 3e-5 and yaml_value("v1e3") == "v1e3"


def test_several_problems_are_all_reported(write_params) -> None:
    path = write_params({"train.classification.cell": "x", "train.translation.units": -5})
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert len(caught.value.problems) == 2


def test_missing_section_and_malformed_yaml(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    missing.write_text("download: {}\n")
    with pytest.raises(ParamsError) as caught:
        load_params(missing)
    assert "tokenize: required key is missing" in caught.value.problems
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  classification: [unclosed\n")
    result = runner.invoke(
        app,
        [
            "tokenize",
            "classification",
            "--data",
            "d",
            "--out",
            "o",
            "--metrics",
            "m.json",
            "--params",
            str(broken),
        ],
    )
    assert result.exit_code == 2
    assert "malformed YAML at line" in result.output


def test_unknown_task_is_a_usage_error(write_params) -> None:
    result = runner.invoke(
        app, ["download", "sentiment", "--out", "x", "--params", str(write_params())]
    )
    assert result.exit_code == 2
    assert "classification" in result.output


def test_missing_params_file(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["download", "classification", "--out", "x", "--params", str(tmp_path / "nope.yaml")]
    )
    assert result.exit_code == 2
    assert "cannot read params file" in result.output


def test_bad_params_open_no_mlflow_run(write_params, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # not created
    monkeypatch.chdir(tmp_path)
    path = write_params({"train.classification.cell": "transformer"})
    result = runner.invoke(
        app,
        [
            "train",
            "classification",
            "--data",
            "d",
            "--out",
            "o",
            "--plots",
            "p",
            "--metrics",
            "m.json",
            "--params",
            str(path),
        ],
    )
    assert result.exit_code == 2
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "o").exists()


def test_bidirectional_language_model_is_rejected(write_params) -> None:
    with pytest.raises(ParamsError) as caught:
        load_params(write_params({"train.language_model.bidirectional": True}))
    assert caught.value.problems == [
        "train.language_model: bidirectional must be false: a language model may not see the future"
    ]


def test_validate_checks_every_section_before_dvc_runs_anything(write_params) -> None:
    """`make repro` runs `validate` first: a typo stops it before DVC deletes any output."""
    assert runner.invoke(app, ["validate", "--params", str(write_params({}))]).exit_code == 0
    result = runner.invoke(
        app, ["validate", "--params", str(write_params({"train.classification.cell": "lstmm"}))]
    )
    assert result.exit_code == 2
    assert "train.classification.cell: expected one of simple_rnn, lstm, gru, got 'lstmm'" in (
        result.output
    )


def test_a_duplicated_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("train:\n", "train:\n  classification: {}\n", 1), encoding="utf-8")
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert "duplicate key 'classification'" in str(caught.value) and "line " in str(caught.value)


def test_a_params_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["validate", "--params", str(path)])
    assert result.exit_code == 2
    assert f"{path}: not UTF-8 text" in result.output
