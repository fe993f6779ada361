"""The low-level pathway's soft labels: synthetic distortions, FSIM in jax.numpy at
any image size, and the label pass that caches them in the workdir.
"""
