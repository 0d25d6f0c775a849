"""The fused straight-through Gumbel cross-entropy against plain autograd."""

import math

import pytest
import torch
import torch.nn.functional as F

from espnet2_birq.losses.gumbel import StraightThroughGumbelCE, gumbel_noise


def reference(scores, noise, head_logits):
    """Hard Gumbel-softmax labels (straight-through), CE and diversity, plain autograd."""
    noisy = scores if noise is None else scores + noise
    soft = noisy.softmax(-1)
    hard = F.one_hot(noisy.argmax(-1), scores.shape[-1]).to(soft.dtype)
    labels = hard - soft.detach() + soft
    log_probs = F.log_softmax(head_logits, dim=-1)
    ce = -(labels * log_probs).sum(-1).mean()
    mean_probs = scores.softmax(-1).mean(0)
    perplexity = torch.exp(-(mean_probs * mean_probs.clamp(min=1e-10).log()).sum())
    return ce, 1.0 - perplexity / scores.shape[-1], noisy.argmax(-1)


def inputs(frames=37, codes=50, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    scores = (scale * torch.randn(frames, codes, generator=generator)).double()
    head = torch.randn(frames, codes, generator=generator).double()
    return scores.requires_grad_(), head.requires_grad_()


@pytest.mark.parametrize("with_noise", [True, False])
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (0.7, 5.0)])
def test_matches_plain_autograd(with_noise, weights):
    scores, head = inputs()
    torch.manual_seed(0)
    noise = gumbel_noise(scores).double() if with_noise else None
    ce, div, index, head_argmax = StraightThroughGumbelCE.apply(scores, noise, head)
    ref_ce, ref_div, ref_index = reference(scores, noise, head)
    assert torch.equal(index, ref_index)
    assert torch.equal(head_argmax, head.argmax(-1))
    torch.testing.assert_close(ce, ref_ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div, ref_div, rtol=1e-12, atol=1e-12)
    w_ce, w_div = weights
    got = torch.autograd.grad(w_ce * ce + w_div * div, [scores, head])
    want = torch.autograd.grad(w_ce * ref_ce + w_div * ref_div, [scores, head])
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_near_one_hot_probabilities():
    """Codes nobody uses (mean probability under the log floor): finite gradients,
    equal to the reference's."""
    scores, head = inputs(frames=8, codes=20, scale=60.0)  # near one-hot probabilities
    ce, div, _, _ = StraightThroughGumbelCE.apply(scores, None, head)
    ref_ce, ref_div, _ = reference(scores, None, head)
    assert float(scores.detach().softmax(-1).mean(0).min()) < 1e-10
    got = torch.autograd.grad(ce + div, scores)[0]
    assert torch.isfinite(got).all()
    want = torch.autograd.grad(ref_ce + ref_div, scores)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_stop_gradient_scores_give_head_gradient_only():
    scores, head = inputs()
    ce, div, _, _ = StraightThroughGumbelCE.apply(scores.detach(), None, head)
    (ce + div).backward()
    assert head.grad is not None and scores.grad is None


def test_float16_inputs_get_gradients_in_their_dtype():
    scores, head = inputs()
    scores16 = scores.detach().half().requires_grad_()
    head16 = head.detach().half().requires_grad_()
    ce, div, _, _ = StraightThroughGumbelCE.apply(scores16, None, head16)
    assert ce.dtype == torch.float32
    (ce + div).backward()
    assert scores16.grad.dtype == torch.float16 and head16.grad.dtype == torch.float16


def test_no_frames():
    scores = torch.zeros(0, 10, requires_grad=True)
    head = torch.zeros(0, 10, requires_grad=True)
    ce, div, index, _ = StraightThroughGumbelCE.apply(scores, None, head)
    assert float(ce.detach()) == 0.0 and index.shape == (0,)


def test_a_minus_infinite_noise_value_is_a_code_not_drawn():
    """U = 0 gives noise -inf: finite loss and gradients, that code never the label."""
    scores, head = inputs(frames=4, codes=6)
    noise = torch.zeros(4, 6, dtype=torch.float64)
    noise[:, 0] = float("-inf")
    scores.data[:, 0] = 100.0  # would be every frame's label without the noise
    ce, div, index, _ = StraightThroughGumbelCE.apply(scores, noise, head)
    assert not (index == 0).any()
    grads = torch.autograd.grad(ce + div, [scores, head])
    assert all(torch.isfinite(g).all() for g in grads)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="must be the same"):
        StraightThroughGumbelCE.apply(torch.zeros(3, 4), None, torch.zeros(3, 5))


def test_gumbel_noise_distribution():
    """Mean of a standard Gumbel is the Euler-Mascheroni constant, variance pi^2/6;
    and the Gumbel-max trick samples the softmax distribution."""
    torch.manual_seed(0)
    noise = gumbel_noise(torch.empty(200_000))
    assert not torch.isnan(noise).any() and not (noise == float("inf")).any()
    assert abs(float(noise.mean()) - 0.5772) < 0.01
    assert abs(float(noise.var()) - math.pi**2 / 6) < 0.03
    logits = torch.tensor([0.0, 1.0, 2.0])
    draws = (logits + gumbel_noise(logits.expand(100_000, 3))).argmax(-1)
    frequencies = torch.bincount(draws, minlength=3).float() / draws.numel()
    torch.testing.assert_close(frequencies, logits.softmax(-1), atol=0.01, rtol=0)
