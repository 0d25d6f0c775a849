"""GuardedTrainer: NaN/inf never pass silently (issue: recipes that never report
success on a broken run, item 1), and averaged models keep integer/boolean buffers."""

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from espnet2.main_funcs.average_nbest_models import average_nbest_models
from espnet2.train.distributed_utils import DistributedOption
from espnet2.train.reporter import Reporter
from espnet2_birq.bin.asr_train import GuardedASRTask
from espnet2_birq.tasks.ssl import BirqSSLTask
from espnet2_birq.train.trainer import (
    GuardedTrainer,
    NonFiniteError,
    _ValidLossCheck,
    check_averaged_models,
    newest_checkpoint_keeps_non_float,
)

from conftest import REPO

pytestmark = pytest.mark.usefixtures("single_thread")

BIRQ_DEBUG = REPO / "conf" / "train_ssl_birq_debug.yaml"


def write_feats(root: Path, num_utts=4, poison=None, seed=0):
    """Random fbank-like features; ``poison=(utt index, value)`` puts one NaN/inf in."""
    rng = np.random.default_rng(seed)
    feats = {f"utt{i}": rng.standard_normal((int(rng.integers(90, 160)), 80)).astype(np.float32)
             for i in range(num_utts)}
    if poison is not None:
        index, value = poison
        feats[f"utt{index}"][17, 5] = value
    root.mkdir(parents=True, exist_ok=True)
    kaldiio.save_ark(str(root / "feats.ark"), feats, scp=str(root / "feats.scp"))
    (root / "feats_shape").write_text("".join(f"{u} {len(a)},80\n" for u, a in sorted(feats.items())))
    return root


def ssl_cmd(train: Path, valid: Path, out: Path, *extra):
    return [
        "--config", str(BIRQ_DEBUG), "--input_size", "80", "--output_dir", str(out),
        "--train_data_path_and_name_and_type", f"{train}/feats.scp,speech,kaldi_ark",
        "--train_shape_file", f"{train}/feats_shape",
        "--valid_data_path_and_name_and_type", f"{valid}/feats.scp,speech,kaldi_ark",
        "--valid_shape_file", f"{valid}/feats_shape",
        "--ngpu", "0", *extra,
    ]


def test_tasks_use_the_guarded_trainer():
    from espnet2_birq.tasks.bljust import BlJustTask

    assert BirqSSLTask.trainer is GuardedTrainer
    assert GuardedASRTask.trainer is GuardedTrainer
    assert BlJustTask.trainer is GuardedTrainer
    args = GuardedASRTask.get_parser().parse_args(["--max_consecutive_skipped_updates", "3"])
    assert GuardedTrainer.build_options(args).max_consecutive_skipped_updates == 3


@pytest.mark.parametrize("where", ["train", "valid"])
def test_nan_input_stops_ssl_training_naming_the_utterance(tmp_path, where):
    good = write_feats(tmp_path / "good")
    bad = write_feats(tmp_path / "bad", poison=(2, np.nan))
    train, valid = (bad, good) if where == "train" else (good, bad)
    with pytest.raises(NonFiniteError, match=r"NaN or inf input values: 'speech' of utt2\b"):
        BirqSSLTask.main(cmd=ssl_cmd(train, valid, tmp_path / "exp"))
    assert not list((tmp_path / "exp").glob("valid.*.ave*.pth"))


def test_inf_input_stops_asr_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_feats(tmp_path, poison=(1, np.inf))
    Path("text").write_text("".join(f"utt{i} AB BA\n" for i in range(4)))
    Path("text_shape").write_text("".join(f"utt{i} 5\n" for i in range(4)))
    Path("tokens.txt").write_text("<blank>\n<unk>\n<space>\nA\nB\n<sos/eos>\n")
    ssl = yaml.safe_load(BIRQ_DEBUG.read_text())
    config = {"encoder": ssl["encoder"], "encoder_conf": ssl["encoder_conf"], "normalize": "utterance_mvn",
              "decoder": "none", "model_conf": {"ctc_weight": 1.0}, "optim": "adam", "batch_type": "unsorted",
              "batch_size": 2, "max_epoch": 1, "num_workers": 0}
    Path("asr.yaml").write_text(yaml.safe_dump(config))
    data = []
    for split in ("train", "valid"):
        data += [f"--{split}_data_path_and_name_and_type", "feats.scp,speech,kaldi_ark",
                 f"--{split}_data_path_and_name_and_type", "text,text,text",
                 f"--{split}_shape_file", "feats_shape", f"--{split}_shape_file", "text_shape"]
    with pytest.raises(NonFiniteError, match=r"'speech' of utt1\b"):
        GuardedASRTask.main(cmd=["--config", "asr.yaml", "--output_dir", "exp", "--input_size", "80",
                                 "--token_type", "char", "--token_list", "tokens.txt", "--ngpu", "0", *data])


def test_non_finite_validation_loss_names_the_batch():
    class NanLoss(torch.nn.Module):
        def forward(self, speech, speech_lengths, utt_id):
            loss = torch.tensor(float("nan"))
            return loss, {"loss": loss}, torch.tensor(1)

    check = _ValidLossCheck(NanLoss())
    with pytest.raises(NonFiniteError, match="validation loss is nan on the batch of a b"):
        check(speech=torch.zeros(2, 3), speech_lengths=torch.tensor([3, 3]), utt_id=["a", "b"])


class BatchNormThenInf(torch.nn.Module):
    """Finite inputs, BatchNorm updates its running statistics, gradient is NaN."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, speech, speech_lengths, utt_id):
        loss = self.linear(self.norm(speech)).sum() * float("inf")
        return loss, {"loss": loss.detach()}, torch.tensor(speech.shape[0])


def train_epoch(model, trainer_options, num_batches):
    rng = np.random.default_rng(0)
    batches = [([f"u{i}a", f"u{i}b"], {"speech": torch.from_numpy(rng.standard_normal((2, 3)).astype(np.float32) + 5),
                                        "speech_lengths": torch.tensor([3, 3])}) for i in range(num_batches)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reporter = Reporter()
    reporter.set_epoch(1)
    with reporter.observe("train") as sub:
        GuardedTrainer.train_one_epoch(
            model=model, iterator=batches, optimizers=[optimizer], schedulers=[None], scaler=None,
            reporter=sub, summary_writer=None, options=trainer_options,
            distributed_option=DistributedOption(distributed=False, ngpu=0),
        )


@pytest.fixture
def trainer_options(tmp_path):
    args = BirqSSLTask.get_parser().parse_args(
        ["--output_dir", str(tmp_path), "--ngpu", "0", "--max_consecutive_skipped_updates", "3"])
    return GuardedTrainer.build_options(args)


def test_skipped_updates_restore_buffers_and_stop_after_the_limit(trainer_options):
    model = BatchNormThenInf()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match="no update of this epoch"):
        train_epoch(model, trainer_options, num_batches=3)  # 3 skipped in a row: at the limit, allowed
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although every update was skipped"
    with pytest.raises(NonFiniteError, match="4 updates in a row were skipped"):
        train_epoch(model, trainer_options, num_batches=4)


def test_optimizer_methods_are_restored_after_the_epoch(trainer_options):
    model = torch.nn.Linear(3, 1)

    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, speech, speech_lengths, utt_id):
            loss = self.inner(speech).pow(2).mean()
            return loss, {"loss": loss.detach()}, torch.tensor(speech.shape[0])

    wrapped = Quadratic()
    train_epoch(wrapped, trainer_options, num_batches=2)
    # a second epoch would wrap the optimizer again; no attributes may be left over
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert "zero_grad" not in vars(optimizer)


def test_non_finite_averaged_model_is_an_error(tmp_path):
    torch.save({"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}, tmp_path / "valid.loss.ave_2best.pth")
    with pytest.raises(NonFiniteError, match=r"valid.loss.ave_2best.pth: 1 tensor\(s\) hold NaN or inf \(first: w\)"):
        check_averaged_models(tmp_path)


def test_averaging_keeps_integer_and_boolean_buffers_of_the_newest_epoch(tmp_path):
    """ESPnet's average_nbest_models sums integers and averages booleans; the fix takes them
    from the newest of the averaged epochs, as the averaged file's name implies."""
    reporter = Reporter()
    for epoch, (loss, updates) in enumerate([(3.0, 10), (1.0, 20), (2.0, 30)], start=1):
        reporter.set_epoch(epoch)
        with reporter.observe("valid") as sub:
            sub.register({"loss": loss})
            sub.next()
        torch.save({"weight": torch.tensor([float(epoch)]), "num_updates": torch.tensor(updates),
                    "v_initialized": torch.tensor(epoch > 1)}, tmp_path / f"{epoch}epoch.pth")
    torch.save({"reporter": reporter.state_dict()}, tmp_path / "checkpoint.pth")
    criterion = [("valid", "loss", "min")]
    average_nbest_models(output_dir=tmp_path, reporter=reporter, best_model_criterion=criterion, nbest=[2])
    espnet = torch.load(tmp_path / "valid.loss.ave_2best.pth")
    assert int(espnet["num_updates"]) == 50  # what ESPnet writes: 20 + 30

    rewritten = newest_checkpoint_keeps_non_float(tmp_path, criterion, [2])
    assert rewritten == [tmp_path / "valid.loss.ave_2best.pth"]
    fixed = torch.load(tmp_path / "valid.loss.ave.pth")
    assert int(fixed["num_updates"]) == 30  # epochs 2 and 3 were averaged; 3 is the newest
    assert fixed["v_initialized"].dtype == torch.bool and bool(fixed["v_initialized"])
    assert torch.allclose(fixed["weight"], torch.tensor([2.5]))


def test_ssl_training_averages_floats_and_keeps_birq_counters(tmp_path):
    feats = write_feats(tmp_path / "feats")
    out = tmp_path / "exp"
    BirqSSLTask.main(cmd=ssl_cmd(feats, feats, out, "--max_epoch", "2", "--keep_nbest_models", "2"))
    averaged = torch.load(out / "valid.best_rq_acc.ave_2best.pth")
    newest = torch.load(out / "2epoch.pth")
    key = "losses.0.bilevel.num_updates"
    assert int(newest[key]) > 0
    assert torch.equal(averaged[key], newest[key])
    assert averaged["losses.0.bilevel.v_initialized"].dtype == torch.bool


def test_check_command_names_non_finite_tensors(tmp_path, capsys):
    from espnet2_birq.train.trainer import main

    torch.save({"ok": torch.ones(2)}, tmp_path / "good.pth")
    torch.save({"ok": torch.ones(2), "bn.running_var": torch.tensor([float("inf")])}, tmp_path / "bad.pth")
    assert main(["check", str(tmp_path / "good.pth")]) == 0
    assert main(["check", str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")]) == 1
    assert "bad.pth: 1 tensor(s) hold NaN or inf, first: bn.running_var" in capsys.readouterr().err


def test_an_epoch_without_any_applied_update_is_an_error(trainer_options):
    """ESPnet stops such a run with a warning only; the recipe would go on with an untrained model."""
    with pytest.raises(NonFiniteError, match="no update of this epoch was applied"):
        train_epoch(BatchNormThenInf(), trainer_options, num_batches=2)


# ------------------------------------------------ cost of the guards at scale
class TeacherLike(torch.nn.Module):
    """BatchNorm (state), a scalar counter (state), a frozen codebook-like buffer and an
    EMA-teacher-like buffer updated after every optimiser step, as large as a model."""

    def __init__(self, inf_on_calls=(), nan_teacher_at_update=None, write_big_in_forward=False,
                 teacher_is_target=False, nan_state_at_update=None):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)
        self.linear = torch.nn.Linear(3, 1)
        self.register_buffer("codebook", torch.randn(4096, 16))
        self.register_buffer("teacher", torch.zeros(50_000))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.inf_on_calls = set(inf_on_calls)
        self.nan_teacher_at_update = nan_teacher_at_update
        self.write_big_in_forward = write_big_in_forward
        self.teacher_is_target = teacher_is_target  # as an EMA teacher gives MT4SSL its targets
        self.nan_state_at_update = nan_state_at_update
        self.calls = 0

    def forward(self, speech, speech_lengths, utt_id):
        self.calls += 1
        if self.write_big_in_forward:
            with torch.no_grad():
                self.codebook.add_(1.0)
        target = self.teacher.mean() if self.teacher_is_target else 0.0
        loss = (self.linear(self.norm(speech)) - target).pow(2).mean()
        if self.calls in self.inf_on_calls:
            loss = loss * float("inf")
        return loss, {"loss": loss.detach()}, torch.tensor(speech.shape[0])

    @torch.no_grad()
    def on_optimizer_step(self):
        self.updates.add_(1)
        self.teacher.mul_(0.9).add_(0.1)
        if self.nan_teacher_at_update == int(self.updates):
            self.teacher[7] = float("nan")
        if self.nan_state_at_update == int(self.updates):
            self.norm.running_var[1] = float("inf")


def train_teacher_like(model, trainer_options, num_batches, on_snapshot=None):
    """``train_epoch`` with the model's update hook, as the SSL task registers it."""
    from espnet2_birq.bilevel import register_update_hooks
    from espnet2_birq.train import trainer as trainer_module

    original = trainer_module._UpdateGuard.before_batch

    def spy(guard):
        original(guard)
        if on_snapshot is not None:
            on_snapshot({guard.names[i] for i in guard.snapshot})

    rng = np.random.default_rng(0)
    batches = [([f"u{i}a", f"u{i}b"], {"speech": torch.from_numpy(rng.standard_normal((2, 3)).astype(np.float32) + 5),
                                        "speech_lengths": torch.tensor([3, 3])}) for i in range(num_batches)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    register_update_hooks(model, [optimizer])
    reporter = Reporter()
    reporter.set_epoch(1)
    trainer_module._UpdateGuard.before_batch = spy
    try:
        with reporter.observe("train") as sub:
            GuardedTrainer.train_one_epoch(
                model=model, iterator=batches, optimizers=[optimizer], schedulers=[None], scaler=None,
                reporter=sub, summary_writer=None, options=trainer_options,
                distributed_option=DistributedOption(distributed=False, ngpu=0),
            )
    finally:
        trainer_module._UpdateGuard.before_batch = original


def test_guard_copies_only_state_buffers(trainer_options):
    """Before each update only batch-norm statistics and one-element buffers are copied:
    never the teacher-like buffer updated after each step nor the frozen codebook."""
    snapshots = []
    model = TeacherLike()
    train_teacher_like(model, trainer_options, num_batches=3, on_snapshot=snapshots.append)
    assert snapshots == [{"norm.running_mean", "norm.running_var", "norm.num_batches_tracked", "updates"}] * 3
    assert int(model.updates) == 3


def test_skipped_update_after_applied_ones_restores_state_buffers(trainer_options, caplog):
    """Updates 1 and 2 apply, the third batch's gradient is inf: its batch-norm statistics
    are undone, the teacher (changed only after applied updates) stays as update 2 left it."""
    after_two = {}

    class Recorder(TeacherLike):
        @torch.no_grad()
        def on_optimizer_step(self):
            super().on_optimizer_step()
            if int(self.updates) == 2:
                after_two.update({k: v.clone() for k, v in self.state_dict().items()})

    model = Recorder(inf_on_calls={3})
    train_teacher_like(model, trainer_options, num_batches=3)
    assert int(model.updates) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, after_two[key]), key
    assert "1 in a row; state buffers restored" in caplog.text
    assert "not restorable" not in caplog.text


def test_skipped_update_names_a_changed_buffer_it_cannot_restore(trainer_options, caplog):
    """A forward that writes a large buffer is not undone by the guard (it copies state
    buffers only), but the warning names the buffer."""
    model = TeacherLike(inf_on_calls={2}, write_big_in_forward=True)
    train_teacher_like(model, trainer_options, num_batches=3)
    assert "changed by its forward and not restorable: codebook" in caplog.text


@pytest.mark.parametrize("num_batches", [2, 4])
def test_non_finite_state_buffer_after_an_update_stops_training_naming_it(trainer_options, num_batches):
    """The test of update 2's state buffers is read before update 3 is applied (after
    ESPnet's gradient-norm test), or when the epoch ends if update 2 is its last."""
    model = TeacherLike(nan_state_at_update=2)
    with pytest.raises(NonFiniteError, match=r"after an update, buffer\(s\) norm.running_var hold NaN or inf"):
        train_teacher_like(model, trainer_options, num_batches=num_batches)
    assert int(model.updates) == 2


@pytest.mark.parametrize("num_batches", [2, 4])
def test_non_finite_teacher_stops_training_before_the_next_update(trainer_options, num_batches):
    """A teacher giving the targets: NaN after update 2 makes update 3's gradient NaN;
    the skipped update tests the teacher and names it (or the epoch's end does)."""
    model = TeacherLike(nan_teacher_at_update=2, teacher_is_target=True)
    with pytest.raises(NonFiniteError, match=r"after an update, buffer\(s\) teacher hold NaN or inf"):
        train_teacher_like(model, trainer_options, num_batches=num_batches)
    assert int(model.updates) == 2


def test_non_finite_buffer_the_loss_does_not_use_stops_training_at_the_end_of_the_epoch(trainer_options):
    """Before ESPnet validates and saves the epoch's checkpoint."""
    model = TeacherLike(nan_teacher_at_update=2)
    with pytest.raises(NonFiniteError, match=r"after an update, buffer\(s\) teacher hold NaN or inf"):
        train_teacher_like(model, trainer_options, num_batches=4)
    assert int(model.updates) == 4


def test_teacher_sized_buffers_are_tested_once_per_epoch_only(trainer_options, monkeypatch):
    """After each update only the state buffers are tested; the teacher (changed by every
    update) and the frozen codebook (never changed) are not, except the teacher at the
    end of the epoch."""
    from espnet2_birq.train import trainer as trainer_module

    tested = []
    original = trainer_module._UpdateGuard._launch_check

    def spy(guard, indices):
        tested.append(sorted(guard.names[i] for i in indices))
        return original(guard, indices)

    monkeypatch.setattr(trainer_module._UpdateGuard, "_launch_check", spy)
    train_teacher_like(TeacherLike(), trainer_options, num_batches=3)
    state = ["norm.num_batches_tracked", "norm.running_mean", "norm.running_var", "updates"]
    assert tested == [state] * 3 + [["teacher"]]


def test_large_finite_buffers_are_not_mistaken_for_non_finite(trainer_options):
    """The device-side test sums absolute values; an overflow to inf is told apart."""

    class Huge(TeacherLike):
        @torch.no_grad()
        def on_optimizer_step(self):
            self.updates.add_(1)
            self.teacher.fill_(3e38)  # every value finite, the 1-norm overflows

    model = Huge()
    train_teacher_like(model, trainer_options, num_batches=3)
    assert int(model.updates) == 3
    assert torch.isinf(torch.linalg.vector_norm(model.teacher, 1))


def _host_reads(monkeypatch, module_file, function):
    """Record the host reads (bool/int/float/item/index of a tensor) made from ``function``
    of ``module_file``."""
    import sys

    reads = []
    for method in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
        original = getattr(torch.Tensor, method)

        def spy(self, *args, _original=original, _method=method, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.endswith(module_file) and caller.co_name == function:
                reads.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    return reads


def build_birq_debug():
    args = BirqSSLTask.get_parser().parse_args(["--config", str(BIRQ_DEBUG), "--input_size", "80"])
    torch.manual_seed(0)
    return BirqSSLTask.build_model(args)


def test_ssl_forward_reads_nothing_back_to_the_host(monkeypatch):
    """The forward's buffer guard decides on the device: no per-forward synchronisation."""
    model = build_birq_debug().train()
    feats = torch.randn(2, 120, 80)
    lengths = torch.tensor([120, 97])
    reads = _host_reads(monkeypatch, "ssl_model.py", "forward")
    model(feats, lengths)
    feats[1, 5, 3] = float("nan")
    model(feats, lengths)
    assert reads == []


def test_nan_loss_leaves_buffers_as_they_were_and_backward_runs():
    """A non-finite loss: batch-norm statistics and BiRQ's state are put back without
    breaking the backward pass that follows (batch norm saves its running statistics
    for it; a version-counted write there made the backward fail)."""
    model = build_birq_debug().train()
    model(torch.randn(2, 120, 80), torch.tensor([120, 97]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats = torch.randn(2, 120, 80)
    feats[0, 10, 3] = float("nan")
    loss, _, _ = model(feats, torch.tensor([120, 97]))
    assert not torch.isfinite(loss).all()
    loss.backward()
    for key, value in model.state_dict().items():
        if key != "global_step":
            assert torch.equal(value, before[key]), key
    # and a finite batch still moves the statistics
    model(torch.randn(2, 120, 80), torch.tensor([120, 97]))
    assert not torch.equal(model.state_dict()["encoder.encoders.0.conv_module.norm.running_mean"],
                           before["encoder.encoders.0.conv_module.norm.running_mean"])


def test_input_test_finds_nan_and_inf_and_tolerates_overflowing_sums():
    from espnet2_birq.train.trainer import non_finite_utterances

    big = torch.full((3, 4), 3e38)  # the sum overflows, every value is finite
    assert non_finite_utterances(["a", "b", "c"], {"speech": big}) == {}
    big[1, 2] = float("inf")
    big[2, 0] = float("nan")
    assert non_finite_utterances(["a", "b", "c"], {"speech": big}) == {"speech": ["b", "c"]}
