"""IQA datasets written for the evaluation tests, and a stand-in model whose
quality measure is known (the image's sharpness), so what `grepq evaluate`
reports depends only on the protocol."""
import numpy as np
from PIL import Image, ImageFilter
import pytest

from grepq_jax.evaluation import report
from grepq_jax.commands import cli, evaluate
from grepq_jax.evaluation import feature_cache
from grepq_jax.formats import corpus
from grepq_jax.scoring import quality_model as qm

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_csv_dataset(root, count, seed, *, broken=False):
    """`count` 128x160 crops of a photograph, blurred and noised by a random
    quality q, with MOS = 1 + 4 q; optionally one undecodable file."""
    rng = np.random.default_rng(seed)
    photo = corpus.load_embedded_photograph("skimage:coffee")
    (root / "images").mkdir(parents=True)
    lines = ["image,mos"]
    for i in range(count):
        q = rng.uniform()
        y, x = rng.integers(0, 200, size=2)
        crop = Image.fromarray(np.round(photo[y:y + 128, x:x + 160] * 255).astype(np.uint8))
        pixels = np.asarray(crop.filter(ImageFilter.GaussianBlur(3 * (1 - q))), np.float64)
        pixels = pixels + rng.normal(0, 30 * (1 - q), pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{i:02d}.png")
        lines.append(f"images/{i:02d}.png,{1 + 4 * q:.4f}")
    if broken:
        (root / "images" / "broken.png").write_text("not a png")
        lines.append("images/broken.png,3.0")
    (root / "scores.csv").write_text("\n".join(lines) + "\n")
    return root


BLUR_PHOTOS = ("skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:rocket",
               "skimage:motorcycle", "sklearn:china", "sklearn:flower", "skimage:camera")


def write_blur_dataset(root, seed=0, versions=8):
    """`versions` blurred versions of each of 8 photographs (96x72) with
    MOS = 1 + 4 q (plus rating noise, sd 0.1) for blur sigma 2.5 (1 - q), and
    sensor noise (sd 2 of 255); scores.csv (mos) and dmos.csv (dmos = 25 (5 -
    mos), falling with quality) with a reference column."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    mos_rows, dmos_rows = ["image,reference,mos"], ["image,reference,dmos"]
    for photo_name in BLUR_PHOTOS:
        pixels = np.round(corpus.load_embedded_photograph(photo_name) * 255)
        photo = Image.fromarray(pixels.astype(np.uint8)).resize((96, 72), Image.BILINEAR)
        reference = photo_name.split(":")[1]
        for k in range(versions):
            q = rng.uniform()
            blurred = np.asarray(photo.filter(ImageFilter.GaussianBlur(2.5 * (1 - q))),
                                 np.float64)
            noisy = np.clip(blurred + rng.normal(0, 2, blurred.shape), 0, 255)
            name = f"images/{reference}_{k}.png"
            Image.fromarray(noisy.astype(np.uint8)).save(root / name)
            mos = 1 + 4 * q + rng.normal(0, 0.1)
            mos_rows.append(f"{name},{reference}.png,{mos:.4f}")
            dmos_rows.append(f"{name},{reference}.png,{25 * (5 - mos):.4f}")
    (root / "scores.csv").write_text("\n".join(mos_rows) + "\n")
    (root / "dmos.csv").write_text("\n".join(dmos_rows) + "\n")
    return root


def log_sharpness(image: np.ndarray, scale: int = 1) -> float:
    """log variance of the 4-neighbour Laplacian of the (H, W, 3) image's gray
    level, after `scale` x `scale` mean pooling: higher means sharper."""
    gray = image.mean(-1)
    if scale > 1:
        height, width = (side // scale * scale for side in gray.shape)
        gray = gray[:height, :width].reshape(height // scale, scale, width // scale,
                                             scale).mean((1, 3))
    laplacian = (4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1]
                 - gray[1:-1, :-2] - gray[1:-1, 2:])
    return float(np.log(laplacian.var() + 1e-8))


class SharpnessModel:
    """Stands in for a low-level-only QualityModel: its zero-shot score is the
    image's sharpness, its features [sharpness at 1x and 2x, log contrast,
    mean level]. Nothing is learnt, so what the protocol reports depends
    only on the protocol."""
    parts = ["low_level"]
    low_level, high_level = True, None

    def regression_needs(self):
        return frozenset({"low_level_features"})

    def analyse(self, items, *, needs, batch_size):
        for key, image in items:
            if isinstance(image, Exception):
                yield key, image
                continue
            features = np.array([log_sharpness(image), log_sharpness(image, 2),
                                 np.log(image.mean(-1).var()), image.mean()], np.float32)
            yield key, qm.ImageAnalysis(
                low_level_score=log_sharpness(image),
                low_level_features={"projection": features, "pooled": features})


@pytest.fixture
def stand_in(monkeypatch):
    """evaluate loads SharpnessModel whatever --model says."""
    monkeypatch.setattr(report, "load_model", lambda folder, chunk: SharpnessModel())
    monkeypatch.setattr(feature_cache, "_model_files_digest", lambda folder: "sharpness")


@pytest.fixture(scope="module")
def blur_root(tmp_path_factory):
    return write_blur_dataset(tmp_path_factory.mktemp("blur"))


def run_cli(*flags):
    """The exit status of the command (with the stand-in model) and these flags."""
    argv = ["evaluate", "--model=stand-in", "--dataset=csv", *flags]
    return evaluate.main(cli.parse(evaluate.FLAGS, argv))
