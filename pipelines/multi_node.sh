#!/usr/bin/env bash
# Offline LD on several machines: run this script on every node, each with its NODE_RANK. The
# dump and the training run as NNODES x GPUS_PER_NODE torchrun processes; node 0 alone verifies
# the store and evaluates the student. STORE and WORK_DIR must be on storage every node reaches (a
# shared filesystem, or an object store for STORE). Options can be set from the environment, e.g.
#   NODE_RANK=1 MASTER_ADDR=node0.cluster bash pipelines/multi_node.sh
set -euo pipefail

NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:?set NODE_RANK: 0 on the first node, 1 to NNODES-1 on the others}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR: the address of node 0, reachable from every node}
MASTER_PORT=${MASTER_PORT:-29500}   # the dump's rendezvous; the training's is MASTER_PORT+1
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"

# A static rendezvous: node k's processes are global ranks k*GPUS_PER_NODE..., so global rank 0,
# which writes the checkpoints, runs on node 0, where the evaluation reads them.
torchrun=(torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE"
          --master-addr "$MASTER_ADDR")

# --resume makes a re-run of this script go on where the last one stopped: it finishes a killed
# dump (a finished store is checked and kept) and resumes training from its last checkpoint.
"${torchrun[@]}" --master-port "$MASTER_PORT" --no-python ldcache dump-teacher "$LD_CONFIG" \
    ${TEACHER_CKPT:+--teacher-ckpt "$TEACHER_CKPT"} --out "$STORE" --resume "${cfg_options[@]}" $DUMP_ARGS
if [[ $NODE_RANK == 0 ]]; then
    ldcache verify "$STORE"
fi
# Another port for the training: a node that finished the dump early would otherwise reach node
# 0's dump rendezvous, still open while node 0's rank 0 finishes the store. The other nodes wait
# here (up to torchrun's 600 s) while node 0 verifies the store.
"${torchrun[@]}" --master-port $((MASTER_PORT + 1)) --no-python ldcache train-student "$LD_CONFIG" --cache "$STORE" \
    --work-dir "$WORK_DIR" --resume "${cfg_options[@]}" $TRAIN_ARGS
if [[ $NODE_RANK == 0 ]]; then
    # mmengine names the checkpoint it saved last in the work dir's last_checkpoint file.
    ldcache evaluate "$LD_CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR" \
        "${cfg_options[@]}" $EVAL_ARGS
fi
