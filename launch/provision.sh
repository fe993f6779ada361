#!/usr/bin/env bash
# Makes the Python environment that grepq_jax runs in on a worker, whatever
# Python the machine's image has (Ubuntu 22.04's python3 is 3.10; the package
# and its pinned JAX, Flax and Orbax need 3.11 or later):
#
#   launch/provision.sh --venv ~/grepq_venv --python 3.11 --jax tpu
#
# (launch/tpu_vm.sh runs it on every worker; for SLURM, run it once where the
# nodes share the home folder and pass --venv to launch/slurm_gpu.sh.)
#
# 1. uv, pinned, from PyPI: installed with any python3 and pip into a folder
#    of its own, ~/.cache/grepq_jax/uv-VERSION (skipped when a uv is already
#    on PATH or there); `pip install --target` works inside an activated
#    virtual environment, where pip refuses --user, and outside one, on a
#    system Python that pip may not touch (PEP 668), alike;
# 2. `uv venv --python PYTHON`: uv uses an installed CPython of that version
#    or downloads its standalone build (PYTHON may also be an interpreter's
#    path), and makes a fresh virtual environment with it;
# 3. installs this checkout (editable), JAX at requirements.txt's pin with
#    the extra for the accelerator (jax[tpu] brings libtpu, jax[cuda13] the
#    CUDA wheels, `--jax cpu` plain jax) and google-cloud-storage.
# Run it again to start over: the environment is made anew each time, from
# uv's cache of wheels. Prints the environment's python last.
set -euo pipefail
source "$(dirname "$0")/common.sh"

UV_VERSION="0.13.8"
repo="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
  header
  cat <<'EOF'

Options:
  --venv DIR       the virtual environment to make (default ~/grepq_venv)
  --python SPEC    a Python version (3.11, 3.12) or an interpreter's path
                   (default 3.11)
  --jax EXTRA      tpu, cuda13, cuda12 or cpu (default cpu)
  --extra NAME     also the package's extra NAME (test: pytest and the
                   Cloud Storage emulator)
EOF
}

venv="$HOME/grepq_venv" python="3.11" accelerator="cpu" package="$repo"
while (($#)); do
  case "$1" in
    --venv) venv="${2:?}"; shift 2 ;;
    --python) python="${2:?}"; shift 2 ;;
    --jax) accelerator="${2:?}"; shift 2 ;;
    --extra) package="$repo[${2:?}]"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$accelerator" in
  cpu) jax_extra="" ;;
  tpu|cuda12|cuda13) jax_extra="[$accelerator]" ;;
  *) die "--jax must be tpu, cuda13, cuda12 or cpu, not $accelerator" ;;
esac

jax_version="$(sed -n 's/^jax==//p' "$repo/requirements.txt")"
[[ -n "$jax_version" ]] || die "no jax==VERSION line in $repo/requirements.txt"

uv="$(command -v uv || true)"
if [[ -z "$uv" ]]; then
  # Any python3 will do to fetch uv: it is a standalone program.
  uv_home="${XDG_CACHE_HOME:-$HOME/.cache}/grepq_jax/uv-$UV_VERSION"
  uv="$uv_home/bin/uv"
  if [[ ! -x "$uv" ]]; then
    rm -rf "$uv_home"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --target "$uv_home" \
      --disable-pip-version-check "uv==$UV_VERSION" >&2
  fi
  [[ -x "$uv" ]] || { echo "$(basename "$0"): no uv at $uv after pip install" >&2; exit 1; }
fi
"$uv" venv --quiet --clear --python "$python" "$venv" >&2
# Orbax imports google-cloud-storage for every gs:// checkpoint folder (to ask
# whether the bucket has a hierarchical namespace) but does not depend on it.
"$uv" pip install --quiet --python "$venv/bin/python" -e "$package" \
  "jax$jax_extra==$jax_version" google-cloud-storage >&2
echo "$venv/bin/python"
