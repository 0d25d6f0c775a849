"""LibriSpeech (openslr SLR12) through lhotse's recipe, written as the recipe's Kaldi dirs.

lhotse downloads and extracts the subsets (resumable) into ``<root>/LibriSpeech/<subset>`` and reads
transcripts and flac headers. Here: the dirs of :data:`DATA_DIRS`, checks of transcripts against flac
files, our text normalisation, ``utt2spk`` = ``<spk>-<chapter>`` (Kaldi's; or the reader), plain
.flac paths in ``wav.scp`` (lhotse's Kaldi export writes ffmpeg pipes), and the download of the LM
text (openslr SLR11 ``librispeech-lm-norm.txt.gz``)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import lhotse.utils
from lhotse.recipes.librispeech import LIBRISPEECH, download_librispeech
from lhotse.recipes.librispeech import prepare_librispeech as lhotse_prepare

from espnet2_birq.utils.datadir import write_data_dir
from .text import normalize_librispeech

logger = logging.getLogger(__name__)

DATA_DIRS = {"pretrain_960": ["train-clean-100", "train-clean-360", "train-other-500"],
             "train_clean_100": ["train-clean-100"], "dev_clean": ["dev-clean"], "dev_other": ["dev-other"],
             "test_clean": ["test-clean"], "test_other": ["test-other"]}
LM_URL = "https://www.openslr.org/resources/11/librispeech-lm-norm.txt.gz"


class LibriSpeechError(RuntimeError):
    pass


def download_lm_text(root, url: str = LM_URL) -> Path:
    """``<root>/librispeech-lm-norm.txt.gz`` by lhotse's resumable download (gzip's CRC catches a broken file)."""
    dest = Path(root) / "librispeech-lm-norm.txt.gz"
    if not Path(f"{dest}.done").is_file():  # lhotse's download would ask the server again
        dest.parent.mkdir(parents=True, exist_ok=True)
        lhotse.utils.resumable_download(url, filename=dest)
        Path(f"{dest}.done").touch()
    return dest


def read_subset(subset_dir: Path, strict: bool = True, num_jobs: int = 4) -> Dict[str, tuple]:
    """``{utt: (flac, normalised text)}`` of a subset, read by lhotse. A transcript line without id or text
    is an error; one without flac, or a flac without one, too, or (``strict=False``) skipped and counted."""
    expected = {}
    for trans in sorted(subset_dir.rglob("*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            utt, _, txt = line.strip().partition(" ")
            if not re.fullmatch(r"\d+-\d+-\d+", utt) or not utt.startswith(trans.name[:-len(".trans.txt")] + "-"):
                raise LibriSpeechError(f"{trans}:{n}: malformed utterance id in {line!r}")
            if not txt.strip():
                raise LibriSpeechError(f"{trans}:{n}: empty transcript for {utt}")
            expected[utt] = (trans.parent / f"{utt}.flac", trans)
    bad = [f"no transcript for {flac} in {flac.parent}/{flac.stem.rsplit('-', 1)[0]}.trans.txt"
           for flac in sorted(subset_dir.rglob("*.flac")) if flac.stem not in expected]
    sups, recs = {}, {}
    if any(flac.is_file() for flac, _ in expected.values()):  # lhotse fails on a subset without any
        part = lhotse_prepare(subset_dir.parent, dataset_parts=[subset_dir.name], num_jobs=num_jobs)
        sups = {s.id: s for s in part[subset_dir.name]["supervisions"]}
        recs = {r.id: r for r in part[subset_dir.name]["recordings"]}  # lhotse's lookup by id is linear
    bad += [f"{flac} not found (transcript in {trans})" for utt, (flac, trans) in expected.items() if utt not in sups]
    if bad and strict:
        raise LibriSpeechError(f"{subset_dir}: {len(bad)} bad entries (--skip_bad skips them): {'; '.join(bad[:5])}")
    if bad:
        logger.warning("%s: skipped %d bad entries, e.g. %s", subset_dir, len(bad), bad[0])
    if not sups:
        raise LibriSpeechError(f"no utterances found under {subset_dir} (not found or empty)")
    return {u: (Path(recs[s.recording_id].sources[0].source).resolve(), normalize_librispeech(s.text))
            for u, s in sorted(sups.items())}


def prepare_librispeech(corpus_dir, data_root, dirs: Optional[List[str]] = None, speaker_level: str = "chapter",
                        strict: bool = True, num_jobs: int = 4) -> Dict[str, int]:
    """Write the dirs of :data:`DATA_DIRS` (default: those whose subsets are in ``corpus_dir``, the
    ``LibriSpeech`` directory) under ``data_root``; returns their utterance counts."""
    corpus_dir = Path(corpus_dir)
    if dirs is None:  # users start with part of the corpus
        dirs = [name for name, subsets in DATA_DIRS.items() if all((corpus_dir / s).is_dir() for s in subsets)]
        for name in sorted(set(DATA_DIRS) - set(dirs)):
            logger.warning("not preparing %s: subset(s) %s not in %s", name, " ".join(
                s for s in DATA_DIRS[name] if not (corpus_dir / s).is_dir()), corpus_dir)
        if not dirs:
            raise LibriSpeechError(f"no LibriSpeech subset in {corpus_dir} (e.g. {corpus_dir / 'train-clean-100'})")
    needed = dict.fromkeys(s for d in dirs for s in DATA_DIRS[d])  # each subset read once
    subsets = {s: read_subset(corpus_dir / s, strict, num_jobs) for s in needed}
    for name in dirs:
        wav, utt2spk, text, source = {}, {}, {}, {}
        for subset in DATA_DIRS[name]:
            for utt, (path, txt) in subsets[subset].items():
                if utt in wav:
                    raise LibriSpeechError(f"{name}: utterance id {utt} is in two subsets: {source[utt]} ({wav[utt]}) "
                                           f"and {subset} ({path}); ids must be unique (remove or rename one copy)")
                wav[utt], source[utt], text[utt] = str(path), subset, txt
                utt2spk[utt] = utt.rsplit("-", 1)[0] if speaker_level == "chapter" else utt.split("-")[0]
        odd = Counter(ch for txt in text.values() for ch in set(re.findall(r"[^A-Z' ]", txt)))
        if odd:  # LibriSpeech's transcripts hold A-Z, apostrophe and space only
            logger.warning("%s: transcripts with characters outside A-Z, apostrophe and space: %s", name,
                           ", ".join(f"{ch!r} in {n}" for ch, n in sorted(odd.items())))
        write_data_dir(Path(data_root) / name, wav, utt2spk, text=text)
    return {name: sum(len(subsets[s]) for s in DATA_DIRS[name]) for name in dirs}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="LibriSpeech download / Kaldi data preparation (lhotse)")
    p.add_argument("cmd", choices=["download", "prepare"])
    p.add_argument("--root", help="download: directory that will hold LibriSpeech/ and the LM text")
    p.add_argument("--subsets", nargs="+", default=list(LIBRISPEECH), choices=LIBRISPEECH)
    p.add_argument("--keep_archives", type=lambda s: s.lower() == "true", default=True)
    p.add_argument("--lm_text", type=lambda s: s.lower() == "true", default=False)
    p.add_argument("--corpus_dir", help="prepare: the LibriSpeech/ directory")
    p.add_argument("--data_dir", help="prepare: output root")
    p.add_argument("--dirs", nargs="+", choices=list(DATA_DIRS), help="default: each set whose subsets are there")
    p.add_argument("--speaker_level", choices=["chapter", "speaker"], default="chapter")
    p.add_argument("--skip_bad", action="store_true", help="skip (and count) bad entries instead of failing")
    p.add_argument("--nj", type=int, default=4, help="threads reading the flac headers")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if a.cmd == "download":
            download_librispeech(a.root, dataset_parts=a.subsets)
            for s in [] if a.keep_archives else a.subsets:
                Path(a.root, f"{s}.tar.gz").unlink(missing_ok=True)
            if a.lm_text:
                download_lm_text(a.root)
        else:
            for k, v in prepare_librispeech(a.corpus_dir, a.data_dir, a.dirs, a.speaker_level,
                                            not a.skip_bad, a.nj).items():
                print(f"{k}\t{v}")
    except (LibriSpeechError, OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
