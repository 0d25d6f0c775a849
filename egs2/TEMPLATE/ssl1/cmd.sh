# shellcheck shell=bash
# Job backends (Kaldi convention). Select with: export cmd_backend=local|slurm
#   train_cmd:  CPU jobs (feature extraction, statistics)
#   cuda_cmd:   training (espnet2.bin.launch adds --gpu N / --num_nodes N)
#   decode_cmd: decoding
# utils/run.pl runs on this machine; utils/slurm.pl submits to Slurm (see its --help;
# site options such as the partition go into conf/slurm.conf).
cmd_backend=${cmd_backend:-local}

if [ "${cmd_backend}" = local ]; then
    export train_cmd="utils/run.pl"
    export cuda_cmd="utils/run.pl"
    export decode_cmd="utils/run.pl"
elif [ "${cmd_backend}" = slurm ]; then
    # utils/slurm.pl reads conf/slurm.conf (partition, account, ...) when it exists.
    export train_cmd="utils/slurm.pl"
    export cuda_cmd="utils/slurm.pl"
    export decode_cmd="utils/slurm.pl"
else
    echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (local or slurm)" >&2
    return 1
fi
