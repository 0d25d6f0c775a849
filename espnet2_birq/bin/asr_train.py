#!/usr/bin/env python3
"""ESPnet's ASR training (``espnet2.bin.asr_train``) with the guarded trainer.

    python -m espnet2_birq.bin.asr_train --config conf/train_asr_ctc.yaml ...

Identical to ESPnet's ``asr_train`` (same task, options and outputs) except for
the trainer, :class:`espnet2_birq.train.trainer.GuardedTrainer`: NaN/inf in an
input batch or a validation loss, too many skipped updates in a row or a
non-finite averaged model stop training with an error, and integer/boolean
buffers of averaged models come from the newest checkpoint. It also accepts
``--encoder windowed_conformer`` (:mod:`espnet2_birq.encoders.asr_task`), so an
encoder pre-trained with windowed attention is fine-tuned with the same window.
"""

from espnet2.tasks.asr import ASRTask

from espnet2_birq.encoders.asr_task import WindowedEncoderASRMixin
from espnet2_birq.train.trainer import GuardedTrainer


class GuardedASRTask(WindowedEncoderASRMixin, ASRTask):
    """ESPnet's ASR task; the trainer differs, and ``windowed_conformer`` is a choice."""

    trainer = GuardedTrainer


def get_parser():
    return GuardedASRTask.get_parser()


def main(cmd=None):
    GuardedASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
