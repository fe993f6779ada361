"""The package's shape: import-linter's contracts in pyproject.toml hold.

The side that uses trained encoders (scoring/, evaluation/, the score, export
and evaluate commands) never imports the side that trains them, and no module
imports a layer above its own. CI runs `lint-imports` too; this keeps the
rule in the suite that every change runs.
"""

import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint_imports = shutil.which("lint-imports")
    assert lint_imports, "lint-imports not found: pip install -e '.[test]'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([lint_imports], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout, result.stdout
