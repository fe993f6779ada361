"""launch/provision.sh fetches uv with the real pip, inside an activated
virtual environment (where pip refuses --user) and outside one.

No network: pip installs a stand-in uv wheel from a local folder
(PIP_NO_INDEX, PIP_FIND_LINKS); the stand-in uv records its arguments and
makes the environment's bin/python, so the script runs to its end.
"""
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).parents[2]
UV_VERSION = "0.13.8"  # launch/provision.sh's pin: pip must find this version.

_STAND_IN_UV = """\
#!/bin/sh
echo "$@" >> "$UV_STAND_IN_LOG"
if [ "$1" = venv ]; then
  for last; do :; done
  mkdir -p "$last/bin" && printf '#!/bin/sh\\n' > "$last/bin/python" && chmod +x "$last/bin/python"
fi
"""


def _stand_in_uv_wheel(folder: pathlib.Path) -> None:
    info = f"uv-{UV_VERSION}.dist-info"
    files = {
        f"uv-{UV_VERSION}.data/scripts/uv": _STAND_IN_UV,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: uv\nVersion: {UV_VERSION}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                         "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"uv-{UV_VERSION}-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            entry = zipfile.ZipInfo(name)
            # A regular executable file, as in uv's wheel: pip keeps the
            # executable bit of such an entry only.
            entry.external_attr = 0o100755 << 16
            wheel.writestr(entry, text)
        wheel.writestr(f"{info}/RECORD", record)


@pytest.fixture
def offline_pip(tmp_path):
    """Environment variables: pip sees only the stand-in uv; HOME is tmp_path."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _stand_in_uv_wheel(wheels)
    path = [p for p in os.environ["PATH"].split(os.pathsep)
            if not (pathlib.Path(p) / "uv").exists()]  # No uv on PATH.
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "XDG_CACHE_HOME", "PYTHONPATH")}
    return env | {"HOME": str(tmp_path / "home"), "PATH": os.pathsep.join(path),
                  "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
                  "PIP_CONFIG_FILE": os.devnull,
                  "UV_STAND_IN_LOG": str(tmp_path / "uv.log")}


def _provision(env, tmp_path):
    return subprocess.run(
        ["bash", str(REPO / "launch" / "provision.sh"), "--venv", "made_venv",
         "--python", "3.11"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300)


def _check_provisioned(done, tmp_path):
    assert done.returncode == 0, done.stderr
    assert done.stdout == "made_venv/bin/python\n"
    calls = (tmp_path / "uv.log").read_text().splitlines()
    assert calls[0] == "venv --quiet --clear --python 3.11 made_venv"
    assert calls[1].startswith("pip install --quiet --python made_venv/bin/python -e ")
    assert not (tmp_path / "home" / ".local").exists()  # Nothing in the user's site.


@pytest.mark.slow
def test_provision_inside_an_activated_virtual_environment(offline_pip, tmp_path):
    """The issue: pip refused `--user` here ("Can not perform a '--user'
    install"), so the launchers and .ci/python312.sh failed in any venv."""
    venv = tmp_path / "active"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = offline_pip | {"VIRTUAL_ENV": str(venv),
                         "PATH": f"{venv / 'bin'}{os.pathsep}{offline_pip['PATH']}"}
    _check_provisioned(_provision(env, tmp_path), tmp_path)


def test_provision_outside_a_virtual_environment(offline_pip, tmp_path):
    base = pathlib.Path(sys.base_prefix) / "bin"  # The Python the venvs were made from.
    env = offline_pip | {"PATH": f"{base}{os.pathsep}{offline_pip['PATH']}"}
    _check_provisioned(_provision(env, tmp_path), tmp_path)


def test_provision_reuses_the_uv_it_fetched(offline_pip, tmp_path):
    _check_provisioned(_provision(offline_pip, tmp_path), tmp_path)
    (tmp_path / "wheels" / f"uv-{UV_VERSION}-py3-none-any.whl").unlink()
    (tmp_path / "uv.log").unlink()
    _check_provisioned(_provision(offline_pip, tmp_path), tmp_path)
