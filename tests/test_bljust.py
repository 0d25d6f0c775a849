"""BL-JUST: gradient routing, paired data loading, training, resume and decoding."""

import argparse
import logging
import re
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet2.iterators.sequence_iter_factory import SequenceIterFactory
from espnet2.ssl.loss.abs_loss import AbsSSLLoss
from espnet2.tasks.asr import ASRTask
from espnet2_birq.bljust import (
    EXPLORATION,
    FINAL,
    JOINT,
    BlJustASRModel,
    BlJustBranch,
    BlJustSchedule,
    SharedEncoderSSLModel,
)
from espnet2_birq.losses.birq import LabelPass
from espnet2_birq.tasks.bljust import BlJustTask, PairedIterFactory

REPO = Path(__file__).resolve().parents[1]



pytestmark = pytest.mark.usefixtures("single_thread")

TOKENS = ["<blank>", "<unk>", "<space>", "A", "B", "C", "<sos/eos>"]


class HandMadeLoss(AbsSSLLoss):
    """A loss with its own head on the last layer and on a gradient-carrying label pass."""

    def __init__(self, encoder_output_size: int):
        super().__init__()
        self.head = torch.nn.Linear(encoder_output_size, 3)
        self.required_inputs = ["encoder_output", "encoder_output_lengths", "label_hidden"]
        self.util_attributes = set()

    def label_pass(self) -> LabelPass:
        return LabelPass(layer=1, needs_grad=True, dropout=False)

    def forward(self, encoder_output, encoder_output_lengths, label_hidden):
        hidden, _ = label_hidden[1]
        value = (self.head(encoder_output[-1]) ** 2).mean()
        value = value + (self.head(hidden).sin() * hidden.mean(-1, keepdim=True)).mean()
        return value, {"hand_loss": value.detach()}


def tiny_asr_args(tmp_path: Path, **extra) -> argparse.Namespace:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(TOKENS) + "\n")
    cmd = [
        "--input_size", "8", "--token_list", str(tokens), "--normalize", "utterance_mvn",
        "--encoder", "transformer", "--decoder", "none",
        "--encoder_conf", "output_size=8", "--encoder_conf", "attention_heads=2",
        "--encoder_conf", "linear_units=16", "--encoder_conf", "num_blocks=2",
        "--encoder_conf", "input_layer=conv2d", "--encoder_conf", "dropout_rate=0.0",
        "--encoder_conf", "positional_dropout_rate=0.0",
        "--encoder_conf", "attention_dropout_rate=0.0",
        "--model_conf", "ctc_weight=1.0",
    ]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    return BlJustTask.get_parser().parse_args(cmd)


def hand_made_model(tmp_path):
    torch.manual_seed(0)
    args = tiny_asr_args(tmp_path)
    asr = ASRTask.build_model(args)
    ssl = SharedEncoderSSLModel(
        frontend=asr.frontend, normalize=asr.normalize, preencoder=asr.preencoder,
        encoder=asr.encoder, token_list=[], losses=[HandMadeLoss(8)],
        util_attributes=set(),
        required_inputs={"encoder_output", "encoder_output_lengths", "label_hidden"},
        util_modules=torch.nn.ModuleDict(),
    )
    schedule = BlJustSchedule(
        gamma_0=0.0, gamma_max=1.0, gamma_ramp_steps=4, exploration_updates=1,
        final_epochs=1, max_epoch=3,
    )
    return BlJustASRModel.from_asr_model(asr, BlJustBranch(ssl, schedule))


def batches():
    g = torch.Generator().manual_seed(1)
    labelled = dict(
        speech=torch.randn(2, 40, 8, generator=g),
        speech_lengths=torch.tensor([40, 33]),
        text=torch.tensor([[3, 4, 5], [5, 3, -1]]),
        text_lengths=torch.tensor([3, 2]),
    )
    unlabelled = dict(
        unlabelled_speech=torch.randn(3, 36, 8, generator=g),
        unlabelled_speech_lengths=torch.tensor([36, 30, 25]),
    )
    return labelled, unlabelled


@pytest.mark.parametrize(
    "epoch, updates, phase, gamma",
    [(1, 0, EXPLORATION, 0.0), (1, 2, JOINT, 0.5), (2, 3, JOINT, 0.75), (3, 5, FINAL, 1.0)],
)
def test_each_group_follows_its_own_objective(tmp_path, epoch, updates, phase, gamma):
    """encoder: L_sup + gamma L_ssl; CTC head: L_sup; SSL head: L_ssl (autograd reference)."""
    model = hand_made_model(tmp_path)
    model.train()
    schedule = model.bljust.schedule
    schedule.start_epoch(epoch)
    schedule.num_updates.fill_(updates)
    if epoch == 2:  # a joint update right after the epoch's exploration update
        schedule.epoch_start_update.fill_(2)
    assert schedule.phase() == phase
    assert schedule.gamma() == pytest.approx(gamma)
    labelled, unlabelled = batches()

    groups = {
        "encoder": [p for n, p in model.named_parameters() if n.startswith("encoder.")],
        "ctc": [p for n, p in model.named_parameters() if n.startswith("ctc.")],
        "ssl": [p for n, p in model.named_parameters() if n.startswith("bljust.")],
    }
    assert all(groups.values())
    # Reference: the per-group formulas, by autograd of plain (unrouted) losses.
    model.bljust.ssl.encoder_grad_scale = 1.0
    # ESPnet's ASR encode normalises its input in place: every call gets fresh batches.
    l_sup = super(BlJustASRModel, model).forward(**labelled)[0].sum()
    l_ssl = model.bljust.ssl(
        unlabelled["unlabelled_speech"], unlabelled["unlabelled_speech_lengths"]
    )[0].sum()
    weights = {
        EXPLORATION: {"encoder": (0.0, 1.0), "ctc": (0.0, 0.0), "ssl": (0.0, 1.0)},
        JOINT: {"encoder": (1.0, gamma), "ctc": (1.0, 0.0), "ssl": (0.0, 1.0)},
        FINAL: {"encoder": (1.0, 0.0), "ctc": (1.0, 0.0), "ssl": (0.0, 0.0)},
    }[phase]
    expected = {}
    for name, params in groups.items():
        w_sup, w_ssl = weights[name]
        objective = w_sup * l_sup + w_ssl * l_ssl
        expected[name] = torch.autograd.grad(
            objective, params, retain_graph=True, allow_unused=True
        )

    model.zero_grad()
    labelled, unlabelled = batches()
    loss, stats, _ = model(**labelled, **unlabelled, bljust_epoch=torch.tensor([epoch]))
    loss.sum().backward()
    for name, params in groups.items():
        for param, reference in zip(params, expected[name]):
            got = torch.zeros_like(param) if param.grad is None else param.grad
            want = torch.zeros_like(param) if reference is None else reference
            assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), name
        nonzero = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert nonzero == (weights[name] != (0.0, 0.0)), name
    assert float(stats["phase"]) == phase
    assert stats["loss_ssl"] is None if phase == FINAL else float(stats["loss_ssl"]) > 0
    assert stats["loss_sup"] is None if phase == EXPLORATION else float(stats["loss_sup"]) > 0


def test_joint_update_without_unlabelled_batch_fails(tmp_path):
    model = hand_made_model(tmp_path)
    model.train()
    model.bljust.schedule.num_updates.fill_(2)
    labelled, _ = batches()
    with pytest.raises(ValueError, match="without an unlabelled batch"):
        model(**labelled, bljust_epoch=torch.tensor([1]))
    model.eval()  # validation needs none
    _, stats, _ = model(**labelled)
    assert "loss_ctc" in stats and "phase" not in stats


# ----------------------------------------------------------------- data loading
class KeyDataset:
    def __init__(self, keys):
        self.keys = keys
        self.loaded = []  # every item read, in order

    def __getitem__(self, key):
        self.loaded.append(key)
        return key, {"speech": np.zeros((2, 1), dtype=np.float32)}

    def __len__(self):
        return len(self.keys)


def collate(items):
    keys = [key for key, _ in items]
    return keys, {"speech": torch.zeros(len(keys), 2, 1)}


def paired_factory(num_labelled=6, num_unlabelled=4, final_from=None, exploring=None):
    labelled_keys = [f"l{i}" for i in range(num_labelled)]
    unlabelled_keys = [f"u{i}" for i in range(num_unlabelled)]
    labelled = SequenceIterFactory(
        dataset=KeyDataset(labelled_keys),
        batches=[labelled_keys[i : i + 2] for i in range(0, num_labelled, 2)],
        seed=3, shuffle=True, collate_fn=collate,
    )
    return PairedIterFactory(
        labelled, KeyDataset(unlabelled_keys),
        [[k] for k in unlabelled_keys], collate, seed=3,
        labelled_only_epoch=(lambda e: e >= final_from) if final_from else None,
        unlabelled_only_batches=exploring,
    )


def epoch_batches(factory, epoch):
    out = []
    for keys, batch in factory.build_iter(epoch):
        assert int(batch["bljust_epoch"]) == epoch
        unlabelled = batch.get("unlabelled_speech")
        out.append((keys, None if unlabelled is None else unlabelled.shape[0]))
    return out


def test_labelled_once_per_epoch_unlabelled_cycles():
    factory = paired_factory(num_labelled=6, num_unlabelled=4)
    seen_unlabelled = []
    for epoch in (1, 2):
        loader = factory.build_iter(epoch)
        labelled_seen = []
        for keys, batch in loader:
            labelled_seen += keys
            assert batch["unlabelled_speech"].shape[0] == 1
        assert sorted(labelled_seen) == [f"l{i}" for i in range(6)]
        seen_unlabelled += [
            [k for side, k in b if side == 1][0] for b in loader.batch_sampler
        ]
    # 3 updates per epoch, 4 unlabelled batches: the stream continues across epochs
    # and every pass covers the unlabelled set once, in a new order.
    assert sorted(seen_unlabelled[:4]) == [f"u{i}" for i in range(4)]
    assert len(set(seen_unlabelled[4:])) == 2
    # Resume: a fresh factory gives epoch 2 exactly as before.
    again = paired_factory(num_labelled=6, num_unlabelled=4)
    assert [
        b for b in again.build_iter(2).batch_sampler
    ] == [b for b in factory.build_iter(2).batch_sampler]


def test_short_unlabelled_set_is_cycled_within_an_epoch():
    factory = paired_factory(num_labelled=10, num_unlabelled=2)  # 5 updates, 2 batches
    loader = factory.build_iter(1)
    unlabelled = [[k for side, k in b if side == 1][0] for b in loader.batch_sampler]
    assert len(unlabelled) == 5
    assert sorted(unlabelled[:2]) == sorted(unlabelled[2:4]) == ["u0", "u1"]


def test_final_epochs_load_no_unlabelled_data():
    factory = paired_factory(final_from=2)
    assert all(n == 1 for _, n in epoch_batches(factory, 1))
    assert all(n is None for _, n in epoch_batches(factory, 2))


def test_exploration_batches_load_no_labelled_data():
    """The first batches of an epoch (exploration updates, pure SSL) read only their
    unlabelled half; the labelled batches at later positions are those of the labelled
    loader, and final epochs explore nothing."""
    factory = paired_factory(num_labelled=8, num_unlabelled=4, final_from=3, exploring=lambda e: 2)
    plain = paired_factory(num_labelled=8, num_unlabelled=4, final_from=3)
    labelled, unlabelled = factory.labelled.dataset, factory.unlabelled_dataset
    for epoch in (1, 2):
        labelled.loaded.clear()
        unlabelled.loaded.clear()
        batches = list(factory.build_iter(epoch))
        assert len(batches) == 4
        reference = list(plain.build_iter(epoch).batch_sampler)
        for index, ((keys, batch), sides) in enumerate(zip(batches, reference)):
            unlabelled_keys = [k for side, k in sides if side == 1]
            labelled_keys = [k for side, k in sides if side == 0]
            assert batch["unlabelled_speech"].shape[0] == 1
            if index < 2:  # exploration: no labelled entry, the keys are the unlabelled ones
                assert "speech" not in batch and keys == unlabelled_keys
            else:
                assert batch["speech"].shape[0] == 2 and keys == labelled_keys
        # Counted at the dataset: 2 labelled batches of 2 utterances read, not 4.
        assert len(labelled.loaded) == 4 and len(unlabelled.loaded) == 4
        assert labelled.loaded == [k for b in reference[2:] for side, k in b if side == 0]
    # A final epoch reads every labelled batch and nothing unlabelled.
    labelled.loaded.clear()
    unlabelled.loaded.clear()
    assert all(n is None for _, n in epoch_batches(factory, 3))
    assert len(labelled.loaded) == 8 and unlabelled.loaded == []


def test_exploration_batches_follow_the_schedule():
    schedule = BlJustSchedule(exploration_updates=3, final_epochs=2, max_epoch=5)
    assert [schedule.exploration_batches(e) for e in range(1, 6)] == [3, 3, 3, 0, 0]
    assert schedule.exploration_batches(1, accum_grad=4) == 12
    assert BlJustSchedule().exploration_batches(1, accum_grad=2) == 0
    # Before batch i of an epoch at most i // accum_grad updates were taken: every
    # batch left without labelled data is an exploration update, also when updates
    # are skipped (the phase can only stay in exploration longer).
    accum = 2
    for taken in range(3 * accum):
        schedule.num_updates.fill_(100 + taken // accum)
        schedule.epoch_start_update.fill_(100)
        schedule.epoch.fill_(1)
        assert schedule.phase() == EXPLORATION
    schedule.num_updates.fill_(103)
    assert schedule.phase() == JOINT


def test_exploration_update_needs_no_labelled_batch(tmp_path):
    """Without the labelled batch an exploration update computes the same loss and
    gradients as with it (it never used it); a joint update refuses to run without."""
    results = []
    for with_labelled in (True, False):
        model = hand_made_model(tmp_path)
        model.train()
        assert model.bljust.schedule.phase() == EXPLORATION
        labelled, unlabelled = batches()
        inputs = dict(unlabelled, bljust_epoch=torch.tensor([1]))
        if with_labelled:
            inputs.update(labelled)
        loss, stats, weight = model(**inputs)
        loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((float(loss.detach()), grads, int(weight)))
        assert stats["loss_sup"] is None and float(stats["phase"]) == EXPLORATION
    (loss_a, grads_a, weight_a), (loss_b, grads_b, weight_b) = results
    assert loss_a == loss_b and grads_a.keys() == grads_b.keys()
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    # The weight counts the batch's labelled utterances, or its unlabelled ones.
    assert (weight_a, weight_b) == (2, 3)
    model = hand_made_model(tmp_path)
    model.train()
    model.bljust.schedule.start_epoch(1)
    model.bljust.schedule.num_updates.fill_(2)
    assert model.bljust.schedule.phase() == JOINT
    _, unlabelled = batches()
    with pytest.raises(ValueError, match="joint update without a labelled batch"):
        model(**unlabelled, bljust_epoch=torch.tensor([1]))


def test_ema_teacher_is_left_out_of_ddp_buffer_sync(tmp_path):
    """An EMA-teacher SSL loss (MT4SSL's online targets) as BL-JUST's lower level: the
    teacher's buffers are left out of DDP's broadcast, as in the SSL task."""
    args = tiny_asr_args(tmp_path)
    args.ssl_loss = [{"name": "ema_regression", "conf": {"top_k": 2}}]
    args.ssl_util = [{"name": "ema", "conf": {"anneal_updates": 10}}, {"name": "learned_mask"}]
    args.bljust_conf = {"exploration_updates": 1}
    model = BlJustTask.build_model(args)
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    teacher = {n for n, _ in model.named_buffers() if n.startswith("bljust.ssl.util_modules.ema.")}
    assert teacher and ignored == teacher
    assert "bljust.ssl.util_modules.ema.num_updates" in ignored
    assert "bljust.ssl.util_modules.ema.teacher.encoders.0.feed_forward.w_1.weight" in ignored
    assert not any(n.startswith("encoder.") for n in ignored)
    # It trains: an exploration update moves the teacher through the update hook.
    optimizers = BlJustTask.build_optimizers(args, model)
    model.train()
    _, unlabelled = batches()
    loss, stats, _ = model(**unlabelled, bljust_epoch=torch.tensor([1]))
    assert "ema_regression_loss" in stats
    loss.backward()
    optimizers[0].step()
    assert int(model.bljust.ssl.util_modules["ema"].num_updates) == 1
    # Without a teacher nothing is left out.
    assert not hasattr(BlJustTask.build_model(tiny_asr_args(tmp_path)), "_ddp_params_and_buffers_to_ignore")


def test_empty_unlabelled_set_fails_clearly(tmp_path):
    empty = tmp_path / "speech_shape"
    empty.write_text("")
    args = tiny_asr_args(
        tmp_path,
        unlabelled_data_path_and_name_and_type=f"{tmp_path}/feats.scp,speech,kaldi_ark",
        unlabelled_shape_file=empty,
    )
    from espnet2.train.distributed_utils import DistributedOption

    with pytest.raises(ValueError, match=f"unlabelled set is empty: {re.escape(str(empty))}"):
        BlJustTask.build_unlabelled_data(args, DistributedOption())
    args.unlabelled_shape_file = []
    with pytest.raises(ValueError, match="BL-JUST needs unlabelled data"):
        BlJustTask.build_unlabelled_data(args, DistributedOption())


# ------------------------------------------------------------- training run
def write_fbank_set(root: Path, name: str, num_utts: int, seed: int, text: bool):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    feats, shapes, texts, text_shapes = {}, [], [], []
    for i in range(num_utts):
        uid = f"{name}{i:02d}"
        feats[uid] = rng.standard_normal((int(rng.integers(60, 120)), 80)).astype(np.float32)
        shapes.append(f"{uid} {feats[uid].shape[0]},80")
        words = " ".join("".join(rng.choice(list("ABC"), 2)) for _ in range(2))
        texts.append(f"{uid} {words}")
        text_shapes.append(f"{uid} {len(words)},{len(TOKENS)}")
    kaldiio.save_ark(str(root / "feats.ark"), feats, scp=str(root / "feats.scp"))
    (root / "speech_shape").write_text("\n".join(shapes) + "\n")
    if text:
        (root / "text").write_text("\n".join(texts) + "\n")
        (root / "text_shape").write_text("\n".join(text_shapes) + "\n")
    return root


def data_args(labelled: Path, valid: Path, unlabelled: Path):
    args = []
    for split, root in (("train", labelled), ("valid", valid)):
        args += [f"--{split}_data_path_and_name_and_type", f"{root}/feats.scp,speech,kaldi_ark",
                 f"--{split}_data_path_and_name_and_type", f"{root}/text,text,text",
                 f"--{split}_shape_file", f"{root}/speech_shape",
                 f"--{split}_shape_file", f"{root}/text_shape"]
    args += ["--unlabelled_data_path_and_name_and_type", f"{unlabelled}/feats.scp,speech,kaldi_ark",
             "--unlabelled_shape_file", f"{unlabelled}/speech_shape"]
    return args


TINY_RUN = {
    "normalize": "utterance_mvn",
    "encoder": "transformer",
    "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32,
                     "num_blocks": 2, "input_layer": "conv2d"},
    "decoder": "none",
    "model_conf": {"ctc_weight": 1.0, "report_cer": True, "report_wer": False},
    "ssl_loss": [{"name": "best_rq", "conf": {"codebook_size": 16, "code_dim": 8}}],
    "ssl_util": [{"name": "span_mask", "conf": {"mask_prob": 0.05, "span_ms": 100}}],
    "bljust_conf": {"gamma_0": 0.0, "gamma_max": 1.0, "gamma_ramp_steps": 4,
                    "exploration_updates": 1, "final_epochs": 1},
    "optim": "adamw", "optim_conf": {"lr": 0.001}, "exclude_weight_decay": True,
    "batch_type": "unsorted", "batch_size": 2, "max_epoch": 3, "num_workers": 0,
    "best_model_criterion": [["valid", "cer_ctc", "min"]], "keep_nbest_models": 1,
    "num_att_plot": 0,
}


def test_task_loader_skips_the_labelled_half_of_exploration_batches(tmp_path):
    """BlJustTask's training loader: with exploration_updates 1 and accum_grad 2 the
    first 2 batches of each joint epoch hold unlabelled data only; the final epoch
    holds labelled data only."""
    from espnet2.train.distributed_utils import DistributedOption

    labelled = write_fbank_set(tmp_path / "train", "lab", 8, seed=0, text=True)
    valid = write_fbank_set(tmp_path / "dev", "dev", 2, seed=1, text=True)
    unlabelled = write_fbank_set(tmp_path / "pretrain", "unl", 6, seed=2, text=False)
    (tmp_path / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(TINY_RUN))
    args = BlJustTask.get_parser().parse_args(
        ["--config", str(tmp_path / "conf.yaml"), "--input_size", "80", "--token_type", "char",
         "--token_list", str(tmp_path / "tokens.txt"), "--accum_grad", "2",
         *data_args(labelled, valid, unlabelled)]
    )  # fmt: skip
    factory = BlJustTask.build_iter_factory(args, DistributedOption(), "train")
    for epoch, expected in ((1, [False, False, True, True]), (2, [False, False, True, True])):
        batches = [batch for _, batch in factory.build_iter(epoch)]
        assert ["speech" in b for b in batches] == expected
        assert all(b["unlabelled_speech"].shape[0] == 2 for b in batches)
    final = [batch for _, batch in factory.build_iter(3)]
    assert all("speech" in b and "unlabelled_speech" not in b for b in final)


def test_training_run_writes_an_asr_model_that_espnet_decodes(tmp_path, caplog):
    from espnet2.bin import asr_inference

    from espnet2_birq.bin import bljust_train

    labelled = write_fbank_set(tmp_path / "train", "lab", 6, seed=0, text=True)
    valid = write_fbank_set(tmp_path / "dev", "dev", 2, seed=1, text=True)
    # 6 unlabelled utterances: batches of 2 as the labelled ones, so every update weighs
    # the same (exploration updates weigh by their unlabelled batch).
    unlabelled = write_fbank_set(tmp_path / "pretrain", "unl", 6, seed=2, text=False)
    (tmp_path / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(TINY_RUN))
    exp = tmp_path / "exp"
    caplog.set_level(logging.INFO)
    bljust_train.main(
        ["--config", str(tmp_path / "conf.yaml"), "--output_dir", str(exp),
         "--input_size", "80", "--token_type", "char",
         "--token_list", str(tmp_path / "tokens.txt"), "--ngpu", "0",
         *data_args(labelled, valid, unlabelled)]
    )
    log = caplog.text
    results = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"(\d+)epoch results: \[train\] (.*)", log)
    }
    assert sorted(results) == [1, 2, 3]

    def stat(line, key):
        return float(re.search(rf"\b{key}=([-0-9.e+]+)", line).group(1))

    # 3 updates an epoch: (exploration, joint, joint), twice, then the final epoch.
    assert stat(results[1], "phase") == pytest.approx(2 / 3, abs=1e-3)
    assert stat(results[2], "phase") == pytest.approx(2 / 3, abs=1e-3)
    assert stat(results[3], "phase") == pytest.approx(2.0)
    # gamma of the joint updates 1, 2 (epoch 1) and 4, 5 (epoch 2), out of 4: shown as
    # 0 in exploration updates.
    assert stat(results[1], "gamma") == pytest.approx((0 + 0.25 + 0.5) / 3, abs=1e-3)
    assert stat(results[2], "gamma") == pytest.approx((0 + 1.0 + 1.0) / 3, abs=1e-3)
    assert "loss_ssl=" in results[1] and "loss_sup=" in results[1]
    assert "loss_ssl=" not in results[3]
    assert re.search(r"3epoch results: .*\[valid\] .*cer_ctc=", log)

    state = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)["model"]
    assert int(state["bljust.schedule.num_updates"]) == 9
    assert int(state["bljust.schedule.epoch"]) == 3
    assert int(state["bljust.schedule.epoch_start_update"]) == 6

    # The written model is ESPnet's ASR model: ESPnet's loader and decoder take it.
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["model"] == "espnet"
    model_file = exp / "valid.cer_ctc.ave.pth"
    asr_model, _ = ASRTask.build_model_from_file(exp / "config.yaml", model_file, "cpu")
    assert type(asr_model).__name__ == "ESPnetASRModel"
    out = tmp_path / "decode"
    asr_inference.main(
        ["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(model_file),
         "--data_path_and_name_and_type", f"{valid}/feats.scp,speech,kaldi_ark",
         "--output_dir", str(out), "--ngpu", "0", "--beam_size", "1", "--ctc_weight", "1.0",
         "--lm_weight", "0.0"]
    )
    hyps = (out / "1best_recog" / "text").read_text().splitlines()
    assert sorted(line.split()[0] for line in hyps) == ["dev00", "dev01"]

    # Resume: the same run stopped after epoch 2 and resumed gives the same model. The
    # stopped run has max_epoch 2 and no final epoch, so its epochs 1-2 are those above.
    resumed = tmp_path / "exp_resumed"
    common = ["--config", str(tmp_path / "conf.yaml"), "--output_dir", str(resumed),
              "--input_size", "80", "--token_type", "char",
              "--token_list", str(tmp_path / "tokens.txt"), "--ngpu", "0",
              *data_args(labelled, valid, unlabelled)]
    bljust_train.main([*common, "--max_epoch", "2", "--bljust_conf", "final_epochs=0"])
    bljust_train.main([*common, "--max_epoch", "3", "--resume", "true"])
    uninterrupted = torch.load(exp / "latest.pth", map_location="cpu")
    after_resume = torch.load(resumed / "latest.pth", map_location="cpu")
    assert uninterrupted.keys() == after_resume.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(value, after_resume[key]), key


# ---------------------------------------------------------------------- configs
BLJUST_CONFIGS = sorted(REPO.glob("egs2/*/ssl1/conf/train_bljust_*.yaml"))


def test_every_recipe_has_a_bljust_config():
    names = {c.parts[-4] for c in BLJUST_CONFIGS}
    assert names == {"librispeech", "ami", "yodas", "mini_synth"}


def test_print_config_lists_the_bljust_keys():
    import io

    buffer = io.StringIO()
    BlJustTask.print_config(file=buffer)  # what --print_config writes
    printed = yaml.safe_load(buffer.getvalue())
    assert printed["model"] == "espnet"
    assert printed["ssl_loss"] == [{"name": "best_rq", "conf": {}}]
    for key in ("bljust_conf", "ssl_util", "unlabelled_data_path_and_name_and_type",
                "unlabelled_shape_file", "unlabelled_batch_bins",
                "unlabelled_max_input_length"):
        assert key in printed, key


@pytest.mark.parametrize("config", BLJUST_CONFIGS, ids=lambda c: c.parts[-4])
def test_bljust_config_dry_run(config, tmp_path):
    """--dry_run with ssl_asr.sh's arguments; the model matches the recipe's SSL config."""
    from espnet2_birq.bin import bljust_train

    stats = tmp_path / "cmvn.npz"
    x = np.random.default_rng(0).standard_normal((100, 80))
    np.savez(stats, count=np.array(100), sum=x.sum(0), sum_square=(x**2).sum(0))
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(TOKENS) + "\n")
    common = ["--config", str(config), "--input_size", "80", "--token_list", str(tokens),
              "--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats}"]
    bljust_train.main([*common, "--dry_run", "true", "--output_dir", str(tmp_path / "exp"),
                       "--ngpu", "0"])
    written = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert written["bljust_conf"] == yaml.safe_load(config.read_text())["bljust_conf"]

    args = BlJustTask.get_parser().parse_args(common)
    model = BlJustTask.build_model(args)
    assert isinstance(model, BlJustASRModel)
    # The encoder and the SSL loss are those of the recipe's BiRQ pre-training config.
    ssl_config = config.parent / (
        "train_ssl_birq_tiny.yaml" if "tiny" in config.name else "train_ssl_birq_conformer.yaml"
    )
    ssl = yaml.safe_load(ssl_config.read_text())
    mine = yaml.safe_load(config.read_text())
    skip = {"dropout_rate", "positional_dropout_rate", "attention_dropout_rate"}
    assert {k: v for k, v in mine["encoder_conf"].items() if k not in skip} == {
        k: v for k, v in ssl["encoder_conf"].items() if k not in skip
    }
    assert [x["name"] for x in mine["ssl_loss"]] == [x["name"] for x in ssl["loss"]]
    schedules = {"warmup_steps", "gamma_ramp_steps", "gamma_step_interval", "tau_decay"}
    for a, b in zip(mine["ssl_loss"], ssl["loss"]):
        assert {k: v for k, v in a["conf"].items() if k not in schedules} == {
            k: v for k, v in b["conf"].items() if k not in schedules
        }
    assert mine["ssl_util"] == ssl["util"]
    assert mine["optim"] == "adamw" and mine["exclude_weight_decay"] is True
    assert mine["best_model_criterion"] == [["valid", "cer_ctc", "min"]]


def test_cost_bench_prints_the_ratios(capsys):
    """bench/bljust_cost.py at one repetition: it runs and prints what BENCHMARKS.md quotes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bljust_cost", REPO / "bench" / "bljust_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--reps", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    for kind in ("pretrain", "finetune", "bljust", "bljust_final"):
        assert re.search(rf"^{kind}\s+\S+\s+\d+\.\d{{3}}", out, re.M), out
    assert re.search(r"^bljust / \(pretrain \+ finetune\) = \d+\.\d\d$", out, re.M), out
