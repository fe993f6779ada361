"""Ridge regression from cached features to MOS, and the evaluation protocols.

The original GRepQ repository publishes only the feature extraction
(get_concatenated_features.py saves [high-level, low-level] features per
image); its regressor and split code are not released, so the choices here
are ours and stated: features standardised with the training split's
mean/std (ddof=0, a zero std treated as 1); the intercept is not penalised;
alpha chosen by K-fold CV on mean squared error, inside the training split
only; PLCC's mapping fitted on the test predictions, as test_zeroshot.py does.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np

from grepq_jax import correlation

# A four-parameter PLCC mapping needs more test points than parameters.
_MIN_TEST_IMAGES = 5


@dataclasses.dataclass(frozen=True)
class RidgeRegressor:
    """y = ((x - mean) / scale) @ weights + intercept.

    mean, scale, weights: (C,) float64; intercept and alpha: floats.
    """
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    intercept: float
    alpha: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Features (N, C) -> predictions (N,) float64."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return z @ self.weights + self.intercept

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (e.g. for np.savez, no pickle); inverse of `from_arrays`."""
        return {field.name: np.asarray(getattr(self, field.name))
                for field in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> "RidgeRegressor":
        """From `to_arrays()` output or an np.load of it."""
        return cls(**{name: np.asarray(arrays[name], np.float64)
                      for name in ("mean", "scale", "weights")},
                   intercept=float(arrays["intercept"]), alpha=float(arrays["alpha"]))


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

    train_indices: (S, n) int rows used for training in each of S splits (the
    rest were the test set); srocc, plcc, alpha: (S,) float64.
    """
    num_train: int
    train_indices: np.ndarray
    srocc: np.ndarray
    plcc: np.ndarray
    alpha: np.ndarray

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
    return correlation.srocc(pred, y), correlation.plcc(pred, y, mapping)


def split_indices(num_images: int, num_train: int, split: int, *,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train (num_train,), test (num_images - num_train,)) sorted, disjoint rows.

    Drawn by the generator seeded with (seed, num_train, split), so each split
    is reproducible on its own.
    """
    order = np.random.default_rng([seed, num_train, split]).permutation(num_images)
    return np.sort(order[:num_train]), np.sort(order[num_train:])


def _one_split(features, scores, num_train, split, *, seed, alphas, folds, mapping):
    train, test = split_indices(len(scores), num_train, split, seed=seed)
    cv_seed = int(np.random.SeedSequence([seed, num_train, split, 1]).generate_state(1)[0])
    model = fit_ridge_cv(features[train], scores[train], alphas, folds=folds, seed=cv_seed)
    return train, model.alpha, evaluate_regressor(model, features[test], scores[test], mapping)


def data_efficient_protocol(features: np.ndarray, scores: np.ndarray, *,
                            num_train: Sequence[int] = (50,), num_splits: int = 10,
                            seed: int, mapping: str = "poly3",
                            alphas: Sequence[float] = (0.1, 1, 10, 100),
                            folds: int = 5) -> dict[int, SplitResults]:
    """Ridge from n labelled images, tested on the rest, over random splits.

    features: (N, C) cached per image; scores: (N,) MOS. For each n in
    `num_train`, `num_splits` splits each draw n training images at random
    (`split_indices(N, n, s, seed=seed)`), the rest being the test set. Alpha
    is chosen by CV within the n training images only.
    """
    features, scores = np.asarray(features, np.float64), np.asarray(scores, np.float64)
    results = {}
    for n in num_train:
        if not folds <= n <= len(scores) - _MIN_TEST_IMAGES:
            raise ValueError(f"num_train {n} must be >= folds ({folds}) and leave at "
                             f"least {_MIN_TEST_IMAGES} of the {len(scores)} images "
                             "for testing")
        runs = [_one_split(features, scores, n, s, seed=seed, alphas=alphas,
                           folds=folds, mapping=mapping) for s in range(num_splits)]
        trains, alpha, correlations = zip(*runs)
        srocc, plcc = np.array(correlations).T
        results[n] = SplitResults(num_train=n, train_indices=np.stack(trains),
                                  srocc=srocc, plcc=plcc, alpha=np.array(alpha))
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
