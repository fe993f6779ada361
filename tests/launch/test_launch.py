"""The launch scripts in --dry-run mode: the commands they would run."""

import shlex
import subprocess

from support.run_main import REPO


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "launch" / script), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def commands(stdout: str) -> list[list[str]]:
    """The printed commands ("+ ..." lines), split as a shell would."""
    return [
        shlex.split(line[2:])
        for line in stdout.splitlines()
        if line.startswith("+ ")
    ]


def remote_command(words: list[str]) -> list[str]:
    """What `gcloud ... ssh --command=...` runs on the workers."""
    (command,) = [
        w[len("--command=") :] for w in words if w.startswith("--command=")
    ]
    return shlex.split(command)


def test_tpu_vm_creates_ships_and_trains_on_every_worker():
    result = dry_run(
        "tpu_vm.sh",
        "--name",
        "grepq-pod",
        "--zone",
        "us-central2-b",
        "--accelerator",
        "v4-32",
        "--spot",
        "--data",
        "gs://bucket/livefb",
        "configs/low_level.py:paper",
        "gs://bucket/runs/low",
        "--",
        "--config.batch_size=64",
        "--config.seed=3 ",
    )
    assert result.returncode == 0, result.stderr
    create, tar, scp, install, copy_data, train = commands(result.stdout)
    assert create[:6] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "grepq-pod",
    ]
    assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--spot"} <= (
        set(create)
    )
    assert tar[:2] == ["tar", "-czf"] and tar[2] in scp
    assert "grepq-pod:grepq_jax.tar.gz" in scp
    for step in (scp, install, copy_data, train):
        assert "--worker=all" in step and "--zone=us-central2-b" in step
    # The workers' Python is provisioned, not the image's python3.
    provision = remote_command(install)
    provision = provision[provision.index("bash") :]
    assert provision == [
        "bash",
        "~/grepq_jax/launch/provision.sh",
        "--venv",
        "~/grepq_venv",
        "--python",
        "3.11",
        "--jax",
        "tpu",
    ]
    assert remote_command(copy_data)[-2:] == [
        "gs://bucket/livefb",
        "~/grepq_data",
    ]
    remote = remote_command(train)
    main = remote[remote.index("~/grepq_venv/bin/python") :]
    assert main == [
        "~/grepq_venv/bin/python",
        "-m",
        "grepq_jax.main",
        "--config=configs/low_level.py:paper",
        "--workdir=gs://bucket/runs/low",
        "--config.data.path=$HOME/grepq_data",  # the worker's shell expands
        "--config.batch_size=64",
        "--config.seed=3 ",  # quoting survives both shells
    ]
    assert "python3" not in " ".join(remote_command(train))


def test_tpu_vm_python_option_reaches_the_provisioning():
    result = dry_run(
        "tpu_vm.sh", "--skip-create", "--name", "n", "--zone", "z",
        "--python", "3.12", "configs/low_level.py", "gs://b/w",
    )
    assert result.returncode == 0, result.stderr
    _, _, install, _ = commands(result.stdout)
    provision = remote_command(install)
    assert provision[provision.index("--python") + 1] == "3.12"


def test_provision_usage_errors_exit_2():
    script = str(REPO / "launch" / "provision.sh")
    result = subprocess.run(["bash", script, "--jax", "rocm"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--jax must be" in result.stderr


def test_tpu_vm_wants_a_cloud_storage_workdir():
    result = dry_run(
        "tpu_vm.sh",
        "--name",
        "n",
        "--zone",
        "z",
        "configs/low_level.py",
        "runs/local",
    )
    assert result.returncode == 2 and "gs://" in result.stderr
    assert result.stdout == ""


def test_tpu_vm_skip_create_reuses_the_vm():
    result = dry_run(
        "tpu_vm.sh",
        "--skip-create",
        "--name",
        "n",
        "--zone",
        "z",
        "configs/high_level.py",
        "gs://b/w",
    )
    assert result.returncode == 0, result.stderr
    printed = commands(result.stdout)
    assert not any("create" in c for c in printed)
    assert "--workdir=gs://b/w" in remote_command(printed[-1])


def test_slurm_writes_one_process_per_gpu_and_submits(tmp_path):
    script = tmp_path / "job.sbatch"
    result = dry_run(
        "slurm_gpu.sh",
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu",
        "--time",
        "02:00:00",
        "--setup",
        "source ~/venvs/grepq/bin/activate",
        "--script",
        str(script),
        "configs/high_level.py:paper",
        "/shared/runs/high",
        "--",
        "--config.model.clip=/shared/clip",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    directives = {line for line in lines if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=02:00:00",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
    } <= directives
    assert "source ~/venvs/grepq/bin/activate" in lines
    (srun,) = [shlex.split(line) for line in lines if line.startswith("srun")]
    assert srun[srun.index("python") :] == [
        "python",
        "-m",
        "grepq_jax.main",
        "--config=configs/high_level.py:paper",
        "--workdir=/shared/runs/high",
        "--config.model.clip=/shared/clip",
    ]
    assert commands(result.stdout) == [["sbatch", str(script)]]
    assert not script.exists()  # a dry run writes nothing


def test_slurm_trains_with_the_provisioned_environment(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    result = dry_run("slurm_gpu.sh", "--venv", str(tmp_path / "venv"),
                     "configs/low_level.py", "/shared/runs/low")
    assert result.returncode == 0, result.stderr
    (srun,) = [shlex.split(line) for line in result.stdout.splitlines()
               if line.startswith("srun")]
    assert srun[2:5] == [str(tmp_path / "venv" / "bin" / "python"), "-m",
                         "grepq_jax.main"]
    missing = dry_run("slurm_gpu.sh", "--venv", str(tmp_path / "none"),
                      "configs/low_level.py", "/shared/runs/low")
    assert missing.returncode == 2 and "launch/provision.sh" in missing.stderr


def test_slurm_makes_a_relative_workdir_absolute(tmp_path):
    result = subprocess.run(
        [
            "bash",
            str(REPO / "launch" / "slurm_gpu.sh"),
            "--dry-run",
            "configs/low_level.py",
            "runs/low",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"--workdir={tmp_path}/runs/low" in result.stdout


def test_the_rehearsal_gcloud_refuses_what_it_does_not_rehearse(tmp_path):
    gcloud = str(REPO / "launch" / "rehearsal" / "gcloud")
    env = {"PATH": "/usr/bin:/bin", "GREPQ_REHEARSAL_HOME": str(tmp_path)}
    other = subprocess.run([gcloud, "compute", "instances", "list"], env=env,
                           capture_output=True, text=True, timeout=30)
    assert other.returncode == 2 and "not rehearsed" in other.stderr
    rsync = subprocess.run(
        [gcloud, "storage", "rsync", "--recursive", "gs://b/d", "here"],
        env=env, capture_output=True, text=True, timeout=30)
    assert rsync.returncode == 1 and "STORAGE_EMULATOR_HOST" in rsync.stderr
