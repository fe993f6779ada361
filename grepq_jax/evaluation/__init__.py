"""Evaluating a model folder on IQA datasets: the datasets' readers, the
data-efficient and cross-dataset protocols (ridge regression, correlations).
Uses `scoring/`; never the training side."""
