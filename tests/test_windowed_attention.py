"""Windowed self-attention Conformer (espnet2_birq/encoders/windowed_conformer.py).

- locality: an output frame does not depend on input frames beyond the receptive field
  the window allows (blocks x window, plus the convolution module's kernel), through
  the encoder's forward and through the label pass's direct block calls;
- with a window covering the utterance it is ESPnet's Conformer, output for output;
- the state dict is ESPnet's ConformerEncoder's (loads both ways, strictly);
- padding stays masked; paths that ignore a (B, T, T) mask are switched off;
- the choice ``windowed_conformer`` is registered in the SSL, ASR and BL-JUST tasks.
"""

import copy

import pytest
import torch
import yaml

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2_birq.encoders.windowed_conformer import (
    BandMask,
    WindowedConformerEncoder,
    apply_attention_window,
    attention_window_of,
    band_mask,
)
from espnet2_birq.ssl_model import run_encoder_prefix

IDIM = 8


def conformer_kwargs(**overrides):
    kwargs = dict(
        output_size=32,
        attention_heads=4,
        linear_units=64,
        num_blocks=2,
        dropout_rate=0.0,
        positional_dropout_rate=0.0,
        attention_dropout_rate=0.0,
        input_layer="linear",  # no subsampling: input frame = encoder frame
        macaron_style=True,
        rel_pos_type="latest",
        pos_enc_layer_type="rel_pos",
        selfattention_layer_type="rel_selfattn",
        use_cnn_module=False,
    )
    kwargs.update(overrides)
    return kwargs


def pair(window, **overrides):
    """A windowed encoder and ESPnet's Conformer with the same weights, in eval mode."""
    torch.manual_seed(0)
    kwargs = conformer_kwargs(**overrides)
    windowed = WindowedConformerEncoder(IDIM, attention_window=window, **kwargs)
    plain = ConformerEncoder(IDIM, **kwargs)
    plain.load_state_dict(windowed.state_dict())
    return windowed.eval(), plain.eval()


def changed_frames(encoder, x, lengths, perturbed):
    """Output frames (of utterance 0) that change when input frames ``perturbed`` change."""
    y, _, _ = encoder(x, lengths)
    x2 = x.clone()
    x2[0, perturbed] += 3.0
    y2, _, _ = encoder(x2, lengths)
    diff = (y - y2)[0].abs().amax(dim=-1)
    return set(torch.nonzero(diff > 0).flatten().tolist())


def test_band_mask():
    band = band_mask(5, 5, 1)
    assert band.tolist() == [
        [True, True, False, False, False],
        [True, True, True, False, False],
        [False, True, True, True, False],
        [False, False, True, True, True],
        [False, False, False, True, True],
    ]
    assert band_mask(4, 4, 0).equal(torch.eye(4, dtype=torch.bool))
    # fewer queries than keys: the queries are the last positions
    assert band_mask(1, 5, 1).tolist() == [[False, False, False, True, True]]


@pytest.mark.parametrize("window", [0, 2, 5])
def test_one_block_sees_exactly_the_window(window):
    encoder, _ = pair(window, num_blocks=1)
    T, t = 30, 12
    x = torch.randn(1, T, IDIM)
    lengths = torch.tensor([T])
    far = [j for j in range(T) if abs(j - t) > window]
    assert t not in changed_frames(encoder, x, lengths, far)
    # a key inside the window does change frame t
    assert t in changed_frames(encoder, x, lengths, [t + window])
    # with one block and no convolution module, frame i depends on exactly the band
    for j in (0, t, T - 1):
        changed = changed_frames(encoder, x, lengths, [j])
        assert changed == {i for i in range(T) if abs(i - j) <= window}


def test_receptive_field_grows_per_block_and_convolution():
    window, kernel, blocks = 3, 5, 3
    encoder, _ = pair(window, num_blocks=blocks, use_cnn_module=True, cnn_module_kernel=kernel)
    T, t = 60, 30
    field = blocks * (window + kernel // 2)  # 15
    x = torch.randn(1, T, IDIM)
    lengths = torch.tensor([T])
    far = [j for j in range(T) if abs(j - t) > field]
    assert t not in changed_frames(encoder, x, lengths, far)
    assert t in changed_frames(encoder, x, lengths, [t + field])


def test_label_pass_calls_blocks_directly_and_sees_the_window():
    """run_encoder_prefix (BiRQ's unmasked label pass) calls block(x, mask) itself."""
    window = 2
    encoder, plain = pair(window, num_blocks=2)
    T, t = 24, 10
    x = torch.randn(1, T, IDIM)
    lengths = torch.tensor([T])
    x2 = x.clone()
    x2[0, t + 2 * window + 1 :] += 3.0
    h, _ = run_encoder_prefix(encoder, x, lengths, 1)
    h2, _ = run_encoder_prefix(encoder, x2, lengths, 1)
    assert torch.equal(h[0, t], h2[0, t])
    # ESPnet's Conformer (full attention) does see the change: the hook is what limits it
    p, _ = run_encoder_prefix(plain, x, lengths, 1)
    p2, _ = run_encoder_prefix(plain, x2, lengths, 1)
    assert not torch.equal(p[0, t], p2[0, t])
    # block 1 of the label pass equals block 1 of the forward
    (_, hidden), _, _ = encoder(x, lengths, return_all_hs=True)
    assert torch.allclose(h, hidden[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("input_layer", ["linear", "conv2d"])
def test_window_covering_the_utterance_is_espnets_conformer(input_layer):
    encoder, plain = pair(
        1000, num_blocks=2, input_layer=input_layer, use_cnn_module=True, cnn_module_kernel=7
    )
    x = torch.randn(3, 50, IDIM)
    lengths = torch.tensor([50, 41, 23])  # padded batch
    y, y_lengths, _ = encoder(x, lengths)
    p, p_lengths, _ = plain(x, lengths)
    assert torch.equal(y_lengths, p_lengths)
    assert torch.allclose(y, p, atol=1e-6, rtol=0)


def test_state_dict_is_conformers_both_ways():
    encoder, plain = pair(4, num_blocks=3, input_layer="conv2d", use_cnn_module=True)
    assert list(encoder.state_dict()) == list(plain.state_dict())
    kwargs = conformer_kwargs(num_blocks=3, input_layer="conv2d", use_cnn_module=True)
    fresh = WindowedConformerEncoder(IDIM, attention_window=7, **kwargs)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(fresh.state_dict(), strict=True)
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in plain.parameters())


def test_padding_stays_masked():
    """No convolution module: padded frames can reach valid ones only through attention."""
    encoder, _ = pair(3, num_blocks=2)
    T = 20
    x = torch.randn(2, T, IDIM)
    lengths = torch.tensor([T, 14])
    y, _, _ = encoder(x, lengths)
    x2 = x.clone()
    x2[1, 14:] = 100.0 * torch.randn(T - 14, IDIM)  # padded frames of utterance 1
    y2, _, _ = encoder(x2, lengths)
    assert torch.equal(y[1, :14], y2[1, :14])
    assert torch.equal(y[0], y2[0])
    # and the attention weights are zero on padded and out-of-band keys
    attention = encoder.encoders[0].self_attn
    weights = attention.attn[1].amax(dim=0)  # (T, T) over heads, utterance 1
    assert torch.all(weights[:14, 14:] == 0)
    assert torch.all(weights[:14, :14][~band_mask(14, 14, 3)] == 0)


def test_mask_as_keyword_and_none():
    encoder, _ = pair(1, num_blocks=1)
    attention = encoder.encoders[0].self_attn
    hook = attention.band_mask
    assert isinstance(hook, BandMask)
    q = torch.randn(2, 6, 32)
    args, _ = hook(attention, (q, q, q, None, None), {})
    assert args[4].shape == (1, 6, 6) and args[4].equal(band_mask(6, 6, 1)[None])
    padding = torch.ones(2, 1, 6, dtype=torch.bool)
    _, kwargs = hook(attention, (q, q, q), {"pos_emb": None, "mask": padding})
    assert kwargs["mask"].shape == (2, 6, 6)
    with pytest.raises(TypeError, match="without a mask"):
        hook(attention, (q, q, q), {})


def test_apply_twice_changes_the_window_and_deepcopy_keeps_it():
    encoder, _ = pair(2, num_blocks=2)
    apply_attention_window(encoder, 5)
    assert attention_window_of(encoder) == 5
    for block in encoder.encoders:
        assert block.self_attn.band_mask.window == 5
        assert len(block.self_attn._forward_pre_hooks) == 1
    teacher = copy.deepcopy(encoder)  # the EMA teacher copies the student like this
    x = torch.randn(1, 30, IDIM)
    lengths = torch.tensor([30])
    assert torch.equal(encoder(x, lengths)[0], teacher(x, lengths)[0])
    apply_attention_window(teacher, 1)
    assert encoder.encoders[0].self_attn.band_mask.window == 5  # the copy has its own hook
    assert attention_window_of(ConformerEncoder(IDIM, **conformer_kwargs())) is None


def test_flash_and_sdpa_paths_are_switched_off():
    torch.manual_seed(0)
    plain = ConformerEncoder(
        IDIM,
        **conformer_kwargs(pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn"),
    )
    for block in plain.encoders:
        block.self_attn.use_flash_attn = True
        block.self_attn.use_sdpa = True
    apply_attention_window(plain, 3)
    for block in plain.encoders:
        assert block.self_attn.use_flash_attn is False
        assert block.self_attn.use_sdpa is False
    # absolute positions + plain attention: locality holds too
    plain.eval()
    x = torch.randn(1, 30, IDIM)
    assert 5 not in changed_frames(plain, x, torch.tensor([30]), list(range(12, 30)))


def test_bad_window():
    with pytest.raises(ValueError, match=">= 0"):
        WindowedConformerEncoder(IDIM, attention_window=-1, **conformer_kwargs())
    with pytest.raises(Exception):  # typeguard: an int is required
        WindowedConformerEncoder(IDIM, attention_window="200", **conformer_kwargs())
    with pytest.raises(TypeError, match="encoders"):
        apply_attention_window(torch.nn.Linear(2, 2), 3)


def test_signature_lists_conformer_arguments():
    """--print_config reads the constructor's signature."""
    from espnet2.utils.get_default_kwargs import get_default_kwargs

    defaults = get_default_kwargs(WindowedConformerEncoder)
    assert defaults["attention_window"] == 200
    for key in ("output_size", "num_blocks", "cnn_module_kernel", "macaron_style"):
        assert key in defaults
    assert "conformer_kwargs" not in defaults


# ---------------------------------------------------------------- task registration
SMALL = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=2,
             input_layer="conv2d", rel_pos_type="latest", pos_enc_layer_type="rel_pos",
             selfattention_layer_type="rel_selfattn", macaron_style=True, attention_window=6)


def test_ssl_task_builds_windowed_conformer():
    from espnet2_birq.tasks.ssl import BirqSSLTask

    args = BirqSSLTask.get_parser().parse_args(
        ["--input_size", "80", "--encoder", "windowed_conformer",
         "--encoder_conf", yaml.safe_dump(SMALL, default_flow_style=True).strip(),
         "--normalize", "none"]
    )
    model = BirqSSLTask.build_model(args)
    assert isinstance(model.encoder, WindowedConformerEncoder)
    assert attention_window_of(model.encoder) == 6


def _token_list(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(["<blank>", "<unk>", "a", "b", "<sos/eos>"]) + "\n")
    return str(path)


@pytest.mark.parametrize("task_name", ["asr", "bljust"])
def test_asr_tasks_build_windowed_conformer(task_name, tmp_path):
    from espnet2_birq.bin.asr_train import GuardedASRTask
    from espnet2_birq.tasks.bljust import BlJustTask

    task = GuardedASRTask if task_name == "asr" else BlJustTask
    config = {
        "encoder": "windowed_conformer",
        "encoder_conf": SMALL,
        "model_conf": {"ctc_weight": 1.0},
        "decoder": None,
        "normalize": None,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    args = task.get_parser().parse_args(
        ["--config", str(path), "--input_size", "80", "--token_list", _token_list(tmp_path)]
    )
    model = task.build_model(args)
    encoder = model.encoder
    assert attention_window_of(encoder) == 6
    assert isinstance(encoder, ConformerEncoder)
    # the arguments (hence config.yaml) still name the windowed encoder ...
    assert args.encoder == "windowed_conformer"
    assert args.encoder_conf["attention_window"] == 6
    # ... and ESPnet's rewrite of the token list is kept
    assert args.token_list == ["<blank>", "<unk>", "a", "b", "<sos/eos>"]
    # the same state dict as the SSL task's encoder (what --init_param loads)
    ssl = WindowedConformerEncoder(80, **SMALL)
    encoder.load_state_dict(ssl.state_dict(), strict=True)


def test_asr_config_roundtrip_and_espnets_task_refuses(tmp_path):
    """GuardedASRTask rebuilds its own config.yaml; ESPnet's ASRTask says it cannot."""
    from espnet2.tasks.asr import ASRTask

    from espnet2_birq.bin.asr_train import GuardedASRTask

    args = GuardedASRTask.get_parser().parse_args(
        ["--input_size", "80", "--token_list", _token_list(tmp_path), "--encoder",
         "windowed_conformer", "--encoder_conf",
         yaml.safe_dump(SMALL, default_flow_style=True).strip(), "--decoder", "none",
         "--model_conf", "ctc_weight=1.0"]
    )
    model = GuardedASRTask.build_model(args)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(vars(args)))
    model_file = tmp_path / "model.pth"
    torch.save(model.state_dict(), model_file)
    rebuilt, _ = GuardedASRTask.build_model_from_file(config, model_file, "cpu")
    assert attention_window_of(rebuilt.encoder) == 6
    with pytest.raises(ValueError, match="windowed_conformer"):
        ASRTask.build_model_from_file(config, model_file, "cpu")


def test_finetune_config_keeps_the_window():
    from espnet2_birq.bin.make_finetune_config import merge_configs

    ssl = {"encoder": "windowed_conformer", "encoder_conf": dict(SMALL, dropout_rate=0.1)}
    merged = merge_configs(ssl, {"encoder_conf": {"dropout_rate": 0.05}})
    assert merged["encoder"] == "windowed_conformer"
    assert merged["encoder_conf"]["attention_window"] == 6
    with pytest.raises(ValueError, match="attention_window"):
        merge_configs(ssl, {"encoder_conf": {"attention_window": 100}})
