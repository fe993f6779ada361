"""What lives on disk, one module per format: image files, the embedded photographs,
training checkpoints, encoder exports, PyTorch weight files, model caches, and
outputs written complete or not at all. Shared by both sides.
"""
