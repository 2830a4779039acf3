#!/bin/bash
# per-step diagnostic on the weighted-t cells (seed 0), after their training finished
while ! grep -q "end rc" /work/abl19/tw_r0.log; do sleep 5; done
cd /work/abl19/code4 && . /work/venv/bin/activate && export PYTHONPATH=$PWD
DIAG_OUT=/work/abl19/diag2/per_step.json python /work/abl19/diag2/diag.py /work/abl19/runs one_precond_tweighted_s0 one_residual_tweighted_s0
echo "$(date -u) diag end rc=$?"
