#!/usr/bin/env bash
# Offline LD on a SLURM cluster: srun starts one task per GPU for the dump and the training, and
# one task for verify and evaluate. Run it on a login node (each srun allocates) or inside an
# salloc/sbatch allocation. STORE and WORK_DIR must be on storage every node reaches.
#   PARTITION=gpu NODES=2 bash pipelines/slurm.sh [--dry-run]
# --dry-run prints the srun commands (shell-quoted) instead of running them.
set -euo pipefail

PARTITION=${PARTITION:-}            # empty: the cluster's default partition
JOB_NAME=${JOB_NAME:-ldcache}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}   # the dump's image decoding and the DataLoader workers
SRUN_ARGS=${SRUN_ARGS:-}            # more srun options for every step, e.g. "--time=12:00:00"
export MASTER_PORT=${MASTER_PORT:-29500}  # rank 0's rendezvous port, on the first node of each step
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"

dry_run=false
if [[ ${1:-} == --dry-run ]]; then dry_run=true; fi
run() {
    if $dry_run; then echo "${*@Q}"; else "$@"; fi
}

srun=(srun ${PARTITION:+--partition="$PARTITION"} --job-name="$JOB_NAME" --cpus-per-task="$CPUS_PER_TASK"
      --kill-on-bad-exit=1 $SRUN_ARGS)
one_task=("${srun[@]}" --nodes=1 --ntasks=1 --gres=gpu:1)
all_gpus=("${srun[@]}" --nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --ntasks=$((NODES * GPUS_PER_NODE))
          --gres=gpu:"$GPUS_PER_NODE")
# ldcache's dump and its training (mmengine's pytorch launcher) read torchrun's variables: each
# task sets them from SLURM's. Task 0 runs on the step's first node, which hosts the rendezvous.
rank_env='export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS'
rank_env+=' MASTER_ADDR=$(scontrol show hostnames "$SLURM_STEP_NODELIST" | head -n 1)'
as_rank=(bash -c "$rank_env; exec \"\$@\"" rank)

# --resume makes a re-run of this script go on where the last one stopped: it finishes a killed
# dump (a finished store is checked and kept) and resumes training from its last checkpoint.
run "${all_gpus[@]}" "${as_rank[@]}" ldcache dump-teacher "$LD_CONFIG" ${TEACHER_CKPT:+--teacher-ckpt "$TEACHER_CKPT"} \
    --out "$STORE" --resume "${cfg_options[@]}" $DUMP_ARGS
run "${one_task[@]}" ldcache verify "$STORE"
run "${all_gpus[@]}" "${as_rank[@]}" ldcache train-student "$LD_CONFIG" --cache "$STORE" --work-dir "$WORK_DIR" \
    --resume "${cfg_options[@]}" $TRAIN_ARGS
# mmengine names the checkpoint it saved last in the work dir's last_checkpoint file; a dry run
# has trained nothing, so it names that file instead.
if $dry_run; then
    checkpoint="<the path in $WORK_DIR/last_checkpoint>"
else
    checkpoint=$(cat "$WORK_DIR/last_checkpoint")
fi
run "${one_task[@]}" ldcache evaluate "$LD_CONFIG" "$checkpoint" --work-dir "$WORK_DIR" "${cfg_options[@]}" $EVAL_ARGS
