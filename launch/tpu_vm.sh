#!/usr/bin/env bash
# Trains a config on a Cloud TPU VM or pod slice, every worker running one
# process of the same job (JAX finds the others through the TPU metadata).
#
#   launch/tpu_vm.sh --name grepq --zone us-central2-b --accelerator v4-32 \
#       configs/low_level.py:paper gs://BUCKET/grepq/low_level \
#       --data gs://BUCKET/livefb -- --config.batch_size=64
#
# Creates the TPU VM (unless --skip-create), copies this checkout to every
# worker, provisions its Python there (launch/provision.sh: uv makes
# ~/grepq_venv with CPython --python, 3.11 by default, whatever the image's
# own python3 is, and installs the checkout and jax[tpu] at the pinned
# version), optionally copies a data folder from Cloud Storage to each
# worker's ~/grepq_data, then runs
#   ~/grepq_venv/bin/python -m grepq_jax.main --config=CONFIG --workdir=WORKDIR
# on all workers (`gcloud compute tpus tpu-vm ssh --worker=all`). The workdir
# must be on Cloud Storage: every worker reads and writes the same
# checkpoints. After a preemption, run the same command again (with
# --skip-create if the VM is back): training resumes from the last checkpoint.
# --dry-run prints the commands instead of running them. --rehearse DIR runs
# every worker-side step on this machine instead, in DIR as the worker's home,
# with launch/rehearsal/gcloud standing in for gcloud and plain jax for
# jax[tpu] (see that file).
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
  --python SPEC        Python for the workers' environment: 3.11, 3.12 or an
                       interpreter's path (default 3.11)
  --project PROJECT    Cloud project (default: gcloud's)
  --spot               spot capacity: cheaper, can be preempted
  --data GCS_FOLDER    copied to ~/grepq_data on every worker and passed
                       as --config.data.path
  --skip-create        the TPU VM exists already
  --dry-run            print the commands, run nothing
  --rehearse DIR       run the workers' steps here, DIR standing for a
                       worker's home; no Cloud call is made
EOF
}

name="" zone="" accelerator="v4-8" version="tpu-ubuntu2204-base"
project="" spot=0 data="" skip_create=0 dry_run=0 python="3.11" rehearse=""
positional=() main_flags=()
while (($#)); do
  case "$1" in
    --name) name="${2:?}"; shift 2 ;;
    --zone) zone="${2:?}"; shift 2 ;;
    --accelerator) accelerator="${2:?}"; shift 2 ;;
    --version) version="${2:?}"; shift 2 ;;
    --python) python="${2:?}"; shift 2 ;;
    --project) project="${2:?}"; shift 2 ;;
    --spot) spot=1; shift ;;
    --data) data="${2:?}"; shift 2 ;;
    --skip-create) skip_create=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --rehearse) rehearse="${2:?}"; shift 2 ;;
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

here="$(cd "$(dirname "$0")" && pwd)"
gcloud=gcloud accelerator_extra=tpu
if [[ -n "$rehearse" ]]; then
  mkdir -p "$rehearse"
  export GREPQ_REHEARSAL_HOME
  GREPQ_REHEARSAL_HOME="$(cd "$rehearse" && pwd)"
  gcloud="$here/rehearsal/gcloud" accelerator_extra=cpu  # no TPU here
  echo "rehearsal: gcloud is $gcloud; the worker's home is $GREPQ_REHEARSAL_HOME" >&2
fi

# Prints the command (--dry-run) or runs it.
run() { if ((dry_run)); then echo "+ $(quoted "$@")"; else "$@"; fi; }

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
on_all_workers() { run "$gcloud" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"; }

if ((!skip_create)); then
  create=("$gcloud" compute tpus tpu-vm create "$name" "${where[@]}"
          --accelerator-type="$accelerator" --version="$version")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
fi

repo="$(cd "$here/.." && pwd)"
# One per launch ($$): two launches at once must not pack into one file.
tarball="${TMPDIR:-/tmp}/grepq_jax_${name}_$$.tar.gz"
((dry_run)) || trap 'rm -f "$tarball"' EXIT
# Run folders are left out only at the top (as .gitignore does): an unanchored
# 'workdir*' would drop grepq_jax/training/workdir_lock.py too.
run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=.whl \
  --exclude=.pytest_cache --exclude='*.egg-info' --exclude=__pycache__ \
  --anchored --exclude=./runs --exclude='./workdir*' --exclude=./.venv --no-anchored .
run "$gcloud" compute tpus tpu-vm scp "$tarball" "$name:grepq_jax.tar.gz" \
  "${where[@]}" --worker=all
# A fresh copy each time: files deleted here must not linger there.
unpack="rm -rf ~/grepq_jax && mkdir ~/grepq_jax && tar -xzf ~/grepq_jax.tar.gz -C ~/grepq_jax"
# '~/...' stays a tilde here; the worker's shell expands it.
provision=(bash '~/grepq_jax/launch/provision.sh' --venv '~/grepq_venv'
           --python "$python" --jax "$accelerator_extra")
on_all_workers "set -e; $unpack; $(quoted "${provision[@]}")"

train=('~/grepq_venv/bin/python' -m grepq_jax.main --config="$config" --workdir="$workdir")
data_flag=""
if [[ -n "$data" ]]; then
  on_all_workers "$(quoted gcloud storage rsync --recursive "$data" '~/grepq_data')"
  # Expanded by the worker's shell: its own home.
  data_flag=' --config.data.path="$HOME/grepq_data"'
fi
on_all_workers "cd ~/grepq_jax && $(quoted "${train[@]}")$data_flag${main_flags[*]:+ $(quoted "${main_flags[@]}")}"
