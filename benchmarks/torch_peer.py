"""The original GRepQ low-level training step in PyTorch: the benchmark's peer.

A faithful re-statement of suhas-srinath/GRepQ for speed comparisons:
  * networks.py `LLModel(encoder="resnet18", head="mlp")`: torchvision's
    resnet18 without `fc` (kept as `encoder.base_model` and wrapped as
    `encoder.resnet18 = Sequential(children[:-1])`, so the state dict has the
    original keys) and the head Linear(512, 512) -> ReLU -> Linear(512, 128);
  * losses.py `weighted_contrastive_loss(..., mode_in=True)` with tau 0.5;
  * train_llm.py's iteration: AdamW(lr 1e-4, weight_decay 0.05) under
    CosineAnnealingLR(eta_min 1e-6); anchor views through the model, then the
    augmented views (two passes, each with its own BatchNorm statistics), the
    loss, zero_grad, backward, optimizer step, scheduler step, `loss.item()`.
Left out, as they are not the step: the data loader, TensorBoard logging, the
checkpoint the original writes every iteration, and `torch.cuda.empty_cache()`.
Runs on the CPU; no CUDA needed.
"""

import torch
import torch.nn as nn
import torchvision

ORIGINAL_TAU = 0.5
ORIGINAL_LR = 1e-4
ORIGINAL_WEIGHT_DECAY = 0.05
ORIGINAL_END_LR = 1e-6


class Resnet18FeatureExtractor(nn.Module):
    """torchvision resnet18 up to the global average pool: (N, 3, H, W) -> (N, 512)."""

    def __init__(self):
        super().__init__()
        self.base_model = torchvision.models.resnet18()
        self.resnet18 = nn.Sequential(*list(self.base_model.children())[:-1])

    def forward(self, x):
        return torch.flatten(self.resnet18(x), 1)


class LLModel(nn.Module):
    """GRepQ's low-level model with the MLP head: (N, 3, H, W) -> (N, 128)."""

    def __init__(self, feat_out_dim: int = 128):
        super().__init__()
        self.encoder = Resnet18FeatureExtractor()
        self.head = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, feat_out_dim),
        )

    def forward(self, x):
        return self.head(self.encoder(x))


def weighted_contrastive_loss(f1, f2, tau, sim):
    """GRepQ's quality-aware loss, L_in form, computed the way the original does.

    f1, f2: (B, D, C) features of the anchor and augmented views; sim: (B, D, D)
    FSIM between versions. With S = <f1_i/|f1_i|, f2_j/|f2_j|> / tau and
    a = 2 - 2 / (1 + sim^2), it is the mean over rows of
    -log(sum_j a_ij e^S_ij / sum_j e^S_ij), plus the same over columns.
    Plain exponentials, as in the original (no log-sum-exp).
    """
    unit1 = f1 / torch.clamp(
        torch.linalg.norm(f1, dim=-1, keepdim=True), min=1e-8
    )
    unit2 = f2 / torch.clamp(
        torch.linalg.norm(f2, dim=-1, keepdim=True), min=1e-8
    )
    similarity = torch.exp(torch.bmm(unit1, unit2.transpose(1, 2)) / tau)
    weight = 2.0 - 2.0 / (1.0 + sim**2)
    weighted = weight * similarity

    def side(dim):
        return (-torch.log(weighted.sum(dim) / similarity.sum(dim))).mean()

    return side(-1) + side(-2)


class PeerTrainer:
    """The original optimiser, schedule and per-iteration step around LLModel."""

    def __init__(self, total_steps: int, channels_last: bool = False,
                 learning_rate: float = ORIGINAL_LR):
        self.model = LLModel()
        self.memory_format = (
            torch.channels_last if channels_last else torch.contiguous_format
        )
        self.model.to(memory_format=self.memory_format)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=learning_rate,
            weight_decay=ORIGINAL_WEIGHT_DECAY,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=total_steps, eta_min=ORIGINAL_END_LR
        )

    def step(self, frames, augmentations, annotators) -> float:
        """frames, augmentations: (B, D, 3, H, W) float32; annotators: (B, D, D).

        Returns the loss, read back with `.item()` as the original does.
        """
        b, d, c, h, w = frames.shape
        frames = frames.reshape(b * d, c, h, w).contiguous(
            memory_format=self.memory_format
        )
        augmentations = augmentations.reshape(b * d, c, h, w).contiguous(
            memory_format=self.memory_format
        )
        features_frames = torch.stack(torch.split(self.model(frames), d, dim=0))
        features_augmentations = torch.stack(
            torch.split(self.model(augmentations), d, dim=0)
        )
        loss = weighted_contrastive_loss(
            features_frames, features_augmentations, ORIGINAL_TAU, annotators
        )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()
