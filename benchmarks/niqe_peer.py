"""Classic NIQE (Mittal et al. 2013), as basicsr 1.4.2 ships it, loaded as files.

The peer is basicsr's own `metrics/niqe.py` with its published pristine model
`metrics/niqe_pris_params.npz` (the MATLAB release's parameters), read from
the PyPI source distribution, never installed and never copied here:

    pip download basicsr==1.4.2 --no-deps --no-binary :all: -d CACHE
    (this module unpacks CACHE/basicsr-1.4.2.tar.gz next to it)

basicsr's package __init__ imports half of its training stack; niqe.py needs
only `reorder_image`, `to_y_channel` (metrics/metric_util.py, which needs
utils/color_util.py), `imresize` (utils/matlab_functions.py) and a registry
decorator. Those files are loaded under their own module names, the registry
replaced by a no-op; their imports are numpy, scipy, cv2 and torch (for
imresize and color_util), so this runs in any Python with torch and opencv
(cv2) beside this project's requirements. Lower NIQE is better.
"""
import importlib.util
import pathlib
import sys
import tarfile
import types

import numpy as np

SDIST = "basicsr-1.4.2.tar.gz"
_FILES = ("basicsr/metrics/niqe.py", "basicsr/metrics/niqe_pris_params.npz",
          "basicsr/metrics/metric_util.py", "basicsr/utils/color_util.py",
          "basicsr/utils/matlab_functions.py")


def _unpacked(cache: pathlib.Path) -> pathlib.Path:
    """The sdist's root folder under `cache`, unpacking the files niqe needs."""
    root = cache / SDIST.removesuffix(".tar.gz")
    if all((root / name).is_file() for name in _FILES):
        return root
    archive = cache / SDIST
    if not archive.is_file():
        raise FileNotFoundError(
            f"{archive} is missing: pip download basicsr==1.4.2 --no-deps "
            f"--no-binary :all: -d {cache}")
    with tarfile.open(archive) as tar:
        members = [tar.getmember(f"{root.name}/{name}") for name in _FILES]
        tar.extractall(cache, members=members, filter="data")
    return root


def _load(name: str, path: pathlib.Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _NoRegistry:
    def register(self, *args, **kwargs):
        return lambda function: function


def load_niqe(cache) -> "callable":
    """basicsr's `calculate_niqe`, ready: (H, W, 3) uint8 RGB -> NIQE (float).

    Raises FileNotFoundError naming the missing sdist, ImportError when torch
    or cv2 (basicsr's own imports) are missing.
    """
    root = _unpacked(pathlib.Path(cache))
    # Empty parent packages, so niqe.py's absolute imports resolve to the files.
    for package in ("basicsr", "basicsr.metrics", "basicsr.utils"):
        module = types.ModuleType(package)
        module.__path__ = []
        sys.modules.setdefault(package, module)
    color = _load("basicsr.utils.color_util", root / "basicsr/utils/color_util.py")
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr
    _load("basicsr.metrics.metric_util", root / "basicsr/metrics/metric_util.py")
    _load("basicsr.utils.matlab_functions", root / "basicsr/utils/matlab_functions.py")
    registry = types.ModuleType("basicsr.utils.registry")
    registry.METRIC_REGISTRY = _NoRegistry()
    sys.modules["basicsr.utils.registry"] = registry
    niqe = _load("basicsr.metrics.niqe", root / "basicsr/metrics/niqe.py")

    def calculate(rgb: np.ndarray) -> float:
        bgr = np.ascontiguousarray(np.asarray(rgb)[..., ::-1])  # basicsr reads BGR
        return float(niqe.calculate_niqe(bgr, crop_border=0, input_order="HWC",
                                         convert_to="y"))

    return calculate
