"""Serve the sentiment classifier with MLflow: raw text in, P(positive) and label out.

The pyfunc model carries what it needs inside: the `.keras` model and the SentencePiece model as
artifacts and this package's code (`code/pipeline`), so `mlflow models serve --env-manager local`
or `mlflow.pyfunc.load_model` reproduce `predict` exactly. The model is saved to a local
directory and uploaded with the client (`runs:/<id>/pyfunc`): no fluent-API active run, no
global state, and the stage's run keeps its status.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from pipeline.core.corpus import MODEL_FILE, TOKENIZER
from pipeline.tasks.classification.predict import predict_texts

ARTIFACT_PATH = "pyfunc"
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


class RunHandle(Protocol):
    """What `log_pyfunc_model` needs of a run (`pipeline.core.tracking.StageRun` fits)."""

    client: MlflowClient
    run_id: str


class SentimentClassifier(mlflow.pyfunc.PythonModel):
    """Raw review texts -> DataFrame of `label` and `probability` (P(positive))."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the Keras model and the tokenizer from the model's own artifacts."""
        import keras
        import sentencepiece as spm

        self.model = keras.saving.load_model(context.artifacts["keras_model"])
        self.sp = spm.SentencePieceProcessor(model_file=context.artifacts["tokenizer"])
        self.max_len = int(context.model_config["max_len"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Classify texts with the same preprocessing as `python -m pipeline predict`."""
        rows = predict_texts(self.model, self.sp, to_texts(model_input), self.max_len)
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


def pinned_requirements() -> list[str]:
    """`name==version` for the installed packages the model needs (no inference subprocess)."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pinned


def save_pyfunc_model(model_dir: Path, max_len: int, path: Path) -> Path:
    """Write the pyfunc model (artifacts, code, signature, example) to a new directory."""
    package = Path(__file__).resolve().parents[2]  # the whole `pipeline` package
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / package.name
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
            model_config={"max_len": max_len},
            signature=SIGNATURE,
            input_example=pd.DataFrame({TEXT_COLUMN: ["a wonderful, moving film", ""]}),
            pip_requirements=pinned_requirements(),
        )
    return path


def log_pyfunc_model(
    run: RunHandle, model_dir: Path, max_len: int, artifact_path: str = ARTIFACT_PATH
) -> str:
    """Save the pyfunc model and upload it to the run; return its `runs:/` URI."""
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pyfunc_model(model_dir, max_len, Path(tmp) / artifact_path)
        run.client.log_artifacts(run.run_id, str(local), artifact_path)
    return f"runs:/{run.run_id}/{artifact_path}"
