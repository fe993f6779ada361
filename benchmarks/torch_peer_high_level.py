"""The original GRepQ high-level training step in PyTorch: the RN50 benchmark's peer.

A restatement of suhas-srinath/GRepQ's train_hlm.py iteration, for speed
comparisons (benchmarks/bench_rn50_train_step.py) and as the reference of
tests/fixtures/make_rn50_step_reference.py:
  * the image tower: `clip.load("RN50")[0].visual` made float32, in train
    mode (BatchNorm normalises with batch statistics and updates its running
    ones); here OpenAI's clip/model.py ModifiedResNet with given weights;
  * pseudo-labels: each image's cosine similarities to the frozen text
    features of ("a Good photo.", "a Bad photo."), q = 1 / (1 + exp((s_bad -
    s_good) / 0.1)) computed image by image in a Python loop as the original
    does, then a stable ascending argsort;
  * the projection head Linear(D, 128) + ReLU, which the original never gives
    to its optimizer;
  * the `group_size` lowest and highest ranked through losses.py's
    GroupContrastiveLoss (temperature 0.5);
  * Adam(visual parameters, lr 1e-6) under the LambdaLR warm-up (lr 0 at the
    first step), zero_grad, backward, optimizer step, scheduler step,
    `loss.item()`.
Left out, as they are not the step: the loader, TensorBoard, the per-epoch
checkpoint, and the loss's `.cuda()` calls (this runs on the CPU).
"""

import torch
import torch.nn.functional as F

ORIGINAL_LR = 1e-6
LABEL_TEMPERATURE = 0.1
LOSS_TEMPERATURE = 0.5


def pseudo_label_order(features, text_features):
    """Indices of the images, lowest pseudo-label first, as the original ranks them.

    features (B, D); text_features (2, D), good then bad. One image at a time,
    as train_hlm.py's loop.
    """
    scores = F.normalize(features) @ F.normalize(text_features).t()
    labels = torch.zeros(len(features))
    for index in range(len(features)):
        good, bad = scores[index]
        labels[index] = 1 / (1 + torch.exp((bad - good) / LABEL_TEMPERATURE))
    return torch.argsort(labels, dim=0, stable=True).detach()


def group_contrastive_loss(group_a, group_b, temperature=LOSS_TEMPERATURE):
    """losses.py's GroupContrastiveLoss: (G, C) and (G, C) -> scalar.

    Each member's positive is its mean cosine similarity to the rest of its
    group; its negatives, its similarities to every member of the other
    group; -log(e^(pos/t) / (e^(pos/t) + sum e^(neg/t))) averaged over 2G.
    """
    size = len(group_a)
    both = torch.cat([F.normalize(group_a, dim=1), F.normalize(group_b, dim=1)])
    similarity = F.cosine_similarity(both.unsqueeze(1), both.unsqueeze(0), dim=2)
    others = (~torch.eye(size, dtype=torch.bool)).float()
    positives = torch.cat([
        (similarity[:size, :size] * others).sum(1) / (size - 1),
        (similarity[size:, size:] * others).sum(1) / (size - 1)])
    across = torch.zeros(2 * size, 2 * size)
    across[:size, size:] = across[size:, :size] = 1
    numerator = torch.exp(positives / temperature)
    denominator = (across * torch.exp(similarity / temperature)).sum(1)
    return -torch.log(numerator / (numerator + denominator)).sum() / (2 * size)


class HighLevelPeer:
    """The original's optimiser, schedule and per-iteration step around an RN50 tower."""

    def __init__(self, visual, text_features, *, group_size, warmup_steps, head_dim=128,
                 channels_last=False):
        self.visual, self.text_features = visual, text_features.detach()
        self.group_size = group_size
        self.head = torch.nn.Sequential(
            torch.nn.Linear(text_features.shape[1], head_dim), torch.nn.ReLU())
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.visual.to(memory_format=self.memory_format)
        self.visual.train()
        self.optimizer = torch.optim.Adam(self.visual.parameters(), lr=ORIGINAL_LR)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: step / warmup_steps if step <= warmup_steps else 1)

    def loss(self, frames):
        """frames (B, 3, S, S) float32, CLIP-normalised -> the scalar loss."""
        features = self.visual(frames.contiguous(memory_format=self.memory_format)).squeeze()
        order = pseudo_label_order(features, self.text_features)
        projected = self.head(features)
        low = projected[order[:self.group_size]]
        high = projected[order.flip(0)[:self.group_size]]
        return group_contrastive_loss(low, high)

    def step(self, frames) -> float:
        """One iteration; returns the loss, read back with `.item()` as the original does.

        The visual parameters' `.grad` hold this step's gradients afterwards.
        """
        loss = self.loss(frames)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()
