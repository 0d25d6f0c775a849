"""LibriSpeech (openslr SLR12) download and Kaldi data preparation.

On-disk layout after extraction (official release)::

    <root>/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    <root>/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt

Each ``.trans.txt`` line is ``<spk>-<chapter>-<utt> TRANSCRIPT`` (upper case).

Produced Kaldi dirs (names used by the recipe):

==================  =====================================================
``pretrain_960``    train-clean-100 + train-clean-360 + train-other-500
                    (960 h; text is written but unused by SSL pre-training)
``train_clean_100`` labelled fine-tuning set
``dev_clean`` ...   dev-clean, dev-other, test-clean, test-other
==================  =====================================================

``wav.scp`` holds plain absolute ``.flac`` paths (read directly by
soundfile / ESPnet's ``sound`` loader; no ``flac -d |`` pipe needed).
The LibriSpeech language-model text (openslr SLR11 ``librispeech-lm-norm.txt.gz``,
~40M normalised sentences from ~14.5k books, the dev/test books left out; the text
of the official n-gram LMs) is downloaded with the audio and written as the Kaldi
text ``data/local/other_text/text`` (ids ``librispeech_lm_norm_<line>``, as ESPnet's
LibriSpeech recipe names them), the n-gram's training text.

``utt2spk`` maps to ``<spk>-<chapter>`` by default (as Kaldi's
``egs/librispeech/s5/local/data_prep.sh`` does: one "speaker" per reader and
chapter, a prefix of the utterance id); ``speaker_level="speaker"`` maps to
the bare reader id instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from . import download as dl
from espnet2_birq.utils.datadir import write_data_dir
from .text import normalize_librispeech

logger = logging.getLogger(__name__)

BASE_URL = "https://www.openslr.org/resources/12"

# md5 from https://www.openslr.org/resources/12/md5sum.txt (as reproduced in
# many public recipes, e.g. NVIDIA DeepLearningExamples); approximate sizes
# from https://www.openslr.org/12. Exact byte counts are known for three of
# them and are checked too.
ARCHIVES = {
    "dev-clean": {"md5": "42e2234ba48799c1f50f24a7926300a1", "size": 337926286, "approx": "337M"},
    "dev-other": {"md5": "c8d0bcc9cca99d4f8b62fcc847357931", "size": None, "approx": "314M"},
    "test-clean": {"md5": "32fa31d27d2e1cad72775fee3f4849a9", "size": 346663984, "approx": "346M"},
    "test-other": {"md5": "fb5a50374b501bb3bac4815ee91d3135", "size": None, "approx": "328M"},
    "train-clean-100": {"md5": "2a93770f6d5c6c964bc36631d331a522", "size": 6387309499, "approx": "6.3G"},
    "train-clean-360": {"md5": "c0e676e450a7ff2f54aeade5171606fa", "size": None, "approx": "23G"},
    "train-other-500": {"md5": "d1a0fd59409feb2c614ce4d30c387708", "size": None, "approx": "30G"},
}

LM_BASE_URL = "https://www.openslr.org/resources/11"
# OpenSLR 11 publishes no md5 list; this md5 is the one public recipes check the file
# against (e.g. a Python port of Kaldi's librispeech download_lm.sh, 2022).
LM_TEXT = {"name": "librispeech-lm-norm.txt.gz", "md5": "c83c64c726a1aedfe65f80aa311de402",
           "size": None, "approx": "1.5G"}
LM_TEXT_DIR = "local/other_text"  # under the data dir: <data>/local/other_text/text
LM_ID_PREFIX = "librispeech_lm_norm_"

DATA_DIRS = {
    "pretrain_960": ["train-clean-100", "train-clean-360", "train-other-500"],
    "train_clean_100": ["train-clean-100"],
    "dev_clean": ["dev-clean"],
    "dev_other": ["dev-other"],
    "test_clean": ["test-clean"],
    "test_other": ["test-other"],
}

_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_UNEXPECTED = re.compile(r"[^A-Z' ]")


class LibriSpeechError(RuntimeError):
    pass


def download_librispeech(root, subsets: Iterable[str] = tuple(ARCHIVES),
                         base_url: str = BASE_URL, keep_archives: bool = True) -> Path:
    """Download and extract ``subsets`` into ``<root>/LibriSpeech/<subset>``.

    Each archive is verified against the official md5; a marker
    ``<root>/LibriSpeech/<subset>/.complete`` makes re-runs skip it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for subset in subsets:
        if subset not in ARCHIVES:
            raise LibriSpeechError(f"unknown LibriSpeech subset {subset!r}")
        done = root / "LibriSpeech" / subset / ".complete"
        if done.exists():
            logger.info("%s already prepared in %s; skipping", subset, done.parent)
            continue
        info = ARCHIVES[subset]
        archive = root / f"{subset}.tar.gz"
        dl.download(f"{base_url}/{subset}.tar.gz", archive, md5=info["md5"], size=info["size"])
        dl.extract(archive, root)
        if not (root / "LibriSpeech" / subset).is_dir():
            raise LibriSpeechError(f"{archive} did not contain LibriSpeech/{subset}")
        done.write_text("ok\n")
        if not keep_archives:
            archive.unlink()
    return root / "LibriSpeech"


def download_lm_text(root, base_url: str = LM_BASE_URL) -> Path:
    """Download ``<root>/librispeech-lm-norm.txt.gz`` (md5-verified, resumable; skipped
    when already there)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / LM_TEXT["name"]
    return dl.download(f"{base_url}/{LM_TEXT['name']}", dest, md5=LM_TEXT["md5"], size=LM_TEXT["size"])


def prepare_lm_text(lm_text, data_root) -> int:
    """Write the LM text (``.txt.gz`` or plain) as the Kaldi text
    ``<data_root>/local/other_text/text``: one id per line (``librispeech_lm_norm_<line
    number>``, sorted), the sentence normalised as the transcripts, empty lines left
    out. Written to a temporary file and renamed, so an interrupted run leaves none.
    Returns the number of sentences."""
    import gzip

    lm_text = Path(lm_text)
    if not lm_text.is_file():
        raise LibriSpeechError(
            f"LM text {lm_text} not found: download it (local/data.sh --download true) "
            f"or leave it out (--lm_text false)")
    out = Path(data_root) / LM_TEXT_DIR / "text"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("text.tmp")
    opener = gzip.open if lm_text.suffix == ".gz" else open
    n = 0
    with opener(lm_text, "rt", encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for number, line in enumerate(src, 1):
            sentence = normalize_librispeech(line)
            if sentence:
                dst.write(f"{LM_ID_PREFIX}{number:09d} {sentence}\n")
                n += 1
    if n == 0:
        tmp.unlink()
        raise LibriSpeechError(f"{lm_text} holds no sentence")
    tmp.replace(out)
    logger.info("wrote %s: %d sentences of %s", out, n, lm_text)
    return n


def scan_subset(subset_dir, strict: bool = True):
    """Return ``{utt: (flac_path, transcript)}`` for one extracted subset.

    With ``strict`` a flac without transcript, a transcript without flac, an
    empty transcript or a malformed line raises :class:`LibriSpeechError`
    naming the file; otherwise the entry is skipped and counted."""
    subset_dir = Path(subset_dir)
    if not subset_dir.is_dir():
        raise LibriSpeechError(f"LibriSpeech subset directory not found: {subset_dir}")
    out: Dict[str, tuple] = {}
    skipped = 0

    def bad(msg):
        nonlocal skipped
        if strict:
            raise LibriSpeechError(msg)
        logger.warning("skipping: %s", msg)
        skipped += 1

    for chapter_dir in sorted(p for p in subset_dir.glob("*/*") if p.is_dir()):
        spk, chapter = chapter_dir.parent.name, chapter_dir.name
        trans = chapter_dir / f"{spk}-{chapter}.trans.txt"
        flacs = {p.stem: p for p in chapter_dir.glob("*.flac")}
        texts: Dict[str, str] = {}
        if trans.is_file():
            with open(trans, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    utt, _, txt = line.strip().partition(" ")
                    txt = normalize_librispeech(txt)
                    if not _UTT.match(utt) or not utt.startswith(f"{spk}-{chapter}-"):
                        bad(f"{trans}:{n}: malformed utterance id {utt!r}")
                        continue
                    if not txt:
                        bad(f"{trans}:{n}: empty transcript for {utt}")
                        continue
                    texts[utt] = txt
        elif flacs:
            bad(f"missing transcript file {trans} for {len(flacs)} flac files")
        for utt in sorted(flacs):
            if utt not in texts:
                if trans.is_file():
                    bad(f"no transcript for {flacs[utt]} in {trans}")
                continue
            out[utt] = (flacs[utt].resolve(), texts[utt])
        for utt in sorted(set(texts) - set(flacs)):
            bad(f"{trans}: transcript for {utt} but no {utt}.flac")
    if not out:
        raise LibriSpeechError(f"no utterances found under {subset_dir}")
    if skipped:
        logger.warning("%s: skipped %d bad entries", subset_dir, skipped)
    return out


def prepare_librispeech(corpus_dir, data_root, dirs: Optional[List[str]] = None,
                        speaker_level: str = "chapter", strict: bool = True) -> Dict[str, int]:
    """Write the Kaldi dirs listed in :data:`DATA_DIRS` (or ``dirs``) under
    ``data_root``. ``corpus_dir`` is the ``LibriSpeech`` directory. Returns
    the number of utterances per dir."""
    corpus_dir = Path(corpus_dir)
    if speaker_level not in ("chapter", "speaker"):
        raise ValueError("speaker_level must be 'chapter' or 'speaker'")
    if dirs is None:
        # Users start with part of the corpus: prepare every set whose subsets are present.
        dirs = [name for name, subsets in DATA_DIRS.items() if all((corpus_dir / s).is_dir() for s in subsets)]
        for name, subsets in DATA_DIRS.items():
            missing = [s for s in subsets if not (corpus_dir / s).is_dir()]
            if missing:
                logger.warning("not preparing %s: subset(s) %s not in %s", name, " ".join(missing), corpus_dir)
        if not dirs:
            raise LibriSpeechError(
                f"no LibriSpeech subset found in {corpus_dir} (expected e.g. {corpus_dir / 'train-clean-100'})"
            )
    cache: Dict[str, dict] = {}
    counts = {}
    for name in dirs:
        wav, utt2spk, text = {}, {}, {}
        source: Dict[str, str] = {}
        for subset in DATA_DIRS[name]:
            if subset not in cache:
                cache[subset] = scan_subset(corpus_dir / subset, strict=strict)
            for utt, (path, txt) in cache[subset].items():
                if utt in wav:
                    raise LibriSpeechError(
                        f"{name}: utterance id {utt} is in two subsets: {source[utt]} ({wav[utt]}) and "
                        f"{subset} ({path}); ids must be unique (remove or rename one copy)"
                    )
                spk, chapter, _ = utt.split("-")
                wav[utt] = str(path)
                source[utt] = subset
                utt2spk[utt] = f"{spk}-{chapter}" if speaker_level == "chapter" else spk
                text[utt] = txt
        report_unexpected_characters(name, text)
        write_data_dir(Path(data_root) / name, wav, utt2spk, text=text)
        counts[name] = len(wav)
        logger.info("wrote %s: %d utterances", Path(data_root) / name, len(wav))
    return counts


def report_unexpected_characters(name: str, text: Dict[str, str]) -> Dict[str, int]:
    """Warn about characters outside LibriSpeech's ``A-Z``, apostrophe and space.

    Returns ``{character: count of transcripts holding it}``."""
    found: Dict[str, int] = {}
    first: Dict[str, str] = {}
    for utt, txt in text.items():
        for ch in set(_UNEXPECTED.findall(txt)):
            found[ch] = found.get(ch, 0) + 1
            first.setdefault(ch, utt)
    if found:
        listed = ", ".join(f"{ch!r} in {n} (first {first[ch]})" for ch, n in sorted(found.items()))
        logger.warning("%s: characters outside A-Z, apostrophe and space: %s", name, listed)
    return found


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(description="LibriSpeech download / Kaldi data preparation")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download and extract the official tarballs")
    d.add_argument("--root", required=True, help="directory that will hold LibriSpeech/")
    d.add_argument("--subsets", nargs="+", default=list(ARCHIVES))
    d.add_argument("--base_url", default=BASE_URL)
    d.add_argument("--keep_archives", type=lambda s: s.lower() == "true", default=True)
    d.add_argument("--lm_text", type=lambda s: s.lower() == "true", default=False,
                   help="also download the LM text librispeech-lm-norm.txt.gz into --root")
    d.add_argument("--lm_base_url", default=LM_BASE_URL)
    m = sub.add_parser("prepare_lm_text", help="write the LM text as <data_dir>/local/other_text/text")
    m.add_argument("--lm_text", required=True, help="librispeech-lm-norm.txt.gz (or the plain text)")
    m.add_argument("--data_dir", required=True)
    q = sub.add_parser("prepare", help="write Kaldi data dirs")
    q.add_argument("--corpus_dir", required=True, help="the LibriSpeech/ directory")
    q.add_argument("--data_dir", required=True)
    q.add_argument("--dirs", nargs="+", default=None, choices=list(DATA_DIRS),
                   help="default: every set whose subsets are in --corpus_dir")
    q.add_argument("--speaker_level", choices=["chapter", "speaker"], default="chapter")
    q.add_argument("--skip_bad", action="store_true",
                   help="skip (and count) bad entries instead of failing")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if a.cmd == "download":
            download_librispeech(a.root, a.subsets, a.base_url, a.keep_archives)
            if a.lm_text:
                download_lm_text(a.root, a.lm_base_url)
        elif a.cmd == "prepare_lm_text":
            print(f"{LM_TEXT_DIR}/text\t{prepare_lm_text(a.lm_text, a.data_dir)}")
        else:
            counts = prepare_librispeech(a.corpus_dir, a.data_dir, a.dirs,
                                         a.speaker_level, strict=not a.skip_bad)
            for k, v in counts.items():
                print(f"{k}\t{v}")
    except (LibriSpeechError, dl.DownloadError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
