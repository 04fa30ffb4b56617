"""`predict` and `translate` take many inputs at once (arguments, --file, stdin) and print TSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.params import load_params
from tests.conftest import ROOT, new_store, set_key

REVIEWS = ["great film, moving and funny", "a dull, tired plot", "tab\tinside"]
SENTENCES = ["Er ist leer ausgegangen.", "Das Haus ist alt.", "Ich bin müde."]


def run_cli(args: list[str], stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, args, input=stdin)


def three_ways(command: list[str], texts: list[str], tmp_path: Path) -> list[Any]:
    """The same inputs as arguments; as an argument, stdin (`-`) and a --file, in that order;
    all from stdin."""
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"\n{texts[2]}\n   \n", encoding="utf-8")  # blank lines are skipped
    return [
        run_cli([*command, *texts]),
        run_cli([*command, "--file", str(listing), texts[0], "-"], stdin=texts[1] + "\n"),
        run_cli([*command, "-"], stdin="\n".join(texts) + "\n"),
    ]


def table(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines()]


@pytest.mark.parametrize(
    "command", [["predict", "classification"], ["translate"]], ids=["predict", "translate"]
)
def test_inputs_are_required_and_files_must_be_readable(
    command: list[str], tmp_path: Path, write_params
) -> None:
    params = ["--model", str(tmp_path / "none"), "--params", str(write_params())]
    nothing = run_cli([*command, *params])
    assert nothing.exit_code == 2 and "no input: give texts as arguments" in nothing.output
    blank = run_cli([*command, "-", *params], stdin="\n  \n")
    assert blank.exit_code == 2 and "no input" in blank.output
    missing = run_cli([*command, "--file", str(tmp_path / "gone.txt"), *params])
    assert missing.exit_code == 2 and f"cannot read {tmp_path / 'gone.txt'}" in missing.output
    (tmp_path / "latin1.txt").write_bytes("Straße\n".encode("latin-1"))
    latin = run_cli([*command, "--file", str(tmp_path / "latin1.txt"), *params])
    assert latin.exit_code == 2 and "cannot read" in latin.output
    # Read inputs get as far as the model: the missing model is the next error.
    (tmp_path / "ok.txt").write_text("gut\n", encoding="utf-8")
    read = run_cli([*command, "--file", str(tmp_path / "ok.txt"), *params])
    assert read.exit_code == 1 and "not found" in read.output


@pytest.fixture(scope="module")
def classifier(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, params) of a tiny classifier trained through the CLI."""
    from tests.pipeline_runs import write_tiny_params
    from tests.test_train import train_args

    _, tok = tiny_data("classification")
    work = tmp_path_factory.mktemp("classifier")
    params = write_tiny_params(work / "params.yaml", yaml_defaults())
    trained_through_cli(train_args(tok, params, work), work)
    return work / "model", params


def yaml_defaults() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def trained_through_cli(args: list[str], work: Path) -> None:
    """Run `train ...` in `work` with its own MLflow store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", new_store(work / "mlflow.db", work))
        patch.chdir(work)
        trained = run_cli(args)
    assert trained.exit_code == 0, trained.output


@pytest.mark.slow
def test_predict_prints_each_label_with_its_own_probability(
    classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    from pipeline.tasks.classification.predict import load_predictor, predict_texts

    model, params = classifier
    command = ["predict", "classification", "--model", str(model), "--params", str(params)]
    outputs = three_ways(command, REVIEWS, tmp_path)
    for result in outputs:
        assert result.exit_code == 0, result.output
    header, *rows = table(outputs[0].stdout)
    assert header == ["text", "label", "p_label"]
    assert [row[0] for row in rows] == [*REVIEWS[:2], "tab inside"]  # TSV-safe
    expected = predict_texts(*load_predictor(model), REVIEWS)
    for (_, label, shown), (want, p_positive) in zip(rows, expected, strict=True):
        assert label == want
        assert float(shown) == pytest.approx(max(p_positive, 1 - p_positive), abs=1e-4)
        assert float(shown) >= 0.5  # the chosen label's probability, never the other one's
    assert table(outputs[1].stdout) == table(outputs[0].stdout)
    assert table(outputs[2].stdout) == table(outputs[0].stdout)


@pytest.fixture(scope="module")
def translator(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, params) of a tiny translator trained through the CLI."""
    from tests.test_translation import TINY

    _, tok = tiny_data("translation")
    work = tmp_path_factory.mktemp("translator")
    tree = yaml_defaults()
    for key, value in {**TINY, "epochs": 2}.items():
        set_key(tree, f"train.translation.{key}", value)
    set_key(tree, "evaluate.translation.decode_max_len", 12)
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    args = ["train", "translation", "--data", str(tok), "--out", str(work / "model")]
    args += ["--plots", str(work / "plots"), "--metrics", str(work / "train.json")]
    args += ["--checkpoints", str(work / "ckpt"), "--params", str(params)]
    trained_through_cli(args, work)
    return work / "model", params


@pytest.mark.slow
def test_translate_prints_each_source_beside_its_translation(
    translator: tuple[Path, Path], tmp_path: Path
) -> None:
    from pipeline.tasks.translation.translate import translate

    model, params = translator
    cfg = load_params(params).evaluate.translation
    command = ["translate", "--model", str(model), "--params", str(params), "--beam-size", "2"]
    outputs = three_ways(command, SENTENCES, tmp_path)
    for result in outputs:
        assert result.exit_code == 0, result.output
    header, *rows = table(outputs[0].stdout)
    assert header == ["source", "translation"]
    decoding = cfg.decode_max_len, cfg.length_penalty, cfg.eos_penalty, cfg.coverage_penalty
    expected = translate(model, SENTENCES, 2, *decoding, cfg.no_repeat_ngram)
    assert rows == [[source, text] for source, text in zip(SENTENCES, expected, strict=True)]
    assert table(outputs[1].stdout) == table(outputs[0].stdout)
    assert table(outputs[2].stdout) == table(outputs[0].stdout)


@pytest.mark.slow
def test_translate_decodes_with_the_params_eos_and_coverage_penalties(
    translator: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate.translation's eos_penalty, coverage_penalty and no_repeat_ngram reach the decoder
    the command runs."""
    import pipeline.tasks.translation.translate as translate_module

    model, params = translator
    tree = yaml.safe_load(params.read_text())
    set_key(tree, "evaluate.translation.eos_penalty", 7.5)
    set_key(tree, "evaluate.translation.coverage_penalty", 0.25)
    set_key(tree, "evaluate.translation.no_repeat_ngram", 3)
    penalised = tmp_path / "params.yaml"
    penalised.write_text(yaml.safe_dump(tree, sort_keys=False))
    real, penalties = translate_module.decode_sequences, []

    def recording(*args: Any) -> Any:
        penalties.append(args[-3:])  # (model, sources, beam, max_len, alpha, batch, eos, beta, n)
        return real(*args)

    monkeypatch.setattr(translate_module, "decode_sequences", recording)
    command = ["translate", "--model", str(model), "--params", str(penalised), "--beam-size", "2"]
    result = run_cli([*command, *SENTENCES])
    assert result.exit_code == 0, result.output
    assert penalties == [(7.5, 0.25, 3)]
