#!/usr/bin/env python3
"""Forward + backward time per training batch of the reference's backbones in PyTorch on CPU: the other side of
`scripts/bench-backbones.sh`, which runs the same models in candle (`trainer/tests/bench_backbones.rs`).

Same models, inputs and loss as the Rust side, random weights (no download): GPT-2 small (transformers
`GPT2Model`, default config = `gpt2`, embedding grown by the [PAD] row) on 2 x 256 token ids with row 1 padded after
200, output at each row's last real token; wav2vec 2.0 base (transformers `Wav2Vec2Model`, default config = the
base model: dropouts, LayerDrop and time masking active in training) on 2 x 150 000 int16-scale samples, mean (+)
max pooled; torchvision ResNet-50 (fc removed) on 2 x 3 x 256 x 721 images in training mode. Loss = sum of the
encoder output. One warm-up run, then the mean of ITERATIONS.

Prints one JSON line per backbone: {"backbone", "batch", "forward_s", "backward_s", "threads"}.
Usage: bench_backbones_torch.py [--backbones gpt2,wav2vec2,resnet50] [--iterations 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def timed(iterations: int, forward) -> tuple[float, float]:
    def step() -> tuple[float, float]:
        start = time.perf_counter()
        loss = forward().sum()
        forward_s = time.perf_counter() - start
        loss.backward()
        return forward_s, time.perf_counter() - start - forward_s

    step()
    runs = [step() for _ in range(iterations)]
    return sum(f for f, _ in runs) / iterations, sum(b for _, b in runs) / iterations


def gpt2(iterations: int):
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config())
    model.resize_token_embeddings(50258)
    model.train()
    b, l = 2, 256
    ids = torch.randint(0, 50257, (b, l))
    mask = torch.ones(b, l, dtype=torch.long)
    mask[1, 200:] = 0
    ids[1, 200:] = 50257
    last = mask.sum(1) - 1

    def forward():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[torch.arange(b), last]

    return f"{b} x {l} tokens", timed(iterations, forward)


def wav2vec2(iterations: int):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config())
    model.train()
    b, n = 2, 150_000
    x = torch.randn(b, n) * 3000.0

    def forward():
        hidden = model(x).last_hidden_state
        return torch.cat([hidden.mean(1), hidden.max(1).values], dim=1)

    return f"{b} x {n} samples", timed(iterations, forward)


def resnet50(iterations: int):
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    model.train()
    b, h, w = 2, 256, 721
    x = torch.randn(b, 3, h, w)
    return f"{b} x 3 x {h} x {w}", timed(iterations, lambda: model(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="gpt2,wav2vec2,resnet50")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    for name in args.backbones.split(","):
        batch, (forward_s, backward_s) = {"gpt2": gpt2, "wav2vec2": wav2vec2, "resnet50": resnet50}[name](
            args.iterations
        )
        line = dict(backbone=name, batch=batch, forward_s=forward_s, backward_s=backward_s, threads=args.threads)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
