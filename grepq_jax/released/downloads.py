"""The released GRepQ model fetched into a cache and converted into a model folder.

    <cache>/files/RN50.pt, low_level_model_weights.tar, ...   what was fetched
    <cache>/models/grepq/                                      the model folder

<cache> is $GREPQ_HOME, else $XDG_CACHE_HOME/grepq_jax, else
~/.cache/grepq_jax. OpenAI's RN50.pt comes from its published address, which
carries its SHA-256 (checked); GRepQ's three files from the authors' Google
Drive folder, through gdown (a library made for Drive; imported only here)
unless `grepq_urls` names other addresses for them (a mirror; the tests'
local server). Files already in <cache>/files are used as they are, so
files fetched by hand are picked up.
"""
from __future__ import annotations

import os
import pathlib

from grepq_jax.released import fetch, packaging
from grepq_jax.formats import model_cache

RN50_SHA256 = "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"
RN50_URL = f"https://openaipublic.azureedge.net/clip/models/{RN50_SHA256}/RN50.pt"
DRIVE_FOLDER_ID = "1wLpdN6TNezur_0_NF7XgmBMyWcSxH5eX"
DRIVE_FOLDER_URL = f"https://drive.google.com/drive/folders/{DRIVE_FOLDER_ID}"
LOW_LEVEL, HIGH_LEVEL, PATCHES = ("low_level_model_weights.tar", "high_level_model_weights.pth",
                                  "pristine_patches_096_0.75_0.80.hdf5")


def files_folder(cache=None) -> pathlib.Path:
    return pathlib.Path(cache or model_cache.cache_home()) / "files"


def by_hand(cache=None) -> str:
    """What to do without a network, in one line."""
    files, model = files_folder(cache), model_cache.model_folder(cache=cache)
    return (f"fetch {RN50_URL} and, from {DRIVE_FOLDER_URL}, {LOW_LEVEL}, {HIGH_LEVEL} and "
            f"{PATCHES}, into {files}/; then run grepq download again, or: grepq convert "
            f"--grepq_low_level={files / LOW_LEVEL} --grepq_high_level={files / HIGH_LEVEL} "
            f"--clip={files / 'RN50.pt'} --pristine_patches={files / PATCHES} --out={model}")


def _fetch_from_drive(folder: pathlib.Path, names: tuple[str, ...]) -> None:
    """The authors' Drive folder into folder/drive/ (gdown resumes its own
    transfers there); `names`, wherever the folder keeps them, moved up into `folder`."""
    try:
        import gdown
    except ImportError:
        raise fetch.Unreachable("fetching from Google Drive needs gdown "
                                "(pip install -e '.[convert]')") from None
    drive = folder / "drive"
    try:
        gdown.download_folder(id=DRIVE_FOLDER_ID, output=str(drive), quiet=False, resume=True,
                              timeout=fetch.TIMEOUT_S, retries=2)
    except Exception as error:  # gdown raises requests' errors and its own
        raise fetch.Unreachable(f"Google Drive: {type(error).__name__}: "
                                f"{(str(error).splitlines() or [''])[0][:160]}") from None
    for name in names:
        found = sorted(drive.rglob(name))
        if found and not (folder / name).is_file():
            os.replace(found[0], folder / name)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise fetch.FetchError(f"{DRIVE_FOLDER_URL} did not hold {', '.join(missing)}")


def fetch_released_files(cache=None, *, rn50_url: str | None = None,
                         rn50_sha256: str | None = None,
                         grepq_urls: dict[str, str] | None = None) -> pathlib.Path:
    """The four files in <cache>/files, fetched where missing; returns that folder.

    rn50_url, rn50_sha256: default OpenAI's (RN50_URL, RN50_SHA256).
    Raises fetch.Unreachable / FetchError (see fetch.fetch).
    """
    folder = files_folder(cache)
    folder.mkdir(parents=True, exist_ok=True)
    fetch.fetch(rn50_url or RN50_URL, folder / "RN50.pt",
                expected_sha256=rn50_sha256 or RN50_SHA256)
    names = (LOW_LEVEL, HIGH_LEVEL, PATCHES)
    if grepq_urls is None:
        if not all((folder / name).is_file() for name in names):
            _fetch_from_drive(folder, names)
    else:
        for name in names:
            fetch.fetch(grepq_urls[name], folder / name)
    return folder


def download_released(cache=None, *, rn50_url: str | None = None,
                      rn50_sha256: str | None = None,
                      grepq_urls: dict[str, str] | None = None) -> pathlib.Path:
    """The released GRepQ model folder in the cache, fetched and converted if not there.

    Raises fetch.Unreachable / FetchError, and ValueError naming a file that
    does not convert (as `grepq convert`).
    """
    model = model_cache.model_folder(cache=cache)
    if (model / "model.json").is_file():
        return model
    files = fetch_released_files(cache, rn50_url=rn50_url, rn50_sha256=rn50_sha256,
                                 grepq_urls=grepq_urls)
    packaging.package_released_grepq(
        model, low_level=str(files / LOW_LEVEL), high_level=str(files / HIGH_LEVEL),
        clip_file=str(files / "RN50.pt"), pristine_patches=str(files / PATCHES))
    return model
