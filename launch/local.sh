#!/usr/bin/env bash
# N processes on this machine running the same command (CPU, gloo collectives): the multi-host
# code path without a cluster.
#
#   launch/local.sh N [rdbm_jax.main flags…]
#   launch/local.sh 2 --config=configs/demo.py:tiny --workdir=/tmp/rdbm_2proc
#
# Each process gets RDBM_COORDINATOR / RDBM_NUM_PROCESSES / RDBM_PROCESS_ID, one CPU device,
# and logs to <workdir>/logs/process_<i>.log (also echoed for process 0). Exits non-zero if any
# process fails. Env: PYTHON (default python3), RDBM_PORT (default: a free port).
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: launch/local.sh N [rdbm_jax.main flags…]" >&2
  exit 2
fi
n=$1; shift
python=${PYTHON:-python3}
port=${RDBM_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
done
logdir=${workdir:+$workdir/logs}
logdir=${logdir:-$(mktemp -d)}
mkdir -p "$logdir"
pids=()
for ((i = 0; i < n; i++)); do
  RDBM_COORDINATOR="127.0.0.1:$port" RDBM_NUM_PROCESSES=$n RDBM_PROCESS_ID=$i JAX_PLATFORMS=cpu \
    "$python" -m rdbm_jax.main "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for ((i = 0; i < n; i++)); do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed (log: $logdir/process_$i.log):" >&2
    tail -n 5 "$logdir/process_$i.log" >&2
    status=1
  fi
done
cat "$logdir/process_0.log"
exit $status
