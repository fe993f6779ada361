"""TensorFlow Datasets builders for the IQA datasets of iqa_datasets.

One builder per iqa_datasets.DATASETS entry, in BUILDERS. Each reads the
files from the manual download folder with the same reader, so the same
checks run, and stores every image's original file bytes (not re-encoded).
Features: image (uint8 RGB), score and std (float32, std NaN when absent),
name and reference ("" when absent). Splits: the dataset's own where it has
them (FLIVE, a generic CSV's split column; rows without one go to "train"),
else one "train" split. info.metadata holds higher_is_better, score_kind
and score_range.

    builder = BUILDERS["koniq10k"](data_dir="/data/tfds")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/data/koniq10k"))
    dataset = builder.as_dataset(split="train")

The builders are not added to TFDS's registry (no tfds.load by name):
importing this module changes nothing global. TensorFlow Datasets is an
extra (`pip install -e '.[tfds]'`); without it, importing this module raises
ImportError saying so.
"""
import collections
import os

import numpy as np

from grepq_jax.evaluation import iqa_datasets

try:
    import tensorflow_datasets as tfds
except ImportError as error:
    # The one line a user sees: what is missing and the command that adds it.
    raise ImportError(
        f"grepq_jax.evaluation.tfds_iqa needs TensorFlow Datasets (no module "
        f"{error.name}), an extra: pip install -e '.[tfds]'",
        name=error.name) from None

# The formats tf.image.decode_image reads, so a stored image can be decoded.
_DECODABLE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})


def _check_decodable(item: iqa_datasets.IqaItem) -> None:
    if os.path.splitext(item.path)[1].lower() not in _DECODABLE_SUFFIXES:
        raise ValueError(f"{item.path}: TFDS image features decode only "
                         f"{sorted(_DECODABLE_SUFFIXES)}; convert it first")


def _builder_class(dataset: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """A GeneratorBasedBuilder reading DATASETS[dataset] from manual_dir."""
    read = iqa_datasets.DATASETS[dataset]

    class IqaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = iqa_datasets.LAYOUTS[dataset]
        # Nothing is downloaded, so there is no checksums file to look for;
        # looking would also need importlib_resources, not always installed.
        code_path = None

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                description=read.__doc__.split("\n", 1)[0],
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "score": np.float32,
                    "std": np.float32,
                    "name": tfds.features.Text(),
                    "reference": tfds.features.Text(),
                }),
                # Filled from the files in _split_generators; saved after it.
                metadata=tfds.core.MetadataDict(),
            )

        def _split_generators(self, dl_manager):
            data = read(dl_manager.manual_dir)
            self.info.metadata.update(
                higher_is_better=data.higher_is_better,
                score_kind=data.score_kind,
                score_range=list(data.score_range))
            splits = collections.defaultdict(list)
            for item in data.items:
                _check_decodable(item)
                splits[item.split or "train"].append(item)
            return {split: self._generate_examples(items)
                    for split, items in splits.items()}

        def _generate_examples(self, items):
            for index, item in enumerate(items):
                yield index, {
                    "image": item.path,  # A path: TFDS stores its bytes.
                    "score": item.score,
                    "std": np.nan if item.std is None else item.std,
                    "name": item.name,
                    "reference": item.reference or "",
                }

    IqaBuilder.name = f"iqa_{dataset}"
    IqaBuilder.__name__ = IqaBuilder.__qualname__ = (
        f"Iqa{dataset.capitalize()}Builder")
    return IqaBuilder


BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    dataset: _builder_class(dataset) for dataset in iqa_datasets.DATASETS}
