"""Word-for-word translation baseline: a dictionary learned from the training pairs.

Each source word maps to the target word it is most strongly associated with by the Dice
coefficient 2*c(s, t) / (c(s) + c(t)) over sentence co-occurrence (raw co-occurrence counts
would translate everything as "the"). Unknown words, numbers and punctuation are copied, and
source word order is kept, so the score shows what lexical choice alone achieves.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w")
_SPACE_BEFORE = re.compile(r" ([.,!?;:%)’'])")


def words(text: str) -> list[str]:
    """Split into word and punctuation tokens."""
    return _TOKEN.findall(text)


def _content(text: str) -> set[str]:
    """Distinct lowercased word tokens of a sentence (punctuation is not translated)."""
    return {token.lower() for token in words(text) if _WORD.match(token)}


def learn_lexicon(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Map each source word to its best Dice-associated target word."""
    source_count: Counter[str] = Counter()
    target_count: Counter[str] = Counter()
    joint: Counter[tuple[str, str]] = Counter()
    for source, target in pairs:
        src, tgt = _content(source), _content(target)
        source_count.update(src)
        target_count.update(tgt)
        joint.update((s, t) for s in src for t in tgt)
    best: dict[str, tuple[float, str]] = {}
    for (s, t), together in joint.items():
        dice = 2.0 * together / (source_count[s] + target_count[t])
        if (dice, t) > best.get(s, (0.0, "")):
            best[s] = (dice, t)
    return {s: t for s, (_, t) in best.items()}


def translate_words(lexicon: dict[str, str], sentence: str) -> str:
    """Replace every known word, copy the rest, and tidy spacing and capitalisation."""
    out = [lexicon.get(token.lower(), token) for token in words(sentence)]
    text = _SPACE_BEFORE.sub(r"\1", " ".join(out))
    return text[:1].upper() + text[1:]


def translate_all(lexicon: dict[str, str], sentences: Sequence[str]) -> list[str]:
    """Word-for-word translations of many sentences."""
    return [translate_words(lexicon, sentence) for sentence in sentences]
