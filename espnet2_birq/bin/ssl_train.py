#!/usr/bin/env python3
"""Train an SSL model (BEST-RQ, BiRQ) with ESPnet's trainer.

    python -m espnet2_birq.bin.ssl_train --config conf/train_ssl_birq_conformer.yaml ...

ssl.sh stage 5 runs it through ``espnet2.bin.launch``; every option: ``--help``.
"""

from espnet2_birq.tasks.ssl import BirqSSLTask


def get_parser():
    return BirqSSLTask.get_parser()


def main(cmd=None):
    r"""SSL pre-training.

    Example:
        % python -m espnet2_birq.bin.ssl_train --print_config --optim adam
        % python -m espnet2_birq.bin.ssl_train --config conf/train_ssl_best_rq_debug.yaml
    """
    BirqSSLTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
