"""YODAS (Hugging Face dataset ``espnet/yodas``, v1 layout) download and Kaldi data preparation
for English subsets.

Layout of the v1 release (what ``snapshot_download`` reproduces locally)::

    <root>/data/<subset>/audio/<shard:08d>.tar.gz     utterance audio files
    <root>/data/<subset>/text/<shard:08d>.txt         "<utt_id> <caption>"
    <root>/data/<subset>/duration/<shard:08d>.txt     "<utt_id> <seconds>"

``<subset>`` is ``<lang><NNN>``: ``en000``, ``en001``, ... hold manually created captions, ``en100``, ...
automatic ones. An utterance id is ``<video_id>-<index:05d>-<start_cs:08d>-<end_cs:08d>`` (video ids
are 11 characters and may contain ``-``); audio members of the tar are named after the utterance id.

Selection is deterministic: subsets in the given order, shards in numeric order, utterances sorted by
id, taken until ``hours + dev_hours + test_hours``; the pool is split by video (md5 of the video id
orders them; ``dev`` until ``dev_hours``, then ``test``, the rest ``pretrain``), so that no video is
on both sides; ``finetune`` is chosen from ``pretrain`` by video the same way (another hash salt).
Captions are normalised by :func:`~espnet2_birq.dataprep.text.normalize_caption`; utterances whose
caption is then empty are skipped (counted).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import tarfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from espnet2_birq.utils.datadir import write_data_dir
from .text import normalize_caption

logger = logging.getLogger(__name__)

REPO_ID = "espnet/yodas"
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a")


class YodasError(RuntimeError):
    pass


def video_id(utt_id: str) -> str:
    parts = utt_id.rsplit("-", 3)
    if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
        return parts[0]
    return utt_id.rsplit("-", 1)[0] if "-" in utt_id else utt_id


def _read_kv(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise YodasError(f"missing metadata file {path}")
    with open(path, encoding="utf-8") as f:
        return {k: v.strip() for k, _, v in (line.rstrip("\n").partition(" ") for line in f if line.strip())}


def list_shards(root, subset: str) -> List[str]:
    d = Path(root) / "data" / subset / "duration"
    if not d.is_dir():
        raise YodasError(f"{d} not found (subset {subset} not downloaded?)")
    return sorted(p.stem for p in d.glob("*.txt"))


def read_shard_meta(root, subset: str, shard: str):
    """Return ``[(utt_id, seconds, normalised_text)]`` sorted by id, and the number of utterances
    skipped (no caption / empty after normalisation / bad duration)."""
    base = Path(root) / "data" / subset
    dur_f, txt_f = base / "duration" / f"{shard}.txt", base / "text" / f"{shard}.txt"
    durs, texts = _read_kv(dur_f), _read_kv(txt_f)
    out, skipped = [], 0
    for utt in sorted(durs, key=lambda k: k.encode("utf-8")):
        try:
            sec = float(durs[utt])
        except ValueError:
            logger.warning("%s: bad duration for %s: %r", dur_f, utt, durs[utt])
            skipped += 1
            continue
        text = normalize_caption(texts.get(utt, ""))
        if sec <= 0 or not text:
            skipped += 1
            continue
        out.append((utt, sec, text))
    return out, skipped


def select_pool(root, subsets: Sequence[str], seconds: float):
    """Deterministically pick utterances until ``seconds`` are reached. Returns
    ``[(subset, shard, [(utt, sec, text), ...]), ...]`` and the number of skipped utterances."""
    picked, total, skipped = [], 0.0, 0
    # lazily: the subsets after the one that reaches ``seconds`` need not be there
    for subset, shard in ((subset, shard) for subset in subsets for shard in list_shards(root, subset)):
        meta, sk = read_shard_meta(root, subset, shard)
        skipped += sk
        take = []
        for item in meta:
            if total >= seconds:
                break
            take.append(item)
            total += item[1]
        if take:
            picked.append((subset, shard, take))
        if total >= seconds:
            break
    if total < seconds:
        logger.warning("only %.1f h available in %s (asked for %.1f h)", total / 3600, list(subsets), seconds / 3600)
    return picked, skipped


def assign_videos(utts: Dict[str, float], quotas: Sequence[float], salt: str, vid=video_id) -> List[Set[str]]:
    """``utts`` ({utt: seconds}) as ``len(quotas) + 1`` sets of utterance ids, whole videos at a time
    (``vid`` maps an utterance id to its video id): the videos, in the order of md5(``salt:video id``),
    go to the first set still short of its quota of seconds, the others to the last set."""
    by_vid: Dict[str, List[str]] = {}
    for u in utts:
        by_vid.setdefault(vid(u), []).append(u)
    quotas = [*quotas, math.inf]
    sets, totals = [set() for _ in quotas], [0.0 for _ in quotas]
    for v in sorted(by_vid, key=lambda v: (hashlib.md5(f"{salt}:{v}".encode("utf-8")).hexdigest(), v)):
        k = next(k for k, quota in enumerate(quotas) if totals[k] < quota)
        sets[k].update(by_vid[v])
        totals[k] += sum(utts[u] for u in by_vid[v])
    return sets


def _hf():
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise YodasError("downloading YODAS needs the huggingface_hub package: run `pip install "
                         "huggingface_hub` (or prepare from an existing copy with --download false)") from e
    return huggingface_hub


def caption_subsets(names: Iterable[str], lang: str = "en", manual_only: bool = True) -> List[str]:
    """The ``<lang>NNN`` subsets among ``names``, sorted (manual captions: NNN < 100)."""
    tails = {name: name[len(lang):] for name in names if name.startswith(lang)}
    return sorted({name for name, tail in tails.items() if tail.isdigit() and (not manual_only or int(tail) < 100)})


def discover_subsets(lang: str = "en", manual_only: bool = True, repo_id: str = REPO_ID,
                     revision: Optional[str] = None) -> List[str]:
    """List ``data/<lang>NNN`` subsets of the HF repo (manual captions: NNN < 100)."""
    tree = _hf().HfApi().list_repo_tree(repo_id, path_in_repo="data", repo_type="dataset", revision=revision)
    names = caption_subsets((entry.path.rsplit("/", 1)[-1] for entry in tree), lang, manual_only)
    if not names:
        raise YodasError(f"no {lang} subsets found in {repo_id}")
    return names


def download_yodas(root, subsets: Sequence[str], hours: float, dev_hours: float, test_hours: float,
                   repo_id: str = REPO_ID, revision: Optional[str] = None, max_workers: int = 8):
    """Download metadata of ``subsets``, select the pool, then download only the audio shards
    the pool needs. ``snapshot_download`` skips files already present and resumes interrupted ones."""
    fetch = functools.partial(_hf().snapshot_download, repo_id=repo_id, repo_type="dataset", revision=revision,
                              local_dir=str(root), max_workers=max_workers)
    logger.info("downloading YODAS metadata for %s", list(subsets))
    fetch(allow_patterns=[f"data/{s}/{kind}/*" for s in subsets for kind in ("duration", "text")])
    pool, _ = select_pool(root, subsets, (hours + dev_hours + test_hours) * 3600)
    audio = [f"data/{s}/audio/{shard}.tar.gz" for s, shard, _ in pool]
    logger.info("downloading %d YODAS audio shards", len(audio))
    fetch(allow_patterns=audio)
    return pool


def extract_shard(root, subset: str, shard: str, extract_root=None) -> Dict[str, Path]:
    """Extract one audio shard (once; marker file) and map utt id -> file."""
    root = Path(root)
    archive = root / "data" / subset / "audio" / f"{shard}.tar.gz"
    target = Path(extract_root or root / "extracted") / subset / shard
    marker = target / f".{archive.name}.extracted"  # re-runs do not extract again
    if not marker.exists():
        if not archive.is_file():
            raise YodasError(f"audio shard {archive} not found (download it first)")
        from lhotse.utils import safe_extract  # refuses members outside the target

        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tf:
                safe_extract(tf, target)
        except Exception as e:  # tarfile's errors, EOFError, lhotse's refusal of members outside the target
            raise YodasError(f"cannot extract {archive}: {e} (a broken download? delete it and re-run)") from e
        marker.write_text(f"{archive}\n")
    return {p.stem: p.resolve() for p in target.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file()}


def prepare_yodas(root, data_root, subsets: Sequence[str], hours: float = 5000, finetune_hours: float = 100,
                  dev_hours: float = 5, test_hours: float = 5, extract_root=None,
                  strict: bool = False) -> Dict[str, float]:
    """Write ``pretrain``, ``finetune``, ``dev``, ``test`` under ``data_root``; returns hours per dir."""
    root = Path(root)
    pool, skipped = select_pool(root, subsets, (hours + dev_hours + test_hours) * 3600)
    if not pool:
        raise YodasError(f"no usable utterances in {root}/data/{{{','.join(subsets)}}}")
    secs: Dict[str, float] = {}
    text, wav, spk = {}, {}, {}
    missing = 0
    for subset, shard, items in pool:
        files = extract_shard(root, subset, shard, extract_root)
        for utt, sec, txt in items:
            if utt not in files:
                if strict:
                    raise YodasError(f"{subset}/{shard}: no audio for utterance {utt} in the tar")
                missing += 1
                continue
            kid = f"{subset}-{utt}"
            secs[kid], text[kid], wav[kid], spk[kid] = sec, txt, str(files[utt]), f"{subset}-{video_id(utt)}"
    if skipped or missing:
        logger.warning("YODAS: skipped %d utterances with empty/missing captions or bad durations and "
                       "%d without audio", skipped, missing)

    # Split on the raw video id (without the subset prefix) so that a video never lands on both
    # sides, even if it appears in two subsets.
    def raw_vid(k):
        return video_id(k.split("-", 1)[1])

    dev, test, train = assign_videos(secs, [dev_hours * 3600, test_hours * 3600], "yodas-heldout", raw_vid)
    finetune = assign_videos({u: secs[u] for u in train}, [finetune_hours * 3600], "yodas-finetune", raw_vid)[0]

    hours_out = {}
    for name, ids in (("pretrain", train), ("finetune", finetune), ("dev", dev), ("test", test)):
        if not ids:
            logger.warning("YODAS: %s is empty; not written", name)
            continue
        write_data_dir(Path(data_root) / name, {u: wav[u] for u in ids}, {u: spk[u] for u in ids},
                       text={u: text[u] for u in ids}, utt2dur={u: secs[u] for u in ids})
        hours_out[name] = sum(secs[u] for u in ids) / 3600
        logger.info("wrote %s/%s: %d utterances, %.2f h", data_root, name, len(ids), hours_out[name])
    return hours_out


def local_subsets(root, lang: str = "en", manual_only: bool = True) -> List[str]:
    return caption_subsets((p.name for p in Path(root).glob(f"data/{lang}*") if p.is_dir()), lang, manual_only)


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(description="YODAS (espnet/yodas) download / Kaldi data preparation")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("download", "prepare"):
        q = sub.add_parser(name)
        q.add_argument("--root", required=True, help="local copy of the HF repo")
        q.add_argument("--subsets", default="auto", help="comma/space separated subsets (e.g. en000,en001) or "
                       "'auto' = all manual-caption English subsets, in order")
        q.add_argument("--hours", type=float, default=5000)
        q.add_argument("--dev_hours", type=float, default=5)
        q.add_argument("--test_hours", type=float, default=5)
        if name == "download":
            q.add_argument("--repo_id", default=REPO_ID)
            q.add_argument("--revision", default=None)
        else:
            q.add_argument("--data_dir", required=True)
            q.add_argument("--finetune_hours", type=float, default=100)
            q.add_argument("--extract_dir", default=None, help="where shards are extracted (default <root>/extracted)")
            q.add_argument("--strict", action="store_true",
                           help="fail on an utterance without audio instead of skipping it")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    subsets = [s for s in a.subsets.replace(",", " ").split() if s]
    try:
        if a.cmd == "download":
            if subsets == ["auto"]:
                subsets = discover_subsets("en", manual_only=True, repo_id=a.repo_id, revision=a.revision)
            download_yodas(a.root, subsets, a.hours, a.dev_hours, a.test_hours, a.repo_id, a.revision)
        else:
            if subsets == ["auto"]:
                subsets = local_subsets(a.root)
                if not subsets:
                    raise YodasError(f"no English subsets under {a.root}/data (run with --download true)")
            hours = prepare_yodas(a.root, a.data_dir, subsets, a.hours, a.finetune_hours, a.dev_hours,
                                  a.test_hours, a.extract_dir, a.strict)
            for k, v in hours.items():
                print(f"{k}\t{v:.2f}h")
    except (YodasError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
