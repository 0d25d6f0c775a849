"""RandomProjectionQuantizer: frozen buffers, per-frame normalisation, stacking."""

import io

import pytest
import torch

from espnet2_birq.quantizer import RandomProjectionQuantizer


def reference_labels(quantizer, feats):
    """Labels computed frame by frame, the slow obvious way (Euclidean nearest entry).

    Every stacked group is projected on its own, l2-normalised over its code vector
    and compared with every codebook entry by Euclidean distance.
    """
    batch, num_frames, dim = feats.shape
    factor = quantizer.stack_frames
    groups = num_frames // factor
    out = torch.empty(batch, groups, quantizer.num_codebooks, dtype=torch.long)
    for b in range(batch):
        for t in range(groups):
            vector = feats[b, t * factor : (t + 1) * factor].reshape(-1).double()
            for n in range(quantizer.num_codebooks):
                code = vector @ quantizer.projection[n].double()
                code = code / code.norm()
                distances = (quantizer.codebook[n].double() - code).norm(dim=-1)
                out[b, t, n] = int(distances.argmin())
    return out


class TimeNormalisedQuantizer(RandomProjectionQuantizer):
    """The known pitfall (docs/method.md): l2-normalisation over time."""

    @torch.no_grad()
    def forward(self, feats, lengths):
        stacked, target_lengths = self.stack(feats, lengths)
        projected = torch.einsum("btd,ndc->btnc", stacked, self.projection)
        projected = torch.nn.functional.normalize(projected, dim=1)
        similarity = torch.einsum("btnc,nkc->btnk", projected, self.codebook)
        return similarity.argmax(dim=-1), target_lengths


def make_feats(batch=3, frames=64, dim=20, seed=0):
    return torch.randn(batch, frames, dim, generator=torch.Generator().manual_seed(seed))


def scaling_changes_labels(quantizer, feats, group=5, scale=7.0):
    """Indices of (utterance, frame) whose label changes when one group is scaled."""
    lengths = torch.full((feats.shape[0],), feats.shape[1])
    before, _ = quantizer(feats, lengths)
    scaled = feats.clone()
    factor = quantizer.stack_frames
    scaled[0, group * factor : (group + 1) * factor] *= scale
    after, _ = quantizer(scaled, lengths)
    return (before != after).nonzero().tolist()


def test_projection_and_codebook_are_frozen_buffers():
    q = RandomProjectionQuantizer(input_dim=20, stack_frames=4, code_dim=8, codebook_size=32)
    assert list(q.parameters()) == []
    buffers = dict(q.named_buffers())
    assert set(buffers) == {"projection", "codebook"}
    assert buffers["projection"].shape == (1, 80, 8)
    assert buffers["codebook"].shape == (1, 32, 8)
    for buf in buffers.values():
        assert not buf.requires_grad
    state = q.state_dict()
    assert set(state) == {"projection", "codebook"}
    # Nothing an optimiser could update.
    with pytest.raises(ValueError):
        torch.optim.Adam(q.parameters())


def test_codebook_rows_have_unit_norm():
    q = RandomProjectionQuantizer(input_dim=20, code_dim=16, codebook_size=512, num_codebooks=2)
    norms = q.codebook.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # The codebook is not degenerate: entries differ.
    assert torch.unique(q.codebook[0].round(decimals=4), dim=0).shape[0] == 512


def test_labels_match_per_frame_reference():
    q = RandomProjectionQuantizer(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64, num_codebooks=2, seed=3)
    feats = make_feats(batch=3, frames=64, dim=20) * 3.0 + 1.0
    codes, lengths = q(feats, torch.tensor([64, 64, 64]))
    assert codes.dtype == torch.long
    assert codes.shape == (3, 16, 2)
    assert torch.equal(codes, reference_labels(q, feats))
    # The time-normalised variant disagrees with the reference on these inputs, so the
    # comparison above does detect that bug.
    buggy = TimeNormalisedQuantizer(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64, num_codebooks=2, seed=3)
    buggy_codes, _ = buggy(feats, torch.tensor([64, 64, 64]))
    assert not torch.equal(buggy_codes, codes)


def test_labels_invariant_to_scaling_one_frame_group():
    """Per-frame normalisation: scaling one group by c > 0 changes no label anywhere."""
    q = RandomProjectionQuantizer(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64)
    feats = make_feats(batch=2, frames=80, dim=20)
    for group, scale in ((0, 7.0), (5, 0.05), (19, 100.0)):
        assert scaling_changes_labels(q, feats, group, scale) == []
    # Normalising over time (the known bug) makes other frames' labels change.
    buggy = TimeNormalisedQuantizer(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64)
    changed = scaling_changes_labels(buggy, feats, group=5, scale=100.0)
    assert any(frame != 5 for _, frame, _ in changed)


def test_state_dict_restores_buffers_into_differently_seeded_quantizer():
    kwargs = dict(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64, num_codebooks=2)
    q0 = RandomProjectionQuantizer(seed=0, **kwargs)
    q1 = RandomProjectionQuantizer(seed=1, **kwargs)
    assert not torch.equal(q0.projection, q1.projection)
    assert not torch.equal(q0.codebook, q1.codebook)
    feats = make_feats(batch=2, frames=64, dim=20)
    lengths = torch.tensor([64, 50])
    codes0, _ = q0(feats, lengths)
    codes1, _ = q1(feats, lengths)
    assert not torch.equal(codes0, codes1)

    buffer = io.BytesIO()
    torch.save(q0.state_dict(), buffer)
    buffer.seek(0)
    q1.load_state_dict(torch.load(buffer))
    assert torch.equal(q1.projection, q0.projection)
    assert torch.equal(q1.codebook, q0.codebook)
    assert torch.equal(q1(feats, lengths)[0], codes0)


def test_same_seed_same_buffers_independent_of_global_rng():
    kwargs = dict(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64, seed=11)
    torch.manual_seed(1)
    q_a = RandomProjectionQuantizer(**kwargs)
    torch.manual_seed(12345)
    torch.rand(100)
    state = torch.get_rng_state()
    q_b = RandomProjectionQuantizer(**kwargs)
    # Building a quantiser draws nothing from the global generator.
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(q_a.projection, q_b.projection)
    assert torch.equal(q_a.codebook, q_b.codebook)
    # Xavier-uniform range for a (80 -> 8) map.
    bound = (6.0 / (80 + 8)) ** 0.5
    assert q_a.projection.abs().max() <= bound
    assert q_a.projection.abs().max() > 0.9 * bound


def test_stacking_drops_trailing_partial_group():
    q = RandomProjectionQuantizer(input_dim=6, stack_frames=4, code_dim=4, codebook_size=16)
    feats = make_feats(batch=5, frames=11, dim=6)
    lengths = torch.tensor([11, 8, 7, 3, 0])
    stacked, stacked_lengths = q.stack(feats, lengths)
    assert stacked.shape == (5, 2, 24)
    assert stacked_lengths.tolist() == [2, 2, 1, 0, 0]
    assert torch.equal(stacked[:, 1], feats[:, 4:8].reshape(5, 24))
    codes, target_lengths = q(feats, lengths)
    assert codes.shape == (5, 2, 1)
    assert target_lengths.tolist() == [2, 2, 1, 0, 0]
    # The dropped tail (frames 8..10) influences no label.
    changed = feats.clone()
    changed[:, 8:] = 100.0
    assert torch.equal(q(changed, lengths)[0], codes)
    # Every length from 0 to 30 frames gives lengths // stack_frames targets.
    for length in range(31):
        _, n = q(torch.randn(1, length, 6), torch.tensor([length]))
        assert n.tolist() == [length // 4]


def test_multiple_codebooks_are_independent():
    kwargs = dict(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64)
    q = RandomProjectionQuantizer(num_codebooks=3, seed=5, **kwargs)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(q.projection[i], q.projection[j])
            assert not torch.allclose(q.codebook[i], q.codebook[j])
    feats = make_feats(batch=4, frames=400, dim=20)
    lengths = torch.full((4,), 400)
    codes, _ = q(feats, lengths)
    assert codes.shape == (4, 100, 3)
    # Codebook n depends only on its own projection and codebook.
    for n in range(3):
        single = RandomProjectionQuantizer(num_codebooks=1, seed=99, **kwargs)
        single.load_state_dict(
            {"projection": q.projection[n : n + 1], "codebook": q.codebook[n : n + 1]}
        )
        assert torch.equal(single(feats, lengths)[0][..., 0], codes[..., n])
    # Independent codes agree about as often as chance (1/64), not systematically.
    for i in range(3):
        for j in range(i + 1, 3):
            agreement = (codes[..., i] == codes[..., j]).float().mean()
            assert agreement < 0.15
    # Each codebook uses many entries (no collapse on Gaussian input).
    for n in range(3):
        assert codes[..., n].unique().numel() > 20


def test_rejects_wrong_feature_dimension():
    q = RandomProjectionQuantizer(input_dim=20, stack_frames=4, code_dim=8, codebook_size=64)
    with pytest.raises(ValueError, match="20-dim"):
        q(torch.randn(1, 8, 21), torch.tensor([8]))
