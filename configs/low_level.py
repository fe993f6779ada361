"""Low-level GRepQ encoder: ResNet-18 + quality-aware contrastive loss.

Embedded default (sample photographs shipped with scikit-image and
scikit-learn; a few minutes on a 2-core CPU):
    python -m grepq_jax.main --config=configs/low_level.py --workdir=runs/low_level

The paper's settings on a real folder of pristine images:
    python -m grepq_jax.main --config=configs/low_level.py:paper \
            --workdir=gs://BUCKET/grepq/low_level --config.data.path=/data/livefb

`:tiny` is the test-only variant (narrow network, small fragments).
"""

import ml_collections


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    if arg not in ("default", "paper", "tiny"):
        raise ValueError(
            f"unknown low_level config {arg!r}: " "use default, paper or tiny"
        )
    config = ml_collections.ConfigDict()
    config.pathway = "low_level"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.path = ""  # "" trains on the embedded sample photographs.
    config.data.layout = "pristine"  # or "predistorted": one folder per image.
    config.data.distortions = "livefb"  # a key of distortions.DISTORTION_SETS
    config.data.fragment_grid = 7
    config.data.fragment_size = 32
    config.data.min_side = 32
    config.data.max_side = 0  # 0: no limit; else larger images are shrunk
    # Layout "pristine": each image is a group at each of these scales
    # (area-shrunk, in (0, 1]): more groups, the scenes' textures coarser.
    config.data.scales = (1.0,)
    config.data.fsim_chromatic = True
    config.data.prefetch = 2
    # Batch-making processes (-1: a core each but one); 0 keeps one thread,
    # enough when the step is slow, as on a CPU.
    config.data.workers = 0

    config.model = ml_collections.ConfigDict()
    config.model.encoder = "resnet18"  # or "resnet50"
    config.model.width = 64
    config.model.head_dim = 128
    config.model.dtype = "float32"  # "bfloat16" for TPU/GPU compute

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "qacl"
    config.loss.tau = 0.5

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.schedule = "cosine"
    config.optim.learning_rate = 1e-4
    config.optim.end_learning_rate = 1e-6
    config.optim.weight_decay = 0.05

    config.batch_size = 2  # groups per step, over all devices
    config.num_epochs = 15
    config.num_devices = 0  # 0: every visible device
    config.log_every_steps = 1
    config.checkpoint_every_steps = 20
    config.keep_checkpoints = 3

    if arg == "paper":
        config.data.workers = -1
        config.batch_size = 8
        config.checkpoint_every_steps = 500
        config.log_every_steps = 20
    elif arg == "tiny":
        config.data.fragment_grid = 2
        config.data.fragment_size = 16
        config.data.max_side = 64
        config.model.width = 4
        config.model.head_dim = 8
        config.batch_size = 8
        config.num_epochs = 1
        config.checkpoint_every_steps = 2
    return config
