"""Sampling: seeded determinism, exact token counts, unknown prompt characters, reloading."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import sentencepiece as spm

from pipeline.core.tokens import NEWLINE, UNK_ID, decode_lines
from pipeline.params import LanguageModelTrain, SentencePieceParams
from pipeline.tasks.language_model.generate import (
    NEVER_SAMPLED,
    encode_prompt,
    generate,
    load_generator,
    sample_ids,
    sampling_distribution,
)
from pipeline.tasks.language_model.model import build_language_model
from pipeline.tokenize import train_sentencepiece

LINES = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief,
That thou her maid art far more fair than she.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name.""".split("\n")


@pytest.fixture(scope="module")
def sp() -> spm.SentencePieceProcessor:
    cfg = SentencePieceParams(vocab_size=80, model_type="unigram")
    return train_sentencepiece([line for line in LINES if line] * 5, cfg, [NEWLINE])


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model(request, sp) -> keras.Model:
    keras.utils.set_random_seed(0)
    cfg = LanguageModelTrain(units=12, embedding_dim=8, tie_embeddings=request.param)
    return build_language_model(cfg, sp.get_piece_size())


def test_same_seed_same_text_other_seed_other_text(model, sp) -> None:
    first = generate(model, sp, "ROMEO:", tokens=25, temperature=1.0, seed=7)
    assert first == generate(model, sp, "ROMEO:", tokens=25, temperature=1.0, seed=7)
    assert first != generate(model, sp, "ROMEO:", tokens=25, temperature=1.0, seed=8)
    assert first.startswith("ROMEO:")


@pytest.mark.parametrize("tokens", [1, 13])
def test_samples_exactly_the_requested_tokens(model, sp, tokens: int) -> None:
    prime = encode_prompt(sp, "JULIET:")
    new = sample_ids(model, prime, tokens, temperature=1.0, top_k=None, seed=3, context=4)
    assert len(new) == tokens
    assert not set(new) & set(NEVER_SAMPLED)
    text = generate(model, sp, "JULIET:", tokens, temperature=1.0, seed=3, context=4)
    assert text == decode_lines(sp, prime + new)


def test_unknown_prompt_characters_become_unk(model, sp) -> None:
    prompt = "ROMEO ☃ Ωμέγα:"
    assert UNK_ID in encode_prompt(sp, prompt)
    text = generate(model, sp, prompt, tokens=5, temperature=0.8, seed=0)
    assert text.startswith(prompt)
    assert len(text) > len(prompt)


def test_empty_prompt_starts_a_line(model, sp) -> None:
    assert generate(model, sp, "", tokens=5, temperature=1.0, seed=0)


def test_top_1_is_greedy_whatever_the_seed(model, sp) -> None:
    texts = {generate(model, sp, "ROMEO:", 10, temperature=1.0, top_k=1, seed=s) for s in range(3)}
    assert len(texts) == 1


def test_sampling_distribution_temperature_top_k_and_banned_ids() -> None:
    logits = np.array([9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0])
    probs = sampling_distribution(logits, temperature=1.0, top_k=None)
    assert probs[list(NEVER_SAMPLED)].sum() == 0
    np.testing.assert_allclose(probs[4:], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    top2 = sampling_distribution(logits, temperature=0.5, top_k=2)
    np.testing.assert_allclose(top2[4:], [0, 1 / (1 + np.e**2), np.e**2 / (1 + np.e**2)])
    with pytest.raises(ValueError, match="temperature"):
        sample_ids(None, [5], 1, temperature=0.0, top_k=None, seed=0)


def test_saved_model_generates_the_same_text(model, sp, tmp_path: Path) -> None:
    model.save(tmp_path / "model.keras")
    (tmp_path / "spm.model").write_bytes(sp.serialized_model_proto())
    loaded, loaded_sp = load_generator(tmp_path)
    expected = generate(model, sp, "ROMEO:", 20, temperature=0.9, seed=5)
    assert generate(loaded, loaded_sp, "ROMEO:", 20, temperature=0.9, seed=5) == expected
