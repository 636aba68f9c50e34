#!/usr/bin/env python3
"""PyTorch eager side of the GPU benchmark (`scripts/gpu-check.sh`): the same workloads as `erc-train selfcheck
--sections bench` (trainer/src/selfcheck/bench.rs), timed the same way on the same device.

* forward + backward per batch, random weights, training mode, loss = sum of the encoder output:
  GPT-2 small (transformers `GPT2Model`, embedding grown by the [PAD] row) on 16 x 256 tokens, the last quarter of
  rows 1.. padded, output at each row's last real token; wav2vec 2.0 base (`Wav2Vec2Model`, dropouts, LayerDrop
  and time masking active) on 16 x 150 000 int16-scale samples, mean (+) max pooled; torchvision ResNet-50 (fc
  removed) on RESNET_BATCH x 3 x 256 x 721 images;
* one whole training step of Table 4's row 15 (fusion-mha-adv, batch 8): GPT-2 (last token) + ResNet-50 +
  wav2vec2 (mean (+) max), l2 on each, projections to 90/242/180 (F = 512), multi-head attention with 4 heads
  across the batch, LayerNorm(x + attn), Linear(512, 64) + ReLU + Dropout(0.2), logits, softmax, Dice loss,
  AdamW (weight decay 0.1, lr 5e-5) with global-norm clipping at 1.0.

fp32: `allow_tf32` off for matmuls and cuDNN convolutions; tf32: both on. One warm-up, then the mean of
ITERATIONS, `torch.cuda.synchronize()` before each clock reading; peak memory = `max_memory_allocated`.
`--quick` uses the small sizes of `selfcheck --quick` (a rehearsal on a CPU).

Prints one JSON line per (workload, precision): name, precision, batch, items, forward_s, backward_s, total_s,
samples_per_s, peak_memory_bytes, error.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, iterations, step):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()
    f = b = 0.0
    for _ in range(iterations):
        fi, bi = step()
        f, b = f + fi, b + bi
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return f / iterations, b / iterations, peak


def fwd_bwd(device, forward):
    def step():
        sync(device)
        start = time.perf_counter()
        loss = forward().sum()
        sync(device)
        forward_s = time.perf_counter() - start
        loss.backward()
        sync(device)
        return forward_s, time.perf_counter() - start - forward_s

    return step


def gpt2_model(device, quick, layers=None):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config()
    if layers is not None:
        config.n_layer = layers
    model = GPT2Model(config)
    model.resize_token_embeddings(50258)
    return model.to(device).train()


def gpt2_inputs(device, b, l):
    ids = torch.randint(0, 50257, (b, l), device=device)
    mask = torch.ones(b, l, dtype=torch.long, device=device)
    mask[1:, l * 3 // 4 :] = 0
    ids[mask == 0] = 50257
    return ids, mask, mask.sum(1) - 1


def wav2vec2_model(device, layers=None):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config()
    if layers is not None:
        config.num_hidden_layers = layers
    return Wav2Vec2Model(config).to(device).train()


def resnet_model(device):
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    return model.to(device).train()


def bench_gpt2(device, quick, iterations):
    b, l = (2, 32) if quick else (16, 256)
    model = gpt2_model(device, quick)
    ids, mask, last = gpt2_inputs(device, b, l)
    forward = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state[torch.arange(b, device=device), last]
    return "gpt2-small", f"{b} x {l} tokens", b, timed(device, iterations, fwd_bwd(device, forward))


def bench_wav2vec2(device, quick, iterations):
    b, n = (2, 8_000) if quick else (16, 150_000)
    model = wav2vec2_model(device)
    x = torch.randn(b, n, device=device) * 3000.0

    def forward():
        hidden = model(x).last_hidden_state
        return torch.cat([hidden.mean(1), hidden.max(1).values], dim=1)

    return "wav2vec2-base", f"{b} x {n} samples", b, timed(device, iterations, fwd_bwd(device, forward))


def bench_resnet(device, quick, iterations, batch):
    b, h, w = (2, 64, 180) if quick else (batch, 256, 721)
    model = resnet_model(device)
    x = torch.randn(b, 3, h, w, device=device)
    return "resnet50", f"{b} x 3 x {h} x {w}", b, timed(device, iterations, fwd_bwd(device, lambda: model(x)))


def l2(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def dice(p, y, eps=1e-8):
    tp = (p * y).sum(0)
    fp = (p * (1 - y)).sum(0)
    fn = ((1 - p) * y).sum(0)
    return 1 - (2 * tp / (2 * tp + fp + fn + eps)).mean()


class FusionMhaAdv(nn.Module):
    """Row 15: GPT-2 + ResNet-50 + wav2vec2, attention fusion across the batch, one-layer head."""

    def __init__(self, device, quick):
        super().__init__()
        layers = 2 if quick else None
        self.gpt2 = gpt2_model(device, quick, layers)
        self.resnet = resnet_model(device)
        self.wav2vec2 = wav2vec2_model(device, layers)
        sizes = [768, 2048, 1536]
        fused = 512
        p = [int(fused * d / sum(sizes)) for d in sizes]
        p[p.index(max(p))] += fused - sum(p)
        self.proj = nn.ModuleList(nn.Linear(d, q) for d, q in zip(sizes, p))
        self.attn = nn.MultiheadAttention(fused, 4)
        self.norm = nn.LayerNorm(fused)
        self.ff = nn.Sequential(nn.Linear(fused, 64), nn.ReLU(), nn.Dropout(0.2))
        self.logits = nn.Linear(64, 7)
        self.to(device).train()

    def forward(self, ids, mask, last, images, audio):
        b = ids.shape[0]
        text = self.gpt2(input_ids=ids, attention_mask=mask).last_hidden_state[torch.arange(b, device=ids.device), last]
        visual = self.resnet(images)
        hidden = self.wav2vec2(audio).last_hidden_state
        sound = torch.cat([hidden.mean(1), hidden.max(1).values], dim=1)
        x = torch.cat([proj(l2(e)) for proj, e in zip(self.proj, [text, visual, sound])], dim=1)
        # the reference's attention over the batch as one sequence (quirk Q7): (L = B, N = 1, E)
        seq = x.unsqueeze(1)
        attended, _ = self.attn(seq, seq, seq, need_weights=False)
        x = self.norm(x + attended.squeeze(1))
        return torch.softmax(self.logits(self.ff(x)), dim=-1)


def bench_step(device, quick, iterations):
    b = 8
    h, w, n = (64, 180, 8_000) if quick else (256, 721, 150_000)
    model = FusionMhaAdv(device, quick)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    ids, mask, last = gpt2_inputs(device, b, 256 if not quick else 32)
    images = torch.randn(b, 3, h, w, device=device)
    audio = torch.randn(b, n, device=device) * 3000.0
    y = torch.nn.functional.one_hot(torch.arange(b, device=device) % 7, 7).float()

    def step():
        sync(device)
        start = time.perf_counter()
        loss = dice(model(ids, mask, last, images, audio), y)
        sync(device)
        forward_s = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        sync(device)
        return forward_s, time.perf_counter() - start - forward_s

    return "step fusion-mha-adv (row 15)", f"{b} items", b, timed(device, iterations, step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp32,tf32")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    for precision in args.precisions.split(","):
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        for name, bench in (
            ("gpt2-small", lambda: bench_gpt2(device, args.quick, args.iterations)),
            ("wav2vec2-base", lambda: bench_wav2vec2(device, args.quick, args.iterations)),
            ("resnet50", lambda: bench_resnet(device, args.quick, args.iterations, args.resnet_batch)),
            ("step fusion-mha-adv (row 15)", lambda: bench_step(device, args.quick, args.iterations)),
        ):
            line = dict(name=name, precision=precision, error=None)
            try:
                _, batch, items, (f, b, peak) = bench()
                line.update(batch=batch, items=items, forward_s=f, backward_s=b, total_s=f + b,
                            samples_per_s=items / (f + b), peak_memory_bytes=peak)
            except Exception as e:  # out of memory and the like: reported, the others go on
                line.update(error=(str(e).splitlines() or ["?"])[0][:200])
            print(json.dumps(line), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
