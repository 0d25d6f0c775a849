#!/usr/bin/env python3
"""Train an ESPnet ASR model with BL-JUST (labelled + unlabelled data, one run).

    python -m espnet2_birq.bin.bljust_train --config egs2/mini_synth/ssl1/conf/train_bljust_tiny.yaml \\
        --unlabelled_data_path_and_name_and_type dump/fbank/pretrain/feats.scp,speech,kaldi_ark \\
        --unlabelled_shape_file exp/ssl_stats_fbank/train/speech_shape ...
"""

from espnet2_birq.tasks.bljust import BlJustTask

get_parser = BlJustTask.get_parser


def main(cmd=None):
    BlJustTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
