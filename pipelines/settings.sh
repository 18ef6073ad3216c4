# The settings every pipeline script takes, each set from the environment (pipelines/README.md):
# sourced by each script after its own. Also turns CFG_OPTIONS into `cfg_options`, one
# --cfg-options pair per key=value, for every stage's command line.
set -f  # the *_ARGS and CFG_OPTIONS variables are split on spaces; never expand a glob in them

LD_CONFIG=${LD_CONFIG:-mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py}  # mmdet LD config: teacher, student, data
TEACHER_CKPT=${TEACHER_CKPT:-}      # the teacher's weights; empty: the config's model.teacher_ckpt
STORE=${STORE:-caches/ld_teacher.zarr}  # a folder, or s3://BUCKET/PREFIX/NAME.zarr
WORK_DIR=${WORK_DIR:-work_dirs/ld_cached}  # the student's checkpoints and logs
CFG_OPTIONS=${CFG_OPTIONS:-}        # key=value config overrides for every stage, space-separated
DUMP_ARGS=${DUMP_ARGS:-}            # more dump-teacher options, e.g. "--dtype q8 --workers 8"
TRAIN_ARGS=${TRAIN_ARGS:-}          # more train-student options
EVAL_ARGS=${EVAL_ARGS:-}            # more evaluate options, e.g. --json

cfg_options=()
for option in $CFG_OPTIONS; do cfg_options+=(--cfg-options "$option"); done
