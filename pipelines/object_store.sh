#!/usr/bin/env bash
# Offline LD with the store on an object store (S3 or a service that speaks its API): the dump
# writes it there, verify and the training read it there (fsspec and s3fs), one process per stage.
# Credentials come from the usual AWS variables or files, never from the command line, and are
# never written to the store: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN),
# AWS_DEFAULT_REGION or AWS_PROFILE, and AWS_ENDPOINT_URL for a service other than AWS (MinIO,
# Ceph, ...). Options can be set from the environment, e.g.
#   STORE=s3://my-bucket/caches/gfl_r101.zarr TEACHER_CKPT=gfl_r101.pth bash pipelines/object_store.sh
set -euo pipefail
set -f  # the *_ARGS and CFG_OPTIONS variables are split on spaces; never expand a glob in them

STORE=${STORE:?set STORE=s3://BUCKET/PREFIX/NAME.zarr}
LD_CONFIG=${LD_CONFIG:-mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py}  # mmdet LD config: teacher, student, data
TEACHER_CKPT=${TEACHER_CKPT:-}      # the teacher's weights; empty: the config's model.teacher_ckpt
WORK_DIR=${WORK_DIR:-work_dirs/ld_cached}  # checkpoints and logs, on a local or shared disk
CFG_OPTIONS=${CFG_OPTIONS:-}        # key=value config overrides for every stage, space-separated
DUMP_ARGS=${DUMP_ARGS:-}            # more dump-teacher options, e.g. "--dtype q8 --workers 8"
TRAIN_ARGS=${TRAIN_ARGS:-}          # more train-student options
EVAL_ARGS=${EVAL_ARGS:-}            # more evaluate options, e.g. --json

cfg_options=()
for option in $CFG_OPTIONS; do cfg_options+=(--cfg-options "$option"); done

# --resume makes a re-run of this script go on where the last one stopped: it finishes a killed
# dump (a finished store is checked and kept) and resumes training from its last checkpoint.
ldcache dump-teacher "$LD_CONFIG" ${TEACHER_CKPT:+--teacher-ckpt "$TEACHER_CKPT"} --out "$STORE" --resume \
    "${cfg_options[@]}" $DUMP_ARGS
ldcache verify "$STORE"
ldcache train-student "$LD_CONFIG" --cache "$STORE" --work-dir "$WORK_DIR" --resume "${cfg_options[@]}" $TRAIN_ARGS
# mmengine names the checkpoint it saved last in the work dir's last_checkpoint file.
ldcache evaluate "$LD_CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR" "${cfg_options[@]}" \
    $EVAL_ARGS
