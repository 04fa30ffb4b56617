"""Gradient flow back through time: mean ‖∂L/∂h_t‖ per timestep for every recurrent layer.

The gradient w.r.t. a `return_sequences` output only sees the direct path to the head (it is
exactly 0 for t < T under a last-step head). The quantity that shows vanishing/exploding
gradients is the total derivative through the recurrence. We get it as ∂L/∂ε_t, where a zero
tensor ε_t is added to h_t inside the cell (for LSTM to h, i.e. the output and states[0], not to
the carry c). ε is appended to the layer's inputs, so the unchanged Keras RNN loop carries it
step by step, and one forward + backward pass yields every timestep at once.

The probe model is a clone of the trained model that shares every weight: non-recurrent layers
are the very same objects, recurrent layers are twins that reuse the trained cell objects.
Pad steps (mask False) are excluded: Keras carries the state over them, so their ε has no effect.
Curves are indexed by input position; a Bidirectional layer gives `<name>/forward` and
`<name>/backward`, both aligned with input positions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from pipeline.core.metric_names import flow_summary_key

LossFn = Callable[[Any, Any], Any]
"""(y_true, y_pred) -> scalar or per-example losses; non-scalar results are summed."""

BACKWARD_SUFFIX = "/backward"
_SUPPORTED_CELLS = (keras.layers.SimpleRNNCell, keras.layers.GRUCell, keras.layers.LSTMCell)


class _EpsilonTap:
    """Collect one probe pass's ε tensors, watched on its tape, so their gradients can be read."""

    def __init__(self) -> None:
        self.tape: tf.GradientTape | None = None
        self.records: dict[str, tuple[tf.Tensor, tf.Tensor | None]] = {}

    def start(self, tape: tf.GradientTape) -> None:
        """Begin recording for one pass; calls outside a pass (model building) are ignored."""
        self.tape, self.records = tape, {}

    def stop(self) -> dict[str, tuple[tf.Tensor, tf.Tensor | None]]:
        """End the pass and hand over its records, keeping no tensors alive afterwards."""
        records, self.tape, self.records = self.records, None, {}
        return records

    def record(self, key: str, epsilon: tf.Tensor, mask: tf.Tensor | None) -> None:
        """Watch ε and remember it with its mask; a layer called twice gets `key@2`, …."""
        if self.tape is None:
            return
        self.tape.watch(epsilon)
        unique, n = key, 1
        while unique in self.records:
            n += 1
            unique = f"{key}@{n}"
        self.records[unique] = (epsilon, mask)


class _PerturbedCell(keras.layers.Layer):
    """Run a trained cell unchanged, then add ε_t (the last `units` input features) to h_t."""

    def __init__(self, cell: keras.layers.Layer) -> None:
        super().__init__(name=f"{cell.name}_perturbed", dtype=cell.dtype_policy)
        self.cell = cell

    @property
    def state_size(self) -> Any:
        """Mirror the trained cell so the RNN loop builds the same states."""
        return self.cell.state_size

    @property
    def output_size(self) -> int:
        """Mirror the trained cell; this is also the width of ε."""
        return int(self.cell.output_size)

    def build(self, input_shape: Any) -> None:
        """Create nothing: the wrapped cell is built and owns the shared weights."""

    def get_initial_state(self, batch_size: Any = None) -> Any:
        """Start from the trained cell's initial state."""
        return self.cell.get_initial_state(batch_size=batch_size)

    def call(self, inputs: Any, states: Any, training: bool = False) -> tuple[Any, Any]:
        """Split off ε, step the trained cell, and add ε to the output and to states[0]."""
        units = self.output_size
        output, new_states = self.cell(inputs[:, :-units], states, training=training)
        h = output + inputs[:, -units:]
        if isinstance(new_states, (list, tuple)):
            return h, [h, *new_states[1:]]
        return h, h


class _ProbeRNN(keras.layers.RNN):
    """Twin of a trained RNN layer whose hidden states carry a watched zero perturbation."""

    def __init__(self, original: keras.layers.RNN, tap: _EpsilonTap, key: str) -> None:
        _check_supported(original)
        super().__init__(
            _PerturbedCell(original.cell),
            return_sequences=original.return_sequences,
            return_state=original.return_state,
            go_backwards=original.go_backwards,
            unroll=original.unroll,
            zero_output_for_mask=original.zero_output_for_mask,
            name=original.name,
            dtype=original.dtype_policy,
        )
        self._tap = tap
        self._key = key

    def call(
        self, sequences: Any, initial_state: Any = None, mask: Any = None, training: Any = None
    ) -> Any:
        """Append zero ε columns to the inputs; always inference mode, so curves are repeatable."""
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        shape = ops.shape(sequences)
        epsilon = ops.zeros((shape[0], shape[1], self.cell.output_size), dtype=sequences.dtype)
        self._tap.record(self._key, epsilon, mask)
        return super().call(
            ops.concatenate([sequences, epsilon], axis=-1),
            initial_state=initial_state,
            mask=mask,
            training=False,
        )


class _ProbeBidirectional(keras.layers.Bidirectional):
    """Bidirectional whose two directions are probe twins of the trained directions."""

    def __init__(self, original: keras.layers.Bidirectional, tap: _EpsilonTap) -> None:
        # Bidirectional.__init__ rebuilds its sublayers from config (fresh weights), so set the
        # attributes it would set ourselves, reusing its call/mask/shape logic unchanged.
        keras.layers.Layer.__init__(self, name=original.name, dtype=original.dtype_policy)
        name = original.name
        self.forward_layer = _ProbeRNN(original.forward_layer, tap, f"{name}/forward")
        self.backward_layer = _ProbeRNN(original.backward_layer, tap, f"{name}{BACKWARD_SUFFIX}")
        self.merge_mode = original.merge_mode
        self.stateful = original.stateful
        self.return_sequences = original.return_sequences
        self.return_state = original.return_state
        self.supports_masking = True
        self.input_spec = original.input_spec


def _check_supported(layer: keras.layers.RNN) -> None:
    """Refuse layers whose output is not states[0] or whose state outlives a call."""
    if not isinstance(layer.cell, _SUPPORTED_CELLS):
        raise TypeError(f"{layer.name}: gradient flow supports SimpleRNN/GRU/LSTM cells only")
    if layer.stateful:
        raise ValueError(f"{layer.name}: stateful RNNs are not supported")


def _probe_layer(layer: keras.layers.Layer, tap: _EpsilonTap) -> keras.layers.Layer:
    """Share non-recurrent layers as-is; swap recurrent ones for perturbed twins."""
    if isinstance(layer, keras.layers.Bidirectional):
        return _ProbeBidirectional(layer, tap)
    if isinstance(layer, keras.layers.RNN):
        return _ProbeRNN(layer, tap, layer.name)
    return layer


def build_probe_model(model: keras.Model, tap: _EpsilonTap) -> keras.Model:
    """Clone a functional model so that it shares every weight and perturbs every h_t."""
    # An uncompiled view: clone_model recompiles compiled models, which fails on custom losses.
    view = keras.Model(model.input, model.output, name=f"{model.name}_probe")
    return keras.models.clone_model(
        view, clone_function=partial(_probe_layer, tap=tap), recursive=True
    )


def _as_tensors(structure: Any) -> Any:
    """Convert the probe batch once, so every epoch feeds the same traced graph."""
    return tf.nest.map_structure(lambda v: v if v is None else tf.convert_to_tensor(v), structure)


def _masked_mean(norms: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Average per-example norms over the examples for which step t is a real token."""
    counts = valid.sum(axis=0)
    sums = (norms * valid).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class GradientFlowProbe:
    """Built once per training run for a fixed probe batch; cheap to call every epoch.

    `loss_fn(targets, predictions)` must give the per-example losses or their sum (e.g.
    `keras.losses.BinaryCrossentropy(reduction="sum")`); results are summed, so example i's
    ‖∂L/∂h_t‖ is the gradient of its own loss. A mean-reducing loss only rescales every curve
    by 1/batch (horizon and log-ratio are scale-free). The probe runs in inference mode.
    """

    def __init__(self, model: keras.Model, inputs: Any, targets: Any, loss_fn: LossFn) -> None:
        self._tap = _EpsilonTap()
        self.probe_model = build_probe_model(model, self._tap)
        self._inputs = _as_tensors(inputs)
        self._targets = _as_tensors(targets)
        self._loss_fn = loss_fn
        self._compute = tf.function(self._per_example_norms)
        # Trace now: fail before training starts, and keep measure() at one graph call.
        self._compute.get_concrete_function(self._inputs, self._targets)

    def measure(self) -> dict[str, np.ndarray]:
        """Return layer key -> (T,) mean ‖∂L/∂h_t‖ over valid examples (NaN where none)."""
        results = self._compute(self._inputs, self._targets)
        return {
            key: _masked_mean(norms.numpy().astype(np.float64), valid.numpy())
            for key, (norms, valid) in results.items()
        }

    def _per_example_norms(self, inputs: Any, targets: Any) -> dict[str, tuple[Any, Any]]:
        """Compute (B, T) ‖∂L/∂ε_t‖ and the (B, T) validity mask of every recurrent layer."""
        with tf.GradientTape() as tape:
            self._tap.start(tape)
            try:
                predictions = self.probe_model(inputs, training=False)
                loss = tf.reduce_sum(self._loss_fn(targets, predictions))
            finally:
                records = self._tap.stop()
        epsilons = [epsilon for epsilon, _ in records.values()]
        grads = tape.gradient(loss, epsilons, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        out = {}
        for (key, (_, mask)), grad in zip(records.items(), grads, strict=True):
            norms = tf.norm(tf.cast(grad, tf.float32), axis=-1)
            valid = tf.ones_like(norms) if mask is None else tf.cast(mask, tf.float32)
            out[key] = (norms, valid)
        return out


def _valid_steps(curve: np.ndarray) -> np.ndarray:
    """Keep the finite steps (NaN marks steps where no example has a real token)."""
    values = np.asarray(curve, dtype=np.float64)
    return values[np.isfinite(values)]


def gradient_horizon(curve: np.ndarray, threshold: float = 0.01) -> int:
    """Count consecutive valid steps, back from and including the last, with ≥ threshold·last.

    E.g. curve ∝ 0.5^(T-1-t) with threshold 0.01: 0.5^k ≥ 0.01 for k = 0..6, so 7. Returns 0 if
    there is no valid step or the last value is 0; the whole valid length if nothing falls below.
    """
    values = _valid_steps(curve)
    if values.size == 0 or values[-1] <= 0:
        return 0
    below = np.flatnonzero(values < threshold * values[-1])
    return int(values.size - 1 - below[-1]) if below.size else int(values.size)


def log_decay_ratio(curve: np.ndarray) -> float:
    """Return log10(first valid / last valid): negative when gradients vanish, positive if explode.

    NaN without valid steps; ±inf when an end underflowed to exactly 0.
    """
    values = _valid_steps(curve)
    if values.size == 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.log10(values[0]) - np.log10(values[-1]))


def _processing_order(key: str, curve: np.ndarray) -> np.ndarray:
    """Put a curve in the order the recurrence ran, so 'last step' means last processed."""
    return np.asarray(curve)[::-1] if key.endswith(BACKWARD_SUFFIX) else np.asarray(curve)


def summarize_flow(curves: dict[str, np.ndarray]) -> dict[str, float]:
    """Flatten curves into scalar metrics (backward directions read in processing order)."""
    metrics: dict[str, float] = {}
    for key, curve in curves.items():
        ordered = _processing_order(key, curve)
        metrics[flow_summary_key("horizon", key)] = gradient_horizon(ordered)
        metrics[flow_summary_key("log_ratio", key)] = log_decay_ratio(ordered)
        last = _valid_steps(ordered)
        metrics[flow_summary_key("last", key)] = float(last[-1]) if last.size else float("nan")
    return metrics


def _plot_key(ax: Any, key: str, history: list[dict[str, np.ndarray]], norm: Normalize) -> None:
    """Draw one layer's curve for every epoch that measured it, coloured by epoch."""
    cmap = colormaps["viridis"]
    for epoch, curves in enumerate(history, start=1):
        if key in curves:
            curve = np.asarray(curves[key], dtype=np.float64)
            ax.plot(np.arange(curve.size), curve, color=cmap(norm(epoch)), linewidth=1.0)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_title(key)
    ax.set_xlabel("timestep t (input position)")
    ax.set_ylabel("mean ‖∂L/∂h_t‖")


def plot_flow(history: list[dict[str, np.ndarray]], path: Path) -> Path:
    """Plot one subplot per layer, one curve per epoch, to a PNG without touching pyplot."""
    keys = list(dict.fromkeys(key for curves in history for key in curves))
    if not keys:
        raise ValueError("plot_flow needs at least one measured curve")
    fig = Figure(figsize=(7.0, 2.8 * len(keys)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg on this figure only: no pyplot, no global backend switch.
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    norm = Normalize(vmin=1, vmax=max(len(history), 2))
    for ax, key in zip(axes, keys, strict=True):
        _plot_key(ax, key, history, norm)
    fig.colorbar(ScalarMappable(norm=norm, cmap=colormaps["viridis"]), ax=list(axes), label="epoch")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
