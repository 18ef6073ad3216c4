#!/usr/bin/env bash
# Offline LD with pass 1 of the dump (the Main and VLR masks, computed from the annotations, no
# teacher) on a dask.distributed cluster; pass 2 (the teacher), verify, the training and the
# evaluation run here, one process each. Without DASK_SCHEDULER, a local scheduler and
# DASK_WORKERS workers are started and stopped when the script ends. The workers stage the masks
# beside the store: STORE must be on storage they reach. Options can be set from the environment:
#   DASK_SCHEDULER=tcp://scheduler.cluster:8786 bash pipelines/dask_pass1.sh
set -euo pipefail

DASK_SCHEDULER=${DASK_SCHEDULER:-}  # tcp://HOST:8786 of a running cluster; empty: start a local one
DASK_WORKERS=${DASK_WORKERS:-4}     # worker processes of the local cluster, one thread each
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"

if [[ -z $DASK_SCHEDULER ]]; then
    cluster=$(mktemp -d)
    # The cluster's scratch files go to its own folder, removed at the end; its INFO lines would
    # drown the dump's.
    export DASK_TEMPORARY_DIRECTORY=$cluster DASK_LOGGING__DISTRIBUTED=warning
    # --port 0: the scheduler takes a free port and writes its address to the scheduler file.
    dask scheduler --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file "$cluster/scheduler.json" &
    scheduler_pid=$!
    dask worker --scheduler-file "$cluster/scheduler.json" --nworkers "$DASK_WORKERS" --nthreads 1 --no-dashboard &
    worker_pid=$!
    # The workers first: stopped after their scheduler, they would wait for it before giving up.
    trap 'kill $worker_pid; wait $worker_pid; kill $scheduler_pid; wait; rm -rf "$cluster"' EXIT
    # The address once every worker has joined: on a cluster without workers the dump would wait
    # for ever, so a cluster that has not started within 2 minutes stops the script.
    DASK_SCHEDULER=$(timeout 120 python -c 'import sys, distributed
client = distributed.Client(scheduler_file=sys.argv[1]); client.wait_for_workers(int(sys.argv[2]))
print(client.scheduler.address)' "$cluster/scheduler.json" "$DASK_WORKERS")
fi

# --resume makes a re-run of this script go on where the last one stopped: it finishes a killed
# dump (a finished store is checked and kept) and resumes training from its last checkpoint.
ldcache dump-teacher "$LD_CONFIG" ${TEACHER_CKPT:+--teacher-ckpt "$TEACHER_CKPT"} --out "$STORE" --resume \
    --dask-scheduler "$DASK_SCHEDULER" "${cfg_options[@]}" $DUMP_ARGS
ldcache verify "$STORE"
ldcache train-student "$LD_CONFIG" --cache "$STORE" --work-dir "$WORK_DIR" --resume "${cfg_options[@]}" $TRAIN_ARGS
# mmengine names the checkpoint it saved last in the work dir's last_checkpoint file.
ldcache evaluate "$LD_CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR" "${cfg_options[@]}" \
    $EVAL_ARGS
