#!/usr/bin/env bash
# Offline LD with the store on an object store (S3 or a service that speaks its API): the dump
# writes it there, verify and the training read it there (fsspec and s3fs), one process per stage.
# Credentials come from the usual AWS variables or files, never from the command line, and are
# never written to the store: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN),
# AWS_DEFAULT_REGION or AWS_PROFILE, and AWS_ENDPOINT_URL for a service other than AWS (MinIO,
# Ceph, ...). Options can be set from the environment, e.g.
#   STORE=s3://my-bucket/caches/gfl_r101.zarr TEACHER_CKPT=gfl_r101.pth bash pipelines/object_store.sh
set -euo pipefail

STORE=${STORE:?set STORE=s3://BUCKET/PREFIX/NAME.zarr}
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
