#!/usr/bin/env bash
# Train/evaluate on a Cloud TPU VM slice: create (or reuse) it, install this package on every
# worker, and run `python -m rdbm_jax.main` on all workers at once (--worker=all).
#
#   launch/tpu_pod.sh --name=rdbm-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       --config=configs/universal.py:L --workdir=gs://BUCKET/rdbm/universal_L [--mode=train] \
#       [--project=P] [--version=tpu-ubuntu2204-base] [--dry-run] [-- extra rdbm_jax.main flags]
#
# --dry-run prints every command instead of running it. The workdir may be a gs:// path: orbax
# writes checkpoints there from all workers collectively; logs and images come from worker 0.
# jax.distributed needs no arguments on a TPU pod (RDBM_DISTRIBUTED=auto).
set -euo pipefail
name="" zone="" accel="" project="" version="tpu-ubuntu2204-base" config="" workdir="" mode="train"
dry_run=0 extra=()
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator-type=*) accel=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --mode=*) mode=${1#*=} ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "tpu_pod.sh: unknown flag $1" >&2; usage ;;
  esac
  shift
done
for v in name zone accel config workdir; do
  if [ -z "${!v}" ]; then echo "tpu_pod.sh: --${v/accel/accelerator-type} is required" >&2; exit 2; fi
done
gc=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")
run() {
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
repo=$(cd "$(dirname "$0")/.." && pwd)
archive=/tmp/rdbm_jax_src.tar.gz

# 1. Create the slice unless it exists.
if [ "$dry_run" = 1 ] || ! "${gc[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  run "${gc[@]}" create "$name" "${where[@]}" --accelerator-type="$accel" --version="$version"
fi
# 2. Ship this checkout (tracked files) to every worker and install it with JAX for TPU and the
#    `gcs` extra (gcsfs: a gs:// workdir is written through it).
run git -C "$repo" archive --format=tar.gz --prefix=rdbm_jax/ -o "$archive" HEAD
run "${gc[@]}" scp "$archive" "$name:~/rdbm_jax_src.tar.gz" "${where[@]}" --worker=all
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "rm -rf ~/rdbm_jax && tar xzf ~/rdbm_jax_src.tar.gz -C ~ && pip install -q 'jax[tpu]' -e ~/rdbm_jax'[gcs]'"
# 3. Run the same command on all workers.
cmd="cd ~/rdbm_jax && RDBM_DISTRIBUTED=auto python3 -m rdbm_jax.main --config=$config --workdir=$workdir --mode=$mode"
for e in "${extra[@]+"${extra[@]}"}"; do cmd+=" $(printf '%q' "$e")"; done
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "$cmd"
