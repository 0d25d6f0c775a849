"""BirqSSLTask end to end: configs, model building, training, reload, ASR init, resume."""

import io
import shutil
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from espnet2.tasks.asr import ASRTask
from espnet2.torch_utils.load_pretrained_model import load_pretrained_model
from espnet2_birq.quantizer import RandomProjectionQuantizer
from espnet2_birq.tasks.ssl import BirqSSLTask

from conftest import REPO, run_module, write_audio_set

# MT4SSL configs need a frame_labels stream: tests/test_mt4ssl.py builds and runs them.
CONFIGS = sorted(
    c for c in (REPO / "conf").glob("train_ssl_*.yaml") if "mt4ssl" not in c.name
)
DEBUG_CONFIG = REPO / "conf" / "train_ssl_best_rq_debug.yaml"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def mvn_stats(tmp_path_factory):
    """A global_mvn stats file (count, sum, sum of squares) for the paper configs."""
    path = tmp_path_factory.mktemp("stats") / "feats_stats.npz"
    count = 100.0
    np.savez(
        path,
        count=np.array(count),
        sum=np.full(80, 2.0 * count),
        sum_square=np.full(80, 5.0 * count),
    )
    return path


def parse(cmd):
    return BirqSSLTask.get_parser().parse_args(cmd)


def config_args(config: Path, stats: Path, input_size=True):
    cmd = ["--config", str(config)]
    if input_size:
        cmd += ["--input_size", "80"]
    if yaml.safe_load(config.read_text()).get("normalize") == "global_mvn":
        cmd += ["--normalize_conf", f"stats_file={stats}"]
    return cmd


def test_configs_are_found():
    names = {c.name for c in CONFIGS}
    assert "train_ssl_best_rq_debug.yaml" in names
    assert "train_ssl_birq_debug.yaml" in names
    assert len(CONFIGS) >= 4


def test_print_config_is_complete():
    # ``--print_config`` prints and exits 0 (print_config's default file is the
    # sys.stdout of import time, so its text is read through a buffer below).
    with pytest.raises(SystemExit) as exit_info:
        BirqSSLTask.main(cmd=["--print_config"])
    assert exit_info.value.code == 0
    buffer = io.StringIO()
    BirqSSLTask.print_config(file=buffer)
    config = yaml.safe_load(buffer.getvalue())
    for key in (
        "loss",
        "util",
        "encoder",
        "encoder_conf",
        "frontend",
        "frontend_conf",
        "normalize",
        "model",
        "model_conf",
        "optim",
        "max_input_length",
    ):
        assert key in config, key
    assert config["loss"][0]["name"] == "best_rq"
    assert config["util"][0]["name"] == "span_mask"
    assert config["frontend"] == "kaldi_fbank"
    assert config["model"] == "birq"
    assert config["token_list"] is None  # no token list needed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_config_builds_and_runs(config, mvn_stats):
    """What --dry_run does (parse and build the model), plus one no-grad forward."""
    start = time.time()
    args = parse(config_args(config, mvn_stats))
    assert args.token_list is None
    model = BirqSSLTask.build_model(args)
    num_params = sum(p.numel() for p in model.parameters())
    assert model.frontend is None  # precomputed features (--input_size 80)
    quantizers = [m for m in model.modules() if isinstance(m, RandomProjectionQuantizer)]
    assert quantizers
    assert all(q.stack_frames == model.subsampling.factor for q in quantizers)
    assert not any(isinstance(m, RandomProjectionQuantizer) for m in model.parameters())
    if "debug" in config.name:
        assert num_params < 1_000_000
    else:
        # paper scale: ~160M (24-block Conformer, C2) up to C3's 298M with two heads
        assert 50_000_000 < num_params < 320_000_000
        assert len(model.encoder.encoders) >= 10
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        loss, stats, _ = model(
            speech=torch.randn(2, 120, 80), speech_lengths=torch.tensor([120, 90])
        )
    assert torch.isfinite(loss)
    assert any(key.endswith("_loss") for key in stats)
    # Paper-scale models build and run in a few seconds on this machine.
    assert time.time() - start < 60


@pytest.mark.parametrize(
    "config", [c for c in CONFIGS if "debug" in c.name], ids=lambda c: c.stem
)
def test_debug_configs_with_kaldi_fbank_frontend(config, mvn_stats):
    args = parse(config_args(config, mvn_stats, input_size=False))
    model = BirqSSLTask.build_model(args)
    assert type(model.frontend).__name__ == "KaldiFbankFrontend"
    assert model.frontend.output_size() == 80
    torch.manual_seed(0)
    wav = torch.randn(2, 16000) * 0.1
    loss, stats, _ = model(speech=wav, speech_lengths=torch.tensor([16000, 12000]))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.embed.conv[0].weight.grad is not None


def test_dry_run(tmp_path):
    BirqSSLTask.main(
        cmd=[
            "--config",
            str(DEBUG_CONFIG),
            "--output_dir",
            str(tmp_path / "exp"),
            "--dry_run",
            "true",
            "--ngpu",
            "0",
        ]
    )
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert config["loss"][0]["name"] == "best_rq"
    assert config["token_list"] is None


def test_training_on_precomputed_fbank(tmp_path):
    rng = np.random.default_rng(0)
    feats = {f"utt{i}": rng.standard_normal((int(rng.integers(90, 160)), 80)).astype(np.float32) for i in range(4)}
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/feats.ark,{tmp_path}/feats.scp") as writer:
        for uid, array in sorted(feats.items()):
            writer(uid, array)
    (tmp_path / "feats_shape").write_text(
        "".join(f"{uid} {len(a)},80\n" for uid, a in sorted(feats.items()))
    )
    data = [f"{tmp_path}/feats.scp,speech,kaldi_ark"]
    BirqSSLTask.main(
        cmd=[
            "--config", str(DEBUG_CONFIG),
            "--input_size", "80",
            "--output_dir", str(tmp_path / "exp"),
            "--train_data_path_and_name_and_type", *data,
            "--train_shape_file", str(tmp_path / "feats_shape"),
            "--valid_data_path_and_name_and_type", *data,
            "--valid_shape_file", str(tmp_path / "feats_shape"),
            "--ngpu", "0",
        ]
    )
    checkpoint = tmp_path / "exp" / "1epoch.pth"
    assert checkpoint.exists()
    state = torch.load(checkpoint, map_location="cpu")
    assert "losses.0.quantizer.codebook" in state
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert config["frontend"] is None and config["input_size"] == 80


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ONE two-step CLI training run (4 utterances, batch size 2) on generated audio."""
    root = tmp_path_factory.mktemp("cli")
    data = write_audio_set(root / "data", num_utts=4)
    exp = root / "exp"
    common = [
        "--config", str(DEBUG_CONFIG),
        "--train_data_path_and_name_and_type", f"{data['wav_scp']},speech,sound",
        "--train_shape_file", str(data["shape"]),
        "--valid_data_path_and_name_and_type", f"{data['wav_scp']},speech,sound",
        "--valid_shape_file", str(data["shape"]),
        "--ngpu", "0",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        run_module(
            "espnet2_birq.bin.ssl_train",
            [*common, "--output_dir", str(exp)],
            cwd=root,
        )
    return {"exp": exp, "common": common}


def test_cli_checkpoint_reloads_with_identical_weights(trained):
    exp = trained["exp"]
    for name in ("config.yaml", "checkpoint.pth", "1epoch.pth", "valid.best_rq_acc.best.pth"):
        assert (exp / name).exists(), name
    state = torch.load(exp / "1epoch.pth", map_location="cpu")
    model, args = BirqSSLTask.build_model_from_file(exp / "config.yaml", exp / "1epoch.pth", "cpu")
    assert args.frontend == "kaldi_fbank"
    reloaded = model.state_dict()
    assert set(reloaded) == set(state)
    for key, value in state.items():
        assert torch.equal(reloaded[key], value), key
    # The buffers are the ones drawn at initialisation (seed 0), never re-drawn.
    quantizer = model.losses[0].quantizer
    fresh = RandomProjectionQuantizer(
        input_dim=80, stack_frames=4, code_dim=8, codebook_size=64, seed=0
    )
    assert torch.equal(quantizer.projection, fresh.projection)
    assert torch.equal(quantizer.codebook, fresh.codebook)
    # Two optimiser steps happened: the checkpoint's encoder is not the initial one.
    log = (exp / "train.log").read_text() if (exp / "train.log").exists() else ""
    initial = BirqSSLTask.build_model(args).state_dict()
    changed = [
        k for k in state if k.startswith("encoder.") and not torch.equal(initial[k], state[k])
    ]
    assert changed, log[-2000:]


def test_cli_checkpoint_initialises_asr_encoder(trained, tmp_path):
    exp = trained["exp"]
    ssl_config = yaml.safe_load((exp / "config.yaml").read_text())
    (tmp_path / "tokens.txt").write_text("<blank>\n<unk>\na\nb\n<sos/eos>\n")
    asr_config = {
        "input_size": 80,
        "token_list": str(tmp_path / "tokens.txt"),
        "normalize": "utterance_mvn",
        "encoder": ssl_config["encoder"],
        "encoder_conf": ssl_config["encoder_conf"],
        "decoder": None,
        "model_conf": {"ctc_weight": 1.0},
    }
    (tmp_path / "asr.yaml").write_text(yaml.safe_dump(asr_config))
    asr_args = ASRTask.get_parser().parse_args(["--config", str(tmp_path / "asr.yaml")])
    torch.manual_seed(123)
    asr_model = ASRTask.build_model(asr_args)
    ckpt = exp / "valid.best_rq_acc.best.pth"
    state = torch.load(ckpt, map_location="cpu")
    before = {k: v.clone() for k, v in asr_model.encoder.state_dict().items()}
    load_pretrained_model(
        init_param=f"{ckpt}:encoder:encoder",
        model=asr_model,
        ignore_init_mismatch=False,
        map_location="cpu",
    )
    loaded = asr_model.encoder.state_dict()
    ssl_encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    assert set(loaded) == set(ssl_encoder)
    for key, value in ssl_encoder.items():
        assert torch.equal(loaded[key], value), key
    assert any(not torch.equal(before[k], loaded[k]) for k in loaded)


def test_resume_keeps_quantizer_buffers(trained, tmp_path):
    """``--resume true`` continues from checkpoint.pth with the checkpoint's buffers.

    The codebook in the copied checkpoint.pth is permuted first: a quantiser re-drawn
    from its seed would not match it, so equality proves the buffers were restored.
    """
    exp = tmp_path / "exp"
    shutil.copytree(trained["exp"], exp)
    checkpoint = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert checkpoint["reporter"]["epoch"] == 1
    model_state = checkpoint["model"]
    assert "losses.0.quantizer.projection" in model_state
    assert "losses.0.quantizer.codebook" in model_state
    model_state["losses.0.quantizer.codebook"] = model_state["losses.0.quantizer.codebook"].flip(1)
    model_state["losses.0.quantizer.projection"] = -model_state["losses.0.quantizer.projection"]
    torch.save(checkpoint, exp / "checkpoint.pth")
    BirqSSLTask.main(
        cmd=[
            *trained["common"],
            "--output_dir", str(exp),
            "--resume", "true",
            "--max_epoch", "2",
        ]
    )
    resumed = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert resumed["reporter"]["epoch"] == 2
    # Epoch 1 was not re-run: its statistics (timings included) are the checkpoint's.
    assert resumed["reporter"]["stats"][1] == checkpoint["reporter"]["stats"][1]
    for key in ("losses.0.quantizer.projection", "losses.0.quantizer.codebook"):
        assert torch.equal(resumed["model"][key], model_state[key]), key
    assert (exp / "2epoch.pth").exists()
