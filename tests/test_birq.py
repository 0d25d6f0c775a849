"""BiRQ: label-path gradients, penalty gradient, schedules/resume, collapse, shapes, CLI.

Everything runs in-process on CPU with tiny models (importing espnet2 dominates); one
short CLI training run covers checkpointing and ``build_model_from_file``.
"""

import copy
import glob
import math
from typing import Dict, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from espnet2_birq.losses.birq import BiRQLoss
from espnet2_birq.losses.gumbel import gumbel_noise
from espnet2_birq.tasks.ssl import BirqSSLTask
from tests.conftest import REPO, synth_utterance, write_audio_set

DEBUG = str(REPO / "conf" / "train_ssl_birq_debug.yaml")
ENCODERS = ("conformer", "e_branchformer", "transformer")
STAT_KEYS = (
    "loss_a", "loss_e", "gamma", "tau", "v",
    "acc_a", "acc_e", "ppl_a", "ppl_e", "codes_a", "codes_e",
)  # fmt: skip

# Tiny encoder sizes applied on top of a shipped config's encoder block.
TINY_ENCODER = dict(
    output_size=32,
    attention_heads=2,
    linear_units=64,
    num_blocks=3,
    dropout_rate=0.0,
    positional_dropout_rate=0.0,
    attention_dropout_rate=0.0,
)
TINY_EXTRA = {
    "conformer": dict(cnn_module_kernel=7),
    "e_branchformer": dict(cgmlp_linear_units=64, cgmlp_conv_kernel=7, merge_conv_kernel=7),
    "transformer": {},
}


def parse(config: str, *extra: str):
    return BirqSSLTask.get_parser().parse_args(
        ["--config", config, "--input_size", "80", *extra]
    )


def build(
    config: str = DEBUG,
    loss: Optional[Dict] = None,
    encoder: Optional[Dict] = None,
    util: Optional[Dict] = None,
    tiny: bool = False,
    seed: int = 0,
):
    """Model from a config, with loss/encoder/util conf overrides (precomputed fbank)."""
    args = parse(config)
    if tiny:
        args.encoder_conf.update(TINY_ENCODER, **TINY_EXTRA.get(args.encoder, {}))
        args.loss[0]["conf"].update(
            codebook_size=64,
            code_dim=8,
            enhanced_codebook_size=64,
            enhanced_code_dim=8,
            label_layer=2,
        )
        args.normalize, args.normalize_conf = "utterance_mvn", {}
    args.encoder_conf.update(encoder or {})
    args.loss[0]["conf"].update(loss or {})
    if util:
        args.util[0]["conf"].update(util)
    torch.manual_seed(seed)
    return BirqSSLTask.build_model(args)


def batch(lengths=(203, 150), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), 80, generator=generator)
    for i, length in enumerate(lengths):
        feats[i, length:] = 0.0
    return feats, torch.tensor(lengths)


def grads(loss: torch.Tensor, params: Dict[str, torch.nn.Parameter]):
    values = torch.autograd.grad(
        loss, list(params.values()), retain_graph=True, allow_unused=True
    )
    return {
        name: torch.zeros_like(p) if g is None else g
        for (name, p), g in zip(params.items(), values)
    }


def set_step(model, step: int):
    """As if ``step`` updates had been done (ESPnet calls loss.step(global_step))."""
    model.global_step = torch.tensor([step])


# --------------------------------------------------------------- label-path gradient
@pytest.mark.parametrize("stop_gradient", [False, True])
def test_label_path_gradient(stop_gradient):
    """Gradient of L_e into blocks <= k and ``embed`` flows through the labels.

    On one encode, L_e is computed twice with the same Gumbel noise: once from
    ``label_hidden`` as the model returns it, once from a manually detached copy.
    The difference of the two gradients is exactly the label-path contribution:
    non-zero for the input layer and blocks <= k, zero for blocks > k. With
    ``stop_gradient_labels`` the model's labels must behave like detached ones.
    """
    k = 2
    model = build(
        tiny=True,
        encoder=dict(num_blocks=4),
        loss=dict(
            label_layer=k,
            stop_gradient_labels=stop_gradient,
            warmup_steps=0,
            gamma_schedule="constant",
            gamma_max=0.0,
        ),
    )
    model.train()
    loss_fn = model.losses[0]
    torch.manual_seed(3)
    data = model.encode(*batch())
    hidden, lengths = data["label_hidden"][k]
    assert hidden.requires_grad is (not stop_gradient)

    params = dict(model.encoder.named_parameters())
    inputs = {key: data[key] for key in loss_fn.required_inputs}

    def loss_e(label_hidden):
        torch.manual_seed(11)  # same Gumbel noise for both computations
        inputs["label_hidden"] = label_hidden
        total, stats = loss_fn(**inputs)
        # gamma = 0: the total is L_e alone (plus 0 * (L_a - v)).
        assert float(stats["gamma"]) == 0.0
        return total

    with_labels = grads(loss_e({k: (hidden, lengths)}), params)
    detached = grads(loss_e({k: (hidden.detach(), lengths)}), params)

    prefix = [n for n in params if n.startswith("embed.")]
    prefix += [n for n in params if any(n.startswith(f"encoders.{i}.") for i in range(k))]
    later = [n for n in params if any(n.startswith(f"encoders.{i}.") for i in range(k, 4))]
    assert prefix and later
    for name in later:  # the label path never reaches blocks > k
        torch.testing.assert_close(with_labels[name], detached[name])
    label_path = {n: (with_labels[n] - detached[n]).abs().max().item() for n in prefix}
    if stop_gradient:
        assert all(v == 0.0 for v in label_path.values()), label_path
    else:
        # every block <= k and the input layer get a label-path gradient
        assert (
            max(label_path[n] for n in prefix if n.startswith("embed.")) > 0
        ), label_path
        for i in range(k):
            block = [label_path[n] for n in prefix if n.startswith(f"encoders.{i}.")]
            assert max(block) > 0, (i, label_path)


def test_stop_gradient_builds_no_prefix_graph():
    model = build(tiny=True, loss=dict(stop_gradient_labels=True))
    model.train()
    data = model.encode(*batch())
    (hidden, _), = data["label_hidden"].values()
    assert not hidden.requires_grad and hidden.grad_fn is None


def test_label_hidden_matches_full_encoder_layer():
    """The prefix pass is the full encoder's layer k on the same (here: clean) input."""
    model = build(tiny=True, util=dict(mask_prob=0.0, min_spans=0))
    model.eval()
    feats, lengths = batch()
    with torch.no_grad():
        data = model.encode(feats, lengths)
    k = model.losses[0].label_layer
    hidden, hidden_lengths = data["label_hidden"][k]
    torch.testing.assert_close(hidden, data["encoder_output"][k - 1])
    assert torch.equal(hidden_lengths, data["encoder_output_lengths"])


# ------------------------------------------------------------ penalty gradient
PENALTY = dict(
    warmup_steps=3,
    gamma_schedule="linear",
    gamma_0=0.5,
    gamma_max=1.0,
    gamma_ramp_steps=10,
    tau_start=2.0,
    tau_end=0.5,
    tau_decay=0.9,
    diversity_weight=0.3,
)


def explicit_pieces(model, feats, lengths, tau):
    """Re-computation of L_a, L_e and the diversity term from the model's parts
    (same RNG order)."""
    loss_fn = model.losses[0]
    data = model.encode(feats, lengths)
    anchor, _ = loss_fn.anchor(
        data["features"], data["feature_lengths"], data["encoder_output"], data["mask_info"]
    )
    hidden, _ = data["label_hidden"][loss_fn.label_layer]
    target = data["encoder_output"][-1]
    mask = data["mask_info"]["mask_m"]
    logits = loss_fn.enhanced_logits(hidden[:, : target.shape[1]][mask]) / tau
    # hard Gumbel-softmax with the straight-through estimator, in plain autograd
    noisy = logits + gumbel_noise(logits)
    soft = noisy.softmax(-1)
    hard = F.one_hot(noisy.argmax(-1), logits.shape[-1]).to(soft.dtype)
    labels = hard - soft.detach() + soft
    log_probs = F.log_softmax(loss_fn.enhanced_head(target[mask]), dim=-1)
    enhanced = -(labels * log_probs).sum(-1).mean()
    mean_probs = logits.softmax(-1).mean(0)
    perplexity = torch.exp(-(mean_probs * mean_probs.clamp(min=1e-10).log()).sum())
    diversity = 1.0 - perplexity / mean_probs.numel()
    return anchor, enhanced, diversity


def test_step_gradient_is_penalty_gradient():
    """grad(model loss) == grad(L_e + gamma * (L_a - v) + w * L_div), v a constant."""
    model = build(tiny=True, loss=PENALTY)
    model.train()
    loss_fn = model.losses[0]
    step = 7
    gamma = 0.5 + 0.5 * (7 - 3) / 10  # linear ramp from the end of the warm-up
    tau = max(0.5, 2.0 * 0.9**7)
    loss_fn.v.fill_(3.0)
    loss_fn.v_initialized.fill_(True)
    feats, lengths = batch()
    params = dict(model.named_parameters())

    set_step(model, step)
    torch.manual_seed(5)
    total, stats, _ = model(feats, lengths)
    model_grads = grads(total.sum(), params)
    assert math.isclose(float(stats["gamma"]), gamma, rel_tol=1e-6)
    assert math.isclose(float(stats["tau"]), tau, rel_tol=1e-6)
    v = float(stats["v"])
    assert math.isclose(v, 0.99 * 3.0 + 0.01 * float(stats["loss_a"]), rel_tol=1e-5)
    assert not loss_fn.v.requires_grad

    torch.manual_seed(5)
    anchor, enhanced, diversity = explicit_pieces(model, feats, lengths, tau)
    torch.testing.assert_close(anchor.detach(), stats["loss_a"].reshape(()))
    torch.testing.assert_close(enhanced.detach(), stats["loss_e"].reshape(()))
    torch.testing.assert_close(diversity.detach(), stats["diversity"].reshape(()))
    explicit = enhanced + gamma * (anchor - v) + 0.3 * diversity
    torch.testing.assert_close(total.detach().reshape(()), explicit.detach())
    explicit_grads = grads(explicit, params)
    # v is a constant: dropping it leaves every gradient unchanged
    no_v_grads = grads(enhanced + gamma * anchor + 0.3 * diversity, params)
    for name in params:
        torch.testing.assert_close(model_grads[name], explicit_grads[name], msg=name)
        torch.testing.assert_close(model_grads[name], no_v_grads[name], msg=name)
    # and the label path is part of it (gradient of L_e reaches block 1 via labels)
    assert any(g.abs().sum() > 0 for g in model_grads.values())


def test_warmup_gradient_is_best_rq_gradient():
    model = build(tiny=True, loss=PENALTY)
    model.train()
    feats, lengths = batch()
    params = dict(model.named_parameters())
    set_step(model, 2)  # < warmup_steps
    torch.manual_seed(5)
    total, stats, _ = model(feats, lengths)
    assert float(stats["gamma"]) == 0.0
    model_grads = grads(total.sum(), params)
    torch.manual_seed(5)
    anchor, _, _ = explicit_pieces(model, feats, lengths, tau=1.0)
    best_rq_grads = grads(anchor, params)
    for name in params:
        torch.testing.assert_close(model_grads[name], best_rq_grads[name], msg=name)
    head = [n for n in params if "enhanced_head" in n]
    assert head and all(model_grads[n].abs().sum() == 0 for n in head)
    encoder = [n for n in params if n.startswith("encoder.")]
    assert all(model_grads[n].abs().sum() > 0 for n in encoder if "encoders.2." in n)


# ------------------------------------------------------------------- schedules
def make_loss(**conf) -> BiRQLoss:
    base = dict(
        encoder_output_size=16,
        input_size=8,
        subsampling_factor=4,
        num_encoder_layers=4,
        codebook_size=16,
        code_dim=4,
        enhanced_codebook_size=16,
        enhanced_code_dim=4,
    )
    base.update(conf)
    return BiRQLoss(**base)


@pytest.mark.parametrize(
    "conf, expected",
    [
        (
            dict(gamma_schedule="constant", gamma_max=0.7, warmup_steps=5),
            {0: 0.7, 5: 0.7, 1000: 0.7},
        ),
        (
            dict(
                gamma_schedule="linear",
                gamma_0=0.1,
                gamma_max=1.0,
                gamma_ramp_steps=100,
                warmup_steps=20,
            ),
            {0: 0.1, 20: 0.1, 45: 0.325, 70: 0.55, 120: 1.0, 10**6: 1.0},
        ),
        (
            dict(
                gamma_schedule="step",
                gamma_0=0.0,
                gamma_max=2.0,
                gamma_ramp_steps=100,
                gamma_step_interval=30,
                warmup_steps=10,
            ),
            # progress floored to multiples of 30 after the warm-up
            {9: 0.0, 39: 0.0, 40: 0.6, 69: 0.6, 70: 1.2, 100: 1.8, 130: 2.0, 999: 2.0},
        ),
    ],
)
def test_gamma_schedules(conf, expected):
    loss = make_loss(**conf)
    for step, value in expected.items():
        assert math.isclose(loss.gamma(step), value, rel_tol=1e-9, abs_tol=1e-12), step
        loss.step(torch.tensor([step]))
        assert math.isclose(loss.gamma(), value, rel_tol=1e-9, abs_tol=1e-12), step


def test_tau_schedule():
    loss = make_loss(tau_start=2.0, tau_end=0.5, tau_decay=0.5)
    assert [loss.tau(s) for s in (0, 1, 2, 3)] == [2.0, 1.0, 0.5, 0.5]
    loss = make_loss(tau_start=2.0, tau_end=0.5, tau_decay=0.99995)
    assert math.isclose(loss.tau(10000), 2.0 * 0.99995**10000)
    assert loss.tau(10**6) == 0.5


def test_schedule_state_round_trip():
    conf = dict(gamma_schedule="linear", gamma_ramp_steps=100, warmup_steps=10)
    loss = make_loss(**conf)
    loss.step(torch.tensor([57]))
    for value in (4.0, 3.0, 2.5):
        loss._update_v(torch.tensor(value))
    expected_v = (4.0 * 0.99 + 0.01 * 3.0) * 0.99 + 0.01 * 2.5
    assert math.isclose(float(loss.v), expected_v, rel_tol=1e-6)
    state = copy.deepcopy(loss.state_dict())
    restored = make_loss(**conf)
    assert int(restored.num_updates) == 0
    restored.load_state_dict(state)
    assert int(restored.num_updates) == 57
    assert torch.equal(restored.v, loss.v) and bool(restored.v_initialized)
    assert restored.gamma() == loss.gamma() == 0.1 + 0.9 * 47 / 100
    assert restored.tau() == loss.tau()
    assert torch.equal(restored.enhanced_codebook, loss.enhanced_codebook)
    assert torch.equal(restored.enhanced_projection, loss.enhanced_projection)


def test_buffers_are_frozen_and_seeded():
    loss = make_loss(seed=0, enhanced_seed=1)
    names = {n for n, _ in loss.named_parameters()}
    assert not any("codebook" in n or "projection" in n for n in names)
    again = make_loss(seed=0, enhanced_seed=1)
    assert torch.equal(loss.enhanced_codebook, again.enhanced_codebook)
    other = make_loss(seed=0, enhanced_seed=2)
    assert not torch.equal(loss.enhanced_codebook, other.enhanced_codebook)
    torch.testing.assert_close(
        loss.enhanced_codebook.norm(dim=-1), torch.ones(16), rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError):
        make_loss(seed=3, enhanced_seed=3)


# -------------------------------------------------------------------- collapse
def _train_tiny(gamma_max: float, diversity_weight: float = 5.0, steps: int = 200,
                tau: float = 0.1):
    """Adam on a 2-block conformer, 2 synthetic utterances of 1 s; returns the stats."""
    model = build(
        loss=dict(
            label_layer=1,
            enhanced_codebook_size=64,
            warmup_steps=0,
            gamma_schedule="constant",
            gamma_max=gamma_max,
            tau_start=tau,
            tau_end=tau,
            tau_decay=1.0,
            diversity_weight=diversity_weight,
        ),
        util=dict(mask_prob=0.05),
        seed=0,
    )
    rng = np.random.default_rng(0)
    waves = [synth_utterance(rng, 1.0) for _ in range(2)]
    from espnet2_birq.features import KaldiFbankFrontend

    frontend = KaldiFbankFrontend(fs=16000, n_mels=80)
    speech = torch.from_numpy(np.stack(waves))
    with torch.no_grad():
        feats, feat_lengths = frontend(speech, torch.full((2,), speech.shape[1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    trace = []
    for step in range(steps):
        total, stats, _ = model(feats, feat_lengths)
        optimizer.zero_grad()
        total.sum().backward()
        optimizer.step()
        trace.append({k: float(stats[k]) for k in ("ppl_e", "codes_e", "loss_e", "loss_a")})
    return trace


def tail_perplexity(trace) -> float:
    return float(np.mean([t["ppl_e"] for t in trace[-50:]]))


# Tiny conformer (d=32, 2 blocks, k=1, 64 enhanced codes), 2 synthetic 1 s utterances,
# Adam lr 3e-3, 200 steps, no warm-up, gamma constant, tau = 0.1. Labels and the
# diversity term cover the masked frames. Measured on the 2-core CPU (mean ppl_e of the
# last 50 steps; 17.2 at step 0; distinct codes at the last step):
#   anchoring on  (gamma 1), diversity 5:  21.7   23 codes, L_a learned (0.12)
#   anchoring off (gamma 0), diversity 5:   3.3   collapse (6 codes of 64), L_a 4.12
#   anchoring on,            diversity 0:   2.1   collapse (6 codes)
#   anchoring off,           diversity 0:   2.3   collapse (6 codes)
# With labels carrying gradient, mapping every frame to one code is the cheapest way
# to lower L_e; here neither the anchoring term nor the diversity term prevents that
# alone, together they do. At tau = 0.05 the labels collapse even then (straight-
# through gradients scale with 1/tau), hence the default temperature floor of 0.1.
PPL_FLOOR = 8.0  # of 64 enhanced codes, averaged over the last 50 steps


def test_anchoring_keeps_enhanced_labels_diverse(single_thread):
    trace = _train_tiny(gamma_max=1.0)
    assert tail_perplexity(trace) > PPL_FLOOR, trace[-1]
    assert trace[-1]["loss_a"] < 1.0, trace[-1]  # the anchoring targets are learned


def test_without_anchoring_enhanced_labels_collapse(single_thread):
    trace = _train_tiny(gamma_max=0.0)
    assert tail_perplexity(trace) < 4.0, trace[-1]
    assert trace[-1]["loss_a"] > 3.5, trace[-1]  # ln 64 = 4.16: chance level


def test_without_diversity_term_enhanced_labels_collapse(single_thread):
    """Documents why ``diversity_weight`` defaults to a non-zero value."""
    trace = _train_tiny(gamma_max=1.0, diversity_weight=0.0)
    assert tail_perplexity(trace) < 4.0, trace[-1]


def test_encode_leaves_input_untouched():
    """ESPnet's MVN layers work in place; precomputed features must not be modified."""
    model = build(tiny=True)
    model.train()
    feats, lengths = batch()
    before = feats.clone()
    model.encode(feats, lengths)
    assert torch.equal(feats, before)


def test_warmup_prefix_builds_no_graph():
    """During warm-up the enhanced loss has weight 0: no graph through blocks <= k."""
    model = build(tiny=True, loss=dict(warmup_steps=5))
    model.train()
    set_step(model, 3)
    model.losses[0].step(model.global_step)
    (hidden, _), = model.encode(*batch())["label_hidden"].values()
    assert not hidden.requires_grad
    set_step(model, 5)
    model.losses[0].step(model.global_step)
    (hidden, _), = model.encode(*batch())["label_hidden"].values()
    assert hidden.requires_grad


def test_tau_controls_label_sharpness():
    """Labels are Gumbel samples of cos / tau: small tau -> the nearest code."""
    loss = make_loss(tau_start=0.01, tau_end=0.01, tau_decay=1.0).train()
    hidden = torch.randn(2, 50, 16)
    nearest = loss.enhanced_logits(hidden).argmax(-1)
    torch.manual_seed(0)
    sharp = loss.enhanced_labels(hidden)
    assert (sharp == nearest).float().mean() > 0.9
    loss = make_loss(tau_start=10.0, tau_end=10.0, tau_decay=1.0).train()
    torch.manual_seed(0)
    flat = loss.enhanced_labels(hidden)
    assert (flat == nearest).float().mean() < 0.5
    loss.eval()  # validation: deterministic nearest code
    assert torch.equal(loss.enhanced_labels(hidden), nearest)


# --------------------------------------------------------- shapes, configs, stats
@pytest.mark.parametrize("encoder", ENCODERS)
def test_shapes_odd_lengths_every_encoder(encoder):
    config = str(REPO / "conf" / f"train_ssl_birq_{encoder}.yaml")
    model = build(config, tiny=True, loss=dict(warmup_steps=0))
    model.train()
    set_step(model, 1)
    feats, lengths = batch(lengths=(97, 131, 64, 23), seed=1)
    data = model.encode(feats, lengths)
    k = model.losses[0].label_layer
    hidden, hidden_lengths = data["label_hidden"][k]
    out = data["encoder_output"][-1]
    assert hidden.shape == out.shape and out.shape[-1] == 32
    assert torch.equal(hidden_lengths, data["encoder_output_lengths"])
    assert data["mask_info"]["mask_m"].shape == out.shape[:2]
    total, stats, _ = model(feats, lengths)
    assert torch.isfinite(total).all()
    total.sum().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for n, p in model.encoder.named_parameters()
        if n.startswith("encoders.0.")
    )


def test_stats_keys_every_step():
    model = build(tiny=True, loss=dict(warmup_steps=2))
    model.train()
    for step in range(4):  # warm-up steps and BiRQ steps alike
        set_step(model, step)
        _, stats, _ = model(*batch(seed=step))
        missing = [key for key in STAT_KEYS if key not in stats]
        assert not missing, (step, missing)
        assert all(torch.isfinite(torch.as_tensor(stats[key])).all() for key in STAT_KEYS)
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(*batch())
    assert all(key in stats for key in STAT_KEYS)


@pytest.mark.parametrize(
    "config", sorted(glob.glob(str(REPO / "conf" / "train_ssl_birq_*.yaml")))
)
def test_config_dry_run(config, tmp_path):
    """Every shipped BiRQ config builds as is (with a CMVN file when it wants one)."""
    args = parse(config)
    if args.normalize == "global_mvn":
        stats = tmp_path / "cmvn.npz"
        np.savez(stats, count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 100.0))
        args.normalize_conf = dict(args.normalize_conf, stats_file=str(stats))
    model = BirqSSLTask.build_model(args)
    loss = model.losses[0]
    assert isinstance(loss, BiRQLoss)
    assert 1 <= loss.label_layer <= len(model.encoder.encoders)
    model.train()
    set_step(model, loss.warmup_steps + 1)
    with torch.no_grad():
        _, stats, _ = model(*batch(lengths=(160,)))
    assert all(key in stats for key in STAT_KEYS)


def test_cli_train_checkpoint_reload(tmp_path):
    """A few CLI training steps write a checkpoint that reloads with identical state."""
    from espnet2.train.reporter import Reporter
    from espnet2.train.trainer import Trainer

    data = write_audio_set(tmp_path / "data", num_utts=4)
    out = tmp_path / "exp"
    cmd = [
        "--config", DEBUG,
        "--output_dir", str(out),
        "--train_data_path_and_name_and_type", f"{data['wav_scp']},speech,sound",
        "--train_shape_file", str(data["shape"]),
        "--valid_data_path_and_name_and_type", f"{data['wav_scp']},speech,sound",
        "--valid_shape_file", str(data["shape"]),
        "--ngpu", "0",
        "--max_epoch", "1",
        "--num_iters_per_epoch", "3",
    ]  # fmt: skip
    BirqSSLTask.main(cmd=cmd)
    model_file = out / "1epoch.pth"
    assert model_file.exists(), sorted(p.name for p in out.iterdir())
    saved = torch.load(model_file, map_location="cpu")
    assert int(saved["global_step"]) == 3
    # the last training forward ran at global step 2 -> num_updates 2
    assert int(saved["losses.0.num_updates"]) == 2
    assert bool(saved["losses.0.v_initialized"])

    model, _ = BirqSSLTask.build_model_from_file(out / "config.yaml", model_file)
    state = model.state_dict()
    for key in (
        "losses.0.num_updates", "losses.0.v", "losses.0.v_initialized",
        "losses.0.enhanced_codebook", "losses.0.enhanced_projection",
        "losses.0.anchor.quantizer.projection", "global_step",
    ):  # fmt: skip
        if key in saved:
            assert torch.equal(state[key], saved[key]), key
    loss = model.losses[0]
    assert loss.gamma() == 0.5 + 0.5 * (2 - 1) / 100  # debug config: linear, warm-up 1
    assert loss.tau() == 0.2 * 0.999**2  # debug config: tau_start 0.2, decay 0.999

    # ESPnet's --resume path restores the same state into a fresh model
    fresh, _ = BirqSSLTask.build_model_from_file(out / "config.yaml", None)
    Trainer.resume(
        checkpoint=out / "checkpoint.pth",
        model=fresh,
        reporter=Reporter(),
        optimizers=[torch.optim.Adam(fresh.parameters())],
        schedulers=[None],
        scaler=None,
    )
    for key, value in fresh.state_dict().items():
        if "losses.0" in key or key == "global_step":
            assert torch.equal(value, saved[key]), key
