"""Gradient-norm instrumentation inside the compiled train step.

`InstrumentedModel` is the task's functional model with a `train_step` that, from the gradients
it already computed (no second backward pass), returns the global gradient norm, one norm per
layer and, when clipping is on, the norm after clipping. Embedding gradients arrive as
`tf.IndexedSlices` with repeated row indices; `tf.linalg.global_norm` squares each repeat
separately and gets the norm wrong, so repeats are summed before squaring here.

Under a tf.distribute strategy with several replicas the step all-reduces the gradients first,
so the norms (and the clipping) are those of the global-batch gradient, the same numbers a
single worker would log.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.utils import unpack_x_y_sample_weight

GLOBAL = "grad_norm/global"
CLIPPED = "grad_norm/global_clipped"
PREFIX = "grad_norm/"
BATCH_LOSS = "batch_loss"  # this step's own loss (Keras's `loss` is the epoch's running mean)


def is_epoch_metric(key: str) -> bool:
    """Whether a result of the train step is an epoch metric (not a per-step diagnostic)."""
    return not key.startswith(PREFIX) and key != BATCH_LOSS


def squared_norm(gradient: tf.Tensor | tf.IndexedSlices) -> tf.Tensor:
    """Squared L2 norm of a gradient, merging repeated IndexedSlices rows first."""
    if isinstance(gradient, tf.IndexedSlices):
        rows, position = tf.unique(gradient.indices)
        summed = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        return tf.reduce_sum(tf.square(tf.cast(summed, tf.float32)))
    return tf.reduce_sum(tf.square(tf.cast(gradient, tf.float32)))


def scale_gradient(gradient: tf.Tensor | tf.IndexedSlices, factor: tf.Tensor):
    """Multiply a dense or sparse gradient by a scalar, keeping its type."""
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def layer_groups(model: keras.Model) -> dict[str, list[int]]:
    """Map each layer that owns trainable weights to the indices of its variables."""
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    groups: dict[str, list[int]] = {}
    for layer in model.layers:
        owned = [position[id(v)] for v in layer.trainable_variables if id(v) in position]
        if owned:
            groups[layer.name] = owned
    return groups


def gradient_norms(
    gradients: list, groups: dict[str, list[int]], clip_norm: float | None
) -> tuple[list, dict[str, tf.Tensor]]:
    """Return (possibly clipped) gradients and the norms to log."""
    squares = [squared_norm(g) for g in gradients]
    norms = {
        f"{PREFIX}{name}": tf.sqrt(tf.add_n([squares[i] for i in idx]))
        for name, idx in groups.items()
    }
    total = tf.sqrt(tf.add_n(squares))
    norms[GLOBAL] = total
    if clip_norm is not None:
        factor = clip_norm / tf.maximum(total, clip_norm)
        gradients = [scale_gradient(g, factor) for g in gradients]
        norms[CLIPPED] = total * factor
    return gradients, norms


def replica_count() -> int:
    """Replicas training in sync (1 without a strategy)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context else 1


def all_reduce(gradients: list) -> list:
    """Sum gradients over replicas (Keras scaled each replica's loss by 1/N already)."""
    context = tf.distribute.get_replica_context()
    present = [i for i, g in enumerate(gradients) if g is not None]
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
    out = list(gradients)
    for i, g in zip(present, reduced, strict=True):
        out[i] = g
    return out


def per_worker(logs: dict, replicas: int) -> dict:
    """Give scalar step results a length-1 axis when several replicas train.

    Keras averages step results over workers with `reduce("MEAN", value, axis=0)`, which
    rejects scalars; with a length-1 axis it averages the workers' values, as intended.
    """
    if replicas == 1:
        return logs
    return {
        key: tf.reshape(value, [1]) if value.shape.rank == 0 else value
        for key, value in logs.items()
    }


class InstrumentedModel(keras.Model):
    """A functional model whose train step also reports gradient norms.

    Built from an existing model's inputs and outputs, so it shares every layer (and weight)
    with it: the plain model is what gets saved and served.
    """

    def __init__(self, inputs, outputs, clip_norm: float | None = None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.clip_norm = clip_norm
        self._groups = layer_groups(self)

    def train_step(self, data):
        """Keras's TF train step plus norms and global-norm clipping of the same gradients."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            replicas = replica_count()  # Keras divides each replica's loss by this
            self._track_loss(loss * replicas, tf.shape(tf.nest.flatten(x)[0])[0])
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if replicas > 1:
            gradients = all_reduce(gradients)
        gradients, norms = gradient_norms(gradients, self._groups, self.clip_norm)
        if replicas > 1:  # the optimizer sums over replicas again: hand it 1/N of the total
            gradients = [scale_gradient(g, 1.0 / replicas) for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        metrics = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return per_worker({**metrics, **norms, BATCH_LOSS: loss * replicas}, replicas)

    def test_step(self, data):
        """Keras's test step, with results shaped for multi-worker reduction."""
        return per_worker(super().test_step(data), replica_count())

    # ----------------------------------------------------------------- Keras private hooks
    # The only two places that use Keras internals (no public API does the same);
    # tests/test_gradients.py::test_keras_private_hooks_are_still_there fails on a Keras
    # upgrade that changes them.

    def _track_loss(self, loss: tf.Tensor, batch: tf.Tensor) -> None:
        """Feed the epoch's `loss` as Keras's own train step does (`compute_loss` does not)."""
        self._loss_tracker.update_state(loss, sample_weight=batch)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build metrics and optimizer from this worker's slice of the first batch.

        Keras (3.x, TF backend) averages the first batch over replicas to get its shapes;
        under MultiWorkerMirroredStrategy that reduce fails on an (x, y) tuple of per-replica
        values. The local slice has the same structure and is all the build needs.
        """
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(self._local_slice, next(batches))
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def _local_slice(self, value):
        """The first local component of a distributed value (plain values pass through)."""
        if isinstance(value, tf.distribute.DistributedValues):
            return self.distribute_strategy.experimental_local_results(value)[0]
        return value
