"""The trained model as an MLflow model: logged to its run, registered, loaded back by URI."""

from __future__ import annotations

import keras
import mlflow.pyfunc
import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.core.registry import (
    keras_format,
    keras_signature,
    log_model,
    register_model,
    registered_name,
    registers_by_default,
)
from pipeline.core.tracking import stage_run
from pipeline.params import SpeechTrain, TranslationTrain
from pipeline.tasks.speech.model import build_recognizer
from pipeline.tasks.translation.model import build_seq2seq


def tiny_recognizer() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_recognizer(SpeechTrain(units=4, num_layers=1), num_features=3)


def test_keras_model_is_logged_to_its_run_and_each_training_adds_a_version(mlflow_uri) -> None:
    model = tiny_recognizer()
    runs = []
    for _ in range(2):
        with stage_run("speech", "train", {"units": 4}) as run:
            model_id = log_model(run, keras_format(model))
            version = register_model(run, model_id, registered_name("speech"))
        runs.append((run.run_id, model_id, version))
    assert [version for *_, version in runs] == ["1", "2"]
    client = MlflowClient(mlflow_uri)
    run_id, model_id, _ = runs[-1]
    logged = client.get_logged_model(model_id)
    assert (logged.name, logged.source_run_id, logged.status) == ("keras", run_id, "READY")
    assert logged.params == {"units": "4"}
    got = client.get_run(run_id)
    assert [o.model_id for o in got.outputs.model_outputs] == [model_id]
    assert got.info.status == "FINISHED"  # logging the model did not end the run early
    frames = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    expected = model.predict_on_batch(frames)
    for uri in ("models:/rnn-speech/latest", f"runs:/{run_id}/keras", f"models:/{model_id}"):
        loaded = mlflow.pyfunc.load_model(uri)
        assert loaded.metadata.model_id == model_id
        np.testing.assert_allclose(loaded.predict(frames), expected, rtol=1e-5)


def test_signatures_name_every_input_and_output() -> None:
    cfg = TranslationTrain(units=4, embedding_dim=4, num_layers=1)
    signature = keras_signature(build_seq2seq(cfg, src_vocab=20, tgt_vocab=30).model)
    inputs = {spec.name: (spec.type, spec.shape) for spec in signature.inputs.inputs}
    assert len(inputs) == 2 and all(v == (np.dtype("int32"), (-1, -1)) for v in inputs.values())
    (output,) = signature.outputs.inputs
    assert output.shape == (-1, -1, 30) and not output.name.startswith("keras_tensor")
    (frames,) = keras_signature(tiny_recognizer()).inputs.inputs
    assert (frames.name, frames.type, frames.shape) == ("frames", np.dtype("float32"), (-1, -1, 3))


def test_only_a_store_on_this_machine_registers_by_default(tmp_path) -> None:
    assert registers_by_default(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert not registers_by_default(MlflowClient("http://127.0.0.1:5000"))
