"""The recurrent block every task shares: cell type, width, depth, direction and dropout.

Layer names are fixed (`rnn_1`, `rnn_2`, ...) so MLflow metric keys such as `grad_norm/rnn_1`
stay stable across runs and cells.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from pipeline.params import RecurrentParams

CELLS: dict[str, type[keras.layers.RNN]] = {
    "simple_rnn": keras.layers.SimpleRNN,
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
}


def recurrent_layer(
    cfg: RecurrentParams,
    name: str,
    return_sequences: bool,
    return_state: bool = False,
    units: int | None = None,
) -> keras.layers.Layer:
    """One (optionally bidirectional) recurrent layer of the configured cell type."""
    cell = CELLS[cfg.cell]
    layer = cell(
        units or cfg.units,
        return_sequences=return_sequences,
        return_state=return_state,
        name=name if not cfg.bidirectional else f"{name}_cell",
    )
    if cfg.bidirectional:
        return keras.layers.Bidirectional(layer, merge_mode="concat", name=name)
    return layer


def recurrent_stack(
    x: keras.KerasTensor, cfg: RecurrentParams, prefix: str = "rnn", sequences: bool = False
) -> keras.KerasTensor:
    """Stack `num_layers` recurrent layers; the last returns sequences only if asked."""
    for index in range(1, cfg.num_layers + 1):
        last = index == cfg.num_layers
        layer = recurrent_layer(cfg, f"{prefix}_{index}", return_sequences=sequences or not last)
        x = layer(x)
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"{prefix}_dropout_{index}")(x)
    return x


@keras.saving.register_keras_serializable(package="pipeline")
class StackSteps(keras.layers.Layer):
    """Fold each run of `size` consecutive timesteps into one: (B, T, D) -> (B, T/size, size*D).

    A recurrent step costs a fixed latency on a small CPU whatever its input width, so a layer
    that reads two tokens a step runs nearly twice as fast (Chan et al.'s pyramidal encoder
    stacks frames the same way). Sequences are post-padded, so a stacked step is real iff its
    first timestep is; pad timesteps and the tail up to a multiple of `size` enter as zeros.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.supports_masking = True

    def get_config(self) -> dict:
        """Serialise `size` with the layer."""
        return {**super().get_config(), "size": self.size}

    def compute_output_shape(self, input_shape):
        """Time shrinks by `size` (rounded up), features grow by it."""
        steps = input_shape[1]
        steps = None if steps is None else -(-steps // self.size)
        return (input_shape[0], steps, self.size * input_shape[-1])

    def compute_mask(self, inputs, mask=None):
        """The mask of each group's first timestep (post-padding: the others follow it)."""
        return None if mask is None else mask[:, :: self.size]

    def call(self, inputs, mask=None):
        """Zero pads and the tail up to a multiple of `size`, then fold groups into features.

        A pad's embedding is a learned vector, not zeros: zeroing it makes a padded review's
        last group equal to the same review's unpadded one.
        """
        if mask is not None:
            inputs = inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype)
        extra = -tf.shape(inputs)[1] % self.size
        padded = tf.pad(inputs, [[0, 0], [0, extra], [0, 0]])
        return tf.reshape(padded, [tf.shape(inputs)[0], -1, self.size * inputs.shape[-1]])


def token_embedding(vocab_size: int, dim: int, name: str = "embedding") -> keras.layers.Embedding:
    """Embedding with PAD id 0 masked, so pad steps neither update states nor count."""
    return keras.layers.Embedding(vocab_size, dim, mask_zero=True, name=name)


def word_dropout(x: keras.KerasTensor, rate: float, name: str) -> keras.KerasTensor:
    """Zero whole token embeddings (one draw per token) in the training graph only.

    Gal & Ghahramani's word dropout: the model must read a token's context, not only the token.
    """
    if rate <= 0:
        return x
    return keras.layers.Dropout(rate, noise_shape=(None, None, 1), name=name)(x)


@keras.saving.register_keras_serializable(package="pipeline")
class TiedEmbedding(keras.layers.ReversibleEmbedding):
    """Reversible embedding whose reverse (logits) call keeps the hidden states' padding mask."""

    def compute_mask(self, inputs, mask=None):
        """Forward calls set their own mask in `call`; reverse calls pass the incoming one on."""
        return mask


@keras.saving.register_keras_serializable(package="pipeline")
class VocabBias(keras.layers.Layer):
    """Add a learned bias per vocabulary entry (tied logits have none of their own)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape) -> None:
        """Create one bias per logit."""
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, inputs):
        """Shift every position's logits by the bias."""
        return ops.add(inputs, self.bias)
