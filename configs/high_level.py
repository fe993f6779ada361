"""High-level GRepQ encoder: a CLIP image tower + group-contrastive loss.

Two towers (config.model.encoder): "clip_vit", HF's Flax CLIP ViT, from a hub
name (downloaded by transformers on a machine with network access) or a
local `save_pretrained` directory:
  python -m grepq_jax.main --config=configs/high_level.py \
      --workdir=runs/high_level --config.model.clip=/path/to/clip-vit-base-patch32

and "clip_rn50", OpenAI's CLIP RN50 as the paper trains it, from a high-level
export that `grepq convert` writes once from OpenAI's RN50.pt. The paper's
settings (batch 128, groups of 4, 224x224 centre crops, Adam 1e-6 after 2.5
warm-up epochs), on a real folder:
  grepq convert --clip=RN50.pt --out=exports/openai_rn50
  python -m grepq_jax.main --config=configs/high_level.py:paper \
      --workdir=gs://BUCKET/grepq/high_level --config.data.path=/data/livefb \
      --config.model.clip=exports/openai_rn50

Smoke runs, offline, on the embedded photographs with a tiny random CLIP ViT
(`:tiny`) or CLIP ResNet (`:tiny_rn50`) that they write into the workdir
(they check the whole path; they are NOT quality models):
  python -m grepq_jax.main --config=configs/high_level.py:tiny \
      --workdir=runs/high_level_tiny
  python -m grepq_jax.main --config=configs/high_level.py:tiny_rn50 \
      --workdir=runs/high_level_tiny_rn50
"""

import ml_collections

ARGS = ("default", "paper", "tiny", "tiny_rn50")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ValueError(
            f"unknown high_level config {arg!r}: use one of {', '.join(ARGS)}"
        )
    config = ml_collections.ConfigDict()
    config.pathway = "high_level"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.path = ""  # "" trains on the embedded sample photographs.
    config.data.layout = "pristine"  # or "predistorted": the REF files.
    config.data.min_side = 32
    config.data.max_side = 0  # 0: no limit; else larger images are shrunk
    config.data.crop = "random"  # or "center", as the paper's code
    config.data.crop_size = 0  # pixels; 0: the tower's native image size
    config.data.prefetch = 2
    # Batch-making processes (-1: a core each but one); 0 keeps one thread,
    # enough when the step is slow, as on a CPU.
    config.data.workers = 0

    config.model = ml_collections.ConfigDict()
    config.model.encoder = "clip_vit"  # or "clip_rn50"
    # clip_vit: a hub name or a local `save_pretrained` directory; clip_rn50:
    # a high-level export (`grepq convert`, or a run's workdir/export); either:
    # "tiny-random" (stand_ins/tiny_clip.py's TINY_RANDOM), a tiny random CLIP
    # written into the workdir, for smoke runs.
    config.model.clip = "openai/clip-vit-base-patch32"
    # clip_rn50 only, the attention pool's positional embedding in training
    # and in the export: "resize" (OpenAI's, resized to the crop's feature
    # grid: unchanged at the native 224) or "none" (left out, as GRepQ
    # scores its released weights). Mean and std are the export's (OpenAI's).
    config.model.position_embedding = "resize"
    config.model.prompts = (("a good photo.", "a bad photo."),)
    config.model.head_dim = 128
    # The paper's code never passes the head to its optimizer: it stays at
    # its random initialisation. True trains it with the image tower.
    config.model.train_head = False
    config.model.dtype = "float32"  # "bfloat16" for TPU/GPU compute

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "gcl"
    config.loss.temperature = 0.5
    config.loss.label_temperature = 0.1  # q = sigmoid(margin / this)
    config.loss.group_size = 2  # G: paper 128 // 32 = 4

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adam"
    config.optim.schedule = "warmup_constant"
    config.optim.warmup_epochs = 2.5
    config.optim.learning_rate = 1e-6

    config.batch_size = 8  # images per step, over all devices
    config.num_epochs = 10
    config.num_devices = 0  # 0: every visible device
    config.log_every_steps = 1
    config.checkpoint_every_steps = 50
    config.keep_checkpoints = 3

    if arg == "paper":
        config.model.encoder = "clip_rn50"
        config.model.clip = "exports/openai_rn50"  # grepq convert --clip=RN50.pt --out=...
        config.data.workers = -1
        config.data.crop = "center"
        config.data.crop_size = 224
        config.loss.group_size = 4
        config.batch_size = 128
        config.num_epochs = 15
        config.log_every_steps = 10
        config.checkpoint_every_steps = 500
    elif arg in ("tiny", "tiny_rn50"):
        config.model.encoder = "clip_rn50" if arg == "tiny_rn50" else "clip_vit"
        config.model.clip = "tiny-random"
        config.optim.learning_rate = 1e-3
        config.model.train_head = True
        config.checkpoint_every_steps = 4
    return config
