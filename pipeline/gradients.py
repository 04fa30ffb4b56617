"""Gradient-norm instrumentation inside the compiled train step.

`InstrumentedModel` is the task's functional model with a `train_step` that, from the gradients
it already computed (no second backward pass), returns the global gradient norm, one norm per
layer and, when clipping is on, the norm after clipping. Embedding gradients arrive as
`tf.IndexedSlices` with repeated row indices; `tf.linalg.global_norm` squares each repeat
separately and gets the norm wrong, so repeats are summed before squaring here.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.utils import unpack_x_y_sample_weight

GLOBAL = "grad_norm/global"
CLIPPED = "grad_norm/global_clipped"
PREFIX = "grad_norm/"


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
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            batch = tf.shape(tf.nest.flatten(x)[0])[0]
            self._loss_tracker.update_state(loss, sample_weight=batch)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        gradients, norms = gradient_norms(gradients, self._groups, self.clip_norm)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        metrics = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return {**metrics, **norms}
