"""Tiny fixtures in the exact layout of each IQA dataset's release.

Each write_<dataset>(root) writes a few small generated images, named as
the real dataset names them, and the score file(s) in the authors' format,
under `root`; it returns the rows a reader should give back, as
(name, score, std, split, reference) tuples in file order.
"""
import csv
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def image_pixels(seed: int) -> np.ndarray:
    """(6, 8, 3) uint8: a distinct small image per seed."""
    return np.random.default_rng(seed).integers(0, 256, (6, 8, 3), np.uint8)


def write_image(path: Path, seed: int = 0) -> Path:
    """An image file in the format its suffix names (case-insensitive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_pixels(seed)).save(
        path, format=_FORMATS[path.suffix.lower()])
    return path


def write_csv(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows(rows)
    return path


def _mat_cells(strings: list[str], shape: tuple[int, int]) -> np.ndarray:
    """A MATLAB cell array of strings, as savemat writes object arrays."""
    cells = np.empty(len(strings), dtype=object)
    cells[:] = strings
    return cells.reshape(shape)


def write_koniq10k(root: Path) -> list[tuple]:
    rows = [["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS",
             "SD", "MOS_zscore"],
            ["10004473376.jpg", 0, 2, 20, 72, 6, 100, 3.82, 0.5597, 77.38],
            ["100117038.jpg", 1, 4, 35, 55, 5, 100, 3.59, 0.6912, 75.11],
            ["10058760545.jpg", 30, 50, 20, 0, 0, 100, 1.9, 0.7, 15.23]]
    write_csv(root / "koniq10k_scores_and_distributions.csv", rows)
    for seed, row in enumerate(rows[1:]):
        write_image(root / "1024x768" / row[0], seed)
    return [(row[0], row[7], row[8], None, None) for row in rows[1:]]


def write_clive(root: Path) -> list[tuple]:
    """ChallengeDB_release: 7 training entries first, then 3 test images."""
    names = [f"t{k}.bmp" for k in range(1, 8)] + ["100.bmp", "1024.JPG",
                                                   "10.bmp"]
    mos = [63.96, 25.34, 48.94, 35.89, 66.51, 54.58, 77.88, 32.56, 66.36,
           82.91]
    std = [18.38, 13.65, 18.92, 18.24, 19.26, 19.96, 19.65, 19.12, 20.22,
           15.12]
    (root / "Data").mkdir(parents=True)
    scipy.io.savemat(root / "Data/AllImages_release.mat",
                     {"AllImages_release": _mat_cells(names, (10, 1))})
    scipy.io.savemat(root / "Data/AllMOS_release.mat",
                     {"AllMOS_release": np.array([mos])})
    scipy.io.savemat(root / "Data/AllStdDev_release.mat",
                     {"AllStdDev_release": np.array([std])})
    for seed, name in enumerate(names):
        folder = "Images/trainingImages" if seed < 7 else "Images"
        write_image(root / folder / name, seed)
    return [(("trainingImages/" if k < 7 else "") + name, mos[k], std[k],
             None, None) for k, name in enumerate(names)]


def write_kadid10k(root: Path) -> list[tuple]:
    rows = [["dist_img", "ref_img", "dmos", "var"],
            ["I01_01_01.png", "I01.png", 4.57, 0.496],
            ["I01_01_05.png", "I01.png", 1.6, 0.24],
            ["I02_12_03.png", "I02.png", 3.2, 0.0]]
    write_csv(root / "dmos.csv", rows)
    for seed, name in enumerate(["I01_01_01.png", "I01_01_05.png",
                                 "I02_12_03.png", "I01.png", "I02.png"]):
        write_image(root / "images" / name, seed)
    return [(row[0], row[2], float(np.sqrt(row[3])), None, row[1])
            for row in rows[1:]]


def write_flive(root: Path, *, with_splits: bool = True) -> list[tuple]:
    """FLIVE_Database/database: labels_image.csv and the split files."""
    names = ["voc_emotic_ava/AVA__129332.jpg", "blur_dataset/motion0044.jpg",
             "EE371R/rq59.jpg", "voc_emotic_ava/EMOTIC__gys98nlu9hsyek632k.jpg"]
    mos = [58.65, 75.44, 41.2, 67.9]
    write_csv(root / "labels_image.csv",
              [["name", "mos"]] + [[n, m] for n, m in zip(names, mos)])
    for seed, name in enumerate(names):
        write_image(root / name, seed)
    if not with_splits:
        return [(n, m, None, None, None) for n, m in zip(names, mos)]
    write_csv(root / "labels640.csv",
              [["mos_patch_1", "name_patch", "mos_image", "name_image"],
               [79.4, "patches/EE371R__rq59.jpg", 41.2, names[2]]])
    write_csv(root / "labels=640_padded.csv",
              [["name_image", "mos_image", "is_valid"],
               [names[0], 58.65, "False"], [names[1], 75.44, "True"]])
    splits = ["train", "validation", "test", "train"]
    return [(n, m, None, s, None) for n, m, s in zip(names, mos, splits)]


def write_spaq(root: Path) -> list[tuple]:
    """SPAQ with its score sheet saved as CSV (openpyxl is optional)."""
    rows = [["Image name", "MOS", "Brightness", "Colorfulness", "Contrast",
             "Noisiness", "Sharpness"],
            ["00001.jpg", 48.86, 47.43, 55.57, 55.71, 37.86, 42.57],
            ["00002.jpg", 62.5, 55.38, 67.13, 53.13, 57.5, 47.5]]
    write_csv(root / "Annotations/MOS and Image attribute scores.csv", rows)
    for seed, row in enumerate(rows[1:]):
        write_image(root / "TestImage" / row[0], seed)
    return [(row[0], row[1], None, None, None) for row in rows[1:]]


def write_agiqa3k(root: Path) -> list[tuple]:
    rows = [["name", "prompt", "adj1", "adj2", "style", "mos_quality",
             "std_quality", "mos_align", "std_align"],
            ["AttnGAN_normal_000.jpg", "statue of a man", "", "", "normal",
             0.9, 0.62, 1.3, 0.8],
            ["midjourney_lowstep_012.jpg", "a tray of sushi, on a table",
             "beautiful", "", "baroque", 3.84, 0.4, 4.1, 0.35]]
    write_csv(root / "data.csv", rows)
    for seed, row in enumerate(rows[1:]):
        write_image(root / "AGIQA-3K" / row[0], seed)
    return [(row[0], row[5], row[6], None, None) for row in rows[1:]]


def write_csiq_sheet(root: Path) -> list[tuple]:
    """CSIQ: the all_by_image sheet saved as CSV, images in type folders."""
    blank = ["", "", ""]
    rows = [blank + ["CSIQ DMOS", "", "", "", "", ""], blank + [""] * 6,
            blank + [""] * 6,
            blank + ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std",
                     "dmos"],
            blank + ["1600", 1, "noise", 1, 0.0173, 0.062],
            blank + ["1600", 5, "jpeg 2000", 3, 0.0412, 0.3644],
            blank + [""] * 6,
            blank + ["aerial_city", 3, "blur", 2, 0.05, 0.25]]
    write_csv(root / "csiq.DMOS.csv", rows)
    names = ["awgn/1600.AWGN.1.png", "jpeg2000/1600.jpeg2000.3.png",
             "blur/aerial_city.BLUR.2.png"]
    for seed, name in enumerate(names):
        write_image(root / "dst_imgs" / name, seed)
    return [(names[0], 0.062, 0.0173, None, "1600"),
            (names[1], 0.3644, 0.0412, None, "1600"),
            (names[2], 0.25, 0.05, None, "aerial_city")]


def write_csiq_label(root: Path) -> list[tuple]:
    """CSIQ: csiq_label.txt with all distorted images directly in dst_imgs/."""
    lines = [("1600.AWGN.1.png", 0.061989), ("boston.JPEG.5.png", 0.832481)]
    (root / "csiq_label.txt").write_text(
        "".join(f"{name} {dmos}\n" for name, dmos in lines))
    for seed, (name, _) in enumerate(lines):
        write_image(root / "dst_imgs" / name, seed)
    return [(name, dmos, None, None, name.split(".")[0])
            for name, dmos in lines]


# LIVE release 2: 982 entries; these are the distorted ones the fixture
# writes (index -> (name, realigned dmos, std, dmos.mat dmos, reference)).
_LIVE_DISTORTED = {
    1: ("jp2k/img2.bmp", 28.0, 9.1, 30.5, "studentsculpture.bmp"),
    227: ("jpeg/img1.bmp", 55.67, 8.2, 52.1, "womanhat.bmp"),
    460: ("wn/img1.bmp", 28.45, 7.3, 29.9, "monarch.bmp"),
    634: ("gblur/img1.bmp", 101.2, 6.0, 98.0, "rapids.bmp"),
    808: ("fastfading/img1.bmp", 3.5, 5.5, 4.0, "dancers.bmp"),
}


def write_live(root: Path) -> list[tuple]:
    """databaserelease2: all 982 score entries, 5 distorted images on disk.

    Every other entry is flagged orgs=1 (a reference copy); jp2k/img1.bmp,
    one of them, is written too, so leaving it out is the reader's doing.
    """
    dmos_new, dmos_old = np.zeros(982), np.zeros(982)
    orgs, std = np.ones(982), np.zeros(982)
    refnames = ["parrots.bmp"] * 982
    for index, (name, new, sd, old, ref) in _LIVE_DISTORTED.items():
        dmos_new[index], dmos_old[index], std[index] = new, old, sd
        orgs[index], refnames[index] = 0, ref
        write_image(root / name, index)
    write_image(root / "jp2k/img1.bmp", 0)
    scipy.io.savemat(root / "refnames_all.mat",
                     {"refnames_all": _mat_cells(refnames, (1, 982))})
    scipy.io.savemat(root / "dmos_realigned.mat",
                     {"dmos_new": dmos_new[None], "orgs": orgs[None],
                      "dmos_std": std[None]})
    scipy.io.savemat(root / "dmos.mat",
                     {"dmos": dmos_old[None], "orgs": orgs[None]})
    return [(name, new, sd, None, ref)
            for name, new, sd, _, ref in _LIVE_DISTORTED.values()]


def live_old_dmos() -> list[float]:
    """The dmos.mat scores of write_live's distorted images, in order."""
    return [old for _, _, _, old, _ in _LIVE_DISTORTED.values()]


def write_tid2013(root: Path) -> list[tuple]:
    """One listed name differs from its file in letter case, as in TID."""
    rows = [(5.51429, "i01_01_1.bmp", 0.13013),
            (5.91429, "I01_11_1.BMP", 0.16349),
            (0.45946, "i25_24_5.bmp", 0.11839)]
    (root / "mos_with_names.txt").write_text(
        "".join(f"{mos} {name}\n" for mos, name, _ in rows))
    (root / "mos_std.txt").write_text("".join(f"{sd}\n" for *_, sd in rows))
    for seed, name in enumerate(["i01_01_1.bmp", "i01_11_1.bmp",
                                 "i25_24_5.bmp"]):
        write_image(root / "distorted_images" / name, seed)
    return [(name, mos, sd, None, name[:3].upper()) for mos, name, sd in rows]


def write_generic_csv(root: Path) -> list[tuple]:
    """A toolbox-style scores.csv with a split column and PNG images."""
    rows = [["image_name", "score", "std", "split"],
            ["a/first.png", 1.5, 0.25, "train"],
            ["a/second.png", 4.0, "", "test"],
            ["third.png", 2.5, 0.5, "train"]]
    write_csv(root / "scores.csv", rows)
    for seed, row in enumerate(rows[1:]):
        write_image(root / row[0], seed)
    return [(row[0], row[1], row[2] if row[2] != "" else None, row[3], None)
            for row in rows[1:]]


def write_grepq_csv(root: Path) -> list[tuple]:
    """GRepQ's Evaluation/datasets CSV style: index column, im_loc, mos, std."""
    rows = [["", "im_loc", "mos", "std"],
            [0, "trainingImages/t1.bmp", 63.96, 18.38],
            [1, "100.bmp", 32.56, 19.12]]
    write_csv(root / "LIVEC.csv", rows)
    for seed, row in enumerate(rows[1:]):
        write_image(root / "Images" / row[1], seed)
    return [(row[1], row[2], row[3], None, None) for row in rows[1:]]


WRITERS = {
    "koniq10k": write_koniq10k,
    "clive": write_clive,
    "kadid10k": write_kadid10k,
    "flive": write_flive,
    "spaq": write_spaq,
    "agiqa3k": write_agiqa3k,
    "csiq": write_csiq_sheet,
    "live": write_live,
    "tid2013": write_tid2013,
    "csv": write_generic_csv,
}
