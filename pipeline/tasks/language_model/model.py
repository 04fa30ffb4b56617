"""Causal language model: tokens -> embedding -> recurrent block -> logits over the vocabulary.

With `tie_embeddings` the output projection is the transposed input embedding matrix (Press &
Wolf 2017) plus a learned per-token bias; when the recurrent output width differs from
`embedding_dim`, a linear `projection` Dense maps it to `embedding_dim` first. The model
predicts token t+1 from tokens <= t, so a bidirectional block (which would read the answer)
is rejected when params are validated (`LanguageModelTrain`).
"""

from __future__ import annotations

import keras

from pipeline.core.recurrent import TiedEmbedding, VocabBias, recurrent_stack, token_embedding
from pipeline.params import LanguageModelTrain


def build_language_model(cfg: LanguageModelTrain, vocab_size: int) -> keras.Model:
    """Build Embedding -> RNN (all steps) -> logits, optionally with tied input/output weights."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    # Masked embedding: pad steps (id 0) neither update the state nor count in the loss.
    if cfg.tie_embeddings:
        embedding = TiedEmbedding(vocab_size, cfg.embedding_dim, mask_zero=True, name="embedding")
    else:
        embedding = token_embedding(vocab_size, cfg.embedding_dim)
    x = embedding(tokens)
    if cfg.embedding_dropout > 0:
        # The same embedding channels are dropped at every position of a window.
        x = keras.layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    # Recurrent block: every layer returns its whole sequence, one state per position.
    x = recurrent_stack(x, cfg, sequences=True)
    if not cfg.tie_embeddings:
        # Head: unnormalised next-token scores (the loss applies the softmax).
        logits = keras.layers.Dense(vocab_size, name="head")(x)
        return keras.Model(tokens, logits, name="language_model")
    if cfg.units != cfg.embedding_dim:
        # Tied logits need hidden states in embedding space.
        x = keras.layers.Dense(cfg.embedding_dim, name="projection")(x)
    # Head: scores against every (shared) embedding row, plus a per-token bias.
    logits = VocabBias(name="head")(embedding(x, reverse=True))
    return keras.Model(tokens, logits, name="language_model")
