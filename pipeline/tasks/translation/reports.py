"""Translation reports: example tables (TSV) and attention heatmaps (PNG, Agg, no pyplot).

`ExampleReporter` is the trainer's per-epoch reporter: it greedy-decodes fixed test sentences
with the model being trained and writes `examples.tsv` and `attention_<i>.png`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.core.tokens import PAD_ID
from pipeline.tasks.translation.decoding import Hypothesis, KerasStepModel
from pipeline.tasks.translation.model import seq2seq_from_model
from pipeline.tasks.translation.translate import Translator

EOS_LABEL = "</s>"


def clean_cell(text: str) -> str:
    """Keep a TSV cell on one line and in one column."""
    return " ".join(text.replace("\t", " ").split())


def write_table(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """Write a tab-separated table with a header row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)]
    lines += ["\t".join(clean_cell(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_attention(
    weights: np.ndarray, source: Sequence[str], output: Sequence[str], path: Path, title: str
) -> Path:
    """Draw output pieces (rows) against source pieces (columns)."""
    fig = Figure(
        figsize=(max(3.5, 0.4 * len(source) + 2.0), max(2.5, 0.32 * len(output) + 1.5)),
        layout="constrained",
    )
    FigureCanvasAgg(fig)  # Agg on this figure only: no pyplot, no global backend switch.
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(source)), list(source), rotation=90, fontsize=8)
    ax.set_yticks(range(len(output)), list(output), fontsize=8)
    ax.set_xlabel("source piece")
    ax.set_ylabel("generated piece")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="attention weight")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def attention_figure(
    translator: Translator, source: np.ndarray, hypothesis: Hypothesis, path: Path, title: str
) -> Path | None:
    """Heatmap of one decoded sentence (None when the model has no attention)."""
    if hypothesis.attention is None:
        return None
    width = int(np.count_nonzero(np.asarray(source) != PAD_ID))
    source_pieces = [translator.source.id_to_piece(int(i)) for i in source[:width]]
    output = [translator.target.id_to_piece(t) for t in hypothesis.tokens]
    if hypothesis.finished:
        output.append(EOS_LABEL)
    weights = hypothesis.attention[: len(output), :width]
    return plot_attention(weights, source_pieces, output, path, title)


class ExampleReporter:
    """Per-epoch examples table and attention heatmaps for fixed sentences (greedy)."""

    def __init__(
        self,
        translator: Translator,
        sources: Sequence[np.ndarray],
        references: Sequence[str],
        examples: int,
        maps: int,
        max_len: int,
    ):
        self.translator, self.max_len = translator, max_len
        count = max(examples, maps)
        self.sources, self.references = list(sources[:count]), list(references[:count])
        self.examples, self.maps = examples, maps

    def _translator_for(self, model: keras.Model) -> Translator:
        """Reuse the inference models built with `model`, else rebuild them around it once."""
        current = self.translator
        if model is not current.seq2seq.model:
            seq2seq = seq2seq_from_model(model)
            step_model = KerasStepModel(seq2seq)
            self.translator = Translator(seq2seq, step_model, current.source, current.target)
        return self.translator

    def __call__(self, model: keras.Model, epoch: int, folder: Path) -> list[Path]:
        """Decode the fixed sentences and write the table and heatmaps into `folder`."""
        if not self.sources:
            return []
        translator = self._translator_for(model)
        hypotheses = translator.decode_ids(self.sources, beam_size=1, max_len=self.max_len)
        texts = translator.detokenize(hypotheses)
        sources = [translator.source.decode(s.tolist()) for s in self.sources]
        paths = []
        if self.examples:
            rows = zip(sources, self.references, texts, strict=True)
            header = ("source", "reference", "hypothesis")
            paths.append(write_table(folder / "examples.tsv", header, list(rows)[: self.examples]))
        for i in range(min(self.maps, len(hypotheses))):
            title = f"epoch {epoch}: {texts[i][:60]}"
            path = folder / f"attention_{i + 1}.png"
            drawn = attention_figure(translator, self.sources[i], hypotheses[i], path, title)
            if drawn is not None:
                paths.append(drawn)
        return paths
