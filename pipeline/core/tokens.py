"""Token ids and line handling every tokenizer, model and decoder agrees on.

Special ids are fixed for every task: PAD=0 (masked by the models), UNK=1, BOS=2, EOS=3.
Language-model text keeps its line structure through a `<nl>` control symbol appended after
every line.
"""

from __future__ import annotations

from collections.abc import Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE = "<nl>"


def encode_lines(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """Encode text line by line, appending `<nl>` so generation can reproduce line breaks."""
    newline = sp.piece_to_id(NEWLINE)
    ids: list[int] = []
    for line in text.split("\n"):
        ids.extend(sp.encode(line))
        ids.append(newline)
    return ids


def decode_lines(sp: spm.SentencePieceProcessor, ids: Sequence[int]) -> str:
    """Invert `encode_lines`: decode the pieces between `<nl>` ids and join with newlines."""
    newline = sp.piece_to_id(NEWLINE)
    lines: list[list[int]] = [[]]
    for token in ids:
        if token == newline:
            lines.append([])
        else:
            lines[-1].append(int(token))
    if not lines[-1]:
        lines.pop()
    return "\n".join(sp.decode(line) for line in lines)
