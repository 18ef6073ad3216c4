#!/usr/bin/env bash
# Offline LD on the GPUs of one machine: the dump and the training run as GPUS torchrun processes
# (the dump's blocks are split across them, the training is DDP); verify and evaluate run once.
# Every option, below and in settings.sh, can be set from the environment, e.g.
#   GPUS=4 bash pipelines/torchrun.sh
set -euo pipefail

GPUS=${GPUS:-8}                     # processes, one per GPU
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"

# --standalone: a rendezvous on a free local port, chosen anew for each of the two launches.
torchrun=(torchrun --standalone --nproc-per-node "$GPUS" --no-python)

# --resume makes a re-run of this script go on where the last one stopped: it finishes a killed
# dump (a finished store is checked and kept) and resumes training from its last checkpoint.
"${torchrun[@]}" ldcache dump-teacher "$LD_CONFIG" ${TEACHER_CKPT:+--teacher-ckpt "$TEACHER_CKPT"} --out "$STORE" \
    --resume "${cfg_options[@]}" $DUMP_ARGS
ldcache verify "$STORE"
"${torchrun[@]}" ldcache train-student "$LD_CONFIG" --cache "$STORE" --work-dir "$WORK_DIR" --resume \
    "${cfg_options[@]}" $TRAIN_ARGS
# mmengine names the checkpoint it saved last in the work dir's last_checkpoint file.
ldcache evaluate "$LD_CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR" "${cfg_options[@]}" \
    $EVAL_ARGS
