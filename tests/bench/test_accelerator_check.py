"""benchmarks/accelerator_check.py without running it: its dry run names every
row with the accelerator's sizes, usage errors exit 2 in one line, and the
table shows each row's status and figures. Fast: nothing imports JAX."""

import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = "benchmarks/accelerator_check.py"  # relative, as users run it


def _check(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _module():
    spec = importlib.util.spec_from_file_location("accelerator_check", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_every_row_with_the_accelerator_sizes():
    done = _check("--dry_run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    ids = [row.id for row in _module().ROWS]
    assert len(ids) == 12
    for row_id in ids:
        assert sum(line.split()[0] == row_id for line in lines[1:]) == 1, row_id
    plan = lines[0]
    # The paper's low-level batch, the paper's RN50 batch, 512x384 scoring.
    for field in ('"low_config": "paper"', '"low_groups": 8', '"rn50_batch": 128',
                  '"score_size": [384, 512]', '"large_sides": [300, 1600]'):
        assert field in plan, field


def test_smoke_dry_run_uses_toy_sizes():
    done = _check("--dry_run", "--smoke")
    assert done.returncode == 0, done.stderr
    assert '"mode": "cpu_smoke"' in done.stdout
    assert '"low_config": "tiny"' in done.stdout


def test_usage_errors_exit_2_in_one_line(tmp_path):
    done = _check("--dry_run", "--parts=low_step,warp_drive")
    assert done.returncode == 2
    assert "--parts: unknown warp_drive" in done.stderr
    assert "Traceback" not in done.stderr
    missing = tmp_path / "no_wheels_here"
    done = _check("--dry_run", f"--wheels={missing}")
    assert done.returncode == 2
    assert f"--wheels={missing}: not a folder" in done.stderr


def test_table_shows_status_reason_and_figures():
    module = _module()
    document = {
        "meta": {"date": "d", "device": "1 x H100", "jax": "0.11", "torch": None},
        "plan": {"mode": "accelerator"},
        "rows": [
            {"row": "rn50_step", "what": "w", "status": "ok", "ms_per_step": 123.456},
            {"row": "peer_fsim", "what": "piq", "status": "skipped",
             "reason": "torch is not installed here"},
        ],
    }
    table = module.markdown(document).splitlines()
    assert "| rn50_step | ok | ms_per_step 123.5 |" in table
    assert "| peer_fsim | skipped: torch is not installed here | piq |" in table
    assert "1 x H100" in table[0]


def test_a_wheels_folder_without_wheels_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wheels").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / SCRIPT), "--dry_run", "--wheels=wheels"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--wheels=wheels: no .whl file there" in done.stderr
