"""MT4SSL: EMA teacher, kmeans_ce / ema_regression losses, label cropping, k-means tool."""

import io
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from espnet2_birq.bilevel import register_update_hooks
from espnet2_birq.bin import kmeans as kmeans_tool
from espnet2_birq.collate import CropCollateFn
from espnet2_birq.ema import EMATeacher
from espnet2_birq.losses.mt4ssl import (
    EMARegressionLoss,
    KMeansCELoss,
    masked_instance_norm,
)
from espnet2_birq.masking import FrameSubsampling
from espnet2_birq.tasks.ssl import BirqSSLTask

from conftest import REPO

DEBUG = REPO / "conf" / "train_ssl_mt4ssl_debug.yaml"
CONFIGS = [
    DEBUG,
    REPO / "conf" / "train_ssl_mt4ssl_conformer.yaml",
    REPO / "egs2" / "mini_synth" / "ssl1" / "conf" / "train_ssl_mt4ssl_tiny.yaml",
]
STAT_KEYS = (
    "kmeans_ce_loss", "kmeans_ce_acc", "kmeans_ce_ppl", "kmeans_ce_clusters",
    "ema_regression_loss", "ema_regression_target_var", "ema_regression_decay",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("single_thread")


def build(config=DEBUG, *extra):
    args = BirqSSLTask.get_parser().parse_args(
        ["--config", str(config), "--input_size", "80", *extra]
    )
    return BirqSSLTask.build_model(args)


def batch(lengths=(203, 150), clusters=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), 80, generator=generator)
    for i, length in enumerate(lengths):
        feats[i, length:] = 0.0
    label_lengths = torch.tensor([length // 4 for length in lengths])
    labels = torch.randint(0, clusters, (len(lengths), int(label_lengths.max())), generator=generator)
    return dict(
        speech=feats,
        speech_lengths=torch.tensor(lengths),
        frame_labels=labels,
        frame_labels_lengths=label_lengths,
    )


def teacher_of(model) -> EMATeacher:
    return model.util_modules["ema"]


# ------------------------------------------------------------------- EMA teacher
def test_teacher_is_out_of_the_optimiser_and_gets_no_gradient():
    model = build()
    teacher = teacher_of(model)
    assert list(teacher.parameters()) == []
    teacher_tensors = {id(t) for t in teacher.teacher.buffers()}
    assert not any(id(p) in teacher_tensors for p in model.parameters())
    # Every student tensor of the blocks has its teacher twin, saved in the state dict;
    # the input layer (encoder.embed) has none: the teacher uses the student's.
    state = model.state_dict()
    blocks = [n for n, _ in model.encoder.named_parameters() if not n.startswith("embed.")]
    assert blocks and len(blocks) < len(list(model.encoder.parameters()))
    for name in blocks:
        assert f"util_modules.ema.teacher.{name}" in state
    assert not any(k.startswith("util_modules.ema.teacher.embed.") for k in state)
    assert "util_modules.ema.num_updates" in state
    # Left out of DDP's buffer broadcast (each rank computes the same average).
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    assert "util_modules.ema.num_updates" in ignored
    assert {f"util_modules.ema.teacher.{n}" for n in blocks} <= ignored
    assert not any(name.startswith("encoder.") for name in ignored)
    assert not any(k.startswith("util_modules.ema.student") for k in state)
    model.train()
    loss, _, _ = model(**batch())
    loss.backward()
    assert all(not t.requires_grad and t.grad is None for t in teacher.teacher.buffers())
    assert model.encoder.encoders[0].feed_forward.w_1.weight.grad is not None
    # The learned mask embedding is a trained parameter of the model.
    embedding = model.util_modules["learned_mask"].embedding
    assert any(p is embedding for p in model.parameters())
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_teacher_follows_the_ema_formula_after_updates():
    """Hand-computed: t_{n+1} = d_n t_n + (1 - d_n) s_{n+1}, d_n by the update count."""

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0]))
            self.lin = torch.nn.Linear(1, 1, bias=False)

    student = Encoder()
    ema = EMATeacher(student, decay_start=0.5, decay_end=0.9, anneal_updates=4)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    holder = torch.nn.Module()
    holder.student, holder.ema = student, ema
    assert register_update_hooks(holder, [optimizer]) == [ema]
    teacher, weight = 1.0, 1.0
    decays = [0.5, 0.6, 0.7, 0.8, 0.9, 0.9]
    for decay in decays:
        optimizer.zero_grad()
        (student.w * 2.0).sum().backward()  # gradient 2: w -= 0.2
        optimizer.step()
        weight -= 0.2
        teacher = decay * teacher + (1 - decay) * weight
    assert int(ema.num_updates) == len(decays)
    assert ema.teacher.w.item() == pytest.approx(teacher, abs=1e-6)
    assert ema.teacher.lin.weight.item() == pytest.approx(student.lin.weight.item())
    assert student.w.item() == pytest.approx(weight, abs=1e-6)


def test_teacher_averages_the_blocks_only_and_runs_the_students_input_layer():
    """MT4SSL/data2vec (ema_transformer_only): encoder.embed is not averaged; the
    teacher's input layer is the student's current one; include_front copies it too."""
    model = build()
    teacher = teacher_of(model)
    assert not teacher.include_front and teacher.teacher.embed is None
    inputs = batch()
    model.eval()
    with torch.no_grad():
        feats = model.encode(inputs["speech"], inputs["speech_lengths"])["features"]
    lengths = inputs["speech_lengths"]
    teacher.copy_student()
    embed_before = {n: p.detach().clone() for n, p in model.encoder.embed.named_parameters()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(1.5)
    teacher.on_optimizer_step()  # decay 0.999: the blocks barely move
    for name, p in model.encoder.named_parameters():
        if name.startswith("embed."):
            continue
        expected = 0.999 * p.detach() / 1.5 + 0.001 * p.detach()
        assert torch.allclose(teacher.teacher.get_buffer(name), expected, atol=1e-6), name
    # The teacher's input is the student's *current* input layer (scaled by 1.5), then
    # the teacher's own blocks.
    from espnet.nets.pytorch_backend.nets_utils import make_pad_mask

    with torch.no_grad():
        masks = ~make_pad_mask(lengths)[:, None, :]
        x, masks = model.encoder.embed(feats, masks)
        expected = []
        for block in teacher.teacher.encoders:
            x, masks = block(x, masks)
            expected.append(x[0])
    out = teacher.encode(feats, lengths)
    for ours, theirs in zip(out["layers"], expected):
        assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.equal(
        embed_before["conv.0.weight"], model.encoder.embed.conv[0].weight.detach()
    )
    # include_front: the input layer is copied and averaged as well.
    args = BirqSSLTask.get_parser().parse_args(["--config", str(DEBUG), "--input_size", "80"])
    args.util = [{"name": "ema", "conf": {"include_front": True}}, {"name": "learned_mask"}]
    whole = BirqSSLTask.build_model(args)
    whole_teacher = teacher_of(whole)
    assert whole_teacher.include_front and whole_teacher.teacher.embed is not None
    state = whole.state_dict()
    for name, _ in whole.encoder.named_parameters():
        assert f"util_modules.ema.teacher.{name}" in state


def test_decay_schedule():
    ema = EMATeacher(torch.nn.Linear(2, 2), 0.999, 0.9999, anneal_updates=1000)
    assert ema.get_decay(0) == 0.999
    assert ema.get_decay(500) == pytest.approx(0.99945)
    assert ema.get_decay(1000) == 0.9999
    assert ema.get_decay(5000) == 0.9999
    assert ema.get_decay() == 0.999  # now: no update yet
    ema.num_updates.fill_(250)
    assert ema.get_decay() == pytest.approx(0.999225)
    assert EMATeacher(torch.nn.Linear(2, 2), 0.9, 0.99, 0).get_decay(0) == 0.99
    with pytest.raises(ValueError):
        EMATeacher(torch.nn.Linear(2, 2), 1.5)


def test_teacher_runs_in_evaluation_mode_without_graph():
    model = build()
    # At the start the teacher is the student: on the clean input it gives the
    # student's block outputs in evaluation mode (computed first: a training forward
    # moves the student's batch-norm statistics).
    model.eval()
    inputs = batch()
    with torch.no_grad():
        data = model.encode(inputs["speech"], inputs["speech_lengths"])
        (_, layers), _, _ = model.encoder(data["features"], data["feature_lengths"], return_all_hs=True)
        student_final, _, _ = model.encoder(data["features"], data["feature_lengths"])
    # ESPnet's interface: the final output is the encoder's, after its final norm.
    (final, _), _, _ = teacher_of(model)(data["features"], data["feature_lengths"])
    assert torch.allclose(final, student_final, atol=1e-5)
    model.train()
    data = model.encode(batch()["speech"], batch()["speech_lengths"])
    out = data["teacher_output"]
    # The model keeps the per-block list its losses read: the ffn outputs.
    assert out["layers"] is None and len(out["ffn"]) == len(model.encoder.encoders)
    assert all(not t.requires_grad for t in out["ffn"])
    assert torch.equal(out["lengths"], data["encoder_output_lengths"])
    assert teacher_of(model).teacher.training  # flags restored
    assert model.encoder.embed.training  # the student's input layer too
    both = teacher_of(model).encode(data["features"], data["feature_lengths"])
    assert all(not t.requires_grad for t in both["layers"] + both["ffn"])
    for ours, theirs in zip(both["layers"], layers):
        assert torch.allclose(ours, theirs, atol=1e-5)
    for ours, theirs in zip(both["ffn"], out["ffn"]):
        assert torch.equal(ours, theirs)


def test_teacher_targets_are_the_feed_forward_outputs_before_the_residual():
    """Each Conformer block recomputed by hand: the target is feed_forward(norm_ff(x))
    where the block then outputs norm_final(x + 0.5 * that)."""
    model = build()
    model.eval()
    inputs = batch()
    with torch.no_grad():
        feats = model.encode(inputs["speech"], inputs["speech_lengths"])["features"]
    lengths = inputs["speech_lengths"]
    teacher = teacher_of(model)
    out = teacher.encode(feats, lengths)
    from espnet.nets.pytorch_backend.nets_utils import make_pad_mask

    with torch.no_grad():
        masks = ~make_pad_mask(lengths)[:, None, :]
        (x, pos_emb), masks = model.encoder.embed(feats, masks)
        for index, block in enumerate(teacher.teacher.encoders):
            assert block.normalize_before and block.ff_scale == 0.5
            x = x + 0.5 * block.feed_forward_macaron(block.norm_ff_macaron(x))
            h = block.norm_mha(x)
            x = x + block.self_attn(h, h, h, pos_emb, masks)
            x = x + block.conv_module(block.norm_conv(x))
            ffn = block.feed_forward(block.norm_ff(x))
            x = block.norm_final(x + 0.5 * ffn)
            assert torch.allclose(out["ffn"][index], ffn, atol=1e-5), index
            assert torch.allclose(out["layers"][index], x, atol=1e-5), index
            assert not torch.allclose(ffn, x, atol=1e-2)


def test_ffn_target_needs_feed_forward_modules():
    loss = EMARegressionLoss(encoder_output_size=4, top_k=1)
    with pytest.raises(RuntimeError, match="target 'ffn' needs a 'feed_forward' module"):
        loss.teacher_layers({"layers": [torch.zeros(1, 2, 4)], "ffn": None})
    block = EMARegressionLoss(encoder_output_size=4, top_k=1, target="block")
    layers = [torch.zeros(1, 2, 4)]
    assert block.teacher_layers({"layers": layers, "ffn": None}) is layers
    for key, value in (("target", "output"), ("loss_scale", "sum"), ("masking", "noise")):
        with pytest.raises(ValueError, match=f"{key} must be one of"):
            EMARegressionLoss(encoder_output_size=4, **{key: value})


def test_teacher_starts_as_the_student_actually_trained():
    """--init_param of the encoder alone changes the student after the model is built:
    the teacher copies it at the first forward; a checkpoint's teacher is kept."""
    model = build()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5)  # as if loaded from an earlier model
    teacher = teacher_of(model)
    assert not bool(teacher.synced)
    model.train()
    model(**batch())
    assert bool(teacher.synced)
    for name, p in model.encoder.named_parameters():
        if not name.startswith("embed."):
            assert torch.equal(teacher.teacher.get_buffer(name), p.detach()), name
    teacher.on_optimizer_step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = build()
    fresh.load_state_dict(saved)
    fresh.train()
    fresh(**batch())
    for key, value in fresh.state_dict().items():
        if key.startswith("util_modules.ema."):
            assert torch.equal(value, saved[key]), key
    # ESPnet's interface: step(global_step, encoder) is one update at that count.
    teacher.step(10, model.encoder)
    assert int(teacher.num_updates) == 11


def test_teacher_state_round_trip():
    model = build()
    teacher = teacher_of(model)
    for _ in range(3):
        with torch.no_grad():
            for p in model.encoder.parameters():
                p.add_(0.01)
        teacher.on_optimizer_step()
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    assert int(teacher_of(fresh).num_updates) == 3
    for (name, a), (_, b) in zip(
        teacher.teacher.state_dict().items(), teacher_of(fresh).teacher.state_dict().items()
    ):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------ losses
def reference_targets(layers, lengths, top_k):
    """Loops over utterances, channels: instance norm on valid frames, then the mean."""
    out = np.zeros(layers[0].shape)
    for b, length in enumerate(lengths):
        for layer in layers[-top_k:]:
            x = layer[b, :length].numpy().astype(np.float64)
            out[b, :length] += (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) / top_k
    return out


def test_top_k_average_of_instance_normalised_layers_matches_reference():
    torch.manual_seed(0)
    layers = [torch.randn(2, 9, 5) * (i + 1) + i for i in range(4)]
    lengths = torch.tensor([9, 6])
    loss = EMARegressionLoss(encoder_output_size=5, top_k=3)
    target = loss.targets(layers, lengths)
    np.testing.assert_allclose(target.numpy(), reference_targets(layers, [9, 6], 3), atol=1e-5)
    # Padding does not enter the statistics: the valid part is unchanged by its values.
    padded = [layer.clone() for layer in layers]
    for layer in padded:
        layer[1, 6:] = 1e3
    assert torch.allclose(loss.targets(padded, lengths)[1, :6], target[1, :6], atol=1e-5)
    assert torch.equal(masked_instance_norm(layers[0], lengths)[1, 6:], torch.zeros(3, 5))
    plain = EMARegressionLoss(encoder_output_size=5, top_k=2, instance_norm=False)
    assert torch.allclose(plain.targets(layers, lengths), (layers[2] + layers[3]) / 2)
    with pytest.raises(ValueError, match="top_k=5"):
        EMARegressionLoss(encoder_output_size=5, top_k=5).targets(layers, lengths)


def loss_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 8, 6, generator=generator)
    mask_m = torch.zeros(2, 8, dtype=torch.bool)
    mask_m[0, 1:4] = True
    mask_m[1, 5:7] = True
    lengths = torch.tensor([8, 7])
    valid = torch.arange(8)[None] < lengths[:, None]
    mask_info = {
        "mask_m": mask_m,
        "mask_u": valid & ~mask_m,
        "output_lengths": lengths,
        "frame_lengths": lengths,
    }
    return hidden, lengths, mask_info


@pytest.mark.parametrize("name", ["kmeans_ce", "ema_regression"])
def test_losses_only_see_masked_frames(name):
    torch.manual_seed(0)
    hidden, lengths, mask_info = loss_inputs()
    teacher = {"layers": [torch.randn(2, 8, 6) for _ in range(3)], "lengths": lengths, "decay": 0.9}
    labels = torch.randint(0, 4, (2, 8))

    def compute(hidden, teacher_layers, labels):
        if name == "kmeans_ce":
            torch.manual_seed(1)
            loss = KMeansCELoss(encoder_output_size=6, num_clusters=4)
            return loss([hidden], mask_info, labels, lengths)[0]
        torch.manual_seed(1)
        loss = EMARegressionLoss(encoder_output_size=6, top_k=2, instance_norm=False)
        return loss([hidden], lengths, mask_info, dict(teacher, ffn=teacher_layers))[0]

    base = compute(hidden, teacher["layers"], labels)
    unmasked = ~mask_info["mask_m"]
    changed_hidden = hidden.clone()
    changed_hidden[unmasked] += 5.0
    changed_teacher = [t.clone() for t in teacher["layers"]]
    for t in changed_teacher:
        t[unmasked] -= 3.0
    changed_labels = labels.clone()
    changed_labels[unmasked] = (changed_labels[unmasked] + 1) % 4
    assert torch.equal(compute(changed_hidden, changed_teacher, changed_labels), base)
    masked_hidden = hidden.clone()
    masked_hidden[mask_info["mask_m"]] += 5.0
    assert not torch.equal(compute(masked_hidden, teacher["layers"], labels), base)


def test_ema_regression_follows_the_reference_formula():
    """Hand-computed: per masked frame sum_d (pred - target)^2 / sqrt(D), averaged over
    the masked frames (MT4SSL's code: loss.sum() / sqrt(D) / number of masked frames)."""
    hidden = torch.tensor([[[1.0, 2.0], [9.0, 9.0], [3.0, -1.0]]])  # (B=1, T=3, D=2)
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    lengths = torch.tensor([3])
    mask_m = torch.tensor([[True, False, True]])
    mask_info = {"mask_m": mask_m, "mask_u": ~mask_m, "output_lengths": lengths,
                 "frame_lengths": lengths}  # fmt: skip
    teacher = {"layers": [target * 7], "ffn": [target], "lengths": lengths, "decay": 0.99}

    def make(**conf):
        loss = EMARegressionLoss(encoder_output_size=2, top_k=1, instance_norm=False, **conf)
        with torch.no_grad():  # identity head: the prediction is the hidden frame
            loss.head.weight.copy_(torch.eye(2))
            loss.head.bias.zero_()
        return loss

    # Frame 0: 1^2 + 2^2 = 5; frame 2: 2^2 + (-2)^2 = 8; frame 1 is not masked.
    loss, stats = make()([hidden], lengths, mask_info, teacher)
    assert loss.item() == pytest.approx((5 + 8) / 2 / math.sqrt(2), rel=1e-6)
    assert float(stats["ema_regression_loss"]) == pytest.approx(4.5961941, rel=1e-6)
    # The project's earlier scale: the mean over frames and dimensions, sqrt(D) lighter.
    per_dim, _ = make(loss_scale="per_dim")([hidden], lengths, mask_info, teacher)
    assert per_dim.item() == pytest.approx((5 + 8) / 4, rel=1e-6)
    # weight scales the returned loss, not the logged one.
    weighted, stats = make(weight=0.5)([hidden], lengths, mask_info, teacher)
    assert weighted.item() == pytest.approx(0.5 * 4.5961941, rel=1e-6)
    assert float(stats["ema_regression_loss"]) == pytest.approx(4.5961941, rel=1e-6)
    # target: block reads the block outputs (here 7 x the ffn outputs).
    block, _ = make(target="block")([hidden], lengths, mask_info, teacher)
    # Frame 0: 1 + 4 = 5; frame 2: (3 - 7)^2 + (-1 - 7)^2 = 80.
    assert block.item() == pytest.approx((5 + 80) / 2 / math.sqrt(2), rel=1e-6)
    # Target variance over the masked frames, per dimension, averaged: ((0, 1), (0, 1)).
    assert float(stats["ema_regression_target_var"]) == pytest.approx(0.25)
    assert float(stats["ema_regression_decay"]) == pytest.approx(0.99)
    # A collapsed teacher (the same vector everywhere) shows as zero target variance.
    flat = dict(teacher, ffn=[torch.ones(1, 3, 2)])
    _, stats = make()([hidden], lengths, mask_info, flat)
    assert float(stats["ema_regression_target_var"]) == 0.0
    # Gradient through the head only from the masked frames.
    loss_fn = make()
    hidden_grad = hidden.clone().requires_grad_(True)
    loss_fn([hidden_grad], lengths, mask_info, teacher)[0].backward()
    assert torch.equal(hidden_grad.grad[0, 1], torch.zeros(2))
    # d/dpred of sum_d (pred - t)^2 / sqrt(2) / 2 frames = (pred - t) / sqrt(2).
    assert torch.allclose(hidden_grad.grad[0, 0], torch.tensor([1.0, 2.0]) / math.sqrt(2))


def test_kmeans_ce_refuses_missing_short_or_out_of_range_labels():
    hidden, lengths, mask_info = loss_inputs()
    loss_fn = KMeansCELoss(encoder_output_size=6, num_clusters=4)
    with pytest.raises(RuntimeError, match="no 'frame_labels' stream"):
        loss_fn([hidden], mask_info, None, None)
    with pytest.raises(RuntimeError, match="utterance 1 of the batch has 6 labels for 7"):
        loss_fn([hidden], mask_info, torch.zeros(2, 8, dtype=torch.long), torch.tensor([8, 6]))
    with pytest.raises(RuntimeError, match="label 4 outside 0..3"):
        loss_fn([hidden], mask_info, torch.full((2, 8), 4), lengths)
    loss, stats = loss_fn([hidden], mask_info, torch.zeros(2, 8, dtype=torch.long), lengths)
    assert float(stats["kmeans_ce_clusters"]) == 1.0 and float(stats["kmeans_ce_ppl"]) == 1.0


# ----------------------------------------------------------------- model + configs
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_print_and_dry_run(config, tmp_path):
    text = yaml.safe_load(config.read_text())
    assert text["best_model_criterion"][0] == ["valid", "kmeans_ce_acc", "max"]
    extra = []
    if text.get("normalize") == "global_mvn":
        stats = tmp_path / "cmvn.npz"
        np.savez(stats, count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 100.0))
        extra = ["--normalize_conf", f"stats_file={stats}"]
    with pytest.raises(SystemExit) as exit_info:
        BirqSSLTask.main(cmd=["--config", str(config), "--print_config", *extra])
    assert exit_info.value.code == 0
    BirqSSLTask.main(
        cmd=["--config", str(config), "--input_size", "80", "--dry_run", "true",
             "--output_dir", str(tmp_path / "exp"), "--ngpu", "0", *extra]
    )  # fmt: skip
    saved = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert [loss["name"] for loss in saved["loss"]] == ["kmeans_ce", "ema_regression"]
    model = build(config, *extra)
    if "conformer" in config.name:  # the same encoder as BiRQ's paper-scale config
        birq = build(REPO / "conf" / "train_ssl_birq_conformer.yaml", *extra)
        assert sum(p.numel() for p in model.encoder.parameters()) == sum(
            p.numel() for p in birq.encoder.parameters()
        )
        assert model.losses[1].top_k == 8
    # The published MT4SSL settings: learned-embedding masking on the encoder frames,
    # ffn targets, the sqrt(D) scale, blocks-only teacher.
    assert set(model.util_modules) == {"ema", "learned_mask"}
    masker = model.util_modules["learned_mask"]
    assert (masker.mask_prob, masker.span_frames, masker.min_spans) == (0.65, 10, 1)
    assert [loss.masking for loss in model.losses] == ["learned_mask", "learned_mask"]
    assert (model.losses[1].target, model.losses[1].loss_scale) == ("ffn", "sqrt_dim")
    assert model.losses[1].weight == model.losses[0].weight == 1.0
    teacher = model.util_modules["ema"]
    assert not teacher.include_front
    assert (teacher.decay_start, teacher.decay_end) == (0.999, 0.9999)
    if "debug" not in config.name and "tiny" not in config.name:
        assert teacher.anneal_updates == 30000
    clusters = model.losses[0].num_clusters
    model.train()
    with torch.no_grad():
        _, stats, _ = model(**batch(lengths=(160, 97), clusters=clusters))
    assert set(STAT_KEYS) <= set(stats)
    assert all(torch.isfinite(torch.as_tensor(stats[k])).all() for k in STAT_KEYS)


def test_composes_with_best_rq():
    """BEST-RQ codes as the offline target next to the EMA teacher."""
    args = BirqSSLTask.get_parser().parse_args(["--config", str(DEBUG), "--input_size", "80"])
    args.loss = [
        {"name": "best_rq", "conf": {"codebook_size": 16, "code_dim": 8}},
        {"name": "ema_regression", "conf": {"top_k": 2}},
    ]
    # One masked forward serves every loss: the two maskings cannot be mixed.
    with pytest.raises(ValueError, match="give the MT4SSL losses .* 'masking: span_mask'"):
        BirqSSLTask.build_model(args)
    args.loss[1]["conf"]["masking"] = "span_mask"
    model = BirqSSLTask.build_model(args)
    assert set(model.util_modules) == {"ema", "span_mask"}
    model.train()
    loss, stats, _ = model(batch()["speech"], batch()["speech_lengths"])
    loss.backward()
    assert "best_rq_acc" in stats and "ema_regression_loss" in stats
    assert stats["loss"].item() == pytest.approx(
        (stats["best_rq_loss"] + stats["ema_regression_loss"]).item(), rel=1e-5
    )


def test_the_earlier_variant_runs_through_the_model():
    """The project's earlier MT4SSL, kept as keys: BEST-RQ's noise spans, block-output
    targets, the per-dimension mean, a teacher that averages the input layer too."""
    args = BirqSSLTask.get_parser().parse_args(["--config", str(DEBUG), "--input_size", "80"])
    for loss in args.loss:
        loss["conf"]["masking"] = "span_mask"
    args.loss[1]["conf"].update(target="block", loss_scale="per_dim")
    args.util = [
        {"name": "ema", "conf": {"include_front": True}},
        {"name": "span_mask", "conf": {"mask_prob": 0.02, "span_ms": 200}},
    ]
    model = BirqSSLTask.build_model(args)
    assert set(model.util_modules) == {"ema", "span_mask"}
    assert model.util_modules["ema"].teacher.embed is not None
    model.train()
    inputs = batch()
    data = model.encode(inputs["speech"], inputs["speech_lengths"])
    assert data["teacher_output"]["ffn"] is None and len(data["teacher_output"]["layers"]) == 2
    assert "input_mask" in data["mask_info"] and bool(data["mask_info"]["input_mask"].any())
    loss, stats, _ = model(**batch())
    loss.backward()
    assert set(STAT_KEYS) <= set(stats) and torch.isfinite(loss)


# ------------------------------------------------------------------------ collate
@pytest.mark.parametrize("max_length", [1, 7, 37, 64, 203])
def test_crop_keeps_labels_aligned_for_every_length(max_length):
    """Every length 1..500: label i of the crop is the label of its encoder frame i,
    and every encoder frame that enters a loss has one."""
    random.seed(0)
    factor = 4
    collate = CropCollateFn(max_length=max_length, label_keys=("frame_labels",), label_stride=factor)
    subsampling = FrameSubsampling(((2, 2), (2, 2)))  # conv2d
    for length in range(1, 501):
        # Frame j carries its own index; label i names its group of 4 frames.
        speech = np.repeat(np.arange(length, dtype=np.float32)[:, None], 3, axis=1)
        labels = np.arange(length // factor, dtype=np.int64)
        _, out = collate([("u", {"speech": speech, "frame_labels": labels})])
        kept = int(out["speech_lengths"][0])
        start = int(out["speech"][0, 0, 0]) if kept else 0
        assert kept == min(length, max_length)
        assert start % factor == 0, (length, start)
        assert np.array_equal(out["speech"][0, :kept, 0].numpy(), np.arange(start, start + kept))
        got = out["frame_labels"][0, : int(out["frame_labels_lengths"][0])].numpy()
        assert np.array_equal(got, np.arange(start // factor, start // factor + len(got)))
        needed = int(subsampling.target_lengths(torch.tensor([kept]))[0])
        assert len(got) >= needed, (length, kept, len(got), needed)


def test_crop_without_labels_is_unchanged_and_padded_batches_need_no_more_labels():
    random.seed(1)
    collate = CropCollateFn(max_length=10, label_keys=("frame_labels",), label_stride=4)
    _, out = collate([("u", {"speech": np.arange(30, dtype=np.float32)[:, None]})])
    assert int(out["speech_lengths"][0]) == 10
    # In a padded batch, the frames entering the losses never exceed L // factor.
    subsampling = FrameSubsampling(((2, 2), (2, 2)))
    lengths = torch.arange(1, 501)
    assert bool((subsampling.target_lengths(lengths, 500) <= lengths // 4).all())


# ------------------------------------------------------------------------ k-means
def write_feats(root: Path, lengths, seed=0, dim=80):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    scp = root / "feats.scp"
    with kaldiio.WriteHelper(f"ark,scp:{root / 'feats.ark'},{scp}") as writer:
        for i, length in enumerate(lengths):
            writer(f"utt{i:03d}", rng.standard_normal((length, dim)).astype(np.float32) + (i % 3))
    (root / "feats_shape").write_text(
        "".join(f"utt{i:03d} {length},{dim}\n" for i, length in enumerate(lengths))
    )
    return scp


def read_labels(path: Path):
    return {line.split()[0]: line.split()[1:] for line in path.read_text().splitlines()}


def test_kmeans_labels_are_deterministic_and_one_per_encoder_frame(tmp_path):
    lengths = [3, 4, 57, 100, 161, 203]
    scp = write_feats(tmp_path / "feats", lengths)
    factor = kmeans_tool.subsampling_factor(yaml.safe_load(DEBUG.read_text()))
    assert factor == 4
    outputs = []
    for run in range(2):
        source = kmeans_tool.FeatureSource(factor, "fbank")
        state = kmeans_tool.fit(str(scp), source, 8, str(tmp_path / f"km{run}.pkl"), seed=3, n_init=1)
        out = tmp_path / f"labels{run}.txt"
        assert kmeans_tool.label(str(scp), source, state["kmeans"], str(out)) == len(lengths)
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    labels = read_labels(tmp_path / "labels0.txt")
    for i, length in enumerate(lengths):
        assert len(labels[f"utt{i:03d}"]) == length // factor
        assert all(0 <= int(x) < 8 for x in labels[f"utt{i:03d}"])
    assert kmeans_tool.check_labels(str(tmp_path / "labels0.txt"), str(tmp_path / "feats" / "feats_shape"), factor) == 6
    source = kmeans_tool.FeatureSource(factor, "fbank")
    other = kmeans_tool.fit(str(scp), source, 8, str(tmp_path / "km_other.pkl"), seed=4, n_init=1)
    assert not np.array_equal(other["kmeans"].cluster_centers_, state["kmeans"].cluster_centers_)


def test_kmeans_from_a_layer_of_an_earlier_model(tmp_path):
    lengths = [50, 81, 120]
    scp = write_feats(tmp_path / "feats", lengths)
    BirqSSLTask.main(
        cmd=["--config", str(DEBUG), "--input_size", "80", "--dry_run", "true",
             "--output_dir", str(tmp_path / "exp"), "--ngpu", "0"]
    )  # fmt: skip
    model = build()
    torch.save(model.state_dict(), tmp_path / "exp" / "model.pth")
    config, model_file = str(tmp_path / "exp" / "config.yaml"), str(tmp_path / "exp" / "model.pth")
    source = kmeans_tool.FeatureSource(4, "layer", None, config, model_file, layer=1)
    state = kmeans_tool.fit(str(scp), source, 4, str(tmp_path / "km.pkl"), n_init=1)
    assert state["source"] == "layer" and state["layer"] == 1
    kmeans_tool.main(["label", "--kmeans_model", str(tmp_path / "km.pkl"),
                      "--feats_scp", str(scp), "--out", str(tmp_path / "labels.txt")])  # fmt: skip
    labels = read_labels(tmp_path / "labels.txt")
    assert [len(labels[f"utt{i:03d}"]) for i in range(3)] == [n // 4 for n in lengths]
    with pytest.raises(ValueError, match="--layer 9 outside 1..2"):
        kmeans_tool.FeatureSource(4, "layer", None, config, model_file, layer=9)
    with pytest.raises(ValueError, match="subsamples by 4, the SSL config by 2"):
        kmeans_tool.FeatureSource(2, "layer", None, config, model_file, layer=1)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda lines: lines[:-1], "no labels for 1 utterances"),
        (lambda lines: lines + ["utt999 1 2"], "utterance utt999 has labels but no features"),
        (lambda lines: [lines[0] + " 0"] + lines[1:], "utterance utt000 has 15 labels but its features give 14"),
        (lambda lines: lines + lines[:1], r"labels.txt:3: duplicate utterance id 'utt000' \(first on line 1\)"),
    ],
)
def test_kmeans_check_refuses_labels_that_disagree_with_features(tmp_path, edit, message):
    shape = tmp_path / "feats_shape"
    shape.write_text("utt000 57,80\nutt001 40,80\n")
    lines = ["utt000 " + " ".join(["1"] * 14), "utt001 " + " ".join(["2"] * 10)]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    assert kmeans_tool.check_labels(str(labels), str(shape), 4) == 2
    labels.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(kmeans_tool.DataDirError, match=message):  # LabelError or a read_kaldi_map error
        kmeans_tool.check_labels(str(labels), str(shape), 4)
    # The command line says it and fails.
    with pytest.raises(SystemExit, match="labels.txt"):
        kmeans_tool.main(["check", "--ssl_config", str(DEBUG), "--labels", str(labels),
                          "--feats_shape", str(shape)])  # fmt: skip


def test_kmeans_wants_reads_the_config(capsys):
    kmeans_tool.main(["wants", str(DEBUG)])
    assert capsys.readouterr().out.strip() == "16"
    kmeans_tool.main(["wants", str(REPO / "conf" / "train_ssl_birq_debug.yaml")])
    assert capsys.readouterr().out.strip() == ""


# ---------------------------------------------------------------- CLI and resume
def test_cli_training_reads_labels_and_a_resumed_run_continues_exactly(tmp_path):
    """ESPnet's trainer with the frame_labels stream (cropped inputs); 2 epochs in one
    run equal 1 epoch + a resumed epoch, teacher and update counter included."""
    lengths = [90, 131, 160, 203]
    scp = write_feats(tmp_path / "feats", lengths)
    rng = np.random.default_rng(0)
    labels = tmp_path / "labels.txt"
    labels.write_text(
        "".join(
            f"utt{i:03d} " + " ".join(map(str, rng.integers(0, 16, n // 4))) + "\n"
            for i, n in enumerate(lengths)
        )
    )

    def run(out, max_epoch, resume):
        BirqSSLTask.main(
            cmd=[
                "--config", str(DEBUG), "--output_dir", str(out), "--input_size", "80",
                "--train_data_path_and_name_and_type", f"{scp},speech,kaldi_ark",
                "--train_data_path_and_name_and_type", f"{labels},frame_labels,text_int",
                "--train_shape_file", str(tmp_path / "feats" / "feats_shape"),
                "--valid_data_path_and_name_and_type", f"{scp},speech,kaldi_ark",
                "--valid_data_path_and_name_and_type", f"{labels},frame_labels,text_int",
                "--valid_shape_file", str(tmp_path / "feats" / "feats_shape"),
                "--max_input_length", "101", "--ngpu", "0", "--max_epoch", str(max_epoch),
                "--num_iters_per_epoch", "2", "--resume", str(resume).lower(),
            ]
        )  # fmt: skip

    run(tmp_path / "straight", 2, False)
    run(tmp_path / "resumed", 1, False)
    run(tmp_path / "resumed", 2, True)
    straight = torch.load(tmp_path / "straight" / "2epoch.pth", map_location="cpu")
    resumed = torch.load(tmp_path / "resumed" / "2epoch.pth", map_location="cpu")
    assert int(straight["util_modules.ema.num_updates"]) == 4
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    name = "encoders.0.feed_forward.w_1.weight"
    teacher, student = straight[f"util_modules.ema.teacher.{name}"], straight[f"encoder.{name}"]
    assert not torch.equal(teacher, student)  # it moved, slowly, after the student


def test_raw_waveform_input_with_labels():
    """With the in-model fbank, labels count fbank frames // 4 and the collate crops
    waveforms at multiples of 4 hops (640 samples)."""
    from espnet2_birq.frame_rate import label_stride

    args = BirqSSLTask.get_parser().parse_args(["--config", str(DEBUG)])
    assert label_stride(args) == 640
    args_fbank = BirqSSLTask.get_parser().parse_args(["--config", str(DEBUG), "--input_size", "80"])
    assert label_stride(args_fbank) == 4
    model = BirqSSLTask.build_model(args)
    torch.manual_seed(0)
    wav = torch.randn(2, 16000) * 0.1
    frames = torch.tensor([98, 73])  # kaldi frames of 16000 and 12000 samples
    labels = torch.randint(0, 16, (2, 24))
    model.train()
    loss, stats, _ = model(
        speech=wav, speech_lengths=torch.tensor([16000, 12000]),
        frame_labels=labels, frame_labels_lengths=frames // 4,
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and set(STAT_KEYS) <= set(stats)


@pytest.mark.parametrize("input_layer", ["linear", "conv2d", "conv2d1", "conv2d2", "conv2d6", "conv2d8"])
def test_frame_rate_table_matches_the_encoders(input_layer):
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
    from espnet2_birq.frame_rate import INPUT_LAYER_FACTORS

    encoder = ConformerEncoder(80, output_size=8, attention_heads=2, linear_units=8,
                               num_blocks=1, input_layer=input_layer)  # fmt: skip
    assert INPUT_LAYER_FACTORS[input_layer] == FrameSubsampling.from_encoder(encoder).factor


# ----------------------------------------------------------------------- recipe
def test_recipe_refuses_labels_that_disagree_with_the_features(tmp_path):
    from test_recipe import SETS, make_recipe, run_ssl

    recipe = make_recipe(tmp_path, demo=True)
    for split, dset in (("train", "pretrain"), ("valid", "dev")):
        feats = write_feats(recipe / "dump" / "fbank" / dset, [57, 40])
        stats = recipe / "exp" / "ssl_stats_fbank" / split
        stats.mkdir(parents=True)
        (stats / "speech_shape").write_text((feats.parent / "feats_shape").read_text())
    np.savez(recipe / "exp" / "ssl_stats_fbank" / "train" / "feats_stats.npz", count=np.array(10),
             sum=np.zeros(80), sum_square=np.full(80, 10.0))  # fmt: skip
    kmeans_dir = recipe / "dump" / "kmeans" / "fbank_50"
    for dset, count in (("pretrain", 14), ("dev", 13)):  # dev: 13 labels for 57 frames
        (kmeans_dir / dset).mkdir(parents=True)
        (kmeans_dir / dset / "labels.txt").write_text(f"utt000 {' 1' * count}\nutt001 {' 2' * 10}\n")
    (kmeans_dir / ".done").write_text("made earlier\n")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    result = run_ssl(recipe, *SETS, "--python", "python3", "--stage", "5", "--stop_stage", "5",
                     "--ssl_config", "conf/train_ssl_mt4ssl_tiny.yaml", env=env)  # fmt: skip
    assert result.returncode != 0
    assert "dump/kmeans/fbank_50/dev/labels.txt:1: utterance utt000 has 13 labels" in result.stderr
    assert "do not match the features of dev" in result.stderr
    assert "SSL training started" not in result.stdout
    assert "Successfully finished" not in result.stdout + result.stderr


def test_demo_recipe_stages_1_to_6_with_mt4ssl(tmp_path):
    """The mini_synth demo with MT4SSL (k-means fit and labels in stage 5, SSL, fine-tuning),
    on fewer utterances than --demo_size tiny."""
    from test_recipe import make_recipe

    recipe = make_recipe(tmp_path, demo=True)
    env = dict(os.environ, cmd_backend="local")
    env.pop("MINI_SYNTH", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        ["./run.sh", "--demo_size", "tiny", "--python", "python3", "--stop_stage", "6",
         "--ssl_config", "conf/train_ssl_mt4ssl_tiny.yaml", "--kmeans_sample_utts", "30",
         "--local_data_opts", "--num_pretrain 40 --train_fraction 0.5 --num_dev 6 --num_test 6 --nj 2"],
        cwd=recipe, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout[-5000:], result.stderr[-5000:])
    kmeans_dir = recipe / "dump" / "kmeans" / "fbank_50"
    shapes = {
        line.split()[0]: int(line.split()[1].split(",")[0])
        for line in (recipe / "dump" / "fbank" / "pretrain" / "feats_shape").read_text().splitlines()
    }
    labels = read_labels(kmeans_dir / "pretrain" / "labels.txt")
    assert labels.keys() == shapes.keys()
    assert all(len(labels[u]) == shapes[u] // 4 for u in shapes)
    ssl_exp = recipe / "exp" / "ssl_train_ssl_mt4ssl_tiny"
    assert (ssl_exp / "valid.kmeans_ce_acc.ave.pth").exists()
    log = (ssl_exp / "train.log").read_text()
    assert "kmeans_ce_acc=" in log and "ema_regression_target_var=" in log
    assert list((recipe / "exp").glob("asr_*_train_ssl_mt4ssl_tiny/valid.*.ave.pth"))
    assert "pre-trained encoder verified" in result.stdout + result.stderr


def test_kmeans_on_raw_audio_counts_the_frames_the_model_sees(audio_set, tmp_path):
    """--feats_type raw: labels from the wav.scp, one per encoder frame of the in-model
    fbank; the check converts the sample counts of the shape file."""
    import soundfile

    from espnet2_birq.features import KaldiFbankFrontend

    reader = kmeans_tool.InputReader("wav", 16000)
    uid, spec = kmeans_tool.read_kaldi_map(str(audio_set["wav_scp"]))[0]
    wav, _ = soundfile.read(spec, dtype="float32")
    frontend, _ = KaldiFbankFrontend()(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    np.testing.assert_array_equal(reader(uid, spec), frontend[0].numpy())
    source = kmeans_tool.FeatureSource(4, "fbank")
    state = kmeans_tool.fit(str(audio_set["wav_scp"]), source, 4, str(tmp_path / "km.pkl"),
                            n_init=1, reader=reader)  # fmt: skip
    out = tmp_path / "labels.txt"
    kmeans_tool.label(str(audio_set["wav_scp"]), source, state["kmeans"], str(out), reader)
    shape = str(audio_set["shape"])
    assert kmeans_tool.check_labels(str(out), shape, 4, samples_fs=16000) == 6
    with pytest.raises(kmeans_tool.LabelError, match="labels but its features give"):
        kmeans_tool.check_labels(str(out), shape, 4)  # samples read as frames
    # Durations rounded to 1 ms may move a count by one label, not by two.
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0] + " 0"] + lines[1:]) + "\n")
    assert kmeans_tool.check_labels(str(out), shape, 4, samples_fs=16000) == 6
    out.write_text("\n".join([lines[0] + " 0 0"] + lines[1:]) + "\n")
    with pytest.raises(kmeans_tool.LabelError, match="has .* labels but its features give"):
        kmeans_tool.check_labels(str(out), shape, 4, samples_fs=16000)
    with pytest.raises(ValueError, match="at 16000 Hz, expected 1 at 8000 Hz"):
        kmeans_tool.InputReader("wav", 8000)(uid, spec)
