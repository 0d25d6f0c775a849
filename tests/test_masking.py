"""Span masking and subsampling length arithmetic against ESPnet's real encoders."""

import statistics

import pytest
import torch

from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2_birq.masking import (
    FrameSubsampling,
    LearnedMasking,
    SpanMasking,
    expected_mask_rate,
    measure_mask,
    positional_encoding_of,
    wav2vec2_span_mask,
)

FACTORS = {"conv2d": 4, "conv2d2": 2, "conv2d6": 6, "conv2d8": 8}
MAX_LENGTH = 500


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_conformer(input_layer: str, input_size: int = 80) -> ConformerEncoder:
    torch.manual_seed(0)
    encoder = ConformerEncoder(
        input_size=input_size,
        output_size=8,
        attention_heads=2,
        linear_units=8,
        num_blocks=1,
        dropout_rate=0.0,
        positional_dropout_rate=0.0,
        attention_dropout_rate=0.0,
        input_layer=input_layer,
        cnn_module_kernel=3,
    )
    return encoder.eval()


def encoder_lengths(encoder, lengths, max_length):
    """(T_out, per-utterance output lengths), or None when ESPnet refuses the input."""
    feats = torch.zeros(len(lengths), max_length, 80)
    try:
        with torch.no_grad():
            out, olens, _ = encoder(feats, torch.tensor(lengths))
    except TooShortUttError:
        return None
    return out.shape[1], olens


@pytest.fixture(scope="module", params=sorted(FACTORS))
def encoder_and_subsampling(request):
    encoder = tiny_conformer(request.param)
    subsampling = FrameSubsampling.from_encoder(encoder)
    assert subsampling.factor == FACTORS[request.param]
    return request.param, encoder, subsampling


def test_subsampling_matches_encoder_for_every_single_utterance_length(
    encoder_and_subsampling,
):
    """Single-utterance batches, 1..500 frames: same lengths as the real encoder.

    Every length for conv2d (the BEST-RQ input layer); for the other input layers
    every length up to 64 and every 9th beyond (the full encoder forward is the cost).
    """
    name, encoder, subsampling = encoder_and_subsampling
    masking = SpanMasking(mask_prob=0.05, span_ms=80.0)
    too_short = []
    checked = range(1, MAX_LENGTH + 1)
    if name != "conv2d":
        checked = sorted(set(range(1, 65)) | set(range(65, MAX_LENGTH + 1, 9)))
    for length in checked:
        lengths = torch.tensor([length])
        ours = subsampling.output_lengths(lengths)
        _, info = masking(torch.zeros(1, length, 8), lengths, subsampling)
        result = encoder_lengths(encoder, [length], length)
        if result is None:
            # ESPnet refuses inputs too short for the convolution; we give 0 frames.
            too_short.append(length)
            assert ours.tolist() == [0], (name, length)
            assert subsampling.max_output_frames(length) == 0
            assert info["mask_m"].shape[1] == 0
            assert not info["input_mask"].any()
            continue
        frames, olens = result
        assert ours.tolist() == olens.tolist(), (name, length)
        assert subsampling.max_output_frames(length) == frames, (name, length)
        assert info["mask_m"].shape == (1, frames), (name, length)
        assert info["output_lengths"].tolist() == olens.tolist()
        # Frames entering the loss have a complete input group.
        assert 0 <= int(info["frame_lengths"][0]) <= min(frames, length // subsampling.factor)
    # ESPnet's limits: conv2d/conv2d2 need 7 frames, conv2d6 11, conv2d8 15.
    expected_min = {"conv2d": 7, "conv2d2": 7, "conv2d6": 11, "conv2d8": 15}[name]
    assert too_short == list(range(1, expected_min))
    assert subsampling.min_input_frames() == expected_min


def test_subsampling_matches_encoder_on_padded_batches(encoder_and_subsampling):
    """Padded batches: shorter utterances may keep extra frames, as ESPnet counts them.

    Batches are padded to their longest utterance, as ESPnet's collate does (ESPnet's
    encoders build their mask from the lengths, so longer padding is not supported).
    """
    name, encoder, subsampling = encoder_and_subsampling
    masking = SpanMasking(mask_prob=0.05, span_ms=80.0)
    step = 1 if name == "conv2d" else 7
    batches = [(list(range(MAX_LENGTH, 0, -step)), MAX_LENGTH)]
    batches += [(list(range(1, top + 1)), top) for top in range(15, 64)]
    batches += [([top, top - 3, top // 2, 1], top) for top in range(64, 300, 7)]
    for lengths, max_length in batches:
        result = encoder_lengths(encoder, lengths, max_length)
        assert result is not None
        frames, olens = result
        lengths = torch.tensor(lengths)
        assert subsampling.output_lengths(lengths, max_length).tolist() == olens.tolist()
        _, info = masking(torch.zeros(len(lengths), max_length, 8), lengths, subsampling)
        assert info["mask_m"].shape == (len(lengths), frames), (name, max_length)
        assert info["output_lengths"].tolist() == olens.tolist()
        assert (info["frame_lengths"] <= olens).all()
        assert (info["frame_lengths"] <= lengths // subsampling.factor).all()


def test_linear_input_layer_keeps_frame_rate():
    encoder = tiny_conformer("linear")
    subsampling = FrameSubsampling.from_encoder(encoder)
    assert subsampling.factor == 1
    lengths = torch.tensor([5, 3, 1])
    frames, olens = encoder_lengths(encoder, [5, 3, 1], 5)
    assert subsampling.output_lengths(lengths, 5).tolist() == olens.tolist() == [5, 3, 1]


def span_masking_draws(mask_prob, span_ms, batch=64, frames=4000, seed=0):
    torch.manual_seed(seed)
    masking = SpanMasking(mask_prob=mask_prob, span_ms=span_ms, noise_std=0.1)
    subsampling = FrameSubsampling(((2, 2), (2, 2)))
    lengths = torch.full((batch,), frames)
    _, info = masking(torch.zeros(batch, frames, 2), lengths, subsampling)
    return masking, subsampling, lengths, info


@pytest.mark.parametrize(
    "mask_prob,span_ms,analytic",
    [
        # 1 - (1 - p) ** (span / 10 ms), written out: independent of the code's
        # own formulas. The paper's values mask about a third of the frames.
        (0.01, 400.0, 1 - 0.99**40),  # 0.331
        (0.02, 200.0, 1 - 0.98**20),  # 0.332
        (0.04, 120.0, 1 - 0.96**12),  # 0.387
    ],
)
def test_measured_mask_rate_matches_configuration(mask_prob, span_ms, analytic):
    masking, subsampling, lengths, info = span_masking_draws(mask_prob, span_ms)
    rate, _ = measure_mask(info["mask_m"], info["frame_lengths"])
    # far from the edges the rate is the analytic one; spans cut at the end of the
    # 4000-frame utterances lower it by under 1%
    assert abs(rate - analytic) < 0.02, (rate, analytic)
    # The same rate at the input level (every masked output frame covers 4 inputs).
    input_rate, _ = measure_mask(info["input_mask"], lengths)
    assert abs(input_rate - analytic) < 0.02, (input_rate, analytic)


@pytest.mark.parametrize("span_ms", [400.0, 200.0])
def test_measured_span_length_matches_configuration(span_ms):
    # Rare span starts: spans seldom overlap, so most runs are exactly one span.
    masking, subsampling, lengths, info = span_masking_draws(0.0005, span_ms, batch=96)
    span = masking.span_frames(subsampling.factor)
    _, runs = measure_mask(info["mask_m"], info["frame_lengths"])
    assert len(runs) > 100
    assert statistics.median(runs) == span
    assert statistics.mode(runs) == span
    assert min(runs) == span  # no run shorter than a span away from the edges
    _, input_runs = measure_mask(info["input_mask"], lengths)
    assert statistics.mode(input_runs) == round(span_ms / 10.0)


def test_output_frame_masked_iff_all_its_input_frames_are_masked():
    torch.manual_seed(0)
    for slices in (((2, 2), (2, 2)), ((2, 2), (4, 3)), ((2, 2), (2, 1))):
        subsampling = FrameSubsampling(slices)
        factor = subsampling.factor
        masking = SpanMasking(mask_prob=0.1, span_ms=10.0 * factor * 2)
        lengths = torch.tensor([300, 257, 123, 31, 8])
        feats = torch.full((5, 300, 3), 5.0)
        masked, info = masking(feats, lengths, subsampling)
        input_mask, mask_m = info["input_mask"], info["mask_m"]
        assert mask_m.any() and (~mask_m).any()
        for b in range(5):
            for i in range(mask_m.shape[1]):
                group = input_mask[b, i * factor : (i + 1) * factor]
                if i < int(info["frame_lengths"][b]):
                    assert bool(mask_m[b, i]) == bool(group.all())
                    # A group is either fully masked or fully kept.
                    assert bool(group.all()) or not bool(group.any())
                else:
                    assert not mask_m[b, i]
        # Input frames outside the masked groups are never masked.
        owned = mask_m.repeat_interleave(factor, dim=1)[:, :300]
        expanded = torch.zeros_like(input_mask)
        expanded[:, : owned.shape[1]] = owned
        assert torch.equal(expanded, input_mask)
        # The masked input frames are exactly the frames that changed.
        assert torch.equal((masked != feats).any(dim=-1), input_mask)
        assert torch.equal(info["mask_u"], ~mask_m & (torch.arange(mask_m.shape[1]) < info["frame_lengths"][:, None]))


def test_padding_is_never_masked():
    torch.manual_seed(1)
    subsampling = FrameSubsampling(((2, 2), (2, 2)))
    masking = SpanMasking(mask_prob=0.5, span_ms=400.0)
    lengths = torch.tensor([400, 399, 201, 50, 9, 7, 3, 1])
    feats = torch.randn(8, 400, 4)
    feats[torch.arange(400)[None, :] >= lengths[:, None]] = 0.0
    masked, info = masking(feats, lengths, subsampling)
    pad = torch.arange(400)[None, :] >= lengths[:, None]
    assert not info["input_mask"][pad].any()
    assert torch.equal(masked[pad], feats[pad])
    out_pad = torch.arange(info["mask_m"].shape[1])[None, :] >= info["frame_lengths"][:, None]
    assert not info["mask_m"][out_pad].any()
    assert not info["mask_u"][out_pad].any()
    # With p = 0.5 and 400 ms spans every long utterance is mostly masked.
    assert info["mask_m"][0, : int(info["frame_lengths"][0])].float().mean() > 0.9


def test_noise_statistics_and_unmasked_frames_untouched():
    torch.manual_seed(2)
    subsampling = FrameSubsampling(((2, 2), (2, 2)))
    for noise_std in (0.1, 0.5):
        masking = SpanMasking(mask_prob=0.02, span_ms=400.0, noise_std=noise_std)
        lengths = torch.full((16,), 2000)
        feats = torch.randn(16, 2000, 80) + 5.0
        masked, info = masking(feats, lengths, subsampling)
        noise = masked[info["input_mask"]]
        assert noise.numel() > 100_000
        assert abs(float(noise.mean())) < 0.02 * noise_std
        assert abs(float(noise.std()) / noise_std - 1.0) < 0.03
        assert torch.equal(masked[~info["input_mask"]], feats[~info["input_mask"]])
        # Fresh noise each call, not a fixed pattern.
        masked2, info2 = masking(feats, lengths, subsampling)
        both = info["input_mask"] & info2["input_mask"]
        assert not torch.equal(masked[both], masked2[both])


def test_min_spans_guarantees_a_masked_frame():
    torch.manual_seed(3)
    subsampling = FrameSubsampling(((2, 2), (2, 2)))
    lengths = torch.arange(1, 121)
    feats = torch.randn(120, 120, 2)
    masking = SpanMasking(mask_prob=0.0, span_ms=80.0, min_spans=1)
    for _ in range(5):
        _, info = masking(feats, lengths, subsampling)
        has_target = info["frame_lengths"] >= 1
        assert has_target.sum() > 100
        masked_per_utt = info["mask_m"].sum(dim=1)
        assert (masked_per_utt[has_target] >= 1).all()
        assert (masked_per_utt[~has_target] == 0).all()
        assert (info["input_mask"].sum(dim=1)[has_target] >= subsampling.factor).all()
    # Without min_spans and with p = 0, nothing is masked.
    _, info = SpanMasking(mask_prob=0.0, min_spans=0)(feats, lengths, subsampling)
    assert not info["mask_m"].any() and not info["input_mask"].any()


def test_measure_mask_and_expected_rate():
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]]).bool()
    rate, runs = measure_mask(mask, torch.tensor([10, 3]))
    assert rate == pytest.approx(8 / 13)
    # Runs touching the end of an utterance are left out.
    assert sorted(runs) == [1, 2, 3]
    assert expected_mask_rate(0.0, 10) == 0.0
    assert expected_mask_rate(1.0, 3) == 1.0
    assert expected_mask_rate(0.1, 1) == pytest.approx(0.1)


# --------------------------------------------------------------- learned_mask (MT4SSL)
def test_learned_mask_rate_for_the_published_setting():
    """mask_prob 0.65, spans of 10 frames (wav2vec 2.0 / data2vec / MT4SSL): 6.5 % of
    the frames start a span, about 49 % of the frames end up masked."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.full((64,), 1000)
    mask = wav2vec2_span_mask(lengths, 1000, 0.65, 10, 1, generator)
    rate, runs = measure_mask(mask, lengths)
    # Written out: far from the edges a frame stays unmasked when none of the 10 frames
    # up to it starts a span, (1 - 0.065) ** 10 = 0.511.
    assert abs(rate - (1 - 0.935**10)) < 0.01, rate
    assert abs(rate - expected_mask_rate(0.065, 10)) < 0.01
    assert min(runs) >= 10  # spans merge, never shorter than one span
    # The same through the util, on the 999 frames a conv2d encoder makes of 4000.
    masking = LearnedMasking(8)
    subsampling = FrameSubsampling(((2, 2), (2, 2)))
    info = masking.draw(torch.full((64,), 4000), 4000, subsampling, generator)
    rate, _ = measure_mask(info["mask_m"], info["frame_lengths"])
    assert abs(rate - 0.489) < 0.015, rate


def test_learned_mask_span_starts_follow_fairseq():
    """span 1 shows the starts: floor(p * n / span + u) of them (probabilistic rounding),
    drawn without replacement from the first n - span frames."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.full((2000,), 100)
    mask = wav2vec2_span_mask(lengths, 100, 0.065, 1, 0, generator)
    counts = mask.sum(dim=1)
    assert set(counts.tolist()) == {6, 7}  # 6.5 spans: 6 or 7
    assert abs(counts.float().mean().item() - 6.5) < 0.05
    assert not mask[:, 99].any()  # the last frame is never a start (n - span = 99 starts)
    assert mask[:, :99].float().mean(dim=0).min() > 0.03  # every other frame can be
    # min_spans: an utterance whose draw rounds to 0 spans still gets one.
    short = wav2vec2_span_mask(torch.full((500,), 12), 12, 0.065, 1, 1, generator)
    assert (short.sum(dim=1) == 1).all()
    # Utterances no longer than a span (fairseq's fallback: num + 1 start frames), empty
    # utterances and padding.
    lengths = torch.tensor([30, 10, 5, 1, 0])
    for _ in range(50):
        mask = wav2vec2_span_mask(lengths, 30, 0.65, 10, 1, generator)
        assert (mask.sum(dim=1)[:4] >= 1).all() and not mask[4].any()
        assert not mask[torch.arange(30)[None, :] >= lengths[:, None]].any()
        assert mask[2, 2:5].all()  # a start at 0 or 1 masks up to the end (frame 4)


def test_learned_mask_info_matches_span_mask_contract():
    """The same mask_info keys, aligned with the encoder frames of every subsampling."""
    for input_layer in sorted(FACTORS):
        encoder = tiny_conformer(input_layer)
        subsampling = FrameSubsampling.from_encoder(encoder)
        lengths = torch.tensor([200, 173, 64, 31])
        info = LearnedMasking(8).draw(lengths, 200, subsampling, torch.Generator().manual_seed(2))
        _, span_info = SpanMasking()(torch.zeros(4, 200, 80), lengths, subsampling)
        assert info.keys() == span_info.keys()
        for key in ("output_lengths", "frame_lengths"):
            assert torch.equal(info[key], span_info[key]), key
        assert info["mask_m"].shape == span_info["mask_m"].shape
        assert info["subsampling_factor"] == FACTORS[input_layer]
        frames, olens = encoder_lengths(encoder, lengths.tolist(), 200)
        assert info["mask_m"].shape[1] == frames and torch.equal(info["output_lengths"], olens)
        valid = torch.arange(frames)[None, :] < info["frame_lengths"][:, None]
        assert torch.equal(info["mask_u"], valid & ~info["mask_m"])
        assert not info["mask_m"][~valid].any() and info["mask_m"].any()
        factor = FACTORS[input_layer]
        owned = info["mask_m"].repeat_interleave(factor, dim=1)[:, :200]
        assert torch.equal(info["input_mask"][:, : owned.shape[1]], owned)


@pytest.mark.parametrize("input_layer", ["conv2d", "conv2d6", "linear"])
def test_learned_mask_replaces_the_masked_frames_by_the_embedding(input_layer):
    """Inside applied(), the positional encoding receives the embedding at masked frames
    and the projected frames elsewhere; outside it, nothing changes."""
    encoder = tiny_conformer(input_layer)
    masking = LearnedMasking(8)
    subsampling = FrameSubsampling.from_encoder(encoder)
    lengths = torch.tensor([120, 97])
    feats = torch.randn(2, 120, 80)
    info = masking.draw(lengths, 120, subsampling, torch.Generator().manual_seed(3))
    seen = []
    pos_enc = positional_encoding_of(encoder)
    handle = pos_enc.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        clean, _, _ = encoder(feats, lengths)
        with masking.applied(encoder, info["mask_m"]):
            masked, _, _ = encoder(feats, lengths)
        again, _, _ = encoder(feats, lengths)
    handle.remove()
    before, inside, after = seen
    mask = info["mask_m"]
    assert mask.any() and (~mask).any()
    assert torch.equal(inside[mask], masking.embedding.detach().expand(int(mask.sum()), 8))
    assert torch.equal(inside[~mask], before[~mask])
    assert torch.equal(after, before) and torch.equal(again, clean)
    assert not torch.allclose(masked, clean)


def test_learned_mask_embedding_is_trained_and_checked():
    encoder = tiny_conformer("conv2d").train()
    masking = LearnedMasking(8)
    subsampling = FrameSubsampling.from_encoder(encoder)
    lengths = torch.tensor([120, 97])
    info = masking.draw(lengths, 120, subsampling, torch.Generator().manual_seed(4))
    with masking.applied(encoder, info["mask_m"]):
        out, _, _ = encoder(torch.randn(2, 120, 80), lengths)
    out[info["mask_m"]].pow(2).sum().backward()
    assert masking.embedding.grad is not None and masking.embedding.grad.abs().sum() > 0
    assert 0.0 <= float(masking.embedding.detach().min()) and float(masking.embedding.detach().max()) < 1.0
    assert [name for name, _ in masking.named_parameters()] == ["embedding"]
    # A mask that does not match the encoder's frames is refused, not broadcast.
    with pytest.raises(RuntimeError, match="the mask covers"):
        with masking.applied(encoder, info["mask_m"][:, :-1]):
            encoder(torch.randn(2, 120, 80), lengths)
    # The masked forward must run the input layer exactly once.
    with pytest.raises(RuntimeError, match="ran 0 times"):
        with masking.applied(encoder, info["mask_m"]):
            pass
    # Encoders without an ESPnet input layer cannot be masked this way.
    with pytest.raises(TypeError, match="learned_mask needs an ESPnet encoder"):
        positional_encoding_of(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mask_prob"):
        LearnedMasking(8, mask_prob=1.5)
    # ESPnet's --init keeps wav2vec 2.0's uniform initialisation.
    from espnet2.torch_utils.initialize import initialize

    holder = torch.nn.Module()
    holder.masking = masking
    for init in ("xavier_uniform", "chainer"):
        with torch.no_grad():
            masking.embedding.fill_(-1.0)
        initialize(holder, init)
        assert 0.0 <= float(masking.embedding.detach().min()) and float(masking.embedding.detach().max()) < 1.0
