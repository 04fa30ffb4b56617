"""Serve the sentiment classifier with MLflow: raw text in, P(positive) and label out.

The pyfunc model carries what it needs inside: the `.keras` model and the SentencePiece model as
artifacts and the code it imports (`code/pipeline`: the shared core and this task), so
`mlflow models serve --env-manager local` or `mlflow.pyfunc.load_model` reproduce `predict`
exactly. It is the classification run's logged model (`runs:/<id>/pyfunc`, registered as
`rnn-classification`), written by `pipeline.core.registry`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from pipeline.core.corpus import MODEL_FILE, TOKENIZER
from pipeline.core.registry import ModelFormat, log_model, pinned_requirements
from pipeline.tasks.classification.predict import predict_texts

if TYPE_CHECKING:
    from pipeline.core.tracking import StageRun

ARTIFACT_PATH = "pyfunc"  # the logged model's name: runs:/<run_id>/pyfunc
TEXT_COLUMN = "text"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),  # unnamed: a list of strings works too
    outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability")]),
)
# What the model imports at load time; pinned to this environment's versions.
REQUIREMENTS = (
    "mlflow",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "sentencepiece",
    "numpy",
    "pandas",
    "pydantic",
    "pyyaml",
)
# "Models from code": MLflow runs this file at load time instead of unpickling an object.
MODEL_CODE = """\
from mlflow.models import set_model

from pipeline.tasks.classification.serving import SentimentClassifier

set_model(SentimentClassifier())
"""
# The parts of the package the model imports (`tests/test_serving.py` serves it from these).
SERVED_CODE = ("__init__.py", "params.py", "core", "tasks/__init__.py", "tasks/classification")


class SentimentClassifier(mlflow.pyfunc.PythonModel):
    """Raw review texts -> DataFrame of `label` and `probability` (P(positive))."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the Keras model and the tokenizer from the model's own artifacts."""
        import keras
        import sentencepiece as spm

        self.model = keras.saving.load_model(context.artifacts["keras_model"])
        self.sp = spm.SentencePieceProcessor(model_file=context.artifacts["tokenizer"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Classify texts with the same preprocessing as `python -m pipeline predict`."""
        rows = predict_texts(self.model, self.sp, to_texts(model_input))
        return pd.DataFrame(rows, columns=["label", "probability"])


def to_texts(model_input: Any) -> list[str]:
    """Texts from a DataFrame (column `text`, else its first), a Series, a list or a string."""
    if isinstance(model_input, pd.DataFrame):
        column = TEXT_COLUMN if TEXT_COLUMN in model_input else model_input.columns[0]
        values: Iterable[Any] = model_input[column]
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = model_input
    return ["" if v is None or v != v else str(v) for v in values]  # None/NaN -> no text


def copy_served_code(package: Path, dest: Path) -> Path:
    """Copy the parts of `package` the model imports into `dest/<package name>`."""
    code = dest / package.name
    for part in SERVED_CODE:
        source, target = package / part, code / part
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return code


def save_pyfunc_model(model_dir: Path, path: Path, mlflow_model: Model | None = None) -> Path:
    """Write the pyfunc model (artifacts, code, signature, example) to a new directory."""
    package = Path(__file__).resolve().parents[2]  # the `pipeline` package
    with tempfile.TemporaryDirectory() as tmp:
        code = copy_served_code(package, Path(tmp))
        model_code = Path(tmp) / "sentiment_model.py"
        model_code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(model_code),
            artifacts={
                "keras_model": str(model_dir / MODEL_FILE),
                "tokenizer": str(model_dir / TOKENIZER),
            },
            code_paths=[str(code)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({TEXT_COLUMN: ["a wonderful, moving film", ""]}),
            pip_requirements=pinned_requirements(REQUIREMENTS),
            mlflow_model=mlflow_model,
        )
    return path


def pyfunc_format(model_dir: Path) -> ModelFormat:
    """The servable model of the classifier saved in `model_dir`."""

    def save(path: Path, mlflow_model: Model) -> None:
        save_pyfunc_model(model_dir, path, mlflow_model)

    return ModelFormat(ARTIFACT_PATH, save)


def log_pyfunc_model(run: StageRun, model_dir: Path) -> str:
    """Log the pyfunc model as a model of `run`; return its `runs:/` URI."""
    log_model(run, pyfunc_format(model_dir))
    return f"runs:/{run.run_id}/{ARTIFACT_PATH}"


def model_files(local: Path) -> Path:
    """The directory holding `model.keras` and the tokenizer in a downloaded model: the pyfunc's
    artifacts, or a plain model directory (`runs:/<id>/model`) itself."""
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        return local
    artifacts = Model.load(mlmodel).flavors["python_function"]["artifacts"]
    return (local / artifacts["keras_model"]["path"]).parent
