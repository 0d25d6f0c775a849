"""Training correctness at the sizes users train: optimiser, precision, ranks, init.

- every shipped SSL and ASR config builds decoupled AdamW with no decay on biases and
  normalisation layers (coupled L2 under Adam pulls weights to zero where gradients are
  small, and erases a head whose loss is off during a warm-up);
- optimiser-update counting (schedules) under gradient accumulation and skipped steps;
- quantiser targets and enhanced scores are the fp32 ones under bf16 autocast;
- two data-parallel ranks (gloo, CPU) draw different masks and noise but hold
  identical quantiser buffers;
- fine-tuning SpecAugment fills masks with the mean, not 0 (an outlier after CMVN);
- stage 6's check refuses a checkpoint the encoder would not load from.
"""

import glob
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from espnet2.tasks.asr import ASRTask
from espnet2_birq.bilevel import PenaltySchedule, register_update_hooks
from espnet2_birq.tasks.ssl import BirqSSLTask

REPO = Path(__file__).resolve().parents[1]
SSL_CONFIGS = sorted(
    glob.glob(str(REPO / "conf" / "train_ssl_*.yaml"))
    + glob.glob(str(REPO / "egs2" / "*" / "ssl1" / "conf" / "train_ssl_*.yaml"))
)
ASR_CONFIGS = sorted(
    glob.glob(str(REPO / "conf" / "train_asr_*.yaml"))
    + glob.glob(str(REPO / "egs2" / "*" / "ssl1" / "conf" / "train_asr_*.yaml"))
)
BLJUST_CONFIGS = sorted(
    glob.glob(str(REPO / "egs2" / "*" / "ssl1" / "conf" / "train_bljust_*.yaml"))
)

pytestmark = pytest.mark.usefixtures("single_thread")


class _Probe(torch.nn.Module):
    """Stand-in model with every kind of parameter the exclusion rules look at."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.batch_norm = torch.nn.BatchNorm1d(4)


def _decay_by_parameter(optimizer, model):
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decay[names[id(p)]] = group["weight_decay"]
    return decay


def _task_of(config):
    if "train_ssl_" in config:
        return BirqSSLTask
    if "train_bljust_" in config:
        from espnet2_birq.tasks.bljust import BlJustTask

        return BlJustTask
    return ASRTask


@pytest.mark.parametrize(
    "config",
    SSL_CONFIGS + ASR_CONFIGS + BLJUST_CONFIGS,
    ids=lambda c: str(Path(c).relative_to(REPO)),
)
def test_shipped_configs_use_decoupled_weight_decay(config):
    task = _task_of(config)
    args = task.get_parser().parse_args(["--config", config])
    assert args.optim == "adamw", config
    assert args.exclude_weight_decay is True, config
    model = _Probe()
    (optimizer,) = task.build_optimizers(args, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = _decay_by_parameter(optimizer, model)
    configured = args.optim_conf.get("weight_decay", 0.01)
    assert decay["linear.weight"] == configured
    for name in ("linear.bias", "norm.weight", "norm.bias", "batch_norm.weight"):
        assert decay[name] == 0.0, (config, name)


def test_update_hooks_count_optimizer_steps_not_forwards():
    """With accumulation of 4, 8 forwards make 2 updates; a skipped step is not one."""
    schedule = PenaltySchedule(warmup_steps=1)
    model = torch.nn.ModuleDict({"linear": torch.nn.Linear(2, 2), "schedule": schedule})
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    register_update_hooks(model, [optimizer])
    for forward in range(1, 9):
        model["linear"](torch.randn(3, 2)).sum().backward()
        if forward % 4 == 0:
            optimizer.step()
            optimizer.zero_grad()
    assert int(schedule.num_updates) == 2
    # ESPnet skips optimizer.step() for a non-finite gradient norm: nothing counted
    model["linear"](torch.randn(3, 2)).sum().backward()
    assert int(schedule.num_updates) == 2
    assert not schedule.in_warmup()


def test_quantizer_and_enhanced_scores_are_fp32_under_bf16_autocast():
    from espnet2_birq.losses.birq import BiRQLoss

    loss = BiRQLoss(
        encoder_output_size=64,
        input_size=80,
        subsampling_factor=4,
        num_encoder_layers=4,
        codebook_size=8192,
        enhanced_codebook_size=8192,
    )
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 400, 80, generator=generator)
    lengths = torch.full((4,), 400)
    hidden = torch.randn(4, 100, 64, generator=generator)
    quantizer = loss.anchor.quantizer
    reference, _ = quantizer(feats, lengths)
    cosines = loss.enhanced_cosines(
        loss.normalise_label_hidden(hidden, torch.full((4,), 100))
    )
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        targets, _ = quantizer(feats.bfloat16(), lengths)
        normed = loss.normalise_label_hidden(hidden.bfloat16(), torch.full((4,), 100))
        low = loss.enhanced_cosines(normed)
    assert low.dtype == torch.float32
    # bf16 inputs round the features themselves; the quantiser's own arithmetic must
    # add nothing: targets of the rounded features computed in fp32 agree exactly
    rounded, _ = quantizer(feats.bfloat16().float(), lengths)
    assert torch.equal(targets, rounded)
    # and with fp32 inputs under autocast the targets are exactly the fp32 ones
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        same, _ = quantizer(feats, lengths)
        same_cos = loss.enhanced_cosines(
            loss.normalise_label_hidden(hidden, torch.full((4,), 100))
        )
    assert torch.equal(same, reference)
    assert torch.equal(same_cos.argmax(-1), cosines.argmax(-1))


def test_autocast_would_flip_targets_without_the_guard():
    """Why the guard matters: the same einsums under bf16 change targets."""
    from espnet2_birq.quantizer import RandomProjectionQuantizer

    quantizer = RandomProjectionQuantizer(input_dim=80, codebook_size=8192)
    feats = torch.randn(4, 400, 80, generator=torch.Generator().manual_seed(0))
    stacked, _ = quantizer.stack(feats, torch.full((4,), 400))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        projected = torch.einsum("btd,ndc->btnc", stacked, quantizer.projection)
        projected = torch.nn.functional.normalize(projected.float(), dim=-1)
        similarity = torch.einsum("btnc,nkc->btnk", projected, quantizer.codebook)
    reference, _ = quantizer(feats, torch.full((4,), 400))
    changed = (similarity.argmax(-1) != reference).float().mean()
    assert changed > 0.005, float(changed)


# ------------------------------------------------------------ data-parallel ranks
def _rank_worker(rank, world_size, init_file, out_dir, config):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    args = BirqSSLTask.get_parser().parse_args(["--config", config, "--input_size", "80"])
    args.normalize, args.normalize_conf = "utterance_mvn", {}
    torch.manual_seed(0)  # ESPnet seeds every rank alike
    model = BirqSSLTask.build_model(args)
    model.train()
    feats = torch.randn(2, 400, 80, generator=torch.Generator().manual_seed(7))
    lengths = torch.tensor([400, 400])
    torch.manual_seed(1234)  # same global stream on both ranks
    data = model.encode(feats, lengths)
    loss = model.losses[0]
    noise = torch.rand(8, generator=data["rng"])
    torch.save(
        {
            "mask": data["mask_info"]["mask_m"],
            "input": data["mask_info"]["input_mask"],
            "noise": noise,
            "buffers": {k: v for k, v in model.state_dict().items() if "quantizer" in k
                        or "enhanced_codebook" in k or "enhanced_projection" in k},
            "label_layer": loss.label_layer,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_ranks_draw_different_masks_but_share_quantizers(tmp_path):
    import torch.multiprocessing as mp

    config = str(REPO / "conf" / "train_ssl_birq_debug.yaml")
    mp.spawn(
        _rank_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), config),
        nprocs=2,
        join=True,
    )
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(rank0["mask"], rank1["mask"])
    assert not torch.equal(rank0["noise"], rank1["noise"])
    assert rank0["buffers"].keys() == rank1["buffers"].keys() and rank0["buffers"]
    for key, value in rank0["buffers"].items():
        assert torch.equal(value, rank1["buffers"][key]), key


def test_rank_stream_is_reproducible():
    from espnet2_birq.rng import step_generator

    torch.manual_seed(5)
    a = torch.rand(4, generator=step_generator(torch.device("cpu"), rank=0))
    torch.manual_seed(5)
    b = torch.rand(4, generator=step_generator(torch.device("cpu"), rank=0))
    torch.manual_seed(5)
    c = torch.rand(4, generator=step_generator(torch.device("cpu"), rank=1))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -------------------------------------------------------------- fine-tuning
@pytest.mark.parametrize(
    "config",
    [c for c in ASR_CONFIGS + BLJUST_CONFIGS if "specaug:" in Path(c).read_text()],
    ids=lambda c: str(Path(c).relative_to(REPO)),
)
def test_specaug_fills_masks_with_the_mean(config):
    """ESPnet applies SpecAugment before normalisation; a 0 fill becomes an outlier
    of (0 - mean) / std after global CMVN (log-mel means are far from 0)."""
    conf = yaml.safe_load(Path(config).read_text())
    assert conf["specaug_conf"].get("replace_with_zero") is False, config
    from espnet2.asr.specaug.specaug import SpecAug

    specaug = SpecAug(**conf["specaug_conf"]).train()
    torch.manual_seed(0)
    feats = torch.randn(2, 300, 80) + 12.0  # log-mel-like level
    masked, _ = specaug(feats.clone(), torch.tensor([300, 300]))
    assert (masked != feats).any()
    # no value left at 0: masks sit at the mean, inside the features' range (7.5..16.5)
    assert masked.min() > 5.0, float(masked.min())
    zero_filled = SpecAug(**dict(conf["specaug_conf"], replace_with_zero=True)).train()
    torch.manual_seed(0)
    reference, _ = zero_filled(feats.clone(), torch.tensor([300, 300]))
    assert reference.min() == 0.0  # what the old setting did


# ------------------------------------------------------------------ stage 6
@pytest.fixture(scope="module")
def ssl_checkpoints(tmp_path_factory):
    """An SSL model file, a trainer checkpoint and the matching fine-tuning config."""
    from espnet2_birq.bin.make_finetune_config import merge_configs

    root = tmp_path_factory.mktemp("init")
    config = REPO / "conf" / "train_ssl_birq_debug.yaml"
    args = BirqSSLTask.get_parser().parse_args(["--config", str(config), "--input_size", "80"])
    args.normalize, args.normalize_conf = "utterance_mvn", {}
    model = BirqSSLTask.build_model(args)
    state = model.state_dict()
    torch.save(state, root / "valid.best_rq_acc.ave.pth")
    torch.save({"model": state, "optimizers": [], "reporter": {}}, root / "checkpoint.pth")
    ssl = yaml.safe_load(config.read_text())
    ssl["normalize"], ssl["normalize_conf"] = "utterance_mvn", {}
    asr = yaml.safe_load((REPO / "conf" / "train_asr_ctc.yaml").read_text())
    merged = merge_configs(ssl, asr)
    (root / "train_asr.yaml").write_text(yaml.safe_dump(merged))
    other = dict(merged, encoder_conf=dict(merged["encoder_conf"], output_size=48))
    (root / "other_asr.yaml").write_text(yaml.safe_dump(other))
    (root / "tokens.txt").write_text("<blank>\n<unk>\nA\nB\n<sos/eos>\n")
    return root


def _verify(root, ckpt, config):
    from espnet2_birq.bin.check_init import verify

    return verify(
        root / ckpt,
        root / config,
        root / "tokens.txt",
        ["--input_size", "80", "--token_type", "char"],
    )


def test_check_init_accepts_a_model_file(ssl_checkpoints):
    assert _verify(ssl_checkpoints, "valid.best_rq_acc.ave.pth", "train_asr.yaml") > 10


def test_check_init_refuses_a_trainer_checkpoint(ssl_checkpoints):
    with pytest.raises(RuntimeError, match="trainer checkpoint"):
        _verify(ssl_checkpoints, "checkpoint.pth", "train_asr.yaml")


def test_check_init_refuses_another_shape(ssl_checkpoints):
    with pytest.raises(RuntimeError, match="does not fit"):
        _verify(ssl_checkpoints, "valid.best_rq_acc.ave.pth", "other_asr.yaml")


def test_checkpoint_name_follows_the_criterion():
    from espnet2_birq.bin.check_init import checkpoint_name

    for config in SSL_CONFIGS:
        criterion = yaml.safe_load(Path(config).read_text())["best_model_criterion"][0]
        assert checkpoint_name(Path(config)) == f"{criterion[0]}.{criterion[1]}.ave.pth"
        if "best_rq" in config or "birq" in config:
            # BEST-RQ and BiRQ are selected by the same anchoring accuracy
            assert criterion == ["valid", "best_rq_acc", "max"], config
