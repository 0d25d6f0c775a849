"""Tests of the mini_synth demo corpus generator (egs2/mini_synth/ssl1/local).

A tiny corpus is synthesized offline with espeak-ng (espeakng-loader) and checked
for reproducibility, Kaldi data-dir consistency, audio sanity and held-out splits.
"""

import importlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "mini_synth" / "ssl1"
LOCAL = RECIPE / "local"

pytest.importorskip("espeakng_loader")
sf = pytest.importorskip("soundfile")
pytest.importorskip("torchaudio")

sys.path.insert(0, str(LOCAL))
make_corpus = importlib.import_module("make_corpus")
espeak_synth = importlib.import_module("espeak_synth")
text_gen = importlib.import_module("text_gen")
make_lm_text = importlib.import_module("make_lm_text")

SPLITS = ("pretrain", "train", "dev", "test")
TINY = ["--num_pretrain", "20", "--train_fraction", "0.25", "--num_dev", "4", "--num_test", "12",
        "--num_speakers", "6", "--num_test_speakers", "4", "--seed", "3"]


def _generate(root: Path, extra=()):
    rc = make_corpus.main(["--data_dir", str(root / "data"), "--audio_dir", str(root / "audio"),
                           *TINY, *extra])
    assert rc == 0
    return root / "data"


def _read_map(path: Path):
    lines = path.read_text().splitlines()
    return lines, dict(line.split(" ", 1) for line in lines)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("mini_synth_a"), ["--nj", "2"])


def test_reproducible_and_independent_of_nj(corpus, tmp_path):
    other = _generate(tmp_path, ["--nj", "1"])
    for split in SPLITS:
        for f in ("text", "utt2spk", "spk2utt", "utt2dur", "utt2category"):
            assert (corpus / split / f).read_bytes() == (other / split / f).read_bytes(), (split, f)
        _, a = _read_map(corpus / split / "wav.scp")
        _, b = _read_map(other / split / "wav.scp")
        assert a.keys() == b.keys()
        for utt in a:
            assert Path(a[utt]).read_bytes() == Path(b[utt]).read_bytes(), utt


def test_different_seed_differs():
    cfg = dict(version=1, seed=3, num_pretrain=50, num_train=5, num_dev=5, num_test=10, num_speakers=6,
               num_test_speakers=4, add_noise=True, min_snr=20.0, max_snr=40.0)
    p1 = make_corpus.make_plan(cfg)
    p2 = make_corpus.make_plan(dict(cfg, seed=4))
    assert [u["text"] for u in p1["pretrain"]] != [u["text"] for u in p2["pretrain"]]
    assert make_corpus.make_plan(cfg) == p1


def test_kaldi_files_consistent_and_sorted(corpus):
    for split in SPLITS:
        d = corpus / split
        keys = None
        for f in ("wav.scp", "text", "utt2spk", "utt2dur", "utt2category"):
            lines, m = _read_map(d / f)
            assert lines == sorted(lines, key=lambda s: s.split(" ")[0].encode()), (split, f)
            assert keys is None or list(m) == keys, (split, f)
            keys = list(m)
        _, utt2spk = _read_map(d / "utt2spk")
        spk_lines, spk2utt = _read_map(d / "spk2utt")
        assert spk_lines == sorted(spk_lines, key=str.encode)
        assert {(u, s) for s, us in spk2utt.items() for u in us.split()} == set(utt2spk.items())
        # utterance ids start with the speaker id, so sorting by utt keeps speakers contiguous
        assert all(u.startswith(s + "_") for u, s in utt2spk.items())
        assert [utt2spk[u] for u in keys] == sorted((utt2spk[u] for u in keys), key=str.encode)
        _, text = _read_map(d / "text")
        for t in text.values():
            assert t == t.upper() and t.replace(" ", "").isalpha() and "  " not in t
    n = {s: len(_read_map(corpus / s / "text")[0]) for s in SPLITS}
    assert n == dict(pretrain=20, train=5, dev=4, test=12)
    # train and pretrain are disjoint utterances
    ids = [set(_read_map(corpus / s / "text")[1]) for s in SPLITS]
    assert sum(map(len, ids)) == len(set.union(*ids))


def test_audio_is_16k_speech_with_plausible_duration(corpus):
    words, durs = [], []
    for split in SPLITS:
        _, scp = _read_map(corpus / split / "wav.scp")
        _, text = _read_map(corpus / split / "text")
        _, utt2dur = _read_map(corpus / split / "utt2dur")
        for utt, path in scp.items():
            assert os.path.isabs(path)
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            wav, _ = sf.read(path, dtype="int16")
            x = wav.astype(np.float64) / 32768
            assert abs(float(utt2dur[utt]) - len(wav) / 16000) < 1e-3
            rms = np.sqrt(np.mean(x ** 2))
            assert rms > 0.01, utt  # non-silent
            # speech has loud and quiet (pause) frames; noise floor well below speech
            frames = x[: len(x) // 400 * 400].reshape(-1, 400)
            e = np.sqrt(np.mean(frames ** 2, axis=1))
            assert np.percentile(e, 95) > 5 * np.percentile(e, 10), utt
            nw = len(text[utt].split())
            assert 0.12 * nw < len(wav) / 16000 < 0.8 * nw + 1.5, (utt, nw, len(wav))
            words.append(nw)
            durs.append(len(wav) / 16000)
    assert np.corrcoef(words, durs)[0, 1] > 0.5


def test_heldout_conditions(corpus):
    # on the generated tiny corpus
    spk = {s: set(_read_map(corpus / s / "utt2spk")[1].values()) for s in SPLITS}
    voice = lambda s: s.split("-p")[0]  # noqa: E731  accent+variant part of the speaker id
    seen_voices = {voice(s) for split in ("pretrain", "train", "dev") for s in spk[split]}
    assert not {voice(s) for s in spk["test"]} & seen_voices
    # on a full-size plan (no synthesis needed): every held-out condition absent outside test
    cfg = dict(version=1, seed=1, num_pretrain=2500, num_train=250, num_dev=100, num_test=200,
               num_speakers=40, num_test_speakers=10, add_noise=True, min_snr=20.0, max_snr=40.0)
    plan = make_corpus.make_plan(cfg)
    other = [u for s in ("pretrain", "train", "dev") for u in plan[s]]
    test = plan["test"]
    assert not {u["voice"] for u in test} & {u["voice"] for u in other}
    assert not {u["text"] for u in test} & {u["text"] for u in other}
    assert not {u["template"] for u in other} & set(text_gen.HELDOUT_TEMPLATES)
    pairs = [(r.upper(), d.upper()) for r, d in text_gen.HELDOUT_ROOM_DEVICE]

    def has_pair(t):
        return any(f"THE {r} {d}" in t or f"THE {d} IN THE {r}" in t for r, d in pairs)

    assert not any(has_pair(u["text"]) for u in other)
    cats = {u["category"] for u in test}
    assert cats == {"seen", "heldout_template", "heldout_combination"}
    assert all(has_pair(u["text"]) for u in test if u["category"] == "heldout_combination")
    # the held-out material only uses words that the training templates also produce
    train_words = {w for u in other for w in u["text"].split()}
    test_words = {w for u in test for w in u["text"].split()}
    assert test_words <= train_words
    vocab = set(text_gen.vocabulary())
    assert train_words | test_words <= vocab and 200 <= len(vocab) <= 400
    # train is ~10% of pretrain; speakers are shared between pretrain/train/dev
    assert len(plan["train"]) == 250
    assert {u["spk"] for u in plan["train"]} <= {u["spk"] for u in plan["pretrain"]}


def test_voices_differ_and_errors():
    synth = espeak_synth.get_synth()
    assert synth.native_rate == 22050
    a = synth.synth("turn on the kitchen light", "en-us+m3")
    b = synth.synth("turn on the kitchen light", "en-gb-scotland+klatt")
    c = synth.synth("turn on the kitchen light", "en-us+m3")
    assert np.array_equal(a, c)  # isolated synthesis: no state carried between utterances
    n = min(len(a), len(b))
    assert len(a) != len(b) or not np.array_equal(a[:n], b[:n])
    # different spectra, not only different lengths
    spec = lambda x: np.abs(np.fft.rfft(x.astype(np.float64), 4096))  # noqa: E731
    sa, sb = spec(a[:n]), spec(b[:n])
    assert np.corrcoef(sa, sb)[0, 1] < 0.95
    with pytest.raises(espeak_synth.EspeakError, match="variant 'nosuchvariant' not found"):
        synth.synth("hello", "en+nosuchvariant")
    with pytest.raises(espeak_synth.EspeakError, match="voice 'xx-nosuchvoice' not found"):
        synth.synth("hello", "xx-nosuchvoice")


def test_missing_library_message(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPEAKNG_LIBRARY", str(tmp_path / "libespeak-ng.so"))
    with pytest.raises(espeak_synth.EspeakError, match="shared library not found"):
        espeak_synth.find_espeak()


def test_text_normalization_and_generator():
    assert text_gen.normalize("Turn on the kitchen light!") == "TURN ON THE KITCHEN LIGHT"
    assert text_gen.normalize("it's  five o'clock") == "ITS FIVE OCLOCK"
    g1 = text_gen.TextGenerator(random.Random("x"), "seen")
    g2 = text_gen.TextGenerator(random.Random("x"), "seen")
    assert [g1.sample() for _ in range(50)] == [g2.sample() for _ in range(50)]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_data_sh_runs_and_skips_when_done(tmp_path):
    if not ((RECIPE / "utils" / "parse_options.sh").exists()
            or (RECIPE.parents[2] / "utils" / "parse_options.sh").exists()):
        pytest.skip("utils/parse_options.sh not available")
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = ["bash", str(LOCAL / "data.sh"), "--stop_stage", "1", "--num_pretrain", "6",
           "--num_dev", "2", "--num_test", "3", "--num_speakers", "3", "--num_test_speakers", "2",
           "--nj", "1", "--data_dir", str(tmp_path / "data"), "--audio_dir", str(tmp_path / "audio")]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "data" / "train" / "wav.scp").exists()
    assert len((tmp_path / "data" / "train" / "text").read_text().splitlines()) == 1  # round(0.6)
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "skipping" in r.stdout + r.stderr
    # stage 3: the text-only LM data, without the dev and test sentences
    lm = subprocess.run([*cmd, "--stage", "3", "--stop_stage", "3", "--num_lm_text", "300"], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=120)
    assert lm.returncode == 0, lm.stdout + lm.stderr
    lm_text = (tmp_path / "data" / "local" / "other_text" / "text").read_text().splitlines()
    assert 0 < len(lm_text) <= 300 and all(line.startswith("lm") for line in lm_text)
    evaluation = {line.split(" ", 1)[1] for d in ("dev", "test")
                  for line in (tmp_path / "data" / d / "text").read_text().splitlines()}
    assert not {line.split(" ", 1)[1] for line in lm_text} & evaluation
    changed = [("7" if prev == "--num_pretrain" else arg) for prev, arg in zip([""] + cmd, cmd)]
    r = subprocess.run(changed, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "other options" in r.stdout + r.stderr


def test_lm_text_leaves_out_evaluation_sentences_and_heldout_material(tmp_path, capsys):
    """local/make_lm_text.py: seeded, never a dev/test sentence, never held-out material."""
    # an evaluation set that shares sentences with the LM text's stream
    first = [s for _, s in make_lm_text.make_lm_text(400, seed=5, exclude=set())]
    evaluation = tmp_path / "test_text"
    evaluation.write_text("".join(f"t{i} {s}\n" for i, s in enumerate(first[:150:3])))
    out = tmp_path / "other_text" / "text"
    args = ["--num_sentences", "400", "--seed", "5", "--exclude", str(evaluation), "--out", str(out)]
    make_lm_text.main(args)
    lines = out.read_text().splitlines()
    sentences = [line.split(" ", 1)[1] for line in lines]
    excluded = set(first[:150:3])
    assert not set(sentences) & excluded
    assert len(lines) == sum(s not in excluded for s in first) < 400
    assert len({line.split()[0] for line in lines}) == len(lines)  # unique ids
    # same options, same file; another seed, another text
    again = tmp_path / "again"
    make_lm_text.main([*args[:-1], str(again)])
    assert again.read_text() == out.read_text()
    assert [s for _, s in make_lm_text.make_lm_text(50, seed=6, exclude=set())] != first[:50]
    # only seen templates and seen (room, device) pairs
    pairs = [(r.upper(), d.upper()) for r, d in text_gen.HELDOUT_ROOM_DEVICE]
    many = [s for _, s in make_lm_text.make_lm_text(5000, seed=5, exclude=set())]
    assert not any(f"THE {r} {d}" in s or f"THE {d} IN THE {r}" in s for s in many for r, d in pairs)
    assert not any(s.startswith("CALL ") and " ON " in s for s in many)  # held-out call_date
    assert not any(s.startswith("WHAT IS THE WEATHER") and " ON THE " in s for s in many)  # weather_date
    assert any(s.startswith("CALL ") for s in many) and any(s.startswith("WHAT IS THE WEATHER") for s in many)
    with pytest.raises(SystemExit):
        make_lm_text.main(["--num_sentences", "10", "--exclude", str(tmp_path / "missing"), "--out", str(out)])
