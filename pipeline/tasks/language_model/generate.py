"""Sample text from a trained language model, reproducibly.

Each step feeds the last `context` tokens (the training window, `max_len`) to the model from a
zero state — exactly how it saw text in training — and samples the next token on the CPU with a
seeded numpy Generator from softmax(logits / temperature), optionally restricted to the `top_k`
most likely tokens. Control ids (PAD, UNK, BOS, EOS) are never sampled; prompt characters the
tokenizer does not know become UNK and are still read as context.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import sentencepiece as spm
import tensorflow as tf

from pipeline.core.corpus import TOKENIZER
from pipeline.core.saved import load_model
from pipeline.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID, decode_lines, encode_lines
from pipeline.tasks.language_model import model as _custom_layers  # noqa: F401  (registers them)

NEVER_SAMPLED = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def load_generator(model_dir: Path) -> tuple[keras.Model, spm.SentencePieceProcessor]:
    """Load the model and tokenizer that `train language_model` wrote to `model_dir`."""
    model = load_model(model_dir)
    return model, spm.SentencePieceProcessor(model_file=str(model_dir / TOKENIZER))


def encode_prompt(sp: spm.SentencePieceProcessor, prompt: str) -> list[int]:
    """Encode like the training text, but leave the last line open so the model continues it."""
    return encode_lines(sp, prompt)[:-1]


def next_token_function(model: keras.Model) -> tf.types.experimental.PolymorphicFunction:
    """Last-position logits as one traced graph for any context length (eager is ~40x slower)."""
    return tf.function(
        lambda ids: model(ids, training=False)[:, -1, :],
        input_signature=[tf.TensorSpec([1, None], tf.int32)],
    )


def sampling_distribution(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """Softmax of logits / temperature over the allowed (and top-k) tokens, in float64."""
    scores = logits.astype(np.float64) / temperature
    scores[[i for i in NEVER_SAMPLED if i < len(scores)]] = -np.inf
    if top_k is not None and top_k < len(scores):
        threshold = np.partition(scores, -top_k)[-top_k]
        scores[scores < threshold] = -np.inf
    scores -= scores.max()
    probs = np.exp(scores)
    return probs / probs.sum()


def sample_ids(
    model: keras.Model,
    prime: list[int],
    tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    context: int | None = None,
) -> list[int]:
    """Sample exactly `tokens` new ids after `prime` (which must not be empty)."""
    if not prime:
        raise ValueError("sampling needs at least one token of context")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    step = next_token_function(model)
    rng = np.random.default_rng(seed)
    ids, new = list(prime), []
    for _ in range(tokens):
        window = np.asarray([ids[-context:] if context else ids], dtype=np.int32)
        probs = sampling_distribution(step(window)[0].numpy(), temperature, top_k)
        token = int(rng.choice(len(probs), p=probs))
        ids.append(token)
        new.append(token)
    return new


def generate(
    model: keras.Model,
    sp: spm.SentencePieceProcessor,
    prompt: str,
    tokens: int,
    temperature: float,
    top_k: int | None = None,
    seed: int = 0,
    context: int | None = None,
) -> str:
    """Return the prompt followed by `tokens` sampled subword tokens, decoded as text."""
    prime = encode_prompt(sp, prompt)
    start = prime or [sp.piece_to_id("<nl>")]  # an empty prompt starts at a line break
    new = sample_ids(model, start, tokens, temperature, top_k, seed, context)
    if not prime:
        return decode_lines(sp, new)
    # Decode prompt and continuation together so the space between them is kept.
    head, full = decode_lines(sp, prime), decode_lines(sp, prime + new)
    continuation = full[len(head) :] if full.startswith(head) else decode_lines(sp, new)
    return prompt + continuation
