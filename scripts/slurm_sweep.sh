#!/usr/bin/env bash
# A sweep (or a tune study) on a SLURM cluster: every task of the job array is one worker, all pointing at one
# database; each claims the next unclaimed run, and a run whose worker dies is resumed by another from its last
# saved epoch. Run folders go under OUT, which every node must see (a shared file system).
#
#   CNN_STORAGE=postgresql://USER:PASSWORD@DBHOST:5432/cnn OUT=/shared/sweeps/lr sbatch --array=1-4 scripts/slurm_sweep.sh
#   sbatch --array=1-4 scripts/slurm_sweep.sh tune --space 'lr=loguniform(1e-4,1e-2)' --trials 40
#
# Arguments after the script name replace the default command below (they are passed to python -m cnn).
# The last worker to finish writes OUT's tables and plots; `python -m cnn sweep ... --collect` rewrites them.
# See docs/how-to/many-machines.md.
#SBATCH --job-name=cnn-sweep
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

: "${CNN_STORAGE:?set CNN_STORAGE to the database URL, e.g. postgresql://user:password@dbhost:5432/cnn}"
: "${OUT:=runs/sweep}"
python=${PYTHON:-.venv/bin/python}

if [ "$#" -gt 0 ]; then
    command=("$@")
else  # the default: four learning rates, three seeds, every worker the same flags
    command=(sweep --grid 'lr=[0.0003,0.001,0.003,0.01]' --seeds 3 --base '{"epochs": 10}' --together sequential)
fi
echo "worker ${SLURM_ARRAY_TASK_ID:-0} of job ${SLURM_ARRAY_JOB_ID:-local} on $(hostname)"
# exec: SLURM's SIGTERM at the time limit (or scancel) reaches python, which saves its epoch and releases its run
exec "$python" -m cnn "${command[@]}" --out "$OUT" --storage "$CNN_STORAGE" --heartbeat "${HEARTBEAT:-10}"
