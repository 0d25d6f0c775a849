"""Tests for espnet2_birq.features and espnet2_birq.bin.extract_fbank."""

import os
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import torchaudio.compliance.kaldi as ta_kaldi
from typeguard import TypeCheckError

from espnet2_birq.bin import extract_fbank as ef
from espnet2_birq.features import KaldiFbankFrontend, kaldi_fbank, kaldi_fbank_batch, num_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_int16(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Sine + noise as int16 samples with shape (T,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.05 * rng.standard_normal(
        t.shape
    )
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def write_wav(path, seconds, sr=16000, seed=0) -> np.ndarray:
    data = make_int16(seconds, sr, seed)
    soundfile.write(str(path), data, sr, subtype="PCM_16")
    return data


def direct_fbank(int16: np.ndarray) -> torch.Tensor:
    """Reference: torchaudio's Kaldi fbank on int16-range samples, (L, 80)."""
    return ta_kaldi.fbank(
        torch.from_numpy(int16.astype(np.float32)).unsqueeze(0),
        num_mel_bins=80,
        frame_length=25.0,
        frame_shift=10.0,
        dither=0.0,
        sample_frequency=16000.0,
    )


def write_map(path, items):
    with open(path, "w") as f:
        for k, v in items:
            f.write(f"{k} {v}\n")


@pytest.fixture
def data_dir(tmp_path):
    """Three utterances: plain paths and a Kaldi pipe command."""
    d = tmp_path / "data"
    d.mkdir()
    audio = {}
    for i, sec in enumerate([1.0, 0.73, 1.31]):
        p = tmp_path / f"u{i}.wav"
        audio[f"spk-u{i}"] = (write_wav(p, sec, seed=i), p)
    items = [
        ("spk-u0", str(audio["spk-u0"][1])),
        ("spk-u1", f"cat {audio['spk-u1'][1]} |"),
        ("spk-u2", str(audio["spk-u2"][1])),
    ]
    write_map(d / "wav.scp", items)
    return d, {k: v[0] for k, v in audio.items()}


def test_num_frames_matches_fbank():
    for n in [0, 399, 400, 401, 559, 560, 16000, 12345]:
        wav = torch.from_numpy(make_int16(n / 16000 + 1e-9)[:n].astype(np.float32))
        wav = wav[:n] / 32768.0
        assert wav.numel() == n
        feats = kaldi_fbank(wav, 16000)
        assert feats.shape == (num_frames(n), 80)
    assert num_frames(400) == 1 and num_frames(559) == 1 and num_frames(560) == 2
    assert num_frames(16000) == 98


def test_kaldi_fbank_rejects_wrong_rate():
    with pytest.raises(ValueError, match="8000 Hz"):
        kaldi_fbank(torch.zeros(8000), 8000)


def test_extract_equals_direct_fbank(data_dir, tmp_path):
    d, audio = data_dir
    out = tmp_path / "dump"
    rc = ef.main(["--data_dir", str(d), "--out_dir", str(out), "--name", "feats.2"])
    assert rc == 0
    feats = dict(kaldiio.load_scp(str(out / "feats.2.scp")))
    assert sorted(feats) == sorted(audio)
    u2nf = dict(line.split() for line in open(out / "utt2num_frames.2"))
    for utt, int16 in audio.items():
        ref = direct_fbank(int16)
        assert torch.equal(torch.from_numpy(feats[utt].copy()), ref), utt
        assert int(u2nf[utt]) == ref.shape[0] == num_frames(len(int16))
    assert (out / "bad_utts.2").read_text() == ""

    # Re-running replaces the outputs instead of appending; no temp files left.
    scp_before = (out / "feats.2.scp").read_text()
    assert ef.main(["--data_dir", str(d), "--out_dir", str(out), "--name", "feats.2"]) == 0
    assert (out / "feats.2.scp").read_text() == scp_before
    assert sorted(os.listdir(out)) == [
        "bad_utts.2",
        "feats.2.ark",
        "feats.2.scp",
        "utt2num_frames.2",
    ]


def test_frontend_equals_precomputed(data_dir, tmp_path):
    d, audio = data_dir
    out = tmp_path / "dump"
    ef.extract(str(d), str(out), "feats.1")
    feats = dict(kaldiio.load_scp(str(out / "feats.1.scp")))
    keys = sorted(audio)
    lengths = [len(audio[k]) for k in keys]
    batch = torch.zeros(len(keys), max(lengths))
    for b, k in enumerate(keys):
        # soundfile-style float input in [-1, 1]
        batch[b, : lengths[b]] = torch.from_numpy(audio[k].astype(np.float32) / 32768)
    fe = KaldiFbankFrontend(fs=16000, n_mels=80).eval()
    assert fe.output_size() == 80
    out_feats, out_lens = fe(batch, torch.tensor(lengths))
    assert out_feats.shape == (3, max(num_frames(n) for n in lengths), 80)
    for b, k in enumerate(keys):
        n = int(out_lens[b])
        assert n == feats[k].shape[0]
        # the batched frontend does kaldi_fbank's operations in its order: on the CPU, exactly
        assert torch.equal(out_feats[b, :n], torch.from_numpy(feats[k].copy())), k
        assert torch.all(out_feats[b, n:] == 0)


def test_frontend_is_typechecked():
    with pytest.raises(TypeCheckError):
        KaldiFbankFrontend(fs="16000")
    with pytest.raises(TypeCheckError):
        KaldiFbankFrontend(n_mels=80.0)


def test_other_sample_rate_is_resampled_and_listed(tmp_path):
    """A recording at another rate is resampled to --fs (not refused, not dropped) and
    listed with its rate and file (tests/test_resample.py checks the features)."""
    d = tmp_path / "data"
    d.mkdir()
    write_wav(tmp_path / "ok.wav", 0.5)
    write_wav(tmp_path / "low.wav", 0.5, sr=8000)
    write_map(
        d / "wav.scp",
        [("utt_ok", tmp_path / "ok.wav"), ("utt_8k", tmp_path / "low.wav")],
    )
    result = ef.extract(str(d), str(tmp_path / "dump"), "feats.1")
    assert result == {"done": 2, "skipped": 0, "total": 2}
    feats = dict(kaldiio.load_scp(str(tmp_path / "dump" / "feats.1.scp")))
    assert sorted(feats) == ["utt_8k", "utt_ok"]
    assert abs(feats["utt_8k"].shape[0] - feats["utt_ok"].shape[0]) <= 1  # 0.5 s each
    listed = (tmp_path / "dump" / "resampled.1").read_text().split("\t")
    assert listed[:2] == ["utt_8k", "8000"] and listed[2].strip().endswith("low.wav")


def test_segments(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rec = write_wav(tmp_path / "rec.wav", 3.0, seed=5)
    write_map(d / "wav.scp", [("rec1", tmp_path / "rec.wav")])
    segs = [("rec1-a", "rec1 0.12 1.07"), ("rec1-b", "rec1 1.5 -1"), ("rec1-c", "rec1 2.0 3.2")]
    write_map(d / "segments", segs)
    out = tmp_path / "dump"
    ef.extract(str(d), str(out), "feats.1")
    feats = dict(kaldiio.load_scp(str(out / "feats.1.scp")))
    expected = {
        "rec1-a": rec[int(0.12 * 16000) : int(1.07 * 16000)],
        "rec1-b": rec[int(1.5 * 16000) :],
        "rec1-c": rec[int(2.0 * 16000) :],  # 0.2 s overshoot is truncated (Kaldi)
    }
    for utt, samples in expected.items():
        assert torch.equal(torch.from_numpy(feats[utt].copy()), direct_fbank(samples)), utt

    # A segment far beyond the recording end is bad audio, named.
    write_map(d / "segments", segs + [("rec1-d", "rec1 2.5 4.0")])
    with pytest.raises(ef.BadAudioError, match="rec1-d"):
        ef.extract(str(d), str(out), "feats.1")
    # A segment whose recording is unknown is a data-dir error, named.
    write_map(d / "segments", segs + [("x-1", "nosuchrec 0 1")])
    with pytest.raises(ef.DataDirError, match="nosuchrec"):
        ef.extract(str(d), str(out), "feats.1")


def test_skip_bad_audio_and_merge(tmp_path):
    full = tmp_path / "data"
    full.mkdir()
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    write_wav(tmp_path / "short.wav", 0.01)  # 160 samples: no frames
    items = []
    for i in range(4):
        write_wav(tmp_path / f"g{i}.wav", 0.5, seed=i)
        items.append((f"good{i}", tmp_path / f"g{i}.wav"))
    items += [
        ("bad_missing", tmp_path / "missing.wav"),
        ("bad_corrupt", tmp_path / "corrupt.wav"),
        ("bad_short", tmp_path / "short.wav"),
        ("bad_pipe", "false |"),
    ]
    write_map(full / "wav.scp", items)
    # Manual split in two jobs.
    split = {1: items[:2] + items[4:6], 2: items[2:4] + items[6:]}
    for j, its in split.items():
        sd = full / "split2" / str(j)
        sd.mkdir(parents=True)
        write_map(sd / "wav.scp", its)
    out = tmp_path / "dump"

    with pytest.raises(ef.BadAudioError) as exc:
        ef.extract(str(full / "split2" / "1"), str(out), "feats.1")
    assert "bad_missing" in str(exc.value) and "missing.wav" in str(exc.value)
    assert "--skip_bad_audio" in str(exc.value)
    for name, spec in [("bad_corrupt", "corrupt.wav"), ("bad_short", "short.wav")]:
        d1 = tmp_path / f"only_{name}"
        d1.mkdir()
        write_map(d1 / "wav.scp", [(name, tmp_path / spec)])
        with pytest.raises(ef.BadAudioError, match=name):
            ef.extract(str(d1), str(out / name), "feats.1")

    r1 = ef.extract(str(full / "split2" / "1"), str(out), "feats.1", skip_bad_audio=True)
    r2 = ef.main(
        [
            "--data_dir", str(full / "split2" / "2"), "--out_dir", str(out),
            "--name", "feats.2", "--skip_bad_audio", "true",
        ]
    )
    assert r1 == {"done": 2, "skipped": 2, "total": 4}
    assert r2 == 0
    bad2 = (out / "bad_utts.2").read_text().splitlines()
    assert [b.split("\t")[0] for b in bad2] == ["bad_short", "bad_pipe"]

    res = ef.merge(str(out), 2, data_dir=str(full))
    assert res == {"utts": 4, "skipped": 4}
    scp_keys = [line.split()[0] for line in open(out / "feats.scp")]
    assert scp_keys == sorted(f"good{i}" for i in range(4))
    shapes = (out / "feats_shape").read_text().splitlines()
    assert shapes == [f"good{i} {num_frames(8000)},80" for i in range(4)]
    u2nf = (out / "utt2num_frames").read_text().splitlines()
    assert u2nf == [f"good{i} {num_frames(8000)}" for i in range(4)]
    feats = dict(kaldiio.load_scp(str(out / "feats.scp")))
    assert feats["good3"].shape == (num_frames(8000), 80)

    # An utterance of the data dir that no job accounts for is reported.
    with open(full / "wav.scp", "a") as f:
        f.write(f"never_extracted {tmp_path / 'g0.wav'}\n")
    with pytest.raises(ef.DataDirError, match="never_extracted"):
        ef.merge(str(out), 2, data_dir=str(full))
    # A missing job output is reported.
    os.remove(out / "utt2num_frames.2")
    with pytest.raises(ef.DataDirError, match="utt2num_frames.2"):
        ef.merge(str(out), 2)


def test_cli_module_entry_point(data_dir, tmp_path):
    d, audio = data_dir
    out = tmp_path / "dump"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "espnet2_birq.bin.extract_fbank", "--data_dir", str(d),
         "--out_dir", str(out), "--name", "feats.1", "--fs", "8000"],
        capture_output=True, text=True, env=env,
    )
    # the 16 kHz corpus is resampled to --fs 8000, every recording counted
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "to 8000 Hz" in proc.stderr and (out / "resampled.1").is_file()
    assert "spk-u0" in (out / "resampled.1").read_text()


def test_wav_scp_ark_offset_entries(tmp_path):
    """wav.scp values of the form 'wav.ark:offset' (Kaldi/kaldiio wav arks)."""
    int16 = {f"a{i}": make_int16(0.6 + 0.1 * i, seed=i) for i in range(2)}
    kaldiio.save_ark(
        str(tmp_path / "wav.ark"),
        {k: (16000, v) for k, v in int16.items()},
        scp=str(tmp_path / "wav_ark.scp"),
    )
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text((tmp_path / "wav_ark.scp").read_text())
    ef.extract(str(d), str(tmp_path / "dump"), "feats.1")
    feats = dict(kaldiio.load_scp(str(tmp_path / "dump" / "feats.1.scp")))
    for k, v in int16.items():
        assert torch.equal(torch.from_numpy(feats[k].copy()), direct_fbank(v)), k


def test_every_bad_utterance_of_a_job_is_listed_at_once(tmp_path):
    """Not only the first: a user fixes them all in one go."""
    d = tmp_path / "data"
    d.mkdir()
    write_wav(tmp_path / "ok.wav", 0.5)
    write_wav(tmp_path / "short.wav", 0.005)
    nan = make_int16(0.5).astype(np.float32) / 32768
    nan[10] = np.nan
    soundfile.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    write_wav(tmp_path / "low.wav", 0.5, sr=8000)
    write_map(d / "wav.scp", [("a_nan", tmp_path / "nan.wav"), ("b_short", tmp_path / "short.wav"),
                              ("c_ok", tmp_path / "ok.wav"), ("d_low", tmp_path / "low.wav"),
                              ("e_missing", tmp_path / "missing.wav")])
    with pytest.raises(ef.BadAudioError) as exc:
        ef.extract(str(d), str(tmp_path / "dump"), "feats.1")
    msg = str(exc.value)
    assert msg.startswith("3 utterance(s) with bad audio")
    for utt in ("a_nan", "b_short", "e_missing"):
        assert utt in msg
    assert "d_low" not in msg  # another rate is resampled, not bad audio
    assert "NaN or inf samples" in msg
    assert "--skip_bad_audio true" in msg
    # with the skip option the NaN, short and missing ones are dropped, the 8 kHz one resampled
    result = ef.extract(str(d), str(tmp_path / "dump"), "feats.1", skip_bad_audio=True)
    assert result == {"done": 2, "skipped": 3, "total": 5}
    write_map(d / "wav.scp", [("a_nan", tmp_path / "nan.wav"), ("c_ok", tmp_path / "ok.wav")])
    assert ef.extract(str(d), str(tmp_path / "dump"), "feats.1", skip_bad_audio=True)["skipped"] == 1
    assert (tmp_path / "dump" / "bad_utts.1").read_text().startswith("a_nan\taudio holds NaN or inf samples")


def test_path_with_spaces_is_read(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    odd = tmp_path / "a dir with spaces"
    odd.mkdir()
    audio = write_wav(odd / "x y.wav", 0.3)
    write_map(d / "wav.scp", [("u1", odd / "x y.wav")])
    ef.extract(str(d), str(tmp_path / "dump"), "feats.1")
    feats = dict(kaldiio.load_scp(str(tmp_path / "dump" / "feats.1.scp")))
    assert torch.equal(torch.from_numpy(feats["u1"].copy()), direct_fbank(audio))


def test_audio_shorter_than_min_frames_is_bad_audio(tmp_path):
    """0.1 s gives 8 frames: fine for the filterbank, too short for conv2d8 subsampling
    (ESPnet's TooShortUttError in the middle of training, naming no utterance)."""
    d = tmp_path / "data"
    d.mkdir()
    write_wav(tmp_path / "brief.wav", 0.1)
    write_wav(tmp_path / "ok.wav", 0.5)
    write_map(d / "wav.scp", [("brief", tmp_path / "brief.wav"), ("ok", tmp_path / "ok.wav")])
    assert ef.extract(str(d), str(tmp_path / "dump"), "feats.1")["done"] == 2  # default: one frame is enough
    with pytest.raises(ef.BadAudioError, match=r"brief.*shorter than 15 frames \(--min_frames"):
        ef.extract(str(d), str(tmp_path / "dump"), "feats.1", min_frames=15)
    assert ef.main(["check", "--data_dir", str(d), "--out_dir", str(tmp_path / "raw"), "--name", "wav.1",
                    "--min_frames", "15", "--skip_bad_audio", "true"]) == 0
    assert (tmp_path / "raw" / "wav.1.scp").read_text().split()[0] == "ok"
    assert (tmp_path / "raw" / "bad_utts.1").read_text().startswith("brief\t")


# ------------------------------------------------------------- batched frontend
def per_utterance_frontend(batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The frontend as it was: kaldi_fbank of each utterance, zero-padded to the longest."""
    feats = [kaldi_fbank(batch[b, : int(n)], 16000, expected_sample_rate=None) for b, n in enumerate(lengths)]
    out = torch.zeros(len(feats), max(f.shape[0] for f in feats), 80, dtype=feats[0].dtype)
    for b, f in enumerate(feats):
        out[b, : f.shape[0]] = f
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batched_fbank_equals_per_utterance_on_random_batches(seed):
    """Random batches of different lengths, padding holding garbage (not zeros), lengths
    shorter than one window, exactly one window, one sample short of a new frame."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(401, 3 * 16000, (5,), generator=g)
    lengths[1] = [399, 400, 559, 560][seed]
    lengths[2] = 0 if seed == 0 else lengths[2]
    batch = (torch.rand(5, int(lengths.max()), generator=g) * 2 - 1) * 0.4
    for b, n in enumerate(lengths):
        batch[b, int(n):] = 7.0  # what lies beyond an utterance must not matter
    reference = per_utterance_frontend(batch, lengths)
    feats, feats_lengths = KaldiFbankFrontend().eval()(batch, lengths)
    assert feats_lengths.tolist() == [num_frames(int(n)) for n in lengths]
    assert feats.shape == reference.shape
    torch.testing.assert_close(feats, reference, rtol=0, atol=1e-5)


def test_batched_fbank_keeps_dtype_and_takes_integer_audio():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4000, 3211])
    batch = torch.rand(2, 4000, generator=g, dtype=torch.float64) - 0.5
    feats, _ = kaldi_fbank_batch(batch, lengths)
    assert feats.dtype == torch.float64
    torch.testing.assert_close(feats, per_utterance_frontend(batch, lengths), rtol=0, atol=1e-9)
    ints = (batch * 1000).round().to(torch.int16)
    feats, _ = kaldi_fbank_batch(ints, lengths)
    assert feats.dtype == torch.float32


def test_batched_fbank_of_a_batch_shorter_than_one_window():
    feats, lengths = kaldi_fbank_batch(torch.zeros(3, 399), torch.tensor([399, 10, 0]))
    assert feats.shape == (3, 0, 80) and lengths.tolist() == [0, 0, 0]


def test_frontend_ignores_autocast():
    """Mixed precision would change the numbers (a float16 power spectrum overflows)."""
    g = torch.Generator().manual_seed(1)
    batch = torch.rand(2, 8000, generator=g) - 0.5
    lengths = torch.tensor([8000, 6000])
    frontend = KaldiFbankFrontend().eval()
    plain, _ = frontend(batch, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = frontend(batch, lengths)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)


def test_frontend_reads_no_lengths_back(monkeypatch):
    """No host synchronisation per batch: the frames per utterance stay on the device."""
    import sys

    reads = []
    for method in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
        original = getattr(torch.Tensor, method)

        def spy(self, *args, _original=original, _method=method, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith("features.py"):
                reads.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    KaldiFbankFrontend().eval()(torch.rand(3, 5000) - 0.5, torch.tensor([5000, 4000, 100]))
    assert reads == []


def test_frontend_dither_only_in_training():
    g = torch.Generator().manual_seed(2)
    batch = torch.rand(2, 8000, generator=g) - 0.5
    lengths = torch.tensor([8000, 8000])
    frontend = KaldiFbankFrontend(dither=1.0)
    eval_a, _ = frontend.eval()(batch, lengths)
    eval_b, _ = frontend(batch, lengths)
    assert torch.equal(eval_a, eval_b)
    train, _ = frontend.train()(batch, lengths)
    assert not torch.equal(train, eval_a)
    torch.testing.assert_close(train, eval_a, rtol=0, atol=0.5)
