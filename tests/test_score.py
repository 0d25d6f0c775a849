"""Tests for espnet2_birq.bin.score (WER/CER with kaldialign or NIST sclite)."""

import json
import os
import random
import re
import shutil

import pytest

from espnet2_birq.bin import score as sc


def _sclite_path():
    return sc.find_sclite(None)  # PATH, or Debian/Ubuntu's /usr/lib/sctk/bin/sclite


def _write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


# Hand-computed case (sclite weights: sub 4, del 3, ins 3):
#   u1: the cat sat on the mat / the cat sat on mat    C5 S0 D1 I0
#   u2: a b c d / a x c d e                            C3 S1 D0 I1
#   u3: hello world / HELLO world (case-insensitive)   C2 S0 D0 I0
#   u4: a b / b c  -> del a, ins c (cost 6) beats two subs (cost 8):
#                                                      C1 S0 D1 I1
# Totals: Snt 4, Wrd 14, C 11, S 1, D 2, I 2, Err 5, sentences with error 3.
REF = ["u1 the cat sat on the mat", "u2 a b c d", "u3 hello world", "u4 a b"]
HYP = ["u1 the cat sat on mat", "u2 a x c d e", "u3 HELLO world", "u4 b c"]


def test_hand_computed_word(tmp_path):
    ref = _write(tmp_path / "ref", REF)
    hyp = _write(tmp_path / "hyp", HYP)
    out = tmp_path / "score_wer"
    s = sc.score_files(ref, hyp, "word", str(out), use_sclite="false")
    assert s["counts"] == {
        "Snt": 4, "Wrd": 14, "Corr": 11, "Sub": 1, "Del": 2, "Ins": 2,
        "Err": 5, "S.Err": 3,
    }
    # 11/14=78.57, 1/14=7.14, 2/14=14.29, 5/14=35.71, 3/4=75
    expect = {"Corr": 78.6, "Sub": 7.1, "Del": 14.3, "Ins": 14.3, "Err": 35.7,
              "S.Err": 75.0}
    for k, v in expect.items():
        assert s[k] == v, k
    assert json.loads((out / "summary.json").read_text())["Err"] == 35.7

    result = (out / "result.txt").read_text()
    assert "id: (u4)\nScores: (#C #S #D #I) 1 0 1 1\n" in result
    assert "REF:  A b * \nHYP:  * b C \nEval: D   I \n" in result
    assert "REF:  a B c d * \nHYP:  a X c d E \nEval:   S     I \n" in result
    assert "Scores: (#C #S #D #I) 5 0 1 0" in result
    assert "| Sum/Avg |     4    14 | 78.6    7.1   14.3   14.3   35.7   75.0 |" in result


def test_align_weights():
    # With unit costs "a b"/"b c" could be two substitutions; sclite's 4/3/3
    # weights prefer a deletion plus an insertion.
    assert sc.align(["a", "b"], ["b", "c"]) == [
        ("D", "a", None), ("C", "b", "b"), ("I", None, "c")
    ]
    # One substitution (4) is cheaper than a deletion + insertion (6).
    assert sc.align(["a"], ["b"]) == [("S", "a", "b")]
    assert sc.align([], ["x", "y"]) == [("I", None, "x"), ("I", None, "y")]
    assert sc.align(["A"], ["a"]) == [("C", "A", "a")]  # case-insensitive, as sclite


def test_equal_cost_ties(tmp_path):
    # Alignments of equal cost (4S + 3D + 3I) can have different counts: one more
    # correct word and three fewer substitutions cost the same.  kaldialign then may
    # pick another alignment than sclite, with the same cost but other counts: the
    # numbers below are kaldialign 0.12.0's (the first has one error more than
    # sclite 2.4.10's C2 S3 D3 I0; the second agrees with sclite's).
    cases = [
        ("c b b c a a b c", "c c c d d", (3, 0, 5, 2), (2, 3, 3, 0)),
        ("b b b a c a a a", "a c c c a c c c", (2, 5, 1, 1), (2, 5, 1, 1)),
    ]
    for ref, hyp, expect, _ in cases:
        c = sc.ops_counts(sc.align(ref.split(), hyp.split()))
        assert (c["Corr"], c["Sub"], c["Del"], c["Ins"]) == expect, (ref, hyp)
    if _sclite_path() is None:
        return
    refs = _write(tmp_path / "ref", [f"t{k} {ref}" for k, (ref, _, _, _) in enumerate(cases)])
    hyps = _write(tmp_path / "hyp", [f"t{k} {hyp}" for k, (_, hyp, _, _) in enumerate(cases)])
    s = sc.score_files(refs, hyps, "word", str(tmp_path / "sc"), use_sclite="auto",
                       sclite=_sclite_path())
    assert s["scorer"] == "sclite"
    scored = sc.parse_sclite_pra((tmp_path / "sc" / "result.txt").read_text())
    assert [scored[f"t{k}"] for k in range(len(cases))] == [c[3] for c in cases]


def test_per_speaker_rows(tmp_path):
    ref = _write(tmp_path / "ref", REF)
    hyp = _write(tmp_path / "hyp", HYP)
    u2s = _write(tmp_path / "utt2spk", ["u1 spkA", "u2 spkB", "u3 spkA", "u4 spkB"])
    out = tmp_path / "score_wer"
    s = sc.score_files(ref, hyp, "word", str(out), use_sclite="false", utt2spk_path=u2s)
    # spkA: u1 (C5 D1) + u3 (C2); spkB: u2 (C3 S1 I1) + u4 (C1 D1 I1)
    assert s["speakers"]["spkA"]["counts"] == {
        "Snt": 2, "Wrd": 8, "Corr": 7, "Sub": 0, "Del": 1, "Ins": 0, "Err": 1, "S.Err": 1,
    }
    assert s["speakers"]["spkB"]["counts"] == {
        "Snt": 2, "Wrd": 6, "Corr": 4, "Sub": 1, "Del": 1, "Ins": 2, "Err": 4, "S.Err": 2,
    }
    assert s["speakers"]["spkB"]["Err"] == 66.7
    result = (out / "result.txt").read_text()
    assert "| spkA    |     2     8 | 87.5    0.0   12.5    0.0   12.5   50.0 |" in result
    assert "| spkB    |     2     6 |    4      1      1      2      4      2 |" in result
    # the totals row (grepped by show_asr_result.sh and results_table) is unchanged
    assert "| Sum/Avg |     4    14 | 78.6    7.1   14.3   14.3   35.7   75.0 |" in result
    assert sc.read_score_dir(str(out))[0][-1] == "75.0"
    bad = _write(tmp_path / "utt2spk_bad", ["u1 spkA", "u2 spkB", "u3 spkA"])
    with pytest.raises(sc.ScoreError, match="u4"):
        sc.score_files(ref, hyp, "word", str(tmp_path / "o"), use_sclite="false",
                       utt2spk_path=bad)


def test_char_unit(tmp_path):
    ref = _write(tmp_path / "ref", ["c1 ab  cd", "c2 日本語"])
    hyp = _write(tmp_path / "hyp", ["c1 abd", "c2 日本"])
    assert sc.tokenize("ab  cd", "char") == ["a", "b", "<space>", "c", "d"]
    out = tmp_path / "score_cer"
    s = sc.score_files(ref, hyp, "char", str(out), use_sclite="false")
    # c1: a b <space> c d / a b d -> C3 D2 ; c2: 日 本 語 / 日 本 -> C2 D1
    assert s["counts"] == {
        "Snt": 2, "Wrd": 8, "Corr": 5, "Sub": 0, "Del": 3, "Ins": 0,
        "Err": 3, "S.Err": 2,
    }
    assert s["Err"] == 37.5 and s["unit"] == "char"
    assert "<SPACE>" in (out / "result.txt").read_text()


def test_mismatched_ids(tmp_path):
    ref = _write(tmp_path / "ref", REF)
    extra = _write(tmp_path / "extra", HYP + ["u9 surprise"])
    with pytest.raises(sc.ScoreError, match="u9"):
        sc.score_files(ref, extra, "word", str(tmp_path / "o1"), use_sclite="false")
    partial = _write(tmp_path / "partial", HYP[:2] + HYP[3:])
    with pytest.raises(sc.ScoreError, match="u3"):
        sc.score_files(ref, partial, "word", str(tmp_path / "o2"), use_sclite="false")
    s = sc.score_files(ref, partial, "word", str(tmp_path / "o3"),
                       use_sclite="false", missing_hyp="empty")
    # u3 (2 words) becomes 2 deletions.
    assert s["counts"]["Del"] == 4 and s["counts"]["Corr"] == 9
    assert s["missing_hyp"] == 1
    assert sc.main(["--ref", ref, "--hyp", extra, "--out_dir", str(tmp_path / "o4"),
                    "--use_sclite", "false"]) == 1


def test_sclite_required_but_missing(tmp_path):
    ref = _write(tmp_path / "ref", REF)
    hyp = _write(tmp_path / "hyp", HYP)
    with pytest.raises(sc.ScoreError, match="sclite was not found"):
        sc.score_files(ref, hyp, "word", str(tmp_path / "o"), use_sclite="true",
                       sclite=str(tmp_path / "no_sclite"))
    s = sc.score_files(ref, hyp, "word", str(tmp_path / "o"), use_sclite="auto",
                       sclite=str(tmp_path / "no_sclite"))
    assert s["scorer"] == "kaldialign" and s["counts"]["Err"] == 5


def test_empty_reference_and_duplicates(tmp_path):
    ref = _write(tmp_path / "ref", REF + ["u5"])
    hyp = _write(tmp_path / "hyp", HYP + ["u5 noise"])
    with pytest.raises(sc.ScoreError, match="u5"):
        sc.score_files(ref, hyp, "word", str(tmp_path / "o"), use_sclite="false")
    s = sc.score_files(ref, hyp, "word", str(tmp_path / "o"), use_sclite="false",
                       skip_empty_ref=True)
    assert s["Snt"] == 4 and s["skipped_empty_ref"] == 1
    dup = _write(tmp_path / "dup", HYP + ["u1 again"])
    with pytest.raises(sc.DataDirError, match="duplicate utterance id 'u1'"):
        sc.score_files(ref, dup, "word", str(tmp_path / "o"), use_sclite="false")


def test_results_table(tmp_path):
    exp = tmp_path / "asr_x"
    ref = _write(tmp_path / "ref", REF)
    hyp = _write(tmp_path / "hyp", HYP)
    for test_set in ["test_a", "test_b"]:
        base = exp / "decode_asr_model_valid.acc.ave" / test_set
        sc.score_files(ref, hyp, "word", str(base / "score_wer"), use_sclite="false")
        sc.score_files(ref, hyp, "char", str(base / "score_cer"), use_sclite="false")
    table = sc.results_table([str(exp)])
    lines = table.splitlines()
    assert lines[:5] == [
        "## asr_x",
        "### WER",
        "",
        "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    assert lines[5] == "|decode_asr_model_valid.acc.ave/test_a|4|14|78.6|7.1|14.3|14.3|35.7|75.0|"
    assert lines[6].startswith("|decode_asr_model_valid.acc.ave/test_b|4|14|")
    assert "### CER" in lines
    # the scorer is named under each table
    assert lines[7:9] == ["", f"Scored with kaldialign {sc.kaldialign.__version__} (sclite_mode)."]
    # A result.txt without summary.json (e.g. ESPnet's own sclite stage) works.
    os.remove(exp / "decode_asr_model_valid.acc.ave" / "test_b" / "score_wer" / "summary.json")
    lines = sc.results_table([str(exp)]).splitlines()
    assert lines[6] == "|decode_asr_model_valid.acc.ave/test_b|4|14|78.6|7.1|14.3|14.3|35.7|75.0|"
    assert lines[8] == (f"Scored with kaldialign {sc.kaldialign.__version__} (sclite_mode), "
                        "unknown (result.txt only).")


@pytest.mark.skipif(_sclite_path() is None, reason="NIST sclite (sctk) not installed")
@pytest.mark.parametrize("unit", ["word", "char"])
def test_against_sclite(tmp_path, unit):
    """kaldialign (sclite_mode) and sclite find alignments of the same cost for every
    utterance, with the same counts except on some equal-cost ties; sclite's output is
    parsed right (per-utterance, per-speaker and total counts, Sum/Avg percentages), and
    the result.txt written for kaldialign has sclite's layout."""
    rng = random.Random(1)
    vocab = ["a", "b", "Ab", "cd", "ü", "Ü", "日本"]
    refs, hyps, spk = [], [], []
    for k in range(300):
        refs.append(f"utt{k:03d} " + " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))))
        hyps.append(f"utt{k:03d} " + " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6))))
        spk.append(f"utt{k:03d} spk{k % 3}")
    refs += REF
    hyps += HYP
    spk += [f"u{i} spkx" for i in range(1, 5)]
    ref = _write(tmp_path / "ref", refs)
    hyp = _write(tmp_path / "hyp", hyps)
    u2s = _write(tmp_path / "utt2spk", spk)
    ka = sc.score_files(ref, hyp, unit, str(tmp_path / "ka"), use_sclite="false",
                        utt2spk_path=u2s)
    scl = sc.score_files(ref, hyp, unit, str(tmp_path / "sc"), use_sclite="auto",
                         sclite=_sclite_path(), utt2spk_path=u2s)
    assert scl["scorer"] == "sclite" and ka["scorer"] == "kaldialign"
    assert re.match(r"\d", scl["scorer_version"]) and ka["scorer_version"] == sc.kaldialign.__version__
    sc_text = (tmp_path / "sc" / "result.txt").read_text()
    ka_text = (tmp_path / "ka" / "result.txt").read_text()
    assert "id: (spk1-utt001)" in sc_text
    sc_counts = sc.parse_sclite_pra(sc_text)
    ka_counts = sc.parse_sclite_pra(ka_text)
    assert len(ka_counts) == len(sc_counts) == len(refs)
    spk_of = dict(line.split() for line in spk)
    same = 0
    for utt, (c, s, d, i) in ka_counts.items():
        c2, s2, d2, i2 = sc_counts[f"{spk_of[utt]}-{utt}"]
        assert c + s + d == c2 + s2 + d2 and 4 * s + 3 * (d + i) == 4 * s2 + 3 * (d2 + i2), utt
        same += (c, s, d, i) == (c2, s2, d2, i2)
    assert same >= 0.95 * len(refs), same
    # Per-speaker rows: the counts in summary.json equal the rows sclite prints by speaker.
    sclite_rows = {}
    for line in sc_text.splitlines():
        cells = line.replace("|", " ").split()
        if len(cells) == 9 and cells[0].startswith("spk") and "." not in line:
            sclite_rows[cells[0]] = [int(x) for x in cells[1:]]
    assert sorted(sclite_rows) == ["spk0", "spk1", "spk2", "spkx"]
    for speaker, row in sclite_rows.items():
        c = scl["speakers"][speaker]["counts"]
        assert row == [c[k] for k in ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]], speaker
    # sclite's own printed Sum/Avg percentages agree with summary.json's.
    cells, scorer = sc.read_score_dir(str(tmp_path / "sc"))
    assert scorer == f"NIST sclite {scl['scorer_version']}"
    os.remove(tmp_path / "sc" / "summary.json")
    assert sc.read_score_dir(str(tmp_path / "sc"))[0] == cells
    # The alignment blocks have sclite's layout (identical wherever the alignments are).
    blocks = [b.split("\n", 1)[1] for b in ka_text.split("\n\n") if b.startswith("id: (utt")]
    assert len(blocks) == 300
    assert sum(b in sc_text for b in blocks) >= 0.9 * len(blocks)


def test_results_table_environments_block(tmp_path, capsys):
    exp = tmp_path / "asr_x"
    ref = _write(tmp_path / "ref", REF)
    hyp = _write(tmp_path / "hyp", HYP)
    sc.score_files(ref, hyp, "word", str(exp / "decode" / "test" / "score_wer"), use_sclite="false")
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__))))
    assert sc.main(["results_table", "--exp_dir", str(exp), "--project_dir", project,
                    "--pretrained_model", "exp/ssl_y/valid.loss.ave.pth", "--note", "extra line"]) == 0
    out = capsys.readouterr().out
    env, tables = out.split("## asr_x")
    lines = env.splitlines()
    assert lines[:2] == ["# RESULTS", "## Environments"]
    import espnet
    import sys as _sys
    import torch
    assert f"- espnet version: `espnet {espnet.__version__}`" in lines
    assert f"- pytorch version: `pytorch {torch.__version__}`" in lines
    assert f"- python version: `{_sys.version}`" in lines
    assert "- Pretrained model: `exp/ssl_y/valid.loss.ave.pth`" in lines
    assert "- extra line" in lines
    assert any(line.startswith("- date: `") for line in lines)
    git_line = [line for line in lines if line.startswith("- Git hash: ")][0]
    if sc._git(project, "rev-parse", "HEAD") is not None:  # a git checkout
        assert re.match(r"- Git hash: `[0-9a-f]{40}`", git_line), git_line
    # Not a git checkout: said so, not a made-up hash.
    assert sc.environments(str(tmp_path), "none").count("not a git checkout") == 1
    assert "|test|4|14|" in tables.replace("decode/", "")
    # Without --pretrained_model only the tables are printed (as before).
    assert sc.main(["results_table", "--exp_dir", str(exp)]) == 0
    assert capsys.readouterr().out.startswith("## asr_x")
