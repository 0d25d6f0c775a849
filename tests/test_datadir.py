"""Tests for espnet2_birq.utils.datadir and its utils/*.sh wrappers."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet2_birq.utils import datadir

REPO_ROOT = Path(__file__).resolve().parents[1]
UTILS = REPO_ROOT / "utils"


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A valid data dir with 4 utterances of 2 speakers and real audio files."""
    monkeypatch.chdir(tmp_path)  # wav.scp paths are relative to the recipe dir
    for index in range(4):
        soundfile.write(tmp_path / f"a{index}.wav", np.zeros(1600 * (index + 1)), 16000)
    directory = tmp_path / "data" / "train"
    directory.mkdir(parents=True)
    write(directory / "wav.scp", "".join(f"spk{i // 2}-u{i} a{i}.wav\n" for i in range(4)))
    write(directory / "utt2spk", "".join(f"spk{i // 2}-u{i} spk{i // 2}\n" for i in range(4)))
    write(directory / "text", "".join(f"spk{i // 2}-u{i} word {i}\n" for i in range(4)))
    write(directory / "spk2utt", "spk0 spk0-u0 spk0-u1\nspk1 spk1-u2 spk1-u3\n")
    return directory


def run_wrapper(name, *args, stdin=None):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run([str(UTILS / name), *map(str, args)], capture_output=True, text=True, env=env, input=stdin)


def only_problem(directory, **kwargs):
    problems = datadir.validate(directory, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_dir_passes_and_wrapper_reports_counts(data_dir):
    assert datadir.validate(data_dir) == []
    result = run_wrapper("validate_data_dir.sh", data_dir)
    assert result.returncode == 0, result.stderr
    assert "4 utterances, 2 speakers" in result.stdout


def test_unsorted_file_is_reported(data_dir):
    write(data_dir / "utt2spk", "spk0-u1 spk0\nspk0-u0 spk0\nspk1-u2 spk1\nspk1-u3 spk1\n")
    problem = only_problem(data_dir)
    assert "utt2spk" in problem and "not sorted" in problem and "spk0-u0" in problem


def test_c_locale_order_is_byte_order(data_dir):
    # In C order upper case sorts before lower case; "B" < "a".
    assert datadir.c_sort_key("B") < datadir.c_sort_key("a")


def test_duplicate_key_is_reported(data_dir):
    write(data_dir / "text", "spk0-u0 word\nspk0-u0 word\nspk0-u1 a\nspk1-u2 b\nspk1-u3 c\n")
    problem = only_problem(data_dir)
    assert "text" in problem and "1 duplicate key" in problem and "spk0-u0" in problem


def test_missing_required_file_is_reported_and_no_text_allows_missing_text(data_dir):
    (data_dir / "text").unlink()
    problem = only_problem(data_dir)
    assert "text: required file is missing" in problem
    assert datadir.validate(data_dir, require_text=False) == []
    result = run_wrapper("validate_data_dir.sh", "--no-text", "--no-feats", data_dir)
    assert result.returncode == 0, result.stderr


def test_id_mismatch_names_file_count_and_first_ids(data_dir):
    write(data_dir / "text", "spk0-u0 a\nspk0-u1 b\nspk1-u2 c\n")
    problem = only_problem(data_dir)
    assert "text: 1 utterance(s)" in problem and "missing" in problem and "spk1-u3" in problem
    result = run_wrapper("validate_data_dir.sh", data_dir)
    assert result.returncode == 1
    assert "spk1-u3" in result.stderr and "text" in result.stderr


def test_spk2utt_inconsistent_with_utt2spk(data_dir):
    write(data_dir / "spk2utt", "spk0 spk0-u0\nspk1 spk0-u1 spk1-u2 spk1-u3\n")
    problem = only_problem(data_dir)
    assert "spk2utt" in problem and "spk0" in problem


def test_empty_transcript_is_reported(data_dir):
    write(data_dir / "text", "spk0-u0 a\nspk0-u1\nspk1-u2 c\nspk1-u3 d\n")
    problem = only_problem(data_dir)
    assert "1 empty transcript" in problem and "spk0-u1" in problem


def test_missing_audio_is_reported_and_pipes_are_not_opened(data_dir):
    write(data_dir / "wav.scp", "spk0-u0 a0.wav\nspk0-u1 missing.wav\nspk1-u2 does-not-exist -t wav - |\nspk1-u3 a3.wav\n")
    problem = only_problem(data_dir)
    assert "audio file does not exist" in problem and "spk0-u1" in problem and "spk1-u2" not in problem
    write(data_dir / "wav.scp", "spk0-u0 a0.wav\nspk0-u1 a1.wav\nspk1-u2 does-not-exist -t wav - |\nspk1-u3 a3.wav\n")
    assert "1 piped wav.scp entries not opened" in datadir.summary(data_dir)


def make_segmented(data_dir, segments_text):
    write(data_dir / "wav.scp", "rec0 a0.wav\nrec1 a1.wav\n")
    write(data_dir / "segments", segments_text)


def test_segments_define_utterance_ids(data_dir):
    make_segmented(data_dir, "spk0-u0 rec0 0 0.05\nspk0-u1 rec0 0.05 0.1\nspk1-u2 rec1 0 0.1\nspk1-u3 rec1 0.1 0.2\n")
    assert datadir.validate(data_dir) == []


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("spk1-u3 rec1 0.2 0.1", "end <= start"),
        ("spk1-u3 rec1 -0.5 0.1", "negative start"),
        ("spk1-u3 rec9 0 0.1", "not in"),
        ("spk1-u3 rec1 0", "malformed"),
    ],
)
def test_bad_segment_is_reported(data_dir, bad_line, message):
    make_segmented(data_dir, f"spk0-u0 rec0 0 0.05\nspk0-u1 rec0 0.05 0.1\nspk1-u2 rec1 0 0.1\n{bad_line}\n")
    problem = only_problem(data_dir)
    assert "segments" in problem and message in problem and "spk1-u3" in problem


def test_fix_on_valid_dir_changes_nothing(data_dir):
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    kept, dropped, changed = datadir.fix(data_dir)
    assert (kept, sum(dropped.values()), changed) == (4, 0, [])
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before
    assert not (data_dir / ".backup").exists()


def test_fix_sorts_drops_with_reasons_and_keeps_backup(data_dir):
    original_text = "spk1-u3 d\nspk0-u0 a\nspk0-u1\nspk1-u2 c\nspk9-u9 only in text\n"
    write(data_dir / "text", original_text)
    (Path("a2.wav")).unlink()  # spk1-u2's audio disappears
    write(data_dir / "spk2utt", "stale nonsense\n")
    result = run_wrapper("fix_data_dir.sh", data_dir)
    assert result.returncode == 0, result.stderr
    assert "dropped 3 of 5 utterances" in result.stderr
    for reason in ("text: empty transcript(s): 1", "wav.scp: recording(s) whose audio file does not exist",
                   "text: utterance(s) not in wav.scp: 1"):
        assert reason in result.stderr
    assert (data_dir / "text").read_text() == "spk0-u0 a\nspk1-u3 d\n"
    assert (data_dir / "utt2spk").read_text() == "spk0-u0 spk0\nspk1-u3 spk1\n"
    assert (data_dir / "wav.scp").read_text() == "spk0-u0 a0.wav\nspk1-u3 a3.wav\n"
    assert (data_dir / "spk2utt").read_text() == "spk0 spk0-u0\nspk1 spk1-u3\n"
    assert (data_dir / ".backup" / "text").read_text() == original_text
    assert datadir.validate(data_dir) == []


def test_fix_refuses_to_drop_everything(data_dir):
    write(data_dir / "text", "".join(f"spk{i // 2}-u{i}\n" for i in range(4)))
    with pytest.raises(datadir.DataDirError, match="drop all 4 utterances"):
        datadir.fix(data_dir)
    assert not (data_dir / ".backup").exists()


def test_spk2utt_wrapper_reads_stdin(data_dir):
    result = run_wrapper("utt2spk_to_spk2utt.pl", stdin="b-1 b\na-2 a\na-1 a\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a a-1 a-2\nb b-1\n"


def test_utt2dur_from_audio_and_from_segments(data_dir):
    datadir.compute_utt2dur(data_dir)
    assert (data_dir / "utt2dur").read_text().splitlines() == [
        "spk0-u0 0.100", "spk0-u1 0.200", "spk1-u2 0.300", "spk1-u3 0.400"]
    (data_dir / "utt2dur").unlink()
    make_segmented(data_dir, "spk0-u0 rec0 0 0.05\nspk0-u1 rec0 0.05 0.1\nspk1-u2 rec1 0 0.1\nspk1-u3 rec1 0.1 0.25\n")
    datadir.compute_utt2dur(data_dir)
    assert (data_dir / "utt2dur").read_text().splitlines()[-1] == "spk1-u3 0.150"


def test_utt2dur_of_pipe_entries_reads_the_audio(data_dir):
    """A "cmd |" entry has no header to read: its duration comes from decoding it, as in stage 2."""
    write(data_dir / "wav.scp", "".join(f"spk{i // 2}-u{i} cat a{i}.wav |\n" for i in range(4)))
    datadir.compute_utt2dur(data_dir)
    assert (data_dir / "utt2dur").read_text().splitlines() == [
        "spk0-u0 0.100", "spk0-u1 0.200", "spk1-u2 0.300", "spk1-u3 0.400"]


def test_utt2dur_names_unreadable_files_and_writes_nothing(data_dir):
    write(Path("a1.wav"), "not audio")
    with pytest.raises(datadir.DataDirError, match="spk0-u1: a1.wav"):
        datadir.compute_utt2dur(data_dir)
    assert not (data_dir / "utt2dur").exists()


def test_split_by_utterance_gives_valid_dirs(data_dir):
    datadir.compute_utt2dur(data_dir)
    result = run_wrapper("split_data.sh", data_dir, 3)
    assert result.returncode == 0, result.stderr
    parts = [data_dir / "split3" / str(i) for i in (1, 2, 3)]
    sizes = [len((part / "utt2spk").read_text().splitlines()) for part in parts]
    assert sizes == [2, 1, 1]
    assert (parts[0] / "text").read_text() == "spk0-u0 word 0\nspk0-u1 word 1\n"
    assert (parts[2] / "wav.scp").read_text() == "spk1-u3 a3.wav\n"
    assert (parts[2] / "utt2dur").read_text() == "spk1-u3 0.400\n"
    for part in parts:
        assert datadir.validate(part) == [], part


def test_split_with_segments_subsets_wav_scp(data_dir):
    make_segmented(data_dir, "spk0-u0 rec0 0 0.05\nspk0-u1 rec0 0.05 0.1\nspk1-u2 rec1 0 0.1\nspk1-u3 rec1 0.1 0.2\n")
    datadir.split(data_dir, 2)
    for part, recording in ((1, "rec0"), (2, "rec1")):
        part_dir = data_dir / "split2" / str(part)
        assert (part_dir / "wav.scp").read_text() == f"{recording} a{recording[-1]}.wav\n"
        assert datadir.validate(part_dir) == []


def test_split_rejects_invalid_dir_and_too_many_parts(data_dir):
    with pytest.raises(datadir.DataDirError, match="cannot split 4 utterances into 5"):
        datadir.split(data_dir, 5)
    write(data_dir / "text", "spk0-u0 a\n")
    with pytest.raises(datadir.DataDirError, match="fix_data_dir"):
        datadir.split(data_dir, 2)


def test_scattered_speaker_is_reported(data_dir):
    """Kaldi needs a speaker's utterances contiguous in utterance order."""
    write(data_dir / "utt2spk", "spk0-u0 spkA\nspk0-u1 spkB\nspk1-u2 spkA\nspk1-u3 spkB\n")
    write(data_dir / "spk2utt", "spkA spk0-u0 spk1-u2\nspkB spk0-u1 spk1-u3\n")
    problem = only_problem(data_dir)
    assert "not contiguous" in problem and "spkA" in problem


# --------------------------------------------------------------------------
# One data-dir module: every reader and writer of the project goes through it
# --------------------------------------------------------------------------


def test_every_reader_raises_the_one_data_dir_error_naming_file_and_line(tmp_path):
    from espnet2_birq.bin import extract_fbank, kmeans, score

    assert extract_fbank.DataDirError is datadir.DataDirError
    assert issubclass(datadir.DataDirError, ValueError)  # the corpus preparers catch ValueError
    (tmp_path / "wav.scp").write_text("u1 a.wav\nu2\n")
    with pytest.raises(datadir.DataDirError, match=r"wav.scp:2: expected '<key> <value>'"):
        extract_fbank.list_utterances(str(tmp_path))
    with pytest.raises(datadir.DataDirError, match=r"wav.scp:2: expected '<key> <value>'"):
        kmeans.label(str(tmp_path / "wav.scp"), source=None, kmeans=None, out=str(tmp_path / "labels"))
    (tmp_path / "feats.scp").write_text("u1 a.ark:1\nu1 a.ark:9\n")
    with pytest.raises(datadir.DataDirError, match=r"feats.scp:2: duplicate utterance id 'u1' \(first on line 1\)"):
        kmeans.fit(str(tmp_path / "feats.scp"), source=None, num_clusters=2, out=str(tmp_path / "km.pkl"))
    (tmp_path / "text").write_text("u1 A B\n\nu2 C\n")
    with pytest.raises(datadir.DataDirError, match=r"text:2: empty line"):
        score.read_text(str(tmp_path / "text"))
    (tmp_path / "text").write_text("u1 A B\nu2\n")
    assert score.read_text(str(tmp_path / "text")) == {"u1": "A B", "u2": ""}


def test_write_data_dir_writes_a_sorted_valid_dir_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b.wav", "a.wav"):
        soundfile.write(tmp_path / name, np.zeros(1600), 16000)
    d = datadir.write_data_dir(tmp_path / "d", wav_scp={"s2-b": "b.wav", "s1-a": "a.wav"},
                               utt2spk={"s2-b": "s2", "s1-a": "s1"}, text={"s2-b": "B", "s1-a": "A"},
                               utt2dur={"s2-b": 0.1, "s1-a": 0.1})
    assert (d / "wav.scp").read_text() == "s1-a a.wav\ns2-b b.wav\n"
    assert (d / "spk2utt").read_text() == "s1 s1-a\ns2 s2-b\n"
    assert (d / "text").read_text() == "s1-a A\ns2-b B\n"
    assert (d / "utt2dur").read_text() == "s1-a 0.100\ns2-b 0.100\n"
    with pytest.raises(datadir.DataDirError, match="utt2spk"):
        datadir.write_data_dir(tmp_path / "e", wav_scp={"s1-a": "a.wav"}, utt2spk={"s1-x": "s1"})


def test_no_second_data_dir_module_or_dead_download_script():
    assert not (REPO_ROOT / "espnet2_birq" / "dataprep" / "kaldi.py").exists()
    assert not (REPO_ROOT / "local" / "download.py").exists()
    sources = [p for p in (REPO_ROOT / "espnet2_birq").rglob("*.py")]
    defining = [str(p.relative_to(REPO_ROOT)) for p in sources
                if "class DataDirError" in p.read_text() or "def read_kaldi_map" in p.read_text()]
    assert defining == ["espnet2_birq/utils/datadir.py"], defining


# --------------------------------------------------------------------------
# Speed perturbation and duration filter (ssl_asr.sh --speed_perturb_factors, --min/max_wav_duration)
# --------------------------------------------------------------------------


def test_speed_perturb_changes_duration_and_pitch_and_the_pipe_writes_wav(tmp_path):
    from espnet2_birq.bin import speed_perturb as sp

    x = np.random.default_rng(0).standard_normal((16003, 2))
    assert sp.speed_perturb(x, 0.9).shape == (17781, 2)  # round(16003 / 0.9)
    assert sp.speed_perturb(x, 1.1).shape == (14548, 2)  # round(16003 / 1.1)
    assert sp.speed_perturb(x, 1.0) is x
    # a 1 kHz tone sped up by 1.1 is a 1.1 kHz tone
    t = np.arange(16000) / 16000
    y = sp.speed_perturb(np.sin(2 * np.pi * 1000 * t), 1.1)
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y) - 1100) < 2
    soundfile.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 16000, subtype="PCM_16")
    result = subprocess.run(f"cat {tmp_path / 'a.wav'} | {sys.executable} -m espnet2_birq.bin.speed_perturb 0.9 -",
                            shell=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    with soundfile.SoundFile(io.BytesIO(result.stdout)) as f:
        assert (f.samplerate, f.subtype, f.frames) == (16000, "PCM_16", 17778)
    bad = subprocess.run([sys.executable, "-m", "espnet2_birq.bin.speed_perturb", "0.9", str(tmp_path / "none.wav")],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert bad.returncode == 1 and f"cannot read {tmp_path / 'none.wav'}" in bad.stderr


def test_speed_perturb_dir_as_kaldi_with_segments(data_dir):
    segmented = data_dir.parent / "seg"
    segmented.mkdir()
    write(segmented / "wav.scp", "rec1 a3.wav\nrec2 cat a2.wav |\n")
    write(segmented / "segments", "spk0-u0 rec1 0.00 0.20\nspk1-u1 rec2 0.10 0.30\n")
    write(segmented / "utt2spk", "spk0-u0 spk0\nspk1-u1 spk1\n")
    write(segmented / "spk2utt", "spk0 spk0-u0\nspk1 spk1-u1\n")
    write(segmented / "text", "spk0-u0 A\nspk1-u1 B\n")
    write(segmented / "utt2dur", "spk0-u0 0.200\nspk1-u1 0.200\n")
    out = data_dir.parent / "seg_sp"
    assert datadir.speed_perturb_dir(segmented, out, ["0.9", "1.0", "1.1"], python="py") == 6
    assert (out / "wav.scp").read_text() == (
        "rec1 a3.wav\nrec2 cat a2.wav |\n"
        "sp0.9-rec1 py -m espnet2_birq.bin.speed_perturb 0.9 a3.wav |\n"
        "sp0.9-rec2 cat a2.wav | py -m espnet2_birq.bin.speed_perturb 0.9 - |\n"
        "sp1.1-rec1 py -m espnet2_birq.bin.speed_perturb 1.1 a3.wav |\n"
        "sp1.1-rec2 cat a2.wav | py -m espnet2_birq.bin.speed_perturb 1.1 - |\n")
    segments = (out / "segments").read_text().splitlines()
    assert "sp0.9-spk1-u1 sp0.9-rec2 0.111 0.333" in segments and "sp1.1-spk0-u0 sp1.1-rec1 0.000 0.182" in segments
    assert "sp0.9-spk0-u0 sp0.9-spk0" in (out / "utt2spk").read_text().splitlines()
    assert "sp1.1-spk1-u1 B" in (out / "text").read_text().splitlines()
    assert "sp0.9-spk0-u0 0.222" in (out / "utt2dur").read_text().splitlines()
    assert datadir.validate(out, check_audio=False) == []
    with pytest.raises(datadir.DataDirError, match="positive number, got 'x'"):
        datadir.speed_perturb_dir(segmented, out, ["x"])


def test_filter_by_duration_lists_what_it_removes(data_dir):
    write(data_dir / "utt2dur", "spk0-u0 0.100\nspk0-u1 0.200\nspk1-u2 0.300\nspk1-u3 0.400\n")
    out = data_dir.parent / "filtered"
    kept, removed = datadir.filter_by_duration(data_dir, out, 0.15, 0.35)
    assert kept == 2 and removed == {"spk0-u0": 0.1, "spk1-u3": 0.4}
    assert (out / "wav.scp").read_text() == "spk0-u1 a1.wav\nspk1-u2 a2.wav\n"
    assert (out / "spk2utt").read_text() == "spk0 spk0-u1\nspk1 spk1-u2\n"
    assert (out / "removed_by_duration").read_text() == "spk0-u0 0.100\nspk1-u3 0.400\n"
    assert datadir.validate(out) == []
    result = subprocess.run([sys.executable, "-m", "espnet2_birq.utils.datadir", "filter_duration", "--min", "0.15",
                             str(data_dir), str(out)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    assert f"1 of 4 utterances of {data_dir} removed (shorter than 0.15 s), listed in {out}/removed_by_duration" in result.stderr
    with pytest.raises(datadir.DataDirError, match="nothing would be left"):
        datadir.filter_by_duration(data_dir, out, 1.0)


def test_split_of_a_filtered_dir_does_not_warn_about_its_removed_list(data_dir):
    write(data_dir / "utt2dur", "spk0-u0 0.100\nspk0-u1 0.200\nspk1-u2 0.300\nspk1-u3 0.400\n")
    out = data_dir.parent / "filtered"
    datadir.filter_by_duration(data_dir, out, 0.15)
    result = run_wrapper("split_data.sh", out, 2)
    assert result.returncode == 0, result.stderr
    assert "unknown layout" not in result.stderr
    assert not (out / "split2" / "1" / "removed_by_duration").exists()
