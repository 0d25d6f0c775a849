#!/usr/bin/env python3
"""Train an SSL model (BEST-RQ, BiRQ, MT4SSL) with ESPnet's trainer; every option: ``--help``.

    python -m espnet2_birq.bin.ssl_train --config conf/train_ssl_birq_conformer.yaml ...
"""

from espnet2_birq.tasks.ssl import BirqSSLTask

get_parser = BirqSSLTask.get_parser


def main(cmd=None):
    BirqSSLTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
