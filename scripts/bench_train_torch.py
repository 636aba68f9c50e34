#!/usr/bin/env python3
"""Training throughput of the reference (HLM12ERC) models in PyTorch on CPU: the other side of `make bench`'s
trainer benchmark (`erc-train bench`), which runs the same models in candle on the same inputs shapes.

The models are written as the reference builds them (docs/reference.md §3): the GloVe encoder's whole 400 000 x 50
embedding is trainable (dense gradients, AdamW over all of it, as torchtext + nn.Embedding do there); the raw-waveform
MLP; concat fusion with its l2; the feed-forward head with the final ReLU; softmax; Dice loss. One training step =
forward, loss, backward, global-norm clipping at 1.0, AdamW (no decay on biases) and the linear warm-up schedule,
exactly as the HF Trainer does. Inputs are random tensors of the real shapes: token-id sequences of 60-200 ids
(dialogue prompts average ~130 GloVe tokens, docs/reference.md §2.2), 150 000 audio samples, 2148 fused features.

Prints one JSON line per model: {"model", "batch_size", "steps", "samples_per_s", "threads", "torch"}.
Usage: bench_train_torch.py [--models t-um-glove,a-um-waveform,baseline-head] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES = 7


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


def dice(p: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    tp = (p * y).sum(0)
    fp = (p * (1 - y)).sum(0)
    fn = ((1 - p) * y).sum(0)
    return 1 - (2 * tp / (2 * tp + fp + fn + eps)).mean()


class Head(nn.Module):
    """Concat fusion (l2 of the concatenation) → FF 64 + ReLU + Dropout(0.2) → logits → softmax (docs/reference.md §3.6, docs/reference.md §3.8)."""

    def __init__(self, width: int):
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Dropout(0.2))
        self.logits = nn.Linear(64, CLASSES)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return F.softmax(self.logits(self.ff(l2(torch.cat(parts, dim=1)))), dim=1)


class GloveModel(nn.Module):
    """t-um-glove: trainable GloVe 6B-50d, mean over the padded length, l2, then the head (docs/reference.md §3.1)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(400_000, 50)
        self.head = Head(50)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        vectors = self.embedding(ids) * mask.unsqueeze(-1)
        return self.head([l2(vectors.sum(1) / ids.shape[1])])


class WaveformModel(nn.Module):
    """a-um-waveform: the raw-waveform MLP 150000 → 150 → 100 → 50 with ReLU + Dropout(0.1) after each (docs/reference.md §3.4)."""

    def __init__(self, samples: int = 150_000, width: int = 50):
        super().__init__()
        layers = []
        for i, o in [(samples, 3 * width), (3 * width, 2 * width), (2 * width, width)]:
            layers += [nn.Linear(i, o), nn.ReLU(), nn.Dropout(0.1)]
        self.mlp = nn.Sequential(*layers)
        self.head = Head(width)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head([l2(self.mlp(audio))])


class HeadOnly(nn.Module):
    """baseline-head: the baseline's concat fusion + head over fixed encoder outputs (GloVe 50 + ResNet 2048 +
    waveform 50 = 2148 features), i.e. what the head costs on its own."""

    def __init__(self):
        super().__init__()
        self.head = Head(2148)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head([features])


def make_inputs(name: str, batch: int, gen: torch.Generator):
    if name == "t-um-glove":
        lengths = torch.randint(60, 201, (batch,), generator=gen)
        width = int(lengths.max())
        ids = torch.randint(0, 400_000, (batch, width), generator=gen)
        mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).float()
        return (ids, mask)
    if name == "a-um-waveform":
        return (torch.randint(-3000, 3000, (batch, 150_000), generator=gen).float(),)
    return (torch.rand(batch, 2148, generator=gen),)


def bench(name: str, steps: int, batch: int) -> float:
    torch.manual_seed(11)
    model = {"t-um-glove": GloveModel, "a-um-waveform": WaveformModel, "baseline-head": HeadOnly}[name]()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-4, betas=(0.9, 0.999), eps=1e-8)
    warmup, total = 250, 10 * 157
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    gen = torch.Generator().manual_seed(42)
    batches = [make_inputs(name, batch, gen) for _ in range(4)]
    labels = F.one_hot(torch.randint(0, CLASSES, (batch,), generator=gen), CLASSES).float()
    model.train()

    def step(inputs):
        opt.zero_grad(set_to_none=True)
        loss = dice(model(*inputs), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()

    for i in range(2):  # warm-up: allocator, lazy Adam state
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="t-um-glove,a-um-waveform,baseline-head")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        rate = bench(name, args.steps, args.batch_size)
        print(json.dumps({"model": name, "batch_size": args.batch_size, "steps": args.steps,
                          "samples_per_s": round(rate, 2), "threads": args.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
