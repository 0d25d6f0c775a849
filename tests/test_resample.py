"""Audio at another sampling rate than ``--fs`` is resampled to it, not refused.

Stage 2 resamples such recordings as it reads them (``espnet2_birq.bin.extract_fbank``:
libsoxr, the resampler of sox's ``rate`` effect), counts them in a warning and lists
them in ``<out>/resampled``: when it computes the fbank (``--feats_type fbank``), and,
for the audio SSL training reads raw (``--feats_type raw``), as copies at ``--fs`` that
``wav.scp`` points to, because ESPnet's ``sound`` loader opens files and cannot run a
Kaldi ``sox ... |`` pipe.

Signals are two low-frequency tones (440 Hz and 1012 Hz, well inside every band
involved), generated at each rate from the same continuous-time formula, so the
resampled audio should give the features of the tones generated at 16 kHz.
"""

import logging
import os
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from espnet2_birq.bin import extract_fbank as ef
from espnet2_birq.features import KaldiFbankFrontend, kaldi_fbank, num_frames

FS = 16000


def tones(rate: int, sec: float = 1.0) -> np.ndarray:
    t = np.arange(int(round(sec * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1012 * t)).astype(np.float32)


def write_corpus(root: Path, recordings, segments=None) -> Path:
    """A data dir: ``recordings`` maps id -> (rate, subtype) of a file of the tones."""
    data = root / "data"
    data.mkdir(parents=True)
    wav = []
    for rec, (rate, subtype) in sorted(recordings.items()):
        path = root / f"{rec}.wav"
        soundfile.write(path, tones(rate), rate, subtype=subtype)
        wav.append(f"{rec} {path}\n")
    (data / "wav.scp").write_text("".join(wav))
    utts = sorted(segments) if segments else sorted(recordings)
    (data / "utt2spk").write_text("".join(f"{u} {u}\n" for u in utts))
    (data / "spk2utt").write_text("".join(f"{u} {u}\n" for u in utts))
    if segments:
        (data / "segments").write_text("".join(f"{u} {segments[u]}\n" for u in utts))
    return data


def features(scp: Path):
    return {k: np.array(v) for k, v in kaldiio.load_scp_sequential(str(scp))}


def signal_bins(ref: np.ndarray, within_db: float) -> np.ndarray:
    """The (frame, bin) cells of log-mel ``ref`` within ``within_db`` of their frame's peak."""
    return ref > ref.max(axis=1, keepdims=True) - within_db * np.log(10) / 10


# --------------------------------------------------------------------------
# --feats_type fbank: resampled when read
# --------------------------------------------------------------------------


def test_fbank_of_8k_and_22k_audio_is_that_of_the_16k_signal(tmp_path, caplog):
    data = write_corpus(tmp_path, {"lo": (8000, "FLOAT"), "hi": (22050, "FLOAT"), "ref": (FS, "FLOAT")})
    dump = tmp_path / "dump"
    with caplog.at_level(logging.WARNING, logger="espnet2_birq.extract_fbank"):
        counts = ef.extract(str(data), str(dump), "feats.1", fs=FS)
    assert counts == {"done": 3, "skipped": 0, "total": 3}
    assert f"feats.1: resampled 2 of 3 recording(s) from another sampling rate to {FS} Hz" in caplog.text
    assert (dump / "resampled.1").read_text() == (f"hi\t22050\t{tmp_path}/hi.wav\n"
                                                  f"lo\t8000\t{tmp_path}/lo.wav\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="espnet2_birq.extract_fbank"):
        ef.merge(str(dump), 1, data_dir=str(data))
    assert "2 recording(s) at another sampling rate were resampled" in caplog.text
    assert [line.split("\t")[:2] for line in (dump / "resampled").read_text().splitlines()] == [
        ["hi", "22050"], ["lo", "8000"]]
    feats = features(dump / "feats.scp")
    ref = feats["ref"]
    assert ref.shape == (num_frames(FS), 80)
    for rec in ("lo", "hi"):
        assert feats[rec].shape == ref.shape
        # Where the tones are (within 60 dB of each frame's peak bin), the features agree
        # to 5e-3 in log-mel (0.02 dB): libsoxr's HQ passband is flat far beyond that, and
        # its linear phase keeps the frames aligned; measured 1.2e-3 at most, in the first
        # frame (the filter's edge transient). Further down, the bins hold the analysis
        # window's leakage and the resampler's stopband residue (-100 dB and below), which
        # differ with the source rate.
        mask = signal_bins(ref, 60)
        assert mask.sum() > 20 * len(ref)
        np.testing.assert_allclose(feats[rec][mask], ref[mask], atol=5e-3, rtol=0)


def test_16bit_audio_is_resampled_onto_the_16bit_grid(tmp_path):
    """A 16-bit source gives 16-bit samples at --fs (as a resampled 16-bit file holds
    them, e.g. sox's): the band above the source's Nyquist frequency then carries 16-bit
    quantisation noise like audio recorded at --fs, not nothing. Float sources stay float."""
    for rate, subtype in ((8000, "PCM_16"), (22050, "PCM_16"), (8000, "PCM_U8"), (8000, "ULAW")):
        path = tmp_path / f"{rate}_{subtype}.wav"
        soundfile.write(path, tones(rate), rate, subtype=subtype)
        data, rate_read, fine = ef.load_audio_at(str(path), FS)
        assert rate_read == rate and not fine and data.dtype == np.float32
        assert data.shape == (FS, 1)
        np.testing.assert_array_equal(data * 32768, np.round(data * 32768))
    path = tmp_path / "float.wav"
    soundfile.write(path, tones(8000), 8000, subtype="FLOAT")
    data, _, fine = ef.load_audio_at(str(path), FS)
    assert fine and not np.array_equal(data * 32768, np.round(data * 32768))
    # features of the resampled 16-bit tones vs the tones written at 16 kHz, 16-bit: where
    # the tones are (40 dB), within 1e-2 (measured 2.2e-3: 16-bit quantisation noise of
    # both files, about -101 dBFS, is no longer negligible 40 dB below the peaks)
    data = write_corpus(tmp_path / "c", {"lo": (8000, "PCM_16"), "hi": (22050, "PCM_16"), "ref": (FS, "PCM_16")})
    ef.extract(str(data), str(tmp_path / "dump"), "feats.1", fs=FS)
    feats = features(tmp_path / "dump" / "feats.1.scp")
    mask = signal_bins(feats["ref"], 40)
    for rec in ("lo", "hi"):
        np.testing.assert_allclose(feats[rec][mask], feats["ref"][mask], atol=1e-2, rtol=0)


def test_segments_of_a_resampled_recording_in_two_jobs(tmp_path):
    """Segment times count at --fs; a recording whose segments are in two jobs is listed once."""
    data = write_corpus(tmp_path, {"rec": (8000, "PCM_16")},
                        segments={"rec-a": "rec 0.00 0.40", "rec-b": "rec 0.40 1.00"})
    dump = tmp_path / "dump"
    for job, utt in ((1, "rec-a"), (2, "rec-b")):
        part = tmp_path / f"split/{job}"
        part.mkdir(parents=True)
        (part / "wav.scp").write_text((data / "wav.scp").read_text())
        (part / "utt2spk").write_text(f"{utt} {utt}\n")
        (part / "segments").write_text("".join(line + "\n" for line in (data / "segments").read_text().splitlines()
                                               if line.startswith(utt)))
        ef.extract(str(part), str(dump), f"feats.{job}", fs=FS)
        assert (dump / f"resampled.{job}").read_text() == f"rec\t8000\t{tmp_path}/rec.wav\n"
    ef.merge(str(dump), 2, data_dir=str(data))
    assert (dump / "resampled").read_text() == f"rec\t8000\t{tmp_path}/rec.wav\n"
    frames = dict(line.split() for line in (dump / "utt2num_frames").read_text().splitlines())
    assert frames == {"rec-a": str(num_frames(int(0.4 * FS))), "rec-b": str(num_frames(int(0.6 * FS)))}


def test_unreadable_audio_is_still_named_among_resampled_recordings(tmp_path):
    data = write_corpus(tmp_path, {"lo": (8000, "PCM_16"), "ok": (FS, "PCM_16")})
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (data / "wav.scp").write_text((data / "wav.scp").read_text() + f"zz_broken {tmp_path}/broken.wav\n")
    (data / "utt2spk").write_text((data / "utt2spk").read_text() + "zz_broken zz_broken\n")
    for out, run in ((tmp_path / "dump", lambda **kw: ef.extract(str(data), str(tmp_path / "dump"), "feats.1",
                                                                  fs=FS, **kw)),
                     (tmp_path / "raw", lambda **kw: ef.check_raw(str(data), str(tmp_path / "raw"), "wav.1",
                                                                 fs=FS, **kw))):
        with pytest.raises(ef.BadAudioError) as exc:
            run()
        msg = str(exc.value)
        assert msg.startswith("1 utterance(s) with bad audio")
        assert "zz_broken" in msg and f"{tmp_path}/broken.wav" in msg and "cannot decode" in msg
        assert "'lo'" not in msg  # the 8 kHz recording is not an error
        assert run(skip_bad_audio=True) == {"done": 2, "skipped": 1, "total": 3}
        assert (out / "resampled.1").read_text() == f"lo\t8000\t{tmp_path}/lo.wav\n"
        assert (out / "bad_utts.1").read_text().startswith("zz_broken\t")


# --------------------------------------------------------------------------
# --feats_type raw: resampled copies that ESPnet's sound loader reads
# --------------------------------------------------------------------------


def test_raw_mode_points_wav_scp_at_resampled_copies_the_sound_loader_reads(tmp_path, caplog):
    from espnet2.fileio.sound_scp import SoundScpReader
    from espnet2.train.dataset import sound_loader

    recordings = {"lo": (8000, "PCM_16"), "hi": (22050, "FLOAT"), "ok": (FS, "PCM_16")}
    data = write_corpus(tmp_path, recordings)
    raw = tmp_path / "raw"
    with caplog.at_level(logging.WARNING, logger="espnet2_birq.extract_fbank"):
        assert ef.check_raw(str(data), str(raw), "wav.1", fs=FS)["done"] == 3
    assert f"wav.1: resampled 2 of 3 recording(s) from another sampling rate to {FS} Hz" in caplog.text
    ef.merge(str(raw), 1, data_dir=str(data), prefix="wav", kind="raw")
    scp = dict(line.split(" ", 1) for line in (raw / "wav.scp").read_text().splitlines())
    # 16-bit sources: 16-bit FLAC; float sources: float WAV; audio at --fs: unchanged
    assert scp == {"hi": f"{raw}/resampled_audio/hi.wav", "lo": f"{raw}/resampled_audio/lo.flac",
                   "ok": f"{tmp_path}/ok.wav"}
    assert soundfile.info(scp["lo"]).subtype == "PCM_16" and soundfile.info(scp["hi"]).subtype == "FLOAT"
    assert (raw / "speech_shape").read_text() == f"hi {FS}\nlo {FS}\nok {FS}\n"
    assert [line.split("\t")[:2] for line in (raw / "resampled").read_text().splitlines()] == [
        ["hi", "22050"], ["lo", "8000"]]
    # ESPnet's readers (what --train_data_path_and_name_and_type ...,speech,sound opens)
    reader = SoundScpReader(str(raw / "wav.scp"))
    for utt in scp:
        rate, _ = reader[utt]
        assert rate == FS
    loader = sound_loader(str(raw / "wav.scp"))
    # the in-model frontend on the loaded audio = stage 2's fbank of the same recordings
    ef.extract(str(data), str(tmp_path / "dump"), "feats.1", fs=FS)
    offline = features(tmp_path / "dump" / "feats.1.scp")
    frontend = KaldiFbankFrontend(fs=FS).eval()
    for utt in scp:
        wav = torch.from_numpy(np.asarray(loader[utt], dtype=np.float32))
        assert wav.shape == (FS,)
        feats, _ = frontend(wav[None], torch.tensor([FS]))
        # measured: identical (kaldi_fbank_batch vs kaldi_fbank: equal within 1e-5)
        np.testing.assert_allclose(feats[0].numpy(), offline[utt], atol=1e-5, rtol=0)
        np.testing.assert_allclose(offline[utt], kaldi_fbank(wav, FS).numpy(), atol=1e-5, rtol=0)


def test_no_list_when_nothing_is_resampled_and_a_stale_one_goes(tmp_path):
    data = write_corpus(tmp_path, {"ok": (FS, "PCM_16")})
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "resampled.1").write_text("old\t8000\tx.wav\n")  # of an earlier run on other audio
    ef.extract(str(data), str(dump), "feats.1", fs=FS)
    ef.merge(str(dump), 1, data_dir=str(data))
    assert not (dump / "resampled.1").exists() and not (dump / "resampled").exists()
    assert sorted(os.listdir(dump)) == ["bad_utts", "bad_utts.1", "feats.1.ark", "feats.1.scp", "feats.scp",
                                        "feats_shape", "utt2num_frames", "utt2num_frames.1"]


def test_raw_mode_copies_have_safe_unique_names(tmp_path):
    assert ef.resampled_copy_path("out", "spk1-utt_2.x", False) == "out/resampled_audio/spk1-utt_2.x.flac"
    odd = [ef.resampled_copy_path("out", u, True) for u in ("a/b", "a_b", "../x", ".hidden")]
    assert odd[1] == "out/resampled_audio/a_b.wav"
    assert len(set(odd)) == 4
    assert all(os.path.dirname(p) == "out/resampled_audio" and not os.path.basename(p).startswith(".") for p in odd)


# --------------------------------------------------------------------------
# ssl_asr.sh stage 2, both modes, with the real tools
# --------------------------------------------------------------------------


def test_recipe_stage_2_resamples_in_both_modes_and_counts_them(tmp_path):
    from test_recipe import make_recipe, run_ssl

    recipe = make_recipe(tmp_path)
    write_corpus(recipe / "corpus_pre", {"s0-lo": (8000, "PCM_16"), "s1-hi": (22050, "PCM_16"),
                                         "s2-ok": (FS, "PCM_16")})
    write_corpus(recipe / "corpus_train", {"s3-lo": (8000, "PCM_16"), "s4-ok": (FS, "PCM_16")})
    for name, src in (("pretrain", "corpus_pre"), ("train", "corpus_train")):
        (recipe / "data").mkdir(exist_ok=True)
        os.rename(recipe / src / "data", recipe / "data" / name)
    (recipe / "data" / "train" / "text").write_text("s3-lo A\ns4-ok A\n")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    args = ["--pretrain_set", "pretrain", "--train_set", "train", "--valid_set", "train", "--test_sets", "train",
            "--python", "python3", "--nj", "2", "--stage", "2", "--stop_stage", "2", "--fs", "16k"]
    result = run_ssl(recipe, *args, "--feats_type", "raw", env=env, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    out = result.stdout
    assert ("WARNING: 2 of 3 recordings of data/pretrain are not at 16000 Hz and were resampled to it (--fs), "
            "listed with their rates in dump/raw/pretrain/resampled") in out, out
    # the validation set (train here) is read raw by SSL and as fbank by fine-tuning
    assert "WARNING: 1 of 2 recordings of data/train are not at 16000 Hz" in out
    assert out.count("listed with their rates in dump/fbank/train/resampled") == 1
    assert out.count("listed with their rates in dump/raw/train/resampled") == 1
    scp = dict(line.split(" ", 1) for line in (recipe / "dump/raw/pretrain/wav.scp").read_text().splitlines())
    assert scp["s0-lo"] == "dump/raw/pretrain/resampled_audio/s0-lo.flac"
    assert scp["s1-hi"] == "dump/raw/pretrain/resampled_audio/s1-hi.flac"
    assert scp["s2-ok"].endswith("corpus_pre/s2-ok.wav")
    assert soundfile.info(recipe / scp["s1-hi"]).samplerate == FS
    shapes = (recipe / "dump/raw/pretrain/speech_shape").read_text()
    assert shapes == f"s0-lo {FS}\ns1-hi {FS}\ns2-ok {FS}\n"
    assert (recipe / "dump/fbank/train/utt2num_frames").read_text() == f"s3-lo {num_frames(FS)}\ns4-ok {num_frames(FS)}\n"
    # a re-run skips the finished sets
    again = run_ssl(recipe, *args, "--feats_type", "raw", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "raw audio check pretrain: already done, skipping" in again.stdout
    # --feats_type fbank: the pre-training set's features, resampled when read
    result = run_ssl(recipe, *args, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "WARNING: 2 of 3 recordings of data/pretrain are not at 16000 Hz" in result.stdout
    assert (recipe / "dump/fbank/pretrain/utt2num_frames").read_text() == "".join(
        f"{u} {num_frames(FS)}\n" for u in ("s0-lo", "s1-hi", "s2-ok"))


# --------------------------------------------------------------------------
# Fine-tuning: the rate of the pre-trained frontend
# --------------------------------------------------------------------------


def test_finetune_config_refuses_a_model_pretrained_at_another_rate(tmp_path):
    """Fine-tuning reads stage 2's fbank at --fs; a model pre-trained on raw audio records
    its frontend's rate (frontend_conf fs, ssl_asr.sh's --frontend_conf fs=<fs>) in config.yaml."""
    import yaml

    from espnet2_birq.bin.make_finetune_config import main, merge_configs

    encoder = {"encoder": "conformer", "encoder_conf": {"output_size": 8}}
    trained_raw = {**encoder, "input_size": None, "frontend": "kaldi_fbank",
                   "frontend_conf": {"fs": 16000, "n_mels": 80}}
    with pytest.raises(ValueError, match="pre-trained on features of 16000 Hz audio .* at 8000 Hz"):
        merge_configs(trained_raw, {}, fs=8000)
    assert merge_configs(trained_raw, {}, fs=16000)["encoder"] == "conformer"
    assert merge_configs(trained_raw, {})["encoder"] == "conformer"  # no --fs: not checked
    # the frontend's default rate, and ESPnet's "8k" spelling
    assert merge_configs({**trained_raw, "frontend_conf": {}}, {}, fs=16000)
    assert merge_configs({**trained_raw, "frontend_conf": {"fs": "8k"}}, {}, fs=8000)
    # a model trained on precomputed fbank records no rate; a recipe's config file is no record
    assert merge_configs({**trained_raw, "input_size": 80}, {}, fs=8000)
    recipe_file = {k: v for k, v in trained_raw.items() if k != "input_size"}
    assert merge_configs(recipe_file, {}, fs=8000)
    # the command line: an error, or a config whose header names the rate
    ssl = tmp_path / "config.yaml"
    ssl.write_text(yaml.safe_dump(trained_raw))
    asr = tmp_path / "asr.yaml"
    asr.write_text("optim: adam\n")
    out = tmp_path / "train_asr.yaml"
    assert main(["--ssl_config", str(ssl), "--asr_config", str(asr), "--out", str(out), "--fs", "8000"]) == 1
    assert not out.exists()
    assert main(["--ssl_config", str(ssl), "--asr_config", str(asr), "--out", str(out), "--fs", "16000"]) == 0
    assert "# features: fbank of 16000 Hz audio (--fs)" in out.read_text()
