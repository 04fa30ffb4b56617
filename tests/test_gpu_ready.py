"""Every task's default recurrent layers qualify for Keras's cuDNN kernels on a GPU.

On a GPU (`make setup GPU=1`) Keras runs LSTM and GRU layers on cuDNN only when their settings
allow it (tanh/sigmoid activations, biases, no unrolling, GRU with `reset_after`, no recurrent
dropout) and their masks are right-padded (checked per batch at run time: the pipeline pads at
the end). This checks the settings on the CPU, where the GPU path cannot run.
"""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

# Keras's own predicates for its cuDNN path (private: a Keras upgrade may move them).
from keras.src.backend.tensorflow.rnn import (
    _do_gru_arguments_support_cudnn,
    _do_lstm_arguments_support_cudnn,
)

from pipeline.params import Task, load_params
from pipeline.tasks.classification.model import build_classifier
from pipeline.tasks.forecasting.model import build_forecaster
from pipeline.tasks.language_model.model import build_language_model
from pipeline.tasks.speech.model import build_recognizer
from pipeline.tasks.translation.model import build_seq2seq

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def default_model(task: Task, cell: str) -> keras.Model:
    """The task's model from params.yaml, with `cell` (small vocabularies: shapes do not matter)."""
    cfg = PARAMS.train.section(task).model_copy(update={"cell": cell})
    if task is Task.classification:
        return build_classifier(cfg, 50)
    if task is Task.language_model:
        return build_language_model(cfg, 50)
    if task is Task.translation:
        return build_seq2seq(cfg, 50, 50).model
    if task is Task.speech:
        return build_recognizer(cfg, 13)
    return build_forecaster(cfg, 4, 48, 3)


def recurrent_layers(model: keras.Model) -> list[keras.layers.RNN]:
    """The LSTM and GRU layers of a model, inside Bidirectional wrappers too."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.LSTM | keras.layers.GRU):
            found.append(layer)
    return found


def cudnn_ready(layer: keras.layers.RNN) -> bool:
    """Whether Keras would run this layer on cuDNN, given a GPU and right-padded masks."""
    cell = layer.cell
    common = (cell.activation, cell.recurrent_activation, layer.unroll, cell.use_bias)
    if isinstance(layer, keras.layers.GRU):
        settings = _do_gru_arguments_support_cudnn(*common, cell.reset_after)
    else:
        settings = _do_lstm_arguments_support_cudnn(*common)
    return settings and not cell.recurrent_dropout and layer.use_cudnn in ("auto", True)


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_default_recurrent_layers_qualify_for_cudnn(task: Task, cell: str) -> None:
    layers = recurrent_layers(default_model(task, cell))
    assert layers, f"{task.value} has no LSTM/GRU layer"
    assert all(cudnn_ready(layer) for layer in layers), [layer.name for layer in layers]
