#!/bin/bash
# One jaxchat stage over several hosts of a SLURM cluster: one task per host, each task sees all
# of its host's GPUs; jax.distributed finds the coordinator, process count and ids from SLURM's
# variables (train/distributed.py). Edit the #SBATCH lines for your cluster, then:
#
#   sbatch scripts/launch_slurm.sh -m scripts.train --config configs/pretrain/tiny.py \
#       --workdir /shared/runs/pretrain_x
#
# The run folder must be on storage every host sees (checkpoints are written by all processes,
# every other file by process 0). Logs: one file per task (%t), as every task prints.
#SBATCH --job-name=jaxchat
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j-%t.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
export JAXCHAT_DISTRIBUTED_TIMEOUT="${JAXCHAT_DISTRIBUTED_TIMEOUT:-600}"
# --kill-on-bad-exit: one failed task ends the step, no host waits on a dead peer
exec srun --kill-on-bad-exit=1 --output="%x-%j-%t.out" .venv/bin/python "$@"
