#!/usr/bin/env bash
# Trains a config on a Cloud TPU VM or pod slice, every worker running one
# process of the same job (JAX finds the others through the TPU metadata).
#
#   launch/tpu_vm.sh --name grepq --zone us-central2-b --accelerator v4-32 \
#       configs/low_level.py:paper gs://BUCKET/grepq/low_level \
#       --data gs://BUCKET/livefb -- --config.batch_size=64
#
# Creates the TPU VM (unless --skip-create), copies this checkout to every
# worker and installs it with jax[tpu], optionally copies a data folder from
# Cloud Storage to each worker's disk, then runs
#   python3 -m grepq_jax.main --config=CONFIG --workdir=WORKDIR [FLAGS...]
# on all workers (`gcloud compute tpus tpu-vm ssh --worker=all`). The workdir
# must be on Cloud Storage: every worker reads and writes the same
# checkpoints. After a preemption, run the same command again (with
# --skip-create if the VM is back): training resumes from the last checkpoint.
# --dry-run prints the commands instead of running them.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() {
  header
  cat <<'EOF'

Options:
  --name NAME          TPU VM name (required)
  --zone ZONE          Cloud zone (required)
  --accelerator TYPE   v4-8, v4-64, v5litepod-16, ... (default v4-8)
  --version IMAGE      TPU runtime image (default tpu-ubuntu2204-base)
  --project PROJECT    Cloud project (default: gcloud's)
  --spot               spot capacity: cheaper, can be preempted
  --data GCS_FOLDER    copied to /tmp/grepq_data on every worker and passed
                       as --config.data.path
  --skip-create        the TPU VM exists already
  --dry-run            print the commands, run nothing
EOF
}

name="" zone="" accelerator="v4-8" version="tpu-ubuntu2204-base"
project="" spot=0 data="" skip_create=0 dry_run=0
positional=() main_flags=()
while (($#)); do
  case "$1" in
    --name) name="${2:?}"; shift 2 ;;
    --zone) zone="${2:?}"; shift 2 ;;
    --accelerator) accelerator="${2:?}"; shift 2 ;;
    --version) version="${2:?}"; shift 2 ;;
    --project) project="${2:?}"; shift 2 ;;
    --spot) spot=1; shift ;;
    --data) data="${2:?}"; shift 2 ;;
    --skip-create) skip_create=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
((${#positional[@]} == 2)) || die "need CONFIG and WORKDIR (see --help)"
config="${positional[0]}" workdir="${positional[1]}"
[[ -n "$name" && -n "$zone" ]] || die "--name and --zone are required"
[[ "$workdir" == gs://* ]] ||
  die "WORKDIR must be gs://...: every worker shares the checkpoints"
[[ -z "$data" || "$data" == gs://* ]] || die "--data must be gs://..."

# Prints the command (--dry-run) or runs it.
run() { if ((dry_run)); then echo "+ $(quoted "$@")"; else "$@"; fi; }

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
on_all_workers() { run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"; }

if ((!skip_create)); then
  create=(gcloud compute tpus tpu-vm create "$name" "${where[@]}"
          --accelerator-type="$accelerator" --version="$version")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/grepq_jax_$name.tar.gz"
run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=.whl \
  --exclude=.pytest_cache --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=runs --exclude='workdir*' .
run gcloud compute tpus tpu-vm scp "$tarball" "$name:grepq_jax.tar.gz" \
  "${where[@]}" --worker=all
jax_version="$(sed -n 's/^jax==//p' "$repo/requirements.txt")"
on_all_workers "mkdir -p ~/grepq_jax && tar -xzf ~/grepq_jax.tar.gz -C ~/grepq_jax && pip install -q -e ~/grepq_jax 'jax[tpu]==$jax_version'"

train=(python3 -m grepq_jax.main --config="$config" --workdir="$workdir")
if [[ -n "$data" ]]; then
  on_all_workers "$(quoted gcloud storage rsync --recursive "$data" /tmp/grepq_data)"
  train+=(--config.data.path=/tmp/grepq_data)
fi
train+=("${main_flags[@]}")
on_all_workers "cd ~/grepq_jax && $(quoted "${train[@]}")"
