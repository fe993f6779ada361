"""Ridge regression from cached features to MOS, and the evaluation protocols.

The original GRepQ repository publishes only the feature extraction
(get_concatenated_features.py saves [high-level, low-level] features per
image); its regressor and split code are not released, so the choices here
are ours and stated: features standardised with the training split's
mean/std (ddof=0, a zero std treated as 1); the intercept is not penalised;
alpha chosen by K-fold CV on mean squared error, inside the training split
only; PLCC's mapping fitted on the test predictions, as test_zeroshot.py does.

Splits. Authentic-distortion datasets (one image per content) are split by
image: n training images at random, the rest is the test set. Synthetic-
distortion datasets (many distorted versions of each pristine reference)
are split by reference, so that no content is seen in training and again in
testing: round(REFERENCE_TEST_FRACTION * R) (at least 1) of the R
references are drawn at random and all their images form the test set
(the 80/20 content split of the literature); the n labelled images are
drawn at random from the images of the other references, the rest of which
are left unused. n is thus the number of labelled images in both cases.
Within the n training images, the CV folds that choose alpha are per image.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np

from grepq_jax.evaluation import correlation
from grepq_jax.scoring.ridge import RidgeRegressor

# A four-parameter PLCC mapping needs more test points than parameters.
_MIN_TEST_IMAGES = 5
# Share of the references whose images form the test set (by reference).
REFERENCE_TEST_FRACTION = 0.2


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeRegressor:
    """Closed-form ridge on standardised x (N, C), y (N,); alpha > 0.

    Solves the smaller of the primal (C x C) and dual (N x N) systems; both
    give w = (Z^T Z + alpha I)^-1 Z^T (y - mean(y)).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z, target = (x - mean) / scale, y - y.mean()
    num, dim = z.shape
    if dim <= num:
        weights = np.linalg.solve(z.T @ z + alpha * np.eye(dim), z.T @ target)
    else:
        weights = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(num), target)
    return RidgeRegressor(mean=mean, scale=scale, weights=weights,
                          intercept=float(y.mean()), alpha=float(alpha))


def cross_validation_errors(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], *,
                            folds: int, seed: int) -> np.ndarray:
    """Out-of-fold mean squared error per alpha -> (len(alphas),).

    The N rows are shuffled (seeded) and split into `folds` near-equal folds;
    each fold is predicted by a ridge fitted (and standardised) on the others.
    """
    num = len(y)
    if not 2 <= folds <= num:
        raise ValueError(f"need 2 <= folds <= number of samples, got {folds} folds "
                         f"for {num} samples")
    fold_of = np.empty(num, int)
    fold_of[np.random.default_rng(seed).permutation(num)] = np.arange(num) % folds
    squared = np.zeros(len(alphas))
    for fold in range(folds):
        held = fold_of == fold
        for i, alpha in enumerate(alphas):
            model = fit_ridge(x[~held], y[~held], alpha)
            squared[i] += np.sum((model.predict(x[held]) - y[held])**2)
    return squared / num


def fit_ridge_cv(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = (0.1, 1, 10, 100),
                 *, folds: int = 5, seed: int) -> RidgeRegressor:
    """Ridge on all of x (N, C), y (N,) with the alpha of least CV error.

    Ties go to the earliest alpha in `alphas`.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    errors = cross_validation_errors(x, y, alphas, folds=folds, seed=seed)
    return fit_ridge(x, y, alphas[int(np.argmin(errors))])


@dataclasses.dataclass(frozen=True)
class SplitResults:
    """Per-split outcomes for one number of labelled (training) images.

    train_indices: (S, n) int rows used for training in each of S splits;
    test_indices: S arrays of the rows tested (by image: all the others; by
    reference: the held-out references' images, so sizes may differ);
    split_by: "image" or "reference"; srocc, plcc, alpha: (S,) float64.
    """
    num_train: int
    train_indices: np.ndarray
    test_indices: tuple[np.ndarray, ...]
    split_by: str
    srocc: np.ndarray
    plcc: np.ndarray
    alpha: np.ndarray

    @property
    def num_test(self) -> np.ndarray:
        """(S,) int: the test set's size in each split."""
        return np.array([len(test) for test in self.test_indices])

    def median_split(self) -> int:
        """The split whose SROCC is the median (of an even count: the lower
        of the middle two)."""
        return int(np.argsort(self.srocc, kind="stable")[(len(self.srocc) - 1) // 2])

    def summary(self) -> dict[str, float]:
        """Median, std (ddof=0) and interquartile range of SROCC and PLCC."""
        out = {}
        for name in ("srocc", "plcc"):
            values = getattr(self, name)
            low, high = np.percentile(values, [25, 75])
            out |= {f"median_{name}": float(np.median(values)),
                    f"std_{name}": float(np.std(values)), f"iqr_{name}": float(high - low)}
        return out


def evaluate_regressor(model: RidgeRegressor, x: np.ndarray, y: np.ndarray,
                       mapping: str) -> tuple[float, float]:
    """(SROCC, PLCC) of model.predict(x) (N, C) against y (N,)."""
    pred = model.predict(x)
    try:
        return correlation.srocc(pred, y), correlation.plcc(pred, y, mapping)
    except correlation.UndefinedCorrelation as error:
        raise correlation.UndefinedCorrelation(
            f"the ridge (alpha {model.alpha}) tested on {len(y)} images: {error}") from None


def split_indices(num_images: int, num_train: int, split: int, *,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train (num_train,), test (num_images - num_train,)) sorted, disjoint rows.

    Drawn by the generator seeded with (seed, num_train, split), so each split
    is reproducible on its own.
    """
    order = np.random.default_rng([seed, num_train, split]).permutation(num_images)
    return np.sort(order[:num_train]), np.sort(order[num_train:])


def _held_out_references(num_references: int) -> int:
    return max(1, round(REFERENCE_TEST_FRACTION * num_references))


def split_by_reference(groups: np.ndarray, num_train: int, split: int, *,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train (num_train,), test) sorted rows; no reference in both.

    groups: (N,) the reference of each image (any comparable labels). The
    test set is every image of round(REFERENCE_TEST_FRACTION * R) (at least
    1) references drawn at random; the training images are num_train drawn
    at random from the images of the other references. Drawn by the
    generator seeded with (seed, num_train, split), as `split_indices`.
    """
    groups = np.asarray(groups)
    references = np.unique(groups)
    if len(references) < 2:
        raise ValueError(f"splitting by reference needs at least 2 references, "
                         f"got {len(references)}")
    rng = np.random.default_rng([seed, num_train, split])
    held_out = rng.permutation(references)[:_held_out_references(len(references))]
    is_test = np.isin(groups, held_out)
    pool = np.flatnonzero(~is_test)
    if num_train > len(pool):
        raise ValueError(f"num_train {num_train} is more than the {len(pool)} images "
                         f"of the training references of split {split}")
    return np.sort(rng.choice(pool, num_train, replace=False)), np.flatnonzero(is_test)


def check_num_train(num_train: int, num_images: int, *, groups=None, folds: int = 5) -> None:
    """Raises ValueError unless every split with num_train labelled images
    has at least `folds` training and _MIN_TEST_IMAGES test images.

    groups: (num_images,) references to split by, or None (split by image).
    By reference, the worst cases are checked: the largest references held
    out (fewest left to train from) and the smallest (fewest to test on).
    """
    if groups is None:
        if not folds <= num_train <= num_images - _MIN_TEST_IMAGES:
            raise ValueError(f"num_train {num_train} must be >= folds ({folds}) and "
                             f"leave at least {_MIN_TEST_IMAGES} of the {num_images} "
                             "images for testing")
        return
    sizes = np.sort(np.unique(np.asarray(groups), return_counts=True)[1])
    if len(sizes) < 2:
        raise ValueError(f"splitting by reference needs at least 2 references, "
                         f"got {len(sizes)}")
    held = _held_out_references(len(sizes))
    fewest_train, fewest_test = num_images - sizes[-held:].sum(), sizes[:held].sum()
    if fewest_test < _MIN_TEST_IMAGES:
        raise ValueError(f"holding out {held} of {len(sizes)} references leaves as few "
                         f"as {fewest_test} images for testing; at least "
                         f"{_MIN_TEST_IMAGES} are needed")
    if not folds <= num_train <= fewest_train:
        raise ValueError(f"num_train {num_train} must be >= folds ({folds}) and at most "
                         f"{fewest_train}: holding out {held} of the {len(sizes)} "
                         f"references for testing leaves as few as {fewest_train} "
                         "images to train from")


def _one_split(features, scores, num_train, split, *, groups, seed, alphas, folds,
               mapping):
    if groups is None:
        train, test = split_indices(len(scores), num_train, split, seed=seed)
    else:
        train, test = split_by_reference(groups, num_train, split, seed=seed)
    cv_seed = int(np.random.SeedSequence([seed, num_train, split, 1]).generate_state(1)[0])
    model = fit_ridge_cv(features[train], scores[train], alphas, folds=folds, seed=cv_seed)
    return (train, test, model.alpha,
            evaluate_regressor(model, features[test], scores[test], mapping))


def data_efficient_protocol(features: np.ndarray, scores: np.ndarray, *,
                            num_train: Sequence[int] = (50,), num_splits: int = 10,
                            seed: int, mapping: str = "poly3", groups=None,
                            alphas: Sequence[float] = (0.1, 1, 10, 100),
                            folds: int = 5) -> dict[int, SplitResults]:
    """Ridge from n labelled images, tested on unseen ones, over random splits.

    features: (N, C) cached per image; scores: (N,) MOS; groups: (N,) the
    reference of each image to split by reference, or None to split by
    image (see the module docstring). For each n in `num_train`,
    `num_splits` splits (`split_indices` or `split_by_reference` with
    (seed, n, s)). Alpha is chosen by CV within the n training images only.
    """
    features, scores = np.asarray(features, np.float64), np.asarray(scores, np.float64)
    for n in num_train:
        check_num_train(n, len(scores), groups=groups, folds=folds)
    results = {}
    for n in num_train:
        runs = [_one_split(features, scores, n, s, groups=groups, seed=seed,
                           alphas=alphas, folds=folds, mapping=mapping)
                for s in range(num_splits)]
        trains, tests, alpha, correlations = zip(*runs)
        srocc, plcc = np.array(correlations).T
        results[n] = SplitResults(
            num_train=n, train_indices=np.stack(trains), test_indices=tuple(tests),
            split_by="image" if groups is None else "reference", srocc=srocc,
            plcc=plcc, alpha=np.array(alpha))
    return results


def cross_dataset(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray, *, seed: int, mapping: str = "poly3",
                  alphas: Sequence[float] = (0.1, 1, 10, 100),
                  folds: int = 5) -> dict[str, float]:
    """Ridge fitted (with CV alpha) on one dataset, evaluated on another.

    Returns {"srocc", "plcc", "alpha"}; PLCC's mapping is fitted on the test set.
    """
    model = fit_ridge_cv(train_x, train_y, alphas, folds=folds, seed=seed)
    srocc, plcc = evaluate_regressor(model, test_x, np.asarray(test_y, np.float64), mapping)
    return {"srocc": srocc, "plcc": plcc, "alpha": model.alpha}
