"""Quiet start-up for the commands: imported first, before TensorFlow (the
TensorBoard writer), JAX and transformers load.

TensorFlow's C++ side prints oneDNN notices and "All log messages before
absl::InitializeLog() is called..." at import; neither helps a user. Set in
the environment, so a user's own setting wins. A library's UserWarning is
shown once, not once per call site.
"""
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("USE_TORCH", "0")  # see grepq_jax/commands/cli.py
warnings.filterwarnings("once", category=UserWarning)
