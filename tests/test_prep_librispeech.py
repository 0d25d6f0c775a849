"""Offline LibriSpeech preparation tests (lhotse's recipe + our dirs, text and checks) on a
miniature corpus copy."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_birq.dataprep import librispeech as ls
from espnet2_birq.utils.datadir import DataDirError, validate_data_dir

REPO = Path(__file__).resolve().parent.parent

# subset -> {speaker: [chapters]}; 2 utterances per chapter
LAYOUT = {
    "train-clean-100": {"19": ["198", "227"], "103": ["1240"]},
    "train-clean-360": {"1001": ["134707"]},
    "train-other-500": {"20": ["205"], "1006": ["135212", "135213"]},
    "dev-clean": {"84": ["121123"]},
    "dev-other": {"116": ["288045"]},
    "test-clean": {"61": ["70968"]},
    "test-other": {"367": ["130732"]},
}


def _write(path: Path, seed: int):
    rng = np.random.default_rng(seed)
    t = np.arange(1600) / 16000
    x = 0.1 * np.sin(2 * np.pi * (200 + seed) * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(str(path), x.astype(np.float32), 16000, format="FLAC")


def make_corpus(root: Path) -> Path:
    base = root / "LibriSpeech"
    seed = 0
    for subset, spks in LAYOUT.items():
        for spk, chapters in spks.items():
            for ch in chapters:
                d = base / subset / spk / ch
                d.mkdir(parents=True)
                lines = []
                for i in range(2):
                    utt = f"{spk}-{ch}-{i:04d}"
                    seed += 1
                    _write(d / f"{utt}.flac", seed)
                    lines.append(f"{utt} HELLO WORLD'S  NUMBER {seed}X")
                (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    return base


def _lines(p: Path):
    return p.read_text().splitlines()


def test_prepare_all_dirs(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    counts = ls.prepare_librispeech(corpus, tmp_path / "data")
    assert counts == {
        "pretrain_960": 2 * (3 + 1 + 3),
        "train_clean_100": 6,
        "dev_clean": 2, "dev_other": 2, "test_clean": 2, "test_other": 2,
    }
    d = tmp_path / "data" / "train_clean_100"
    wav = _lines(d / "wav.scp")
    ids = [x.split()[0] for x in wav]
    assert ids == sorted(ids, key=lambda s: s.encode())
    # C order: "103-..." < "19-198-..." < "19-227-..."
    assert ids[0].startswith("103-1240-") and ids[2] == "19-198-0000"
    path = wav[2].split(" ", 1)[1]
    assert path.endswith("train-clean-100/19/198/19-198-0000.flac") and os.path.isabs(path)
    assert sf.read(path)[0].shape == (1600,)
    assert "19-198-0000 19-198" in _lines(d / "utt2spk")
    assert "19-198 19-198-0000 19-198-0001" in _lines(d / "spk2utt")
    text = dict(x.split(" ", 1) for x in _lines(d / "text"))
    assert text["19-198-0000"].startswith("HELLO WORLD'S NUMBER ")  # whitespace squeezed
    pre = tmp_path / "data" / "pretrain_960"
    pre_ids = {x.split()[0] for x in _lines(pre / "wav.scp")}
    assert set(ids) < pre_ids and "1006-135213-0001" in pre_ids
    assert validate_data_dir(pre)["spks"] == 7
    assert not (pre / "segments").exists()


def test_speaker_level_speaker(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    ls.prepare_librispeech(corpus, tmp_path / "data", dirs=["train_clean_100"],
                           speaker_level="speaker")
    spk2utt = _lines(tmp_path / "data" / "train_clean_100" / "spk2utt")
    assert [x.split()[0] for x in spk2utt] == ["103", "19"]
    assert len(spk2utt[1].split()) == 5


def test_missing_transcript_and_empty_text(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    chap = corpus / "dev-clean" / "84" / "121123"
    _write(chap / "84-121123-0002.flac", 99)  # flac without transcript line
    with pytest.raises(ls.LibriSpeechError, match="no transcript for .*84-121123-0002.flac"):
        ls.prepare_librispeech(corpus, tmp_path / "d1", dirs=["dev_clean"])
    counts = ls.prepare_librispeech(corpus, tmp_path / "d2", dirs=["dev_clean"], strict=False)
    assert counts["dev_clean"] == 2

    # lhotse cannot read an empty transcript: an error naming file and line, even with skip
    trans = chap / "84-121123.trans.txt"
    trans.write_text(trans.read_text() + "84-121123-0002 \n")
    for strict in (True, False):
        with pytest.raises(ls.LibriSpeechError, match=r"84-121123.trans.txt:3: empty transcript for 84-121123-0002"):
            ls.prepare_librispeech(corpus, tmp_path / "d3", dirs=["dev_clean"], strict=strict)

    (chap / "84-121123-0002.flac").unlink()
    trans.write_text(trans.read_text().replace("84-121123-0002 \n", "84-121123-0002 EXTRA\n"))
    with pytest.raises(ls.LibriSpeechError, match="84-121123-0002.flac not found"):
        ls.prepare_librispeech(corpus, tmp_path / "d4", dirs=["dev_clean"])
    counts = ls.prepare_librispeech(corpus, tmp_path / "d4", dirs=["dev_clean"], strict=False)
    assert counts["dev_clean"] == 2

    trans.unlink()
    with pytest.raises(ls.LibriSpeechError, match="no transcript for .*84-121123-0000.flac"):
        ls.prepare_librispeech(corpus, tmp_path / "d5", dirs=["dev_clean"])


def test_missing_subset(tmp_path):
    with pytest.raises(ls.LibriSpeechError, match="dev-clean .not found or empty"):
        ls.prepare_librispeech(tmp_path, tmp_path / "data", dirs=["dev_clean"])


def test_validator_catches_unsorted(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    ls.prepare_librispeech(corpus, tmp_path / "data", dirs=["dev_clean"])
    t = tmp_path / "data" / "dev_clean" / "text"
    t.write_text("\n".join(reversed(_lines(t))) + "\n")
    with pytest.raises(DataDirError, match="not sorted"):
        validate_data_dir(tmp_path / "data" / "dev_clean")


def test_download_with_lhotse(tmp_path, monkeypatch):
    """download: lhotse fetches and extracts each subset once; --keep_archives false removes
    the archive."""
    import shutil
    import tarfile
    import lhotse.recipes.librispeech as lhotse_ls

    src = make_corpus(tmp_path / "src")
    arc = tmp_path / "dev-other.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src / "dev-other", arcname="LibriSpeech/dev-other")
    urls = []
    monkeypatch.setattr(lhotse_ls, "resumable_download",
                        lambda url, filename, **k: urls.append(url) or shutil.copy(arc, filename))
    root = tmp_path / "root"
    args = ["download", "--root", str(root), "--subsets", "dev-other", "--keep_archives", "false"]
    assert ls.main(args) == 0
    assert urls == ["http://www.openslr.org/resources/12/dev-other.tar.gz"]
    assert (root / "LibriSpeech" / "dev-other" / "116" / "288045").is_dir()
    assert not (root / "dev-other.tar.gz").exists()
    assert ls.main(args) == 0 and len(urls) == 1  # already there: skipped
    assert ls.prepare_librispeech(root / "LibriSpeech", tmp_path / "data") == {"dev_other": 2}


def make_recipe_sandbox(tmp_path: Path, corpus: str) -> Path:
    """tmp repo: symlinks to the real package/local/utils + the recipe files."""
    if not (REPO / "utils" / "parse_options.sh").is_file():
        pytest.skip("utils/parse_options.sh not available")
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("espnet2_birq", "local", "utils"):
        (root / name).symlink_to(REPO / name)
    rdir = root / "egs2" / corpus / "ssl1"
    rdir.mkdir(parents=True)
    for name in ("db.sh", "local"):
        (rdir / name).symlink_to(REPO / "egs2" / corpus / "ssl1" / name)
    (rdir / "utils").symlink_to("../../../utils")
    return rdir


def run_data_sh(rdir: Path, env_extra: dict, *args):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = ""
    return subprocess.run(["bash", "local/data.sh", "--python", sys.executable, *args],
                          cwd=rdir, env=env, capture_output=True, text=True, timeout=120)


def write_lm_text(path: Path, lines) -> Path:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
    return path


def test_data_sh_end_to_end(tmp_path):
    make_corpus(tmp_path / "corpus")
    rdir = make_recipe_sandbox(tmp_path, "librispeech")
    env = {"LIBRISPEECH": str(tmp_path / "corpus")}
    # the LM text is prepared with the audio unless --lm_text false
    r = run_data_sh(rdir, env, "--download", "false")
    assert r.returncode != 0 and "librispeech-lm-norm.txt.gz not found" in r.stdout + r.stderr
    assert "--lm_text false" in r.stdout + r.stderr
    r = run_data_sh(rdir, env, "--download", "false", "--lm_text", "false")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (rdir / "data" / "local" / "other_text").exists()
    write_lm_text(tmp_path / "corpus" / "librispeech-lm-norm.txt.gz", [" ", "", "  "])
    r = run_data_sh(rdir, env, "--download", "false", "--stage", "2")
    assert r.returncode != 0 and "holds no sentence" in r.stdout + r.stderr
    assert not (rdir / "data" / "local" / "other_text" / "text").exists()
    write_lm_text(tmp_path / "corpus" / "librispeech-lm-norm.txt.gz", ["A cat sat", "", "THE  DOG'S BONE "])
    r = run_data_sh(rdir, env, "--download", "false")
    assert r.returncode == 0, r.stdout + r.stderr
    for d in ls.DATA_DIRS:
        assert (rdir / "data" / d / "text").is_file()
    assert (rdir / "data" / "local" / "other_text" / "text").read_text() == (
        "librispeech_lm_norm_000000001 A CAT SAT\nlibrispeech_lm_norm_000000003 THE DOG'S BONE\n")
    r = run_data_sh(rdir, env, "--download", "false", "--stage", "2")
    assert r.returncode == 0 and "already written" in r.stdout, r.stdout + r.stderr
    # re-runnable
    r = run_data_sh(rdir, env, "--download", "false", "--stage", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    # a broken LM text download fails the stage (gzip's CRC), the old text stays
    lm_gz = tmp_path / "corpus" / "librispeech-lm-norm.txt.gz"
    lm_gz.write_bytes(lm_gz.read_bytes()[:-6])
    r = run_data_sh(rdir, env, "--download", "false", "--stage", "2")
    assert r.returncode != 0 and "unexpected end of file" in r.stderr, r.stdout + r.stderr
    assert "a broken download? delete it and its .done file" in r.stdout
    assert not (rdir / "data" / "local" / "other_text" / "text.tmp").exists()
    assert (rdir / "data" / "local" / "other_text" / "text").read_text().startswith("librispeech_lm_norm_000000001 A CAT SAT\n")
    # missing corpus -> clear error
    r = run_data_sh(rdir, {"LIBRISPEECH": str(tmp_path / "nowhere")}, "--download", "false")
    assert r.returncode != 0 and "not found" in (r.stdout + r.stderr)
    r = run_data_sh(rdir, env, "--no_such_option", "1")
    assert r.returncode != 0


def test_part_of_the_corpus_prepares_the_sets_it_makes(tmp_path, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    import shutil

    for subset in ("train-clean-360", "train-other-500", "dev-other", "test-other"):
        shutil.rmtree(corpus / subset)
    counts = ls.prepare_librispeech(corpus, tmp_path / "data")
    assert sorted(counts) == ["dev_clean", "test_clean", "train_clean_100"]
    assert "not preparing pretrain_960: subset(s) train-clean-360 train-other-500" in caplog.text
    # the recipe's local/data.sh does the same, and validates what it prepared
    rdir = make_recipe_sandbox(tmp_path, "librispeech")
    r = run_data_sh(rdir, {"LIBRISPEECH": str(tmp_path / "corpus")}, "--download", "false",
                    "--lm_text", "false")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (rdir / "data" / "train_clean_100" / "wav.scp").is_file()
    assert not (rdir / "data" / "pretrain_960").exists()


def test_duplicate_utterance_id_across_subsets_names_both(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    import shutil

    shutil.copytree(corpus / "train-clean-100" / "19", corpus / "train-clean-360" / "19")
    with pytest.raises(ls.LibriSpeechError, match=r"19-198-0000 is in two subsets: train-clean-100 .* train-clean-360"):
        ls.prepare_librispeech(corpus, tmp_path / "data", dirs=["pretrain_960"])


def test_transcripts_are_upper_cased_and_odd_characters_reported(tmp_path, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    trans = corpus / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    lines = trans.read_text().splitlines()
    lines[0] = lines[0].split(" ", 1)[0] + " hello café"
    trans.write_text("\n".join(lines) + "\n")
    ls.prepare_librispeech(corpus, tmp_path / "data", dirs=["dev_clean"])
    text = _lines(tmp_path / "data" / "dev_clean" / "text")
    assert text[0].endswith(" HELLO CAFÉ")
    assert "dev_clean: transcripts with characters outside A-Z, apostrophe and space: " in caplog.text
    assert "'É' in 1" in caplog.text


def test_lm_text_download(tmp_path, monkeypatch):
    """librispeech-lm-norm.txt.gz: downloaded from a (local) mirror by lhotse, skipped once there
    (data.sh writes it as the Kaldi text, test_data_sh_end_to_end)."""
    import lhotse.utils

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    lm = write_lm_text(mirror / "librispeech-lm-norm.txt.gz", ["ONE SENTENCE", "two sentences", ""])
    got = ls.download_lm_text(tmp_path / "root", url=lm.as_uri())
    assert got == tmp_path / "root" / "librispeech-lm-norm.txt.gz" and got.read_bytes() == lm.read_bytes()
    with monkeypatch.context() as m:  # a second call must not touch the network
        m.setattr(lhotse.utils, "resumable_download", None)
        assert ls.download_lm_text(tmp_path / "root", url=lm.as_uri()) == got
