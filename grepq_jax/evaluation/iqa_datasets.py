"""Readers for the standard IQA datasets, in the layouts their authors ship.

Each reader takes the dataset's folder and returns an IqaDataset: the rated
images (absolute path, score, optional std, split and reference) and how to
read the scores (MOS or DMOS, direction, nominal range). Every image a score
file names must stay inside the dataset's image folder (no absolute path, no
'..', no symbolic link leading out; the folder itself may be a link) and
exist; a malformed row (wrong column count, non-numeric or non-finite score,
a NUL byte in a name) raises IqaLayoutError naming the file and row, and so
does an image listed twice (naming both rows; a generic CSV may average
them instead, with duplicates="average"); a missing score file raises
FileNotFoundError saying what to put where (LAYOUTS). Nothing is written.

    dataset = load_iqa_dataset("koniq10k", "/data/koniq10k")
"""
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from grepq_jax.evaluation import iqa_tables
from grepq_jax.evaluation.iqa_tables import IqaLayoutError


@dataclasses.dataclass(frozen=True)
class IqaItem:
    """One rated image.

    name: the image as its score file names it, relative to the image folder.
    path: absolute path of the image file (checked: exists, inside the folder).
    score: MOS or DMOS in the dataset's own units (see IqaDataset).
    std: standard deviation of the ratings in the same units, or None.
    split: the dataset's own split ("train", "validation", "test", or what a
      generic CSV says), or None where it has none.
    reference: for synthetic-distortion datasets, the pristine source it was
      made from (group by it so no content is in two splits), else None.
    """
    name: str
    path: str
    score: float
    std: float | None = None
    split: str | None = None
    reference: str | None = None


@dataclasses.dataclass(frozen=True)
class IqaDataset:
    """A dataset's rated images and how to read their scores.

    score_kind is what the authors call the score ("MOS" or "DMOS"); trust
    higher_is_better for the direction (KADID-10k's "DMOS" rises with
    quality). score_range is the nominal scale: a few scores may fall
    slightly outside it (LIVE's realigned DMOS does). notes: what the
    reader did that a user should know (e.g. scores averaged), one line each.
    """
    name: str
    items: tuple[IqaItem, ...]
    higher_is_better: bool
    score_kind: str
    score_range: tuple[float, float]
    notes: tuple[str, ...] = ()


# What to put where, for error messages and the TFDS manual-download notes.
LAYOUTS = {
    "koniq10k": """\
KonIQ-10k: in the dataset folder put
  koniq10k_scores_and_distributions.csv  (from the zip of that name; may
      stay in the koniq10k_scores_and_distributions/ folder it extracts to)
  1024x768/<image_name>  (the 10,073 JPEGs of koniq10k_1024x768.zip)""",
    "clive": """\
LIVE In the Wild Challenge (CLIVE): the dataset folder is ChallengeDB_release/
  Data/AllImages_release.mat, Data/AllMOS_release.mat,
  Data/AllStdDev_release.mat
  Images/<name>                 (the 1,162 test images)
  Images/trainingImages/<name>  (the 7 training images t1.bmp..t7.bmp)""",
    "kadid10k": """\
KADID-10k: the dataset folder is kadid10k/ (from kadid10k.zip), holding
  dmos.csv       (columns dist_img, ref_img, dmos, var)
  images/<name>  (the 10,125 distorted and 81 reference PNGs)""",
    "flive": """\
LIVE-FB (FLIVE, PaQ-2-PiQ): the dataset folder is FLIVE_Database/database/
  labels_image.csv  (columns name, mos)
  <name>            (each image at the relative path its row gives, e.g.
                     voc_emotic_ava/AVA__129332.jpg)
  optional, for the official split: labels640.csv (test; column name_image)
  and labels=640_padded.csv (validation where is_valid is true)""",
    "spaq": """\
SPAQ: in the dataset folder put
  Annotations/MOS and Image attribute scores.xlsx  (needs openpyxl; or save
      its sheet as Annotations/MOS and Image attribute scores.csv)
  TestImage/<Image name>  (the 11,125 JPEGs)""",
    "agiqa3k": """\
AGIQA-3K: in the dataset folder put
  data.csv         (columns name, prompt, adj1, adj2, style, mos_quality,
                    std_quality, mos_align, std_align)
  AGIQA-3K/<name>  (the 2,982 generated images)""",
    "csiq": """\
CSIQ: in the dataset folder put one score file:
  csiq.DMOS.xlsx  (sheet all_by_image; needs openpyxl), or
  csiq.DMOS.csv   (that sheet saved as CSV: columns image, dst_idx, dst_type,
                   dst_lev, dmos_std, dmos, below any title rows), or
  csiq_label.txt  (lines "<distorted name> <dmos>": "1600.AWGN.1.png 0.062")
and the distorted images as dst_imgs/<type>/<image>.<TYPE>.<level>.png
(types awgn, jpeg, jpeg2000, fnoise, blur, contrast), or all in dst_imgs/""",
    "live": """\
LIVE IQA release 2: in the dataset folder put
  refnames_all.mat
  dmos_realigned.mat (dmos_new, orgs, dmos_std); with realigned=False,
      dmos.mat (dmos, orgs) instead
  jp2k/img1..img227.bmp, jpeg/img1..img233.bmp, and img1..img174.bmp in
  each of wn/, gblur/, fastfading/""",
    "tid2013": """\
TID2013: in the dataset folder put
  mos_with_names.txt       (lines "<MOS> <name>": "5.51429 i01_01_1.bmp")
  mos_std.txt              (optional: one std a line, same order)
  distorted_images/<name>  (the 3,000 distorted images)""",
    "csv": """\
Generic CSV: in the dataset folder put
  scores.csv  (a header row, then a row per image: an image column named
      image_name, img_name, im_loc, name, image, dist_name, filename or
      path; a score column named mos, score, mos_zscore or dmos; optional
      std (std, sd, mos_std), split (split, set, phase) and reference
      (reference, ref, ref_img, ref_name, ref_image: each distorted
      image's pristine source) columns)
  the images at the paths the image column gives, relative to the folder""",
}


def _dataset_folder(root: str | os.PathLike, dataset: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset folder {str(root)!r} does "
                                f"not exist.\n{LAYOUTS[dataset]}")
    return root


def _score_file(root: Path, candidates: Sequence[str], dataset: str) -> Path:
    """The first of `candidates` (relative to root) that exists."""
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(
        f"{dataset}: found no {' or '.join(map(repr, candidates))} in "
        f"{str(root)!r}.\n{LAYOUTS[dataset]}")


class _ImageFolder:
    """Resolves image names from a score file, refusing any that leave it."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self._listings: dict[Path, dict[str, list[str]]] = {}

    def resolve(self, name: str, where: str) -> Path:
        """The existing file `name` inside the folder; `where` blames the row."""
        if "\0" in name:  # The OS refuses such paths, naming no row.
            raise IqaLayoutError(f"{where}: image name {name!r} contains a "
                                 "NUL byte")
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if (not parts or parts[0] == "/" or ".." in parts
                or PureWindowsPath(name).drive):
            raise IqaLayoutError(f"{where}: image path {name!r} is empty, "
                                 f"absolute or leads out of {self.folder}")
        candidate = self.folder.joinpath(*parts)
        if not candidate.exists():
            candidate = self._same_name_other_case(candidate) or candidate
        if not candidate.resolve().is_relative_to(self.folder):
            raise IqaLayoutError(f"{where}: image {name!r} links out of "
                                 f"{self.folder}")
        if not candidate.is_file():
            raise IqaLayoutError(f"{where}: image {name!r} not found in "
                                 f"{self.folder}")
        return candidate

    def _same_name_other_case(self, path: Path) -> Path | None:
        # TID2013, LIVE and CSIQ were made on Windows; their lists and files
        # sometimes differ in letter case only. Take a unique match.
        if path.parent not in self._listings:
            listing: dict[str, list[str]] = {}
            if path.parent.is_dir():
                for entry in os.listdir(path.parent):
                    listing.setdefault(entry.lower(), []).append(entry)
            self._listings[path.parent] = listing
        matches = self._listings[path.parent].get(path.name.lower(), [])
        return path.parent / matches[0] if len(matches) == 1 else None


class _RatedItems:
    """A score file's items, each image once, in file order.

    An image listed again (the same file, however spelt) raises
    IqaLayoutError naming both rows; with average=True its scores are
    averaged instead, its std dropped (the ratings behind the two are not
    known), and `notes` says so. hint ends the error message.
    """

    def __init__(self, *, average: bool = False, hint: str = ""):
        self._average, self._hint = average, hint
        # Real path -> (where first listed, item); real path -> its scores.
        self._first: dict[str, tuple[str, IqaItem]] = {}
        self._scores: dict[str, list[float]] = {}

    def add(self, where: str, item: IqaItem) -> None:
        key = os.path.realpath(item.path)
        if key not in self._first:
            self._first[key], self._scores[key] = (where, item), [item.score]
            return
        first_where, first = self._first[key]
        if not self._average:
            raise IqaLayoutError(
                f"{where}: image {item.name!r} (score {item.score:g}) is "
                f"already listed at {first_where} (score {first.score:g}); "
                f"remove one{self._hint}")
        if (item.split, item.reference) != (first.split, first.reference):
            raise IqaLayoutError(
                f"{where}: image {item.name!r} has another split or reference "
                f"than at {first_where}, so its scores cannot be averaged")
        self._scores[key].append(item.score)

    def unique(self) -> tuple[IqaItem, ...]:
        """The items, an image listed n times once with its mean score."""
        return tuple(
            item if len(self._scores[key]) == 1 else dataclasses.replace(
                item, score=float(np.mean(self._scores[key])), std=None)
            for key, (_, item) in self._first.items())

    def notes(self) -> tuple[str, ...]:
        """One line on the averaged images, if any."""
        repeated = [key for key, scores in self._scores.items()
                    if len(scores) > 1]
        if not repeated:
            return ()
        where, item = self._first[repeated[0]]
        return (f"{len(repeated)} image(s) listed more than once, their "
                f"scores averaged and std dropped (the first: {item.name!r} "
                f"at {where}, {len(self._scores[repeated[0]])} times)",)


def read_koniq10k(root: str | os.PathLike, *, score_column: str = "MOS",
                  image_folder: str = "1024x768") -> IqaDataset:
    """KonIQ-10k (Hosu et al. 2020): 10,073 in-the-wild photos, MOS.

    Reads koniq10k_scores_and_distributions.csv (at the root or in the
    folder of that name), columns image_name, c1..c5, c_total, MOS, SD,
    MOS_zscore. score_column="MOS": the 1-5 mean with SD as std;
    "MOS_zscore": the same rescaled to 0-100 (the scale of GRepQ's
    Evaluation/datasets/KONIQ.csv), no std. Higher is better. Images:
    <image_folder>/<image_name> (512x384 for the half-size release). No
    split: the official sets file is a separate download, not read here.
    """
    ranges = {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)}
    if score_column not in ranges:
        raise ValueError(f"score_column must be one of {list(ranges)}, got "
                         f"{score_column!r}")
    root = _dataset_folder(root, "koniq10k")
    name = "koniq10k_scores_and_distributions.csv"
    path = _score_file(root, [name, f"{Path(name).stem}/{name}"], "koniq10k")
    images = _ImageFolder(root / image_folder)
    items = _RatedItems()
    for where, row in iqa_tables.read_records(path, ["image_name", score_column, "SD"]):
        items.add(where, IqaItem(
            name=row["image_name"],
            path=str(images.resolve(row["image_name"], where)),
            score=iqa_tables.number_cell(row[score_column.lower()], where, score_column),
            std=iqa_tables.std_cell(row["sd"], where) if score_column == "MOS" else None))
    return IqaDataset("koniq10k", items.unique(), True, "MOS",
                      ranges[score_column])


def read_clive(root: str | os.PathLike, *,
               include_training_images: bool = False) -> IqaDataset:
    """LIVE In the Wild Challenge (Ghadiyaram & Bovik 2016), MOS 0-100.

    Reads Data/AllImages_release.mat (AllImages_release: cell of names),
    Data/AllMOS_release.mat (AllMOS_release) and, where present,
    Data/AllStdDev_release.mat (AllStdDev_release), all in the same order.
    Higher is better. The first 7 entries are the study's training images
    (Images/trainingImages/t1.bmp..t7.bmp); they are left out by default,
    giving the customary 1,162 test images. include_training_images=True
    keeps all 1,169, as GRepQ's own Evaluation/datasets/LIVEC.csv does.
    Other images: Images/<name>.
    """
    root = _dataset_folder(root, "clive")
    names_path = _score_file(root, ["Data/AllImages_release.mat"], "clive")
    mos_path = _score_file(root, ["Data/AllMOS_release.mat"], "clive")
    std_path = root / "Data/AllStdDev_release.mat"
    names = iqa_tables.mat_strings(names_path, "AllImages_release")
    mos = iqa_tables.mat_numbers(mos_path, "AllMOS_release")
    vectors = {f"{names_path}": names, f"{mos_path}": mos}
    stds = [None] * len(names)
    if std_path.is_file():
        stds = vectors[f"{std_path}"] = iqa_tables.mat_numbers(std_path,
                                                     "AllStdDev_release")
    iqa_tables.same_length(vectors)
    images = _ImageFolder(root / "Images")
    items = _RatedItems()
    for index, (name, score, std) in enumerate(zip(names, mos, stds)):
        is_training = index < 7
        if is_training and not include_training_images:
            continue
        name = f"trainingImages/{name}" if is_training else name
        where = f"{mos_path}, entry {index + 1}"
        items.add(where, IqaItem(
            name=name, path=str(images.resolve(name, where)),
            score=iqa_tables.number_cell(str(score), where, "MOS"),
            std=None if std is None else iqa_tables.std_cell(str(std), where)))
    return IqaDataset("clive", items.unique(), True, "MOS", (0.0, 100.0))


def read_kadid10k(root: str | os.PathLike) -> IqaDataset:
    """KADID-10k (Lin et al. 2019): 10,125 synthetically distorted images.

    Reads dmos.csv, columns dist_img, ref_img, dmos, var; images/<dist_img>.
    The authors call the score DMOS, but it is a mean degradation rating on
    1-5 where higher is better (5: imperceptible); std = sqrt(var).
    reference is ref_img.
    """
    root = _dataset_folder(root, "kadid10k")
    path = _score_file(root, ["dmos.csv"], "kadid10k")
    images = _ImageFolder(root / "images")
    items = _RatedItems()
    for where, row in iqa_tables.read_records(path, ["dist_img", "ref_img", "dmos",
                                           "var"]):
        variance = iqa_tables.std_cell(row["var"], where)  # Same checks: >= 0 or empty.
        items.add(where, IqaItem(
            name=row["dist_img"],
            path=str(images.resolve(row["dist_img"], where)),
            score=iqa_tables.number_cell(row["dmos"], where, "dmos"),
            std=None if variance is None else math.sqrt(variance),
            reference=row["ref_img"]))
    return IqaDataset("kadid10k", items.unique(), True, "DMOS", (1.0, 5.0))


def _flive_splits(root: Path) -> dict[str, str]:
    """Image name -> official split, from the optional split files."""
    test_path = root / "labels640.csv"
    valid_path = root / "labels=640_padded.csv"
    if not (test_path.is_file() and valid_path.is_file()):
        return {}
    splits = {}
    for where, row in iqa_tables.read_records(valid_path, ["name_image", "is_valid"]):
        if row["is_valid"].lower() not in ("true", "false", "1", "0"):
            raise IqaLayoutError(f"{where}: is_valid {row['is_valid']!r} is "
                                 "not true/false")
        if row["is_valid"].lower() in ("true", "1"):
            splits[row["name_image"]] = "validation"
    for _, row in iqa_tables.read_records(test_path, ["name_image"]):
        splits[row["name_image"]] = "test"
    return splits


def read_flive(root: str | os.PathLike) -> IqaDataset:
    """LIVE-FB / FLIVE (Ying et al. 2020, PaQ-2-PiQ): ~40k photos, MOS.

    Reads labels_image.csv, columns name, mos (0-100, higher is better);
    each image is at root/<name>. The split follows the PaQ-2-PiQ
    preparation as pyiqa does: "test" for the name_image entries of
    labels640.csv, "validation" for those of labels=640_padded.csv whose
    is_valid is true, "train" otherwise; None when either file is absent.
    Patch labels (labels_patch.csv) are not read.
    """
    root = _dataset_folder(root, "flive")
    path = _score_file(root, ["labels_image.csv"], "flive")
    splits = _flive_splits(root)
    images = _ImageFolder(root)
    items = _RatedItems()
    for where, row in iqa_tables.read_records(path, ["name", "mos"]):
        items.add(where, IqaItem(
            name=row["name"], path=str(images.resolve(row["name"], where)),
            score=iqa_tables.number_cell(row["mos"], where, "mos"),
            split=splits.get(row["name"], "train") if splits else None))
    return IqaDataset("flive", items.unique(), True, "MOS", (0.0, 100.0))


def read_spaq(root: str | os.PathLike) -> IqaDataset:
    """SPAQ (Fang et al. 2020): 11,125 smartphone photos, MOS 0-100.

    Reads "Annotations/MOS and Image attribute scores.xlsx" (first sheet;
    needs openpyxl) or the same sheet saved as .csv beside it (preferred
    when both exist); columns "Image name", "MOS" (then Brightness,
    Colorfulness, Contrast, Noisiness, Sharpness, not read). Higher is
    better. Images: TestImage/<Image name>, at full camera resolution.
    """
    root = _dataset_folder(root, "spaq")
    stem = "Annotations/MOS and Image attribute scores"
    path = _score_file(root, [f"{stem}.csv", f"{stem}.xlsx"], "spaq")
    images = _ImageFolder(root / "TestImage")
    items = _RatedItems()
    for where, row in iqa_tables.read_records(path, ["Image name", "MOS"]):
        items.add(where, IqaItem(
            name=row["image name"],
            path=str(images.resolve(row["image name"], where)),
            score=iqa_tables.number_cell(row["mos"], where, "MOS")))
    return IqaDataset("spaq", items.unique(), True, "MOS", (0.0, 100.0))


def read_agiqa3k(root: str | os.PathLike, *,
                 aspect: str = "quality") -> IqaDataset:
    """AGIQA-3K (Li et al. 2023): 2,982 AI-generated images, MOS.

    Reads data.csv, columns name, prompt, adj1, adj2, style, mos_quality,
    std_quality, mos_align, std_align: aspect="quality" (default) gives
    mos_quality / std_quality, "align" the text-image alignment pair.
    Higher is better; the nominal range 0-5 is our reading of the paper's
    normalisation, not stated in the file. Images: AGIQA-3K/<name>.
    """
    if aspect not in ("quality", "align"):
        raise ValueError(f"aspect must be 'quality' or 'align', got "
                         f"{aspect!r}")
    root = _dataset_folder(root, "agiqa3k")
    path = _score_file(root, ["data.csv"], "agiqa3k")
    images = _ImageFolder(root / "AGIQA-3K")
    mos, std = f"mos_{aspect}", f"std_{aspect}"
    items = _RatedItems()
    for where, row in iqa_tables.read_records(path, ["name", mos, std]):
        items.add(where, IqaItem(
            name=row["name"], path=str(images.resolve(row["name"], where)),
            score=iqa_tables.number_cell(row[mos], where, mos), std=iqa_tables.std_cell(row[std], where)))
    return IqaDataset("agiqa3k", items.unique(), True, "MOS", (0.0, 5.0))


# CSIQ sheet dst_type -> (folder in dst_imgs/, token in the file name).
_CSIQ_TYPES = {"noise": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"),
               "jpeg 2000": ("jpeg2000", "jpeg2000"),
               "fnoise": ("fnoise", "fnoise"), "blur": ("blur", "BLUR"),
               "contrast": ("contrast", "contrast")}


def _csiq_rows(path: Path) -> Iterable[tuple]:
    """(where, reference, distorted name, dmos, std) from any score file."""
    if path.suffix == ".txt":
        for where, (name, dmos) in iqa_tables.read_fields(path, 2):
            yield where, name.split(".")[0], name, iqa_tables.number_cell(dmos, where,
                                                           "dmos"), None
        return
    records = iqa_tables.read_records(path, ["image", "dst_type", "dst_lev", "dmos"],
                            ["dmos_std"], sheet="all_by_image")
    for where, row in records:
        if row["dst_type"].lower() not in _CSIQ_TYPES:
            raise IqaLayoutError(f"{where}: unknown dst_type "
                                 f"{row['dst_type']!r}")
        token = _CSIQ_TYPES[row["dst_type"].lower()][1]
        level = iqa_tables.number_cell(row["dst_lev"], where, "dst_lev")
        if not level.is_integer():
            raise IqaLayoutError(f"{where}: dst_lev {row['dst_lev']!r} is not "
                                 "a whole number")
        name = f"{row['image']}.{token}.{int(level)}.png"
        yield (where, row["image"], name, iqa_tables.number_cell(row["dmos"], where, "dmos"),
               iqa_tables.std_cell(row.get("dmos_std", ""), where))


def read_csiq(root: str | os.PathLike) -> IqaDataset:
    """CSIQ (Larson & Chandler 2010): 866 distorted images of 30, DMOS.

    Reads the first present of: csiq.DMOS.csv (the all_by_image sheet of
    the authors' csiq.DMOS.xlsx saved as CSV; columns image, dst_idx,
    dst_type, dst_lev, dmos_std, dmos below any title rows),
    csiq.DMOS.xlsx itself (needs openpyxl), csiq_label.txt (lines
    "<distorted name> <dmos>", no std). DMOS on 0-1, lower is better.
    Images: dst_imgs/<type>/<image>.<TYPE>.<level>.png (type folders awgn,
    jpeg, jpeg2000, fnoise, blur, contrast), or directly in dst_imgs/.
    reference is the source name, e.g. "1600". The sheet-to-file-name
    mapping follows public readers; the authors do not document it.
    """
    root = _dataset_folder(root, "csiq")
    path = _score_file(root, ["csiq.DMOS.csv", "csiq.DMOS.xlsx",
                              "csiq_label.txt"], "csiq")
    images = _ImageFolder(root / "dst_imgs")
    items = _RatedItems()
    for where, reference, name, dmos, std in _csiq_rows(path):
        kind = name.split(".")[1].lower() if name.count(".") >= 2 else ""
        in_folder = f"{kind}/{name}"
        if (not (images.folder / in_folder).exists()
                and (images.folder / name).exists()):
            in_folder = name  # The flattened layout.
        items.add(where, IqaItem(name=in_folder,
                                 path=str(images.resolve(in_folder, where)),
                                 score=dmos, std=std, reference=reference))
    return IqaDataset("csiq", items.unique(), False, "DMOS", (0.0, 1.0))


# LIVE release 2 lists its 982 images folder by folder in this order.
_LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174),
                 ("fastfading", 174))


def read_live(root: str | os.PathLike, *,
              realigned: bool = True) -> IqaDataset:
    """LIVE IQA release 2 (Sheikh et al. 2006): 779 distorted images, DMOS.

    Reads refnames_all.mat (refnames_all: the source of each entry) and
    dmos_realigned.mat (dmos_new, orgs, dmos_std; the realigned scores most
    NR-IQA papers use) or, with realigned=False, dmos.mat (dmos, orgs; no
    std). The 982 entries are jp2k/img1..227.bmp, jpeg/img1..233.bmp, then
    img1..174.bmp of wn/, gblur/ and fastfading/; the 203 whose orgs flag
    is 1 are copies of the references and are left out. DMOS, lower is
    better, nominally 0-100 (realigned values run slightly outside).
    The folders' info.txt files are not needed and not read.
    """
    root = _dataset_folder(root, "live")
    refs_path = _score_file(root, ["refnames_all.mat"], "live")
    dmos_path = _score_file(
        root, ["dmos_realigned.mat" if realigned else "dmos.mat"], "live")
    references = iqa_tables.mat_strings(refs_path, "refnames_all")
    dmos = iqa_tables.mat_numbers(dmos_path, "dmos_new" if realigned else "dmos")
    orgs = iqa_tables.mat_numbers(dmos_path, "orgs")
    vectors = {f"{refs_path}: refnames_all": references,
               f"{dmos_path}: scores": dmos, f"{dmos_path}: orgs": orgs}
    stds = [None] * len(dmos)
    if realigned:
        stds = vectors[f"{dmos_path}: dmos_std"] = iqa_tables.mat_numbers(dmos_path,
                                                                "dmos_std")
    iqa_tables.same_length(vectors, expected=sum(count for _, count in _LIVE_FOLDERS))
    names = [f"{folder}/img{k}.bmp" for folder, count in _LIVE_FOLDERS
             for k in range(1, count + 1)]
    images = _ImageFolder(root)
    items = _RatedItems()
    for index, name in enumerate(names):
        where = f"{dmos_path}, entry {index + 1}"
        if orgs[index] not in (0, 1):
            raise IqaLayoutError(f"{where}: orgs flag {orgs[index]} is not "
                                 "0 or 1")
        if orgs[index] == 1:
            continue
        std = stds[index]
        items.add(where, IqaItem(
            name=name, path=str(images.resolve(name, where)),
            score=iqa_tables.number_cell(str(dmos[index]), where, "DMOS"),
            std=None if std is None else iqa_tables.std_cell(str(std), where),
            reference=references[index]))
    return IqaDataset("live", items.unique(), False, "DMOS", (0.0, 100.0))


def read_tid2013(root: str | os.PathLike) -> IqaDataset:
    """TID2013 (Ponomarenko et al. 2015): 3,000 distorted images of 25.

    Reads mos_with_names.txt (lines "<MOS> <name>") and, where present,
    mos_std.txt (one std a line, same order). MOS on 0-9, higher is
    better. Images: distorted_images/<name> (letter case may differ, as in
    the release). reference is the source id from the name, "I01".."I25".
    """
    root = _dataset_folder(root, "tid2013")
    path = _score_file(root, ["mos_with_names.txt"], "tid2013")
    rows = iqa_tables.read_fields(path, 2)
    std_path = root / "mos_std.txt"
    stds = ([fields[0] for _, fields in iqa_tables.read_fields(std_path, 1)]
            if std_path.is_file() else [""] * len(rows))
    iqa_tables.same_length({f"{path}": rows, f"{std_path}": stds})
    images = _ImageFolder(root / "distorted_images")
    items = _RatedItems()
    for (where, (mos, name)), std in zip(rows, stds):
        items.add(where, IqaItem(
            name=name, path=str(images.resolve(name, where)),
            score=iqa_tables.number_cell(mos, where, "MOS"), std=iqa_tables.std_cell(std, where),
            reference=name[:3].upper()))
    return IqaDataset("tid2013", items.unique(), True, "MOS", (0.0, 9.0))


# Column names the common IQA toolboxes use, most specific first.
_CSV_IMAGE_COLUMNS = ("image_name", "img_name", "im_loc", "name", "image",
                      "dist_name", "filename", "path")
_CSV_SCORE_COLUMNS = ("mos", "score", "mos_zscore", "dmos")
_CSV_STD_COLUMNS = ("std", "sd", "mos_std")
_CSV_SPLIT_COLUMNS = ("split", "set", "phase")
_CSV_REFERENCE_COLUMNS = ("reference", "ref", "ref_img", "ref_name",
                          "ref_image")


def _csv_header(path: Path) -> list[str]:
    table = iqa_tables.read_csv_table(path)
    if not table:
        raise IqaLayoutError(f"{path}: the file is empty")
    return [cell.strip().lower() for cell in table[0][1]]


def _pick_column(header: list[str], given: str | None,
                 candidates: Sequence[str], what: str, path: Path,
                 required: bool) -> str | None:
    if given is not None:
        if given.lower() not in header:
            raise IqaLayoutError(f"{path}, line 1: no {what} column "
                                 f"{given!r} (has {header})")
        return given.lower()
    found = next((name for name in candidates if name in header), None)
    if found is None and required:
        raise IqaLayoutError(f"{path}, line 1: no {what} column; name one of "
                             f"{list(candidates)} or pass it (has {header})")
    return found


def read_generic_csv(root: str | os.PathLike, *,
                     csv_file: str = "scores.csv", image_folder: str = "",
                     image_column: str | None = None,
                     score_column: str | None = None,
                     std_column: str | None = None,
                     split_column: str | None = None,
                     reference_column: str | None = None,
                     higher_is_better: bool | None = None,
                     score_range: tuple[float, float] | None = None,
                     duplicates: str = "error") -> IqaDataset:
    """Any dataset listed in a CSV, as the common IQA toolboxes write them.

    Reads root/<csv_file>: a header row, then one row per image. Columns
    not named are found by the usual names (case-insensitive): image
    image_name/img_name/im_loc/name/image/filename/path, score
    mos/score/mos_zscore/dmos, std std/sd/mos_std, split split/set/phase,
    reference (the pristine source of a synthetically distorted image, so
    evaluation splits by content) reference/ref/ref_img/ref_name/ref_image;
    empty cells: None. Images: root/<image_folder>/<image>. score_kind is
    "DMOS" for a column named dmos, else "MOS". higher_is_better defaults to
    True, but must be given for a dmos column: KADID-10k's rises with
    quality, LIVE's and CSIQ's fall. score_range defaults to the observed
    (min, max). An image listed twice is an error naming both rows, unless
    duplicates="average": then it gets the mean of its scores, no std, and
    the dataset's notes say so.
    """
    if duplicates not in ("error", "average"):
        raise ValueError(f"duplicates must be 'error' or 'average', got "
                         f"{duplicates!r}")
    root = _dataset_folder(root, "csv")
    path = _score_file(root, [csv_file], "csv")
    header = _csv_header(path)
    image = _pick_column(header, image_column, _CSV_IMAGE_COLUMNS, "image",
                         path, True)
    score = _pick_column(header, score_column, _CSV_SCORE_COLUMNS, "score",
                         path, True)
    optional = {what: _pick_column(header, given, candidates, what, path,
                                   False)
                for what, given, candidates in (
                    ("std", std_column, _CSV_STD_COLUMNS),
                    ("split", split_column, _CSV_SPLIT_COLUMNS),
                    ("reference", reference_column, _CSV_REFERENCE_COLUMNS))}
    is_dmos = score == "dmos"
    if is_dmos and higher_is_better is None:
        raise ValueError(f"{path}: a 'dmos' column may run either way; pass "
                         "higher_is_better (or name the column mos/score)")
    images = _ImageFolder(root / image_folder)
    items = _RatedItems(average=duplicates == "average",
                        hint=', or pass duplicates="average" to average them')
    std, split, reference = optional.values()
    for where, row in iqa_tables.read_records(path, [image, score],
                                    [c for c in optional.values() if c]):
        items.add(where, IqaItem(
            name=row[image], path=str(images.resolve(row[image], where)),
            score=iqa_tables.number_cell(row[score], where, score),
            std=iqa_tables.std_cell(row[std], where) if std else None,
            split=(row[split] or None) if split else None,
            reference=(row[reference] or None) if reference else None))
    rated = items.unique()
    if not rated:
        raise IqaLayoutError(f"{path}: no rows after the header")
    scores = [item.score for item in rated]
    return IqaDataset(
        "csv", rated, True if higher_is_better is None else higher_is_better,
        "DMOS" if is_dmos else "MOS",
        score_range or (min(scores), max(scores)),
        notes=tuple(f"{path}: {note}" for note in items.notes()))


DATASETS: dict[str, Callable[..., IqaDataset]] = {
    "koniq10k": read_koniq10k,
    "clive": read_clive,
    "kadid10k": read_kadid10k,
    "flive": read_flive,
    "spaq": read_spaq,
    "agiqa3k": read_agiqa3k,
    "csiq": read_csiq,
    "live": read_live,
    "tid2013": read_tid2013,
    "csv": read_generic_csv,
}


def load_iqa_dataset(name: str, root: str | os.PathLike,
                     **kwargs) -> IqaDataset:
    """DATASETS[name](root, **kwargs), or ValueError listing the names."""
    if name not in DATASETS:
        raise ValueError(f"unknown IQA dataset {name!r}; known: "
                         f"{', '.join(DATASETS)}")
    return DATASETS[name](root, **kwargs)
