"""The package's shape: import-linter's contracts in pyproject.toml hold, and
no import cycle exists.

The side that uses trained encoders (scoring/, evaluation/, the score, export
and evaluate commands) never imports grepq_jax.training, and each folder
imports only the folders below it. CI runs `lint-imports` too; this keeps the
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


def test_no_module_imports_one_that_imports_it_back():
    """No import cycle anywhere in the package, within a folder too (the
    layers contract only sees arrows between folders)."""
    import grimp  # pylint: disable=import-outside-toplevel  (import-linter's graph)
    graph = grimp.build_graph("grepq_jax")
    imports = {module: {imported for imported in graph.find_modules_directly_imported_by(module)
                        if imported.startswith("grepq_jax")} for module in graph.modules}
    cycles = [(module, imported) for module, targets in imports.items() for imported in targets
              if graph.chain_exists(importer=imported, imported=module)]
    assert not cycles, f"import cycles through: {sorted(cycles)[:5]}"
