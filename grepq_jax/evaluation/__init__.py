"""Evaluating a model folder on IQA datasets: the datasets' readers, each
dataset's features (computed once, cached), the data-efficient and
cross-dataset protocols (ridge regression, correlations), the results table
and plots. Uses `scoring/`; never the training side."""
