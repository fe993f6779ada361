"""Agreement between predicted quality and subjective scores (MOS).

SROCC and KRCC are rank correlations (no mapping). PLCC is Pearson's
correlation after fitting a monotone mapping from predictions to MOS on the
very data being evaluated, the IQA convention:
- "poly3": np.polyfit(pred, true, deg=3), exactly as the original GRepQ
  test_zeroshot.py (zeroshot_eval) does before scipy.stats.pearsonr;
- "logistic4": the VQEG four-parameter logistic
  f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2, by scipy curve_fit;
- "none": Pearson on the raw predictions.
"""
import warnings

import numpy as np
import scipy.optimize
import scipy.stats

MAPPINGS = ("poly3", "logistic4", "none")
_LOGISTIC_MAX_EVALUATIONS = 10_000


class UndefinedCorrelation(ArithmeticError):
    """Predictions or scores that do not vary: no correlation is defined (SciPy
    would give NaN and a warning)."""


def _checked(pred, true) -> tuple[np.ndarray, np.ndarray]:
    """(pred, true) as float64 (N,); UndefinedCorrelation if either is constant."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    for name, values in (("predictions", pred), ("subjective scores", true)):
        if values.size < 2 or np.all(values == values.flat[0]):
            shown = f" ({values.flat[0]:.6g})" if values.size else ""
            raise UndefinedCorrelation(
                f"the {name} of all {values.size} images are equal{shown}, so SROCC and "
                "PLCC are undefined")
    return pred, true


def srocc(pred, true) -> float:
    """Spearman rank-order correlation of (N,) and (N,) (ties get mean ranks)."""
    return float(scipy.stats.spearmanr(*_checked(pred, true))[0])


def krcc(pred, true) -> float:
    """Kendall rank correlation (tau-b) of (N,) and (N,)."""
    return float(scipy.stats.kendalltau(*_checked(pred, true))[0])


def _logistic4(x, b1, b2, b3, b4):
    return (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4))) + b2


def _logistic4_mapping(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Fitted logistic on pred standardised to z = (pred - mean) / std.

    Standardising only reparametrises b3, b4 (same family, same optimum) but
    makes the start point (b1, b2) = the MOS extremes, b3 = 0, |b4| = 1
    sensible for any prediction scale; b1, b2 are swapped to start decreasing
    when pred and MOS are negatively correlated. If the fit raises, or
    gives non-finite values, the mapping falls back to the identity
    ("none"), with a RuntimeWarning.
    """
    z = (pred - pred.mean()) / (pred.std() or 1.0)
    high, low = true.max(), true.min()
    if np.corrcoef(z, true)[0, 1] < 0:
        high, low = low, high
    try:
        params, _ = scipy.optimize.curve_fit(_logistic4, z, true, p0=[high, low, 0.0, 1.0],
                                             maxfev=_LOGISTIC_MAX_EVALUATIONS)
        mapped = _logistic4(z, *params)
        if np.all(np.isfinite(mapped)):
            return mapped
    except (RuntimeError, ValueError, scipy.optimize.OptimizeWarning):
        pass
    warnings.warn("four-parameter logistic fit failed; PLCC uses the raw predictions",
                  RuntimeWarning, stacklevel=3)
    return pred


def mapped_predictions(pred, true, mapping: str) -> np.ndarray:
    """Predictions (N,) mapped onto the MOS scale by `mapping` fitted to (pred, true)."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if mapping == "poly3":
        return np.polyval(np.polyfit(pred, true, deg=3), pred)
    if mapping == "logistic4":
        return _logistic4_mapping(pred, true)
    if mapping == "none":
        return pred
    raise ValueError(f"unknown mapping {mapping!r}; choose one of {MAPPINGS}")


def plcc(pred, true, mapping: str = "poly3") -> float:
    """Pearson correlation of mapped predictions (N,) with MOS (N,);
    UndefinedCorrelation if either, or the mapped predictions, are constant."""
    pred, true = _checked(pred, true)
    mapped, _ = _checked(mapped_predictions(pred, true, mapping), true)
    return float(scipy.stats.pearsonr(mapped, true)[0])
