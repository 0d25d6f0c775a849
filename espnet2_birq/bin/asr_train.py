#!/usr/bin/env python3
"""ESPnet's ASR training (same options and outputs) with the guarded trainer
(:class:`espnet2_birq.train.trainer.GuardedTrainer`) and ``--encoder windowed_conformer``
(an encoder pre-trained with windowed attention is fine-tuned with the same window).

    python -m espnet2_birq.bin.asr_train --config conf/train_asr_ctc.yaml ...
"""

from espnet2.tasks.asr import ASRTask

from espnet2_birq.encoders.asr_task import WindowedEncoderASRMixin
from espnet2_birq.train.trainer import GuardedTrainer


class GuardedASRTask(WindowedEncoderASRMixin, ASRTask):
    trainer = GuardedTrainer


get_parser = GuardedASRTask.get_parser


def main(cmd=None):
    GuardedASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
