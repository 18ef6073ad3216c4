#!/usr/bin/env bash
# Offline LD on the GPUs of one machine: the dump and the training run as GPUS torchrun processes
# (the dump's blocks are split across them, the training is DDP); verify and evaluate run once.
# Every option below can be set from the environment, e.g. GPUS=4 bash pipelines/torchrun.sh
set -euo pipefail
set -f  # the *_ARGS and CFG_OPTIONS variables are split on spaces; never expand a glob in them

GPUS=${GPUS:-8}                     # processes, one per GPU
LD_CONFIG=${LD_CONFIG:-mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py}  # mmdet LD config: teacher, student, data
TEACHER_CKPT=${TEACHER_CKPT:-}      # the teacher's weights; empty: the config's model.teacher_ckpt
STORE=${STORE:-caches/ld_teacher.zarr}
WORK_DIR=${WORK_DIR:-work_dirs/ld_cached}
CFG_OPTIONS=${CFG_OPTIONS:-}        # key=value config overrides for every stage, space-separated
DUMP_ARGS=${DUMP_ARGS:-}            # more dump-teacher options, e.g. "--dtype q8 --workers 8"
TRAIN_ARGS=${TRAIN_ARGS:-}          # more train-student options
EVAL_ARGS=${EVAL_ARGS:-}            # more evaluate options, e.g. --json

cfg_options=()
for option in $CFG_OPTIONS; do cfg_options+=(--cfg-options "$option"); done
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
