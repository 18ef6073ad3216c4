#!/usr/bin/env bash
# Offline LD on one machine, one process per stage: dump the teacher once, verify the store, train
# a student from it, evaluate the student (COCO AP). Every option, in settings.sh, can be set from
# the environment, e.g. TEACHER_CKPT=gfl_r101.pth bash pipelines/one_gpu.sh
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"

# --resume makes a re-run of this script go on where the last one stopped: it finishes a killed
# dump (a finished store is checked and kept) and resumes training from its last checkpoint.
ldcache dump-teacher "$LD_CONFIG" ${TEACHER_CKPT:+--teacher-ckpt "$TEACHER_CKPT"} --out "$STORE" --resume \
    "${cfg_options[@]}" $DUMP_ARGS
ldcache verify "$STORE"
ldcache train-student "$LD_CONFIG" --cache "$STORE" --work-dir "$WORK_DIR" --resume "${cfg_options[@]}" $TRAIN_ARGS
# mmengine names the checkpoint it saved last in the work dir's last_checkpoint file.
ldcache evaluate "$LD_CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR" "${cfg_options[@]}" \
    $EVAL_ARGS
