#!/usr/bin/env bash
# Trains a config on several GPU nodes under SLURM: writes an sbatch script
# and submits it.
#
#   launch/provision.sh --venv ~/venvs/grepq --python 3.11 --jax cuda13
#   launch/slurm_gpu.sh --nodes 4 --gpus-per-node 8 --partition gpu \
#       --venv ~/venvs/grepq configs/high_level.py:paper \
#       /shared/runs/high_level \
#       -- --config.model.clip=/shared/models/clip-vit-base-patch32
#
# The first line, run once on a login node (the nodes must share its home
# folder), makes the environment: CPython 3.11 through uv, whatever the
# cluster's python3 is, with this checkout and jax[cuda13] at the pin.
# srun starts one process per GPU; JAX reads the job's layout from SLURM's
# variables (jax.distributed.initialize's own detection), gives process i the
# GPU numbered SLURM_LOCALID, and joins them into one job. The workdir must
# be on a filesystem every node sees (or gs://). Two minutes before the time
# limit, and when the job is preempted, SLURM sends SIGTERM: the run saves at
# the next step and exits; --requeue puts a preempted job back in the queue,
# and any rerun of the same command resumes from the last checkpoint.
# --dry-run prints the sbatch script and the sbatch command instead.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() {
  header
  cat <<'EOF'

Options:
  --nodes N            nodes (default 2)
  --gpus-per-node G    GPUs per node, one process each (default 8)
  --cpus-per-gpu C     CPU cores per process, for the input pipeline (default 8)
  --time LIMIT         wall-clock limit (default 24:00:00)
  --partition P        SLURM partition
  --account A          SLURM account
  --job-name NAME      (default grepq)
  --venv DIR           the environment launch/provision.sh made: training
                       runs with DIR/bin/python (default: python on PATH
                       after --setup)
  --setup COMMAND      run before training, e.g. `module load cuda`
  --script PATH        where to write the sbatch script
                       (default slurm-NAME.sbatch in the current folder)
  --dry-run            print the script and the sbatch command, submit nothing
EOF
}

nodes=2 gpus=8 cpus=8 time_limit="24:00:00" partition="" account=""
job_name="grepq" setup="" script="" dry_run=0 venv=""
positional=() main_flags=()
while (($#)); do
  case "$1" in
    --nodes) nodes="${2:?}"; shift 2 ;;
    --gpus-per-node) gpus="${2:?}"; shift 2 ;;
    --cpus-per-gpu) cpus="${2:?}"; shift 2 ;;
    --time) time_limit="${2:?}"; shift 2 ;;
    --partition) partition="${2:?}"; shift 2 ;;
    --account) account="${2:?}"; shift 2 ;;
    --job-name) job_name="${2:?}"; shift 2 ;;
    --setup) setup="${2:?}"; shift 2 ;;
    --venv) venv="${2:?}"; shift 2 ;;
    --script) script="${2:?}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
((${#positional[@]} == 2)) || die "need CONFIG and WORKDIR (see --help)"
config="${positional[0]}" workdir="${positional[1]}"
for count in "$nodes" "$gpus" "$cpus"; do
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "counts must be positive integers"
done
script="${script:-slurm-$job_name.sbatch}"
# The job runs from the checkout: a relative local workdir means this folder.
[[ "$workdir" == *://* || "$workdir" == /* ]] || workdir="$PWD/$workdir"
repo="$(cd "$(dirname "$0")/.." && pwd)"
python=python
if [[ -n "$venv" ]]; then
  python="$(cd "$venv" 2>/dev/null && pwd)/bin/python" ||
    die "--venv $venv: no such folder (make it with launch/provision.sh)"
fi

sbatch_script() {
  cat <<EOF
#!/bin/bash
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-node=$gpus
#SBATCH --cpus-per-task=$cpus
#SBATCH --time=$time_limit
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
EOF
  [[ -n "$partition" ]] && echo "#SBATCH --partition=$partition"
  [[ -n "$account" ]] && echo "#SBATCH --account=$account"
  echo "set -euo pipefail"
  echo "cd $(quoted "$repo")"
  [[ -n "$setup" ]] && echo "$setup"
  # One process per GPU, each seeing every GPU of its node: JAX picks one by
  # SLURM_LOCALID.
  quoted srun --kill-on-bad-exit=1 "$python" -m grepq_jax.main \
    --config="$config" --workdir="$workdir" "${main_flags[@]}"
}

if ((dry_run)); then
  echo "# $script"
  sbatch_script
  echo "+ sbatch $(quoted "$script")"
else
  sbatch_script > "$script"
  sbatch "$script"
fi
