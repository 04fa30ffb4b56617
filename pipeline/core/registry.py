"""The trained model as an MLflow model: a logged model of its training run, registered by task.

MLflow 3 keeps a model beside the run that produced it (the run's "Logged models"), with its own
artifacts, its signature and a `models:/<model_id>` URI; `runs:/<run_id>/<name>` finds it by name,
and the registry's `models:/rnn-<task>/<version>` (or `/latest`) by task. The model is saved to a
local directory and uploaded with the stage's client like every other artifact: no fluent-API
active run, so the stage's run keeps its status.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

if TYPE_CHECKING:
    import keras

    from pipeline.core.tracking import StageRun

KERAS_MODEL = "keras"  # the name of a run's Keras-flavour model: runs:/<run_id>/keras
REGISTERED_PREFIX = "rnn-"  # registered as rnn-<task>
# What loading a Keras-flavour model imports; pinned to this environment's versions.
KERAS_REQUIREMENTS = ("mlflow", "tensorflow-cpu", "tensorflow", "keras", "numpy")
MODEL_ID_TAG = "pipeline.model_id"
VERSION_TAG = "pipeline.model_version"
LOCAL_STORES = ("sqlite:", "file:", "/")  # tracking URIs of a store on this machine


@dataclass(frozen=True)
class ModelFormat:
    """How to write one MLflow model: its name in the run and a saver.

    `save(path, mlflow_model)` writes a new MLflow model directory at `path`, adding its flavour
    to `mlflow_model` (which already carries the logged model's id and run).
    """

    name: str
    save: Callable[[Path, Model], None]


def registered_name(task: str) -> str:
    """The registry name of a task's models."""
    return f"{REGISTERED_PREFIX}{task}"


def registers_by_default(client: MlflowClient) -> bool:
    """Register on a store of this machine; a shared server's registry is left to the team."""
    return client.tracking_uri.startswith(LOCAL_STORES)


def pinned_requirements(names: Iterable[str]) -> list[str]:
    """`name==version` for the installed packages a model needs (no inference subprocess)."""
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pinned


def tensor_schema(tensors: Iterable[keras.KerasTensor], names: Iterable[str]) -> Schema:
    """A tensor schema of Keras inputs or outputs: any batch size, unknown lengths as -1."""
    return Schema(
        [
            TensorSpec(
                np.dtype(t.dtype), (-1, *(-1 if d is None else d for d in t.shape[1:])), name
            )
            for t, name in zip(tensors, names, strict=True)
        ]
    )


def keras_signature(model: keras.Model) -> ModelSignature:
    """Tensors in and out, inputs named as their `keras.Input`, outputs as their layers."""
    return ModelSignature(
        tensor_schema(model.inputs, [t.name for t in model.inputs]),
        tensor_schema(model.outputs, model.output_names),
    )


def keras_format(model: keras.Model) -> ModelFormat:
    """The Keras flavour of `model`, with a tensor signature of its inputs and outputs."""
    import mlflow.keras

    signature = keras_signature(model)

    def save(path: Path, mlflow_model: Model) -> None:
        mlflow.keras.save_model(
            model,
            str(path),
            mlflow_model=mlflow_model,
            signature=signature,
            pip_requirements=pinned_requirements(KERAS_REQUIREMENTS),
        )

    return ModelFormat(KERAS_MODEL, save)


def log_model(run: StageRun, model_format: ModelFormat) -> str:
    """Log a model of `run` (listed under its logged models); return the model id."""
    client = run.client
    params = client.get_run(run.run_id).data.params  # the model's page shows its training params
    model = client.create_logged_model(
        run.experiment_id, name=model_format.name, source_run_id=run.run_id, params=params
    )
    try:
        client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / model_format.name
            mlflow_model = Model(
                artifact_path=model.artifact_location,
                model_uuid=model.model_id,
                run_id=run.run_id,
                model_id=model.model_id,
            )
            model_format.save(local, mlflow_model)
            client.log_model_artifacts(model.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    run.models.append(model.model_id)
    run.set_tags({MODEL_ID_TAG: model.model_id})
    return model.model_id


def register_model(run: StageRun, model_id: str, name: str) -> str:
    """Add the logged model as a new version of registered model `name`; return the version."""
    client = run.client
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run.run_id, model_id=model_id
    ).version
    run.set_tags({VERSION_TAG: f"{name}/{version}"})
    return str(version)
