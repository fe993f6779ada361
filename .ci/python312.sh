#!/usr/bin/env bash
# CI: the package on Python 3.12 too. Makes a 3.12 environment the way the
# launchers do (launch/provision.sh: uv, the package with its test extra, jax
# at the pin), then runs the tests that cover training (and its faults),
# export, scoring and gs:// workdirs with it. The interpreter: pyenv's 3.12,
# else python3.12 on PATH (uv may not download one here).
set -euo pipefail
cd "$(dirname "$0")/.."
python312="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
  2>/dev/null | tail -n 1 || true)"
[[ -n "$python312" ]] || python312="$(command -v python3.12 || true)"
if [[ -z "$python312" ]]; then
  echo "no Python 3.12 here (pyenv or PATH)" >&2
  exit 1
fi
venv="${TMPDIR:-/tmp}/grepq_jax_py312"
export UV_PYTHON_DOWNLOADS=never UV_SYSTEM_CERTS=true
python="$(bash launch/provision.sh --venv "$venv" --python "$python312" \
  --jax cpu --extra test)"
"$python" --version
"$python" -m pytest -q -p no:cacheprovider tests/training/test_train.py \
  tests/commands/test_export_score.py tests/training/test_faults.py tests/test_gcs_emulator.py
