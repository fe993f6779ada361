"""A fitted ridge regressor, as a model folder stores and scoring applies it.

Fitting it, and the protocols that choose its alpha, belong to evaluation
(evaluation/regression.py).
"""
import dataclasses

import numpy as np


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
