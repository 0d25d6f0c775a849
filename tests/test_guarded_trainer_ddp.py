"""GuardedTrainer under DDP: an error met on one rank (a corrupt utterance, a refused
batch, a non-finite validation loss) stops every rank with that error, instead of
leaving the other ranks waiting in their next collective.

Two CPU processes (gloo) run ESPnet's training or validation loop through
GuardedTrainer on a tiny DDP model; rank 1 meets the error at its second batch.
Each rank writes what it raised; both must have written it before the deadline.
"""

import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch._dynamo  # noqa: F401  (DDP imports it when first built: seconds, in the parent once)

from espnet2.train.distributed_utils import DistributedOption
from espnet2.train.reporter import Reporter
from espnet2_birq.tasks.ssl import BirqSSLTask
from espnet2_birq.train.trainer import GuardedTrainer

DEADLINE_S = 60
# Without the fix the healthy rank would wait in a collective: gloo's own timeout
# (30 min by default) is shortened so that such a run fails within the deadline.
COLLECTIVE_TIMEOUT_S = 20
NUM_BATCHES = 4


class TinyModel(torch.nn.Module):
    """A loss from a linear layer; a length of 0 marks a batch whose loss is NaN."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, speech, speech_lengths, utt_id):
        loss = self.linear(speech).pow(2).mean()
        if bool((speech_lengths == 0).any()):
            loss = loss * float("nan")
        # as ESPnet's models under DDP: one weight and one value per stat, 1-dim
        return loss, {"loss": loss.detach().reshape(1)}, torch.tensor([speech.shape[0]])


def batches(rank: int, scenario: str):
    """Rank ``rank``'s batches; rank 1's second one is broken as ``scenario`` says."""
    generator = torch.Generator().manual_seed(rank)
    for index in range(NUM_BATCHES):
        utt_ids = [f"r{rank}u{index}a", f"r{rank}u{index}b"]
        speech = torch.randn(2, 3, generator=generator)
        lengths = torch.tensor([3, 3])
        if rank == 1 and index == 1:
            if scenario == "corrupt":
                raise OSError(f"dump/raw/feats.ark: cannot read utterance {utt_ids[0]} (corrupt)")
            if scenario == "nan_input":
                speech[0, 2] = float("nan")
            if scenario == "nan_valid_loss":
                lengths = torch.tensor([3, 0])
        yield utt_ids, {"speech": speech, "speech_lengths": lengths}


def _rank_worker(rank, world_size, port, scenario, out_dir, options):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    distributed = DistributedOption(distributed=True, ngpu=0, dist_rank=rank, dist_world_size=world_size)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(TinyModel())
    reporter = Reporter()
    reporter.set_epoch(1)
    try:
        if scenario == "nan_valid_loss":
            with reporter.observe("valid") as sub:
                GuardedTrainer.validate_one_epoch(model=model, iterator=batches(rank, scenario), reporter=sub,
                                                  options=options, distributed_option=distributed)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            with reporter.observe("train") as sub:
                GuardedTrainer.train_one_epoch(
                    model=model, iterator=batches(rank, scenario), optimizers=[optimizer], schedulers=[None],
                    scaler=None, reporter=sub, summary_writer=None, options=options,
                    distributed_option=distributed,
                )
        outcome = "finished"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)
    # No destroy_process_group: it may wait for the other rank, which may have exited.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(tmp_path, scenario):
    """Both ranks' outcomes; fails if a rank has not finished by the deadline."""
    import torch.multiprocessing as mp

    # fork: the ranks start with this process's imports (spawn re-imports ESPnet: slow)
    options = GuardedTrainer.build_options(BirqSSLTask.get_parser().parse_args(
        ["--output_dir", str(tmp_path), "--ngpu", "0"]))
    context = mp.start_processes(_rank_worker, args=(2, free_port(), scenario, str(tmp_path), options), nprocs=2,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=0.2):
            if time.monotonic() > deadline:
                outcomes = {path.name: path.read_text() for path in tmp_path.glob("rank*.txt")}
                pytest.fail(f"a rank is still running after {DEADLINE_S} s (waiting in a collective?); "
                            f"finished: {outcomes}")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]


@pytest.mark.parametrize("scenario, error", [
    ("corrupt", r"OSError: dump/raw/feats.ark: cannot read utterance r1u1a \(corrupt\)"),
    ("nan_input", r"NonFiniteError: training batch holds NaN or inf input values: 'speech' of r1u1a\b"),
    ("nan_valid_loss", r"NonFiniteError: validation loss is nan on the batch of r1u1a r1u1b"),
])
def test_an_error_on_one_rank_stops_every_rank_with_it(tmp_path, scenario, error):
    import re

    failing, other = run_two_ranks(tmp_path, scenario)[::-1]
    assert re.match(error, failing), failing
    assert other.startswith("OtherRankError: training stopped on every rank because another rank "
                            "failed (rank 1: "), other
    assert re.search(error, other), other


def test_ranks_without_errors_finish_the_epoch(tmp_path):
    assert run_two_ranks(tmp_path, "none") == ["finished", "finished"]
