"""The original GRepQ low-level training run, restated in PyTorch: the parity peer.

Restated from suhas-srinath/GRepQ (MIT), not copied; each choice cites the
original's file and line:

- Data: one group per sub-folder of versions, read in sorted file-name order
  (dataloader_contrastive.py:38-39) with skimage's imread / 255 as float64
  (:45-49). The soft labels are piq's FSIM (data_range 1, chromatic, its
  defaults) of every pair, the lower triangle mirrored, the diagonal 1
  (:51-60). The original recomputes them whenever a group is loaded; they do
  not change, so `group_labels` computes them once for every run and seed
  (the same values, not the same time: the benchmark reports it apart).
- Views: two independent aligned spatial fragmentations of the stacked
  versions (:62-69), FAST-VQA's `get_spatial_fragments` with `random=False`
  (:84-175): a grid x grid layout of cells of side res // grid starting at
  min(res // grid * i, res - size), one `torch.randint` per axis for the
  offsets inside the cells, shared by every version; images shorter than
  grid * size are first upsampled bilinearly, the cells still laid over the
  size before upsampling (:106-113, :126-132). The second view is flipped
  left-right, then up-down, each with probability 0.5, one draw for the
  group (:30, :70). The original's grid is 7 and size 32 (:88-91);
  `grid`/`size` here let the benchmark shrink the views for a CPU budget,
  the same for both sides.
- Batches: torch's DataLoader, shuffle=True, drop_last=False, 4 workers
  (train_llm.py:67-69), restarted when exhausted (:53-61).
- Model, loss and optimiser: torch_peer.py's LLModel (networks.py:17-40),
  weighted_contrastive_loss with tau 0.5 (train_llm.py:154, losses.py:53-95),
  AdamW(lr, weight_decay 0.05) (train_llm.py:46) under CosineAnnealingLR
  (T_max = the run's iterations, eta_min 1e-6) (:121-127); the model in
  train mode (:137), anchors then augmentations through it (:146-152).
  The lr_decay step (:163-164) multiplies by configs.py:21's 1.0 and is left
  out.
- Checkpoint: `latest.tar` as train_llm.py:90-99 writes it ({"model":
  {"state_dict"}, "current_iteration", "optimizer": {"state_dict"}}), once
  at the end rather than after every iteration (:172).

The random draws are made in the original's order (model, then loader, then
per item: anchor offsets, augmentation offsets, flips), so with the same
torch seed, loader settings and data, this run and the original's own
train_llm.py see the same batches: original_repo_shim.py checks that.
"""
import hashlib
import os
import pathlib
import time

import numpy as np
import piq
import skimage.io
import torch
import torch.nn.functional as F

import torch_peer

ORIGINAL_GRID, ORIGINAL_FRAGMENT = 7, 32  # dataloader_contrastive.py:88-91
ORIGINAL_WORKERS = 4  # train_llm.py:68
ORIGINAL_VERSIONS = 9  # dataloader_contrastive.py:51 hard-codes a 9 x 9 label matrix


def group_folders(root) -> list[pathlib.Path]:
    """The sub-folders of `root` that hold versions, in sorted order."""
    return sorted(p for p in pathlib.Path(root).iterdir() if p.is_dir())


def read_versions(folder: pathlib.Path) -> list[torch.Tensor]:
    """The versions of one group, sorted by name, (H, W, 3) float64 in [0, 1]."""
    return [torch.from_numpy(skimage.io.imread(folder / name) / 255.0)
            for name in sorted(os.listdir(folder))]


def fsim_matrix(versions: list[torch.Tensor]) -> torch.Tensor:
    """(V, V) float32 FSIM labels: piq on every pair below the diagonal, mirrored."""
    count = len(versions)
    if count != ORIGINAL_VERSIONS:
        raise ValueError(f"the original wants {ORIGINAL_VERSIONS} versions a group, "
                         f"got {count}")
    planar = [v.permute(2, 0, 1).unsqueeze(0) for v in versions]
    matrix = np.zeros((count, count))
    for i in range(count):
        for j in range(i):
            matrix[i, j] = float(piq.fsim(planar[i], planar[j], data_range=1.0))
    matrix = matrix + matrix.T
    np.fill_diagonal(matrix, 1.0)
    return torch.from_numpy(matrix).to(torch.float32)


def spatial_fragments(video: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """(C, T, H, W) -> (C, T, grid * size, grid * size), every frame cut alike."""
    _, frames, res_h, res_w = video.shape
    ratio = min(res_h / (grid * size), res_w / (grid * size))
    if ratio < 1:
        video = F.interpolate(video, scale_factor=1 / ratio, mode="bilinear")
    starts_h = [min(res_h // grid * i, res_h - size) for i in range(grid)]
    starts_w = [min(res_w // grid * i, res_w - size) for i in range(grid)]
    cell_h, cell_w = res_h // grid, res_w // grid
    offsets_h = (torch.randint(cell_h - size, (grid, grid, 1)) if cell_h > size
                 else torch.zeros((grid, grid, 1)).int())
    offsets_w = (torch.randint(cell_w - size, (grid, grid, 1)) if cell_w > size
                 else torch.zeros((grid, grid, 1)).int())
    out = torch.zeros(video.shape[:2] + (grid * size, grid * size), dtype=video.dtype)
    for i, start_h in enumerate(starts_h):
        for j, start_w in enumerate(starts_w):
            top = start_h + int(offsets_h[i, j, 0])
            left = start_w + int(offsets_w[i, j, 0])
            out[:, :, i * size:(i + 1) * size, j * size:(j + 1) * size] = (
                video[:, :, top:top + size, left:left + size])
    return out


def random_flips(views: torch.Tensor) -> torch.Tensor:
    """torchvision's RandomHorizontalFlip then RandomVerticalFlip, p 0.5 each."""
    if torch.rand(1) < 0.5:
        views = views.flip(-1)
    if torch.rand(1) < 0.5:
        views = views.flip(-2)
    return views


def _content_key(folder: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def group_labels(data_root, cache=None) -> list[torch.Tensor]:
    """The (V, V) FSIM labels of every group under `data_root`, in sorted order.

    cache: an .npz of labels by the SHA-256 of a group's files, read and
    extended, so that runs on the same files compute them once.
    """
    cache = pathlib.Path(cache) if cache else None
    known = dict(np.load(cache)) if cache and cache.is_file() else {}
    labels = []
    for folder in group_folders(data_root):
        key = _content_key(folder)
        if key not in known:
            known[key] = fsim_matrix(read_versions(folder)).numpy()
            if cache:
                np.savez(cache, **known)
        labels.append(torch.from_numpy(known[key]))
    return labels


class GroupViews(torch.utils.data.Dataset):
    """One group per item: anchor and augmented views (V, 3, S, S) and labels (V, V)."""

    def __init__(self, folders: list[pathlib.Path], labels: list[torch.Tensor],
                 grid: int, size: int):
        self.folders, self.labels, self.grid, self.size = folders, labels, grid, size

    def __len__(self):
        return len(self.folders)

    def __getitem__(self, index):
        video = torch.stack(read_versions(self.folders[index])).permute(3, 0, 1, 2)
        anchor = spatial_fragments(video, self.grid, self.size).permute(1, 0, 2, 3)
        augment = spatial_fragments(video, self.grid, self.size).permute(1, 0, 2, 3)
        return {"images": anchor.to(torch.float32),
                "augmentations": random_flips(augment).to(torch.float32),
                "annotators": self.labels[index]}


def write_checkpoint(path: pathlib.Path, trainer: torch_peer.PeerTrainer,
                     iteration: int) -> None:
    """latest.tar in train_llm.py:90-99's layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"state_dict": trainer.model.state_dict()},
                "current_iteration": iteration,
                "optimizer": {"state_dict": trainer.optimizer.state_dict()}}, path)


def train(data_root, labels: list[torch.Tensor], *, steps: int, batch_size: int,
          seed: int, grid: int = ORIGINAL_GRID,
          size: int = ORIGINAL_FRAGMENT, workers: int = ORIGINAL_WORKERS,
          learning_rate: float = torch_peer.ORIGINAL_LR, checkpoint=None) -> dict:
    """Trains from torch seed `seed`; returns {"loss": per step, "seconds": wall time}.

    labels: `group_labels(data_root)`.
    steps must be a whole number of epochs (the original's schedule counts
    epochs x batches per epoch). Writes `checkpoint` (latest.tar) if given.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    trainer = torch_peer.PeerTrainer(steps, learning_rate=learning_rate)
    dataset = GroupViews(group_folders(data_root), labels, grid, size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=False)
    if steps % len(loader):
        raise ValueError(f"steps={steps} is not a whole number of epochs of "
                         f"{len(loader)} batches")
    losses, batches = [], iter(loader)
    while len(losses) < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        losses.append(trainer.step(batch["images"], batch["augmentations"],
                                   batch["annotators"]))
    if checkpoint:
        write_checkpoint(pathlib.Path(checkpoint), trainer, steps)
    return {"loss": losses, "seconds": time.perf_counter() - start}


def main() -> None:
    """One training run in a process of its own (no JAX beside it), for the benchmark."""
    import argparse  # pylint: disable=import-outside-toplevel
    import json  # pylint: disable=import-outside-toplevel
    import warnings  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", required=True, help="ROOT/LIVE_FB_synthetic")
    parser.add_argument("--labels", required=True, help="group_labels' cache (.npz)")
    parser.add_argument("--checkpoint", required=True, help="latest.tar to write")
    parser.add_argument("--result", required=True, help="JSON of the loss and seconds")
    for name in ("steps", "batch", "seed", "grid", "size"):
        parser.add_argument(f"--{name}", type=int, required=True)
    args = parser.parse_args()
    # The original's 4 workers on a 2-core machine: torch warns, the run is the same.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    labels = group_labels(args.data, args.labels)
    run = train(args.data, labels, steps=args.steps, batch_size=args.batch, seed=args.seed,
                grid=args.grid, size=args.size, checkpoint=args.checkpoint)
    pathlib.Path(args.result).write_text(json.dumps(run))


if __name__ == "__main__":
    main()
