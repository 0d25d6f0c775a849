"""Tests for espnet2_birq.bin.compute_cmvn_stats."""

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from espnet2.layers.global_mvn import GlobalMVN
from espnet2_birq.bin import compute_cmvn_stats as cs
from espnet2_birq.bin import extract_fbank as ef


def _write_data(tmp_path, n=4):
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        sec = 0.4 + 0.2 * i
        t = np.arange(int(sec * 16000)) / 16000
        x = 0.2 * (i + 1) * np.sin(2 * np.pi * 300 * (i + 1) * t)
        x = x + 0.02 * rng.standard_normal(t.shape)
        soundfile.write(str(tmp_path / f"{i}.wav"), x, 16000, subtype="PCM_16")
        lines.append(f"utt{i} {tmp_path / f'{i}.wav'}\n")
    (d / "wav.scp").write_text("".join(lines))
    return d


def test_stats_normalise_with_global_mvn(tmp_path):
    d = _write_data(tmp_path)
    out = tmp_path / "dump"
    ef.extract(str(d), str(out), "feats.1")
    stats = tmp_path / "stats" / "feats_stats.npz"
    assert cs.main(["--feats_scp", str(out / "feats.1.scp"), "--out", str(stats)]) == 0

    feats = [m for _, m in kaldiio.load_scp_sequential(str(out / "feats.1.scp"))]
    allf = np.concatenate(feats).astype(np.float64)
    with np.load(stats) as st:
        assert set(st.files) == {"count", "sum", "sum_square"}
        assert int(st["count"]) == allf.shape[0]
        np.testing.assert_allclose(st["sum"], allf.sum(0), rtol=1e-10)
        np.testing.assert_allclose(st["sum_square"], (allf**2).sum(0), rtol=1e-10)

    # GlobalMVN on a padded batch: valid frames get ~zero mean / unit variance.
    mvn = GlobalMVN(stats_file=str(stats))
    lens = [f.shape[0] for f in feats]
    x = torch.zeros(len(feats), max(lens), 80)
    for b, f in enumerate(feats):
        x[b, : lens[b]] = torch.from_numpy(f.copy())
    y, _ = mvn(x, torch.tensor(lens))
    valid = torch.cat([y[b, : lens[b]] for b in range(len(feats))]).double()
    assert valid.shape == (sum(lens), 80)
    assert valid.mean(0).abs().max() < 1e-4
    assert (valid.std(0, unbiased=False) - 1).abs().max() < 1e-3
    # Sanity: the raw features were far from normalised.
    assert torch.from_numpy(allf).mean(0).abs().max() > 1.0


def test_stats_from_audio_and_merge(tmp_path):
    d = _write_data(tmp_path)
    out = tmp_path / "dump"
    ef.extract(str(d), str(out), "feats.1")
    from_scp = tmp_path / "a.npz"
    from_wav = tmp_path / "b.npz"
    cs.main(["--feats_scp", str(out / "feats.1.scp"), "--out", str(from_scp)])
    cs.main(["--data_dir", str(d), "--out", str(from_wav)])
    a, b = cs.CMVNAccumulator.load(str(from_scp)), cs.CMVNAccumulator.load(str(from_wav))
    assert a.count == b.count
    np.testing.assert_allclose(a.sum, b.sum, rtol=1e-12)
    np.testing.assert_allclose(a.sum_square, b.sum_square, rtol=1e-12)

    # Per-job stats merged equal the whole.
    lines = (out / "feats.1.scp").read_text().splitlines(keepends=True)
    (tmp_path / "p1.scp").write_text("".join(lines[:2]))
    (tmp_path / "p2.scp").write_text("".join(lines[2:]))
    cs.main(["--feats_scp", str(tmp_path / "p1.scp"), "--out", str(tmp_path / "s1.npz")])
    cs.main(["--feats_scp", str(tmp_path / "p2.scp"), "--out", str(tmp_path / "s2.npz")])
    merged = tmp_path / "m.npz"
    assert cs.main(["merge", "--out", str(merged), str(tmp_path / "s1.npz"),
                    str(tmp_path / "s2.npz")]) == 0
    m = cs.CMVNAccumulator.load(str(merged))
    assert m.count == a.count
    np.testing.assert_allclose(m.sum, a.sum, rtol=1e-12)


def test_bad_audio_and_empty_input(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"uttX {tmp_path / 'nope.wav'}\n")
    with pytest.raises(ef.BadAudioError, match="uttX"):
        cs.stats_from_data_dir(str(d))
    acc, skipped = cs.stats_from_data_dir(str(d), skip_bad_audio=True)
    assert skipped == 1
    with pytest.raises(ValueError, match="no frames"):
        acc.save(str(tmp_path / "x.npz"))
