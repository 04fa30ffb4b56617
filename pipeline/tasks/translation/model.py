"""Encoder-decoder for translation: one teacher-forced training graph, plus an encoder model and
a one-step decoder model that call the very same layer objects (so they share every weight).

Architecture (Luong et al. 2015: global attention on top of the decoder RNN):

- `source` -> `source_embedding` (mask_zero) -> `encoder_1..N` (return_sequences and
  return_state). The last encoder layer's outputs are the attention memory.
- `encoder_i`'s final state(s) initialise `decoder_i`. A bidirectional encoder has forward and
  backward states of `units` each: they are concatenated (2*units) and projected to the
  decoder's `units` by `bridge_i_h` (tanh) and, for LSTM, `bridge_i_c` (linear: a cell state
  is not bounded). Its memory is 2*units wide.
- `target_in` (BOS + target) -> `target_embedding` (mask_zero) -> `decoder_1..N`
  (unidirectional, return_sequences and return_state).
- attention `luong`: `keras.layers.Attention` (dot product h_t . k_s). Keys are the memory, or
  the `attention_keys` projection of it when a bidirectional memory is wider than h_t (Luong's
  "general" score). `bahdanau`: `keras.layers.AdditiveAttention` on `attention_query(h_t)` and
  `attention_keys(memory)`, i.e. v . tanh(W_q h_t + W_k h_s). Both attend with the current
  decoder output h_t (not Bahdanau's s_{t-1} with the context fed back in), so the decoder stays
  a plain Keras RNN that the gradient-flow probe can instrument. Source padding is masked.
- `attention_output` = tanh(W [context; h_t]) (Luong's attentional state), then `logits`.
  Without attention, `logits` reads h_t directly.
- `lexical_attention`: the memory is [encoder outputs; source embeddings] (`lexical_memory`),
  so the context also carries the attended source words themselves; its keys are always the
  `attention_keys` projection.
- `tie_embeddings`: logits = (attentional state) . E_target^T + bias, with the attentional
  state (or, without attention, an `output_projection` of h_t) embedding_dim wide.
- `word_dropout` zeroes whole token embeddings on both sides, in the training graph only.
- `lexicon_bias` (with attention): `lexicon_table` turns the source ids into rows of a fixed
  IBM Model 1 table p(y | x_s) (the encoder's `lexicon` output), and `lexicon_bias` adds
  log(sum_s a_ts p(y | x_s) + lexicon_epsilon) to the logits (Arthur et al. 2016; see
  `lexicon_bias.py`).
- `alignment_weight` (with the lexicon): `guided_alignment` passes the training graph's logits
  through and, in training only, adds the attention's cross-entropy against the table's
  alignment posterior to the loss (`lexicon_bias.GuidedAlignment`). Inference graphs skip it.

The step model receives the memory as an input; pad positions must be zero there (the
decoding code zeroes them) so its `memory_mask` Masking layer recovers the source mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras

from pipeline.core.recurrent import (
    TiedEmbedding,
    VocabBias,
    recurrent_layer,
    token_embedding,
    word_dropout,
)
from pipeline.params import TranslationTrain
from pipeline.tasks.translation.lexicon_bias import GuidedAlignment, LexiconBias, LexiconTable

SOURCE, TARGET_IN, TOKEN = "source", "target_in", "token"
MEMORY, KEYS, LOGITS, ATTENTION = "memory", "keys", "logits", "attention"
LEXICAL, LEXICON, ALIGNMENT = "lexical_memory", "lexicon", "guided_alignment"
STATE_KINDS = ("h", "c")
KerasTensor = keras.KerasTensor


@dataclass
class Seq2SeqLayers:
    """Every weight-owning layer of the encoder-decoder; all graphs are built from these."""

    source_embedding: keras.layers.Layer
    target_embedding: keras.layers.Layer
    encoders: list[keras.layers.Layer]
    bridges: list[list[keras.layers.Layer]]
    decoders: list[keras.layers.Layer]
    logits: keras.layers.Layer
    attention: keras.layers.Layer | None = None
    attention_query: keras.layers.Layer | None = None
    attention_keys: keras.layers.Layer | None = None
    attention_output: keras.layers.Layer | None = None
    output_projection: keras.layers.Layer | None = None
    lexicon_table: LexiconTable | None = None
    lexicon_bias: LexiconBias | None = None
    alignment: GuidedAlignment | None = None
    lexical: bool = False

    def state_names(self) -> list[list[str]]:
        """Names of each decoder layer's states (`state_1_h`, `state_1_c`, ...)."""
        return [
            [f"state_{i}_{kind}" for kind in STATE_KINDS[: state_count(layer)]]
            for i, layer in enumerate(self.decoders, start=1)
        ]

    def memory_width(self) -> int:
        """Feature width of the attention memory (encoder outputs, and embeddings if lexical)."""
        extra = int(self.source_embedding.output_dim) if self.lexical else 0
        return output_width(self.encoders[-1]) + extra


@dataclass
class Seq2Seq:
    """The training model and the inference models that share its layers."""

    model: keras.Model
    encoder: keras.Model
    decoder: keras.Model
    layers: Seq2SeqLayers

    @property
    def has_attention(self) -> bool:
        """Whether the decoder attends to the encoder memory."""
        return self.layers.attention is not None


def state_count(layer: keras.layers.Layer) -> int:
    """States per recurrent layer: 2 for LSTM (h, c), else 1."""
    size = layer.cell.state_size
    return len(size) if isinstance(size, list | tuple) else 1


def output_width(layer: keras.layers.Layer) -> int:
    """Output features of a (possibly bidirectional, concatenating) recurrent layer."""
    if isinstance(layer, keras.layers.Bidirectional):
        return int(layer.forward_layer.units + layer.backward_layer.units)
    return int(layer.units)


# --------------------------------------------------------------------------- layers


def make_layers(cfg: TranslationTrain, src_vocab: int, tgt_vocab: int) -> Seq2SeqLayers:
    """Create the layers for a configuration (no graph yet)."""
    decoder_cfg = cfg.model_copy(update={"bidirectional": False})
    indices = range(1, cfg.num_layers + 1)
    kinds = STATE_KINDS[: 2 if cfg.cell == "lstm" else 1]
    bridges = [
        [
            keras.layers.Dense(
                cfg.units, activation="tanh" if kind == "h" else None, name=f"bridge_{i}_{kind}"
            )
            for kind in kinds
        ]
        if cfg.bidirectional
        else []
        for i in indices
    ]
    tied = cfg.tie_embeddings
    return Seq2SeqLayers(
        source_embedding=token_embedding(src_vocab, cfg.embedding_dim, "source_embedding"),
        target_embedding=(
            TiedEmbedding(tgt_vocab, cfg.embedding_dim, mask_zero=True, name="target_embedding")
            if tied
            else token_embedding(tgt_vocab, cfg.embedding_dim, "target_embedding")
        ),
        encoders=[recurrent_layer(cfg, f"encoder_{i}", True, return_state=True) for i in indices],
        bridges=bridges,
        decoders=[
            recurrent_layer(decoder_cfg, f"decoder_{i}", True, return_state=True) for i in indices
        ],
        logits=VocabBias(name=LOGITS) if tied else keras.layers.Dense(tgt_vocab, name=LOGITS),
        **attention_layers(cfg),
        output_projection=(
            keras.layers.Dense(cfg.embedding_dim, name="output_projection")
            if tied and cfg.attention == "none"
            else None
        ),
        lexical=cfg.lexical_attention and cfg.attention != "none",
        **lexicon_layers(cfg, src_vocab, tgt_vocab),
    )


def lexicon_layers(cfg: TranslationTrain, src_vocab: int, tgt_vocab: int) -> dict:
    """The translation-table lookup and the logit bias, when `lexicon_bias` is on."""
    if not cfg.lexicon_bias or cfg.attention == "none":
        return {}
    layers = {
        "lexicon_table": LexiconTable(src_vocab, tgt_vocab, name="lexicon_table"),
        "lexicon_bias": LexiconBias(epsilon=cfg.lexicon_epsilon, name="lexicon_bias"),
    }
    if cfg.alignment_weight > 0:
        layers["alignment"] = GuidedAlignment(cfg.alignment_weight, name=ALIGNMENT)
    return layers


def attention_layers(cfg: TranslationTrain) -> dict[str, keras.layers.Layer]:
    """The attention layer and the projections its score function needs."""
    if cfg.attention == "none":
        return {}
    dense = keras.layers.Dense
    width = cfg.embedding_dim if cfg.tie_embeddings else cfg.units  # tied logits read embeddings
    layers = {"attention_output": dense(width, activation="tanh", name="attention_output")}
    if cfg.attention == "bahdanau":
        layers["attention"] = keras.layers.AdditiveAttention(name=ATTENTION)
        layers["attention_query"] = dense(cfg.units, use_bias=False, name="attention_query")
        layers["attention_keys"] = dense(cfg.units, use_bias=False, name="attention_keys")
    else:
        layers["attention"] = keras.layers.Attention(name=ATTENTION)
        if cfg.bidirectional or cfg.lexical_attention:
            layers["attention_keys"] = dense(cfg.units, use_bias=False, name="attention_keys")
    return layers


def layers_from_model(model: keras.Model) -> Seq2SeqLayers:
    """Find the layers of a trained (e.g. loaded) training model by name."""
    names = {layer.name for layer in model.layers}
    count = sum(1 for name in names if re.fullmatch(r"decoder_\d+", name))

    def optional(name: str) -> keras.layers.Layer | None:
        return model.get_layer(name) if name in names else None

    indices = range(1, count + 1)
    return Seq2SeqLayers(
        source_embedding=model.get_layer("source_embedding"),
        target_embedding=model.get_layer("target_embedding"),
        encoders=[model.get_layer(f"encoder_{i}") for i in indices],
        bridges=[
            [model.get_layer(f"bridge_{i}_{k}") for k in STATE_KINDS if f"bridge_{i}_{k}" in names]
            for i in indices
        ],
        decoders=[model.get_layer(f"decoder_{i}") for i in indices],
        logits=model.get_layer(LOGITS),
        attention=optional(ATTENTION),
        attention_query=optional("attention_query"),
        attention_keys=optional("attention_keys"),
        attention_output=optional("attention_output"),
        output_projection=optional("output_projection"),
        lexicon_table=optional("lexicon_table"),
        lexicon_bias=optional("lexicon_bias"),
        alignment=optional(ALIGNMENT),
        lexical=LEXICAL in names,
    )


# --------------------------------------------------------------------------- graphs


def dropout(x: KerasTensor, rate: float, name: str) -> KerasTensor:
    """Dropout on recurrent outputs in the training graph only (inference skips it)."""
    return keras.layers.Dropout(rate, name=name)(x) if rate > 0 else x


def bridge(states: list[KerasTensor], dense: list[keras.layers.Layer]) -> list[KerasTensor]:
    """Map one encoder layer's final states to its decoder layer's initial states."""
    if not dense:
        return states
    half = len(dense)
    pairs = zip(states[:half], states[half:], strict=True)
    return [
        layer(keras.layers.Concatenate(name=f"{layer.name}_concat")([forward, backward]))
        for layer, (forward, backward) in zip(dense, pairs, strict=True)
    ]


@dataclass
class Encoded:
    """What the decoder reads from the encoder besides its initial states."""

    memory: KerasTensor | None
    keys: KerasTensor | None
    lexicon: KerasTensor | None = None  # (B, S, tgt_vocab) table rows of the source ids


def encode(
    layers: Seq2SeqLayers, source: KerasTensor, rate: float = 0.0, word_rate: float = 0.0
) -> tuple[Encoded, list[list[KerasTensor]]]:
    """Source ids -> (memory, keys and lexicon rows; decoder initial states per layer)."""
    x = embedded = word_dropout(layers.source_embedding(source), word_rate, "source_word_dropout")
    states = []
    for index, (encoder, dense) in enumerate(zip(layers.encoders, layers.bridges, strict=True)):
        x, *final = encoder(x)
        states.append(bridge(final, dense))
        x = dropout(x, rate, f"encoder_dropout_{index + 1}")
    if layers.lexical:
        x = keras.layers.Concatenate(name=LEXICAL)([x, embedded])
    keys = layers.attention_keys(x) if layers.attention_keys is not None else x
    rows = layers.lexicon_table(source) if layers.lexicon_table is not None else None
    return Encoded(x, keys, rows), states


def attend(
    layers: Seq2SeqLayers, h: KerasTensor, memory: KerasTensor, keys: KerasTensor
) -> tuple[KerasTensor, KerasTensor]:
    """Attentional state tanh(W[context; h]) and the attention weights (B, T, S)."""
    query = layers.attention_query(h) if layers.attention_query is not None else h
    # Always ask for the weights: Keras cannot build a model from a layer whose calls return
    # differently structured outputs, and the step model needs them for heatmaps.
    context, weights = layers.attention([query, memory, keys], return_attention_scores=True)
    merged = keras.layers.Concatenate(name="attention_concat")([context, h])
    return layers.attention_output(merged), weights


def decode(
    layers: Seq2SeqLayers,
    tokens: KerasTensor,
    encoded: Encoded,
    states: list[list[KerasTensor]],
    rate: float = 0.0,
    word_rate: float = 0.0,
) -> tuple[KerasTensor, list[list[KerasTensor]], KerasTensor | None]:
    """Target ids + initial states -> (logits, final states per layer, attention weights)."""
    y = word_dropout(layers.target_embedding(tokens), word_rate, "target_word_dropout")
    finals = []
    for index, (decoder, initial) in enumerate(zip(layers.decoders, states, strict=True)):
        y, *final = decoder(y, initial_state=initial)
        finals.append(final)
        y = dropout(y, rate, f"decoder_dropout_{index + 1}")
    weights = None
    if layers.attention is not None:
        y, weights = attend(layers, y, encoded.memory, encoded.keys)
    logits = output_logits(layers, y)
    if layers.lexicon_bias is not None:
        logits = layers.lexicon_bias([logits, weights, encoded.lexicon])
    return logits, finals, weights


def output_logits(layers: Seq2SeqLayers, y: KerasTensor) -> KerasTensor:
    """Scores over the target vocabulary: a Dense, or tied to the target embedding."""
    if not isinstance(layers.target_embedding, TiedEmbedding):
        return layers.logits(y)
    if layers.output_projection is not None:
        y = layers.output_projection(y)
    return layers.logits(layers.target_embedding(y, reverse=True))


def token_input(name: str) -> KerasTensor:
    """A (batch, time) int32 id input."""
    return keras.Input(shape=(None,), dtype="int32", name=name)


def training_model(layers: Seq2SeqLayers, rate: float, word_rate: float = 0.0) -> keras.Model:
    """Teacher forcing: (source, BOS + target) -> logits (B, T, tgt_vocab)."""
    source, target_in = token_input(SOURCE), token_input(TARGET_IN)
    encoded, states = encode(layers, source, rate, word_rate)
    logits, _, weights = decode(layers, target_in, encoded, states, rate, word_rate)
    if layers.alignment is not None:
        logits = layers.alignment([logits, weights, encoded.lexicon, source, target_in])
    return keras.Model({SOURCE: source, TARGET_IN: target_in}, logits, name="seq2seq")


def encoder_model(layers: Seq2SeqLayers) -> keras.Model:
    """Source ids -> memory, keys (with attention) and `state_<layer>_<h|c>` outputs."""
    source = token_input(SOURCE)
    encoded, states = encode(layers, source)
    outputs = {
        name: state
        for names, values in zip(layers.state_names(), states, strict=True)
        for name, state in zip(names, values, strict=True)
    }
    if layers.attention is not None:
        outputs[MEMORY] = encoded.memory
        if layers.attention_keys is not None:
            outputs[KEYS] = encoded.keys
    if encoded.lexicon is not None:
        outputs[LEXICON] = encoded.lexicon
    return keras.Model({SOURCE: source}, outputs, name="seq2seq_encoder")


def step_model(layers: Seq2SeqLayers) -> keras.Model:
    """One decoder step: token (B, 1), memory, keys, states -> logits, states, attention."""
    inputs = {TOKEN: keras.Input(shape=(1,), dtype="int32", name=TOKEN)}
    units = [int(layer.units) for layer in layers.decoders]
    for width, names in zip(units, layers.state_names(), strict=True):
        inputs |= {name: keras.Input(shape=(width,), name=name) for name in names}
    memory = keys = lexicon = None
    if layers.attention is not None:
        inputs[MEMORY] = keras.Input(shape=(None, layers.memory_width()), name=MEMORY)
        memory = keys = keras.layers.Masking(0.0, name="memory_mask")(inputs[MEMORY])
        if layers.attention_keys is not None:
            width = int(layers.attention_keys.units)
            keys = inputs[KEYS] = keras.Input(shape=(None, width), name=KEYS)
    if layers.lexicon_table is not None:
        width = layers.lexicon_table.tgt_vocab
        lexicon = inputs[LEXICON] = keras.Input(shape=(None, width), name=LEXICON)
    states = [[inputs[name] for name in names] for names in layers.state_names()]
    encoded = Encoded(memory, keys, lexicon)
    logits, finals, weights = decode(layers, inputs[TOKEN], encoded, states)
    outputs = {LOGITS: logits}
    for names, values in zip(layers.state_names(), finals, strict=True):
        outputs |= dict(zip(names, values, strict=True))
    if weights is not None:
        outputs[ATTENTION] = weights
    return keras.Model(inputs, outputs, name="seq2seq_decoder_step")


# --------------------------------------------------------------------------- entry points


def build_seq2seq(cfg: TranslationTrain, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    """Build the training model and its weight-sharing encoder and step decoder."""
    layers = make_layers(cfg, src_vocab, tgt_vocab)
    model = training_model(layers, cfg.dropout, cfg.word_dropout)
    return Seq2Seq(model, encoder_model(layers), step_model(layers), layers)


def seq2seq_from_model(model: keras.Model) -> Seq2Seq:
    """Rebuild the inference models around a trained training model's layers (by name)."""
    layers = layers_from_model(model)
    return Seq2Seq(model, encoder_model(layers), step_model(layers), layers)
