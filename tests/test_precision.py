"""Mixed bfloat16 training: layers compute in bfloat16, weights and probabilities stay float32."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.core.gradient_flow import GradientFlowProbe
from pipeline.core.gradients import CLIPPED, GLOBAL
from pipeline.core.precision import compute_precision, cpu_flags, resolve_precision
from pipeline.params import ClassificationTrain, LanguageModelTrain
from pipeline.tasks.classification.model import build_classifier
from pipeline.tasks.language_model.model import build_language_model
from tests.test_gradients import lm_batch, one_step, tiny_batch

TINY = ClassificationTrain(units=8, embedding_dim=6, cell="gru", pooling="max_mean")


@pytest.mark.parametrize(
    ("requested", "flags", "gpus", "expected"),
    [
        ("auto", {"avx2", "avx512_bf16"}, 0, "mixed_bfloat16"),  # Zen 4, Cooper Lake
        ("auto", {"avx2", "amx_bf16", "amx_tile"}, 0, "mixed_bfloat16"),  # Sapphire Rapids
        ("auto", {"avx2", "avx512f"}, 0, "float32"),  # bfloat16 would be emulated
        ("auto", {"avx512_bf16"}, 1, "float32"),  # cuDNN's RNN kernels take no bfloat16
        ("mixed_bfloat16", set(), 1, "mixed_bfloat16"),  # an explicit choice is kept
        ("float32", {"avx512_bf16"}, 0, "float32"),
    ],
)
def test_auto_uses_bfloat16_only_where_the_cpu_runs_it_natively(
    requested: str, flags: set[str], gpus: int, expected: str
) -> None:
    assert resolve_precision(requested, frozenset(flags), gpus) == expected


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_the_policy_applies_while_building_and_is_restored_after() -> None:
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError), compute_precision("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("a failed build still restores the policy")
    assert keras.config.dtype_policy().name == before == "float32"


def test_a_mixed_classifier_keeps_float32_weights_and_probabilities() -> None:
    with compute_precision("mixed_bfloat16"):
        model = build_classifier(TINY, vocab_size=20)
    rnn, head = model.get_layer("rnn_1"), model.get_layer("head")
    assert rnn.compute_dtype == "bfloat16"
    # The trainer's MFU peak is measured in the model's compute dtype.
    assert model.dtype_policy.compute_dtype == "bfloat16"
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    # The probability head computes in float32: bfloat16's 8-bit mantissa would tie
    # probabilities near 0 and 1 and blunt ROC-AUC.
    assert head.compute_dtype == "float32"
    probabilities = model.predict(tiny_batch()[0], verbose=0)
    assert probabilities.dtype == np.float32
    # A reloaded model computes as it was trained (the policy is in each layer's config).
    clone = keras.models.clone_model(model)
    assert clone.get_layer("rnn_1").compute_dtype == "bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "language_model"])
def test_a_mixed_step_agrees_with_the_float32_step(task: str) -> None:
    """The same clipped, instrumented step in bfloat16 arithmetic: loss and gradient norms agree
    to bfloat16 rounding (8 mantissa bits, ~0.4% per operation; measured under 1% relative on
    these tiny models, asserted 5%), and every logged value is finite."""
    if task == "classification":
        args = (lambda: build_classifier(TINY, 20), tiny_batch(), "binary_crossentropy")
    else:
        cfg = LanguageModelTrain(units=8, embedding_dim=6, cell="lstm")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        args = (lambda: build_language_model(cfg, 30), lm_batch(), loss)
    full = one_step(*args, jit=False)
    with compute_precision("mixed_bfloat16"):
        mixed = one_step(*args, jit=False)
    assert set(full["logs"]) == set(mixed["logs"]) and CLIPPED in mixed["logs"]
    for key in ("loss", GLOBAL):
        assert float(mixed["logs"][key]) == pytest.approx(float(full["logs"][key]), rel=0.05), key
    assert all(np.isfinite(float(v)) for v in mixed["logs"].values())
    for before, after in zip(full["weights"], mixed["weights"], strict=True):
        assert after.dtype == np.float32
        np.testing.assert_allclose(after, before, rtol=0.05, atol=2e-3)


@pytest.mark.slow
def test_the_gradient_flow_probe_runs_on_a_mixed_model() -> None:
    """The probe's perturbed cell follows the layer's policy and returns a finite curve."""
    keras.utils.set_random_seed(5)
    with compute_precision("mixed_bfloat16"):
        model = build_classifier(TINY, vocab_size=20)
    tokens, labels = tiny_batch()
    loss = keras.losses.BinaryCrossentropy(reduction=None)
    curve = GradientFlowProbe(model, tokens, labels, loss).measure()["rnn_1"]
    assert len(curve) == tokens.shape[1]
    assert np.all(np.isfinite(curve)) and np.max(curve) > 0
