"""The pyfunc classifier served by `mlflow models serve` answers like `pipeline predict`.

The model is logged to a real tracking server, the local model directory is deleted, and the
scoring server fetches `runs:/<id>/pyfunc` through the tracking server: what it serves must
carry its Keras model, tokenizer and code inside.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tasks.classification.serving import ARTIFACT_PATH, to_texts
from tests.mlflow_server import MlflowServer, ModelServer
from tests.pipeline_runs import train_on, write_tiny_params

pytest_plugins = ["tests.conftest_server"]
pytestmark = pytest.mark.slow

TEXTS = ["great film, moving and funny", ""]  # an empty review gets the no-evidence answer


class LoggedModel(NamedTuple):
    """A pyfunc model logged to a server, and what the local predictor says for TEXTS."""

    server: MlflowServer
    uri: str
    expected: list[tuple[str, float]]


@pytest.fixture(scope="module")
def logged_model(
    module_server: MlflowServer,
    tiny_data,
    default_params: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> LoggedModel:
    """Train a tiny classifier through the CLI (it logs the pyfunc model), delete the local copy."""
    from pipeline.tasks.classification.predict import load_predictor, predict_texts

    _, tok = tiny_data("classification")
    work = tmp_path_factory.mktemp("serving")
    run = train_on(module_server, tok, work, write_tiny_params(work / "p.yaml", default_params))
    expected = predict_texts(*load_predictor(work / "model"), TEXTS)
    shutil.rmtree(work / "model")  # the served model may only use what travelled inside it
    return LoggedModel(module_server, f"runs:/{run.info.run_id}/{ARTIFACT_PATH}", expected)


def invoke(url: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a scoring request to `/invocations`; return its predictions."""
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())["predictions"]


def test_inputs_of_every_usual_shape_become_texts() -> None:
    frame = pd.DataFrame({"id": [7, 8], "text": ["good", None]})
    assert to_texts(frame) == ["good", ""]  # the `text` column, None as no text
    assert to_texts(pd.DataFrame({0: ["a", float("nan")]})) == ["a", ""]
    assert to_texts(pd.Series(["x"])) == ["x"]
    assert to_texts(["x", "y"]) == ["x", "y"]
    assert to_texts("one review") == ["one review"]


def test_logged_model_keeps_its_parts_and_the_run_status(logged_model: LoggedModel) -> None:
    client = MlflowClient(logged_model.server.uri)
    run_id = logged_model.uri.split("/")[1]
    (model_id,) = [o.model_id for o in client.get_run(run_id).outputs.model_outputs]
    files = {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert files == {"artifacts/model.keras", "artifacts/spm.model"}
    assert client.list_logged_model_artifacts(model_id, "code/pipeline/tasks/classification")
    assert client.get_run(run_id).info.status == "FINISHED"  # logging did not reopen the run
    assert not client.search_registered_models()  # a shared server registers only when asked


def test_served_model_matches_local_predictions(logged_model: LoggedModel, tmp_path: Path) -> None:
    with ModelServer(logged_model.uri, tmp_path, logged_model.server.uri) as served:
        records = invoke(served.url, {"dataframe_records": [{"text": t} for t in TEXTS]})
        from_list = invoke(served.url, {"inputs": TEXTS})
    assert records == from_list
    for row, (label, probability) in zip(records, logged_model.expected, strict=True):
        assert 0.0 <= row["probability"] <= 1.0
        assert row["probability"] == pytest.approx(probability, abs=1e-6)
        assert row["label"] == label
