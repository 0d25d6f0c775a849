"""Fine-tuning config merge and greedy CTC decoding."""

from pathlib import Path

import kaldiio
import pytest
import soundfile
import yaml

from espnet2_birq.bin.make_finetune_config import main as make_finetune_config
from espnet2_birq.bin.make_finetune_config import merge_configs

REPO = Path(__file__).resolve().parents[1]
SSL = {
    "encoder": "conformer",
    "encoder_conf": {"output_size": 32, "num_blocks": 2, "dropout_rate": 0.0},
    "normalize": "global_mvn",
    "normalize_conf": {"stats_file": "dump/fbank/pretrain/cmvn.npz"},
    "loss": [{"name": "best_rq"}],
}


def read_kaldi_text(path: Path) -> dict:
    """``key value...`` lines; an empty hypothesis is a key alone."""
    entries = {}
    for line in path.read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        entries[key] = value
    return entries


def test_merge_copies_encoder_and_normalisation():
    merged = merge_configs(SSL, {"model_conf": {"ctc_weight": 1.0}, "optim": "adam"})
    assert merged["encoder"] == "conformer"
    assert merged["encoder_conf"] == SSL["encoder_conf"]
    assert merged["normalize_conf"]["stats_file"] == "dump/fbank/pretrain/cmvn.npz"
    assert merged["optim"] == "adam"
    assert "loss" not in merged  # SSL-only keys stay out


def test_merge_allows_dropout_override_only():
    merged = merge_configs(SSL, {"encoder_conf": {"dropout_rate": 0.2}})
    assert merged["encoder_conf"]["dropout_rate"] == 0.2
    assert merged["encoder_conf"]["output_size"] == 32
    with pytest.raises(ValueError, match="output_size"):
        merge_configs(SSL, {"encoder_conf": {"output_size": 64}})
    with pytest.raises(ValueError, match="e_branchformer"):
        merge_configs(SSL, {"encoder": "e_branchformer"})


def test_merge_cli_reports_missing_file(tmp_path, caplog):
    asr = tmp_path / "asr.yaml"
    asr.write_text("optim: adam\n")
    assert make_finetune_config(
        ["--ssl_config", str(tmp_path / "none.yaml"), "--asr_config", str(asr),
         "--out", str(tmp_path / "out.yaml")]
    ) == 1
    assert "none.yaml" in caplog.text
    ssl = tmp_path / "ssl.yaml"
    ssl.write_text(yaml.safe_dump(SSL))
    out = tmp_path / "out.yaml"
    assert make_finetune_config(
        ["--ssl_config", str(ssl), "--asr_config", str(asr), "--out", str(out)]
    ) == 0
    assert yaml.safe_load(out.read_text())["encoder_conf"]["num_blocks"] == 2


def test_collapse_ctc():
    from espnet2_birq.bin.asr_decode import collapse_ctc

    assert collapse_ctc([0, 3, 3, 0, 3, 4, 4, 0, 0, 5], blank_id=0) == [3, 3, 4, 5]
    assert collapse_ctc([0, 0, 0], blank_id=0) == []
    assert collapse_ctc([], blank_id=0) == []


@pytest.mark.parametrize("encoder", ["conformer", "windowed_conformer"])
def test_greedy_decode_and_espnet_delegation(tmp_path, audio_set, monkeypatch, encoder):
    """Train a tiny CTC model for one epoch on kaldi_ark fbank, then decode.

    Greedy decoding of a padded batch must equal best-path decoding computed here
    utterance by utterance (padding must not leak into the result), its text must be
    the detokenised tokens, and the delegation to ESPnet's beam search must write
    a hypothesis for every utterance. A ``windowed_conformer`` model (the C3 encoder,
    unknown to ESPnet's own ASR task) trains, passes stage 6's check and decodes both ways.
    """
    import torch

    from espnet2_birq.bin import asr_train

    from espnet2_birq.bin import asr_decode
    from espnet2_birq.features import kaldi_fbank

    monkeypatch.chdir(tmp_path)
    feats = {}
    texts = {}
    words = ["ON", "OFF", "UP"]
    for i, line in enumerate(Path(audio_set["wav_scp"]).read_text().splitlines()):
        uid, path = line.split(maxsplit=1)
        audio, fs = soundfile.read(path, dtype="float32")
        feats[uid] = kaldi_fbank(torch.from_numpy(audio), fs).numpy()
        texts[uid] = f"{words[i % 3]} {words[(i + 1) % 3]}"
    kaldiio.save_ark("feats.ark", feats, scp="feats.scp")
    Path("text").write_text("".join(f"{k} {v}\n" for k, v in sorted(texts.items())))
    Path("shape").write_text(
        "".join(f"{k} {v.shape[0]},80\n" for k, v in sorted(feats.items()))
    )
    Path("text_shape").write_text(
        "".join(f"{k} {len(v)}\n" for k, v in sorted(texts.items()))
    )
    tokens = ["<blank>", "<unk>", "<space>"] + sorted(set("".join(words))) + ["<sos/eos>"]
    Path("tokens.txt").write_text("\n".join(tokens) + "\n")
    config = merge_configs(
        SSL | {"normalize": "utterance_mvn", "normalize_conf": {}},
        {
            "model_conf": {"ctc_weight": 1.0},
            "decoder": "none",
            "optim": "adam",
            "optim_conf": {"lr": 0.01},
            "batch_type": "unsorted",
            "batch_size": 3,
            "max_epoch": 1,
            "num_workers": 0,
            "best_model_criterion": [["valid", "loss", "min"]],
            "keep_nbest_models": 1,
        },
    )
    if encoder == "windowed_conformer":
        config["encoder"] = encoder
        config["encoder_conf"] = dict(config["encoder_conf"], attention_window=3)
    Path("asr.yaml").write_text(yaml.safe_dump(config))
    data = ["--train_data_path_and_name_and_type", "feats.scp,speech,kaldi_ark",
            "--train_data_path_and_name_and_type", "text,text,text",
            "--train_shape_file", "shape", "--train_shape_file", "text_shape",
            "--valid_data_path_and_name_and_type", "feats.scp,speech,kaldi_ark",
            "--valid_data_path_and_name_and_type", "text,text,text",
            "--valid_shape_file", "shape", "--valid_shape_file", "text_shape"]
    asr_train.main(
        ["--config", "asr.yaml", "--output_dir", "exp/asr", "--input_size", "80",
         "--token_type", "char", "--token_list", "tokens.txt", "--ngpu", "0", *data]
    )
    model = "exp/asr/valid.loss.best.pth"
    common = ["--asr_train_config", "exp/asr/config.yaml", "--asr_model_file", model,
              "--data_path_and_name_and_type", "feats.scp,speech,kaldi_ark",
              "--ngpu", "0"]
    asr_decode.main([*common, "--ctc_greedy", "true", "--batch_size", "4",
                     "--output_dir", "greedy"])
    asr_decode.main([*common, "--beam_size", "1", "--ctc_weight", "1.0",
                     "--output_dir", "beam"])
    # best-path decoding cannot use a language model: an LM next to it is refused, not ignored
    with pytest.raises(SystemExit) as refused:
        asr_decode.main([*common, "--ctc_greedy", "true", "--lm_train_config", "lm/config.yaml",
                         "--lm_file", "lm/valid.loss.ave.pth", "--output_dir", "greedy_lm"])
    assert refused.value.code == 2 and not Path("greedy_lm").exists()
    greedy = read_kaldi_text(Path("greedy/1best_recog/token_int"))
    greedy_text = read_kaldi_text(Path("greedy/1best_recog/text"))
    beam = read_kaldi_text(Path("beam/1best_recog/text"))
    assert sorted(greedy) == sorted(feats) == sorted(beam)

    from espnet2_birq.bin.asr_train import GuardedASRTask
    from espnet2_birq.bin.check_init import verify

    asr_model, _ = GuardedASRTask.build_model_from_file("exp/asr/config.yaml", model, "cpu")
    if encoder == "windowed_conformer":
        assert yaml.safe_load(Path("exp/asr/config.yaml").read_text())["encoder"] == encoder
        assert isinstance(asr_model.encoder.encoders[0].self_attn, torch.nn.Module)
    # stage 6's check: the trained encoder loads completely into the fine-tuning model
    loaded = verify(Path(model), Path("asr.yaml"), Path("tokens.txt"),
                    ["--input_size", "80", "--token_type", "char"])
    assert loaded == len(asr_model.encoder.state_dict())
    asr_model.eval()
    with torch.no_grad():
        for key, feat in feats.items():
            speech = torch.from_numpy(feat)[None]
            enc, enc_len = asr_model.encode(speech, torch.tensor([feat.shape[0]]))
            best_path = asr_model.ctc.argmax(enc)[0, : int(enc_len[0])].tolist()
            expected = asr_decode.collapse_ctc(best_path, asr_model.blank_id)
            assert greedy[key].split() == [str(t) for t in expected], key
            chars = [tokens[t] for t in expected]
            assert greedy_text[key] == "".join(chars).replace("<space>", " ").strip()
