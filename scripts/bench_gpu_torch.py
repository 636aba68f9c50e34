#!/usr/bin/env python3
"""PyTorch eager side of the GPU benchmark (`scripts/gpu-check.sh`): the work of `erc-train selfcheck --sections
bench` (trainer/src/selfcheck/bench.rs), read from the plan that `erc-train selfcheck --plan FILE` writes, timed the
same way on the same device.

* The plan fixes everything both sides run: shapes and token lengths, the backbones' whole configs (Hugging Face
  names: dropouts, LayerDrop, time masking, which transformers' GPT2Config/Wav2Vec2Config take as they are), the
  row-15 head, loss and optimiser. Random weights, training mode.
* forward + backward per batch, loss = sum of the encoder output: GPT-2 small (embedding grown by the [PAD] row),
  output at each row's last real token; wav2vec 2.0 base, mean (+) max pooled; torchvision ResNet-50 (fc removed);
* one whole training step of Table 4's row 15 (fusion-mha-adv): GPT-2 (last token) + ResNet-50 + wav2vec2
  (mean (+) max), l2 on each, projections to shares of the fused width, multi-head attention across the batch,
  LayerNorm(x + attn), the feed-forward head, logits, softmax, Dice loss, AdamW with global-norm clipping.
* `--attention sdpa` (transformers' default) or `eager`: the attention implementation of GPT-2 and wav2vec2.

Inputs are made on the device before the clock starts. fp32: `allow_tf32` off for matmuls and cuDNN convolutions;
tf32: both on. One warm-up, then the mean of the plan's iterations, `torch.cuda.synchronize()` before each clock
reading; peak memory = `max_memory_allocated` over the timed iterations (`reset_peak_memory_stats` after the
warm-up), as ours.

Prints one JSON line per (workload, precision) as soon as it is measured, flushed: name, precision, attention,
batch, items, forward_s, backward_s, total_s, samples_per_s, peak_memory_bytes, error (a failure is a row with its
error, and the others go on).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

WORKLOADS = {
    "gpt2": "gpt2-small",
    "wav2vec2": "wav2vec2-base",
    "resnet50": "resnet50",
    "step": "step fusion-mha-adv (row 15)",
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, iterations, step):
    step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    f = b = 0.0
    for _ in range(iterations):
        fi, bi = step()
        f, b = f + fi, b + bi
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    n = max(iterations, 1)
    return f / n, b / n, peak


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


def gpt2_model(device, config, attention):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(**{k: v for k, v in config.items() if v is not None})
    config._attn_implementation = attention
    model = GPT2Model(config)
    model.resize_token_embeddings(config.vocab_size + 1)  # our [PAD] row
    return model.to(device).train()


def gpt2_inputs(device, vocab, lengths, tokens):
    b = len(lengths)
    ids = torch.randint(0, vocab, (b, tokens), device=device)
    mask = (torch.arange(tokens, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()
    ids[mask == 0] = vocab  # [PAD]
    return ids, mask, mask.sum(1) - 1


def wav2vec2_model(device, config, attention):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(**config)
    config._attn_implementation = attention
    return Wav2Vec2Model(config).to(device).train()


def resnet_model(device):
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    return model.to(device).train()


def bench_gpt2(device, plan, attention):
    w = plan["gpt2"]
    model = gpt2_model(device, w["config"], attention)
    ids, mask, last = gpt2_inputs(device, w["config"]["vocab_size"], w["lengths"], w["tokens"])
    rows = torch.arange(w["batch"], device=device)
    forward = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, last]
    return f"{w['batch']} x {w['tokens']} tokens", w["batch"], timed(device, plan["iterations"], fwd_bwd(device, forward))


def bench_wav2vec2(device, plan, attention):
    w = plan["wav2vec2"]
    model = wav2vec2_model(device, w["config"], attention)
    x = torch.randn(w["batch"], w["samples"], device=device) * 3000.0

    def forward():
        hidden = model(x).last_hidden_state
        return torch.cat([hidden.mean(1), hidden.max(1).values], dim=1)

    return f"{w['batch']} x {w['samples']} samples", w["batch"], timed(device, plan["iterations"], fwd_bwd(device, forward))


def bench_resnet(device, plan, attention):
    w = plan["resnet50"]
    model = resnet_model(device)
    x = torch.randn(w["batch"], 3, w["height"], w["width"], device=device)
    batch = f"{w['batch']} x 3 x {w['height']} x {w['width']}"
    return batch, w["batch"], timed(device, plan["iterations"], fwd_bwd(device, lambda: model(x)))


def l2(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def dice(p, y, eps=1e-8):
    tp = (p * y).sum(0)
    fp = (p * (1 - y)).sum(0)
    fn = ((1 - p) * y).sum(0)
    return 1 - (2 * tp / (2 * tp + fp + fn + eps)).mean()


class FusionMhaAdv(nn.Module):
    """Row 15: GPT-2 + ResNet-50 + wav2vec2, attention fusion across the batch, the feed-forward head."""

    def __init__(self, device, w, attention):
        super().__init__()
        self.gpt2 = gpt2_model(device, w["gpt2"], attention)
        self.resnet = resnet_model(device)
        self.wav2vec2 = wav2vec2_model(device, w["wav2vec2"], attention)
        sizes = [w["gpt2"]["n_embd"], 2048, 2 * w["wav2vec2"]["hidden_size"]]
        fused = w["fusion_out_features"]
        p = [int(fused * d / sum(sizes)) for d in sizes]
        p[p.index(max(p))] += fused - sum(p)
        self.proj = nn.ModuleList(nn.Linear(d, q) for d, q in zip(sizes, p))
        self.attn = nn.MultiheadAttention(fused, w["attention_heads"])
        self.norm = nn.LayerNorm(fused)
        layers, width = [], fused
        for out, dropout in w["head"]:
            layers += [nn.Linear(width, out), nn.ReLU(), nn.Dropout(dropout)]
            width = out
        self.ff = nn.Sequential(*layers)
        self.logits = nn.Linear(width, w["classes"])
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


def bench_step(device, plan, attention):
    w = plan["step"]
    model = FusionMhaAdv(device, w, attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=w["learning_rate"], weight_decay=w["weight_decay"])
    ids, mask, last = gpt2_inputs(device, w["gpt2"]["vocab_size"], w["lengths"], w["tokens"])
    b = w["batch"]
    images = torch.randn(b, 3, w["height"], w["width"], device=device)
    audio = torch.randn(b, w["samples"], device=device) * 3000.0
    y = torch.nn.functional.one_hot(torch.arange(b, device=device) % w["classes"], w["classes"]).float()

    def step():
        sync(device)
        start = time.perf_counter()
        loss = dice(model(ids, mask, last, images, audio), y)
        sync(device)
        forward_s = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), w["max_grad_norm"])
        optimizer.step()
        loss.item()
        sync(device)
        return forward_s, time.perf_counter() - start - forward_s

    return f"{b} items", b, timed(device, plan["iterations"], step)


BENCHES = {"gpt2": bench_gpt2, "wav2vec2": bench_wav2vec2, "resnet50": bench_resnet, "step": bench_step}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", required=True, help="the plan `erc-train selfcheck --plan FILE` wrote")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp32,tf32")
    parser.add_argument("--workloads", default="gpt2,wav2vec2,resnet50,step")
    parser.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    torch.manual_seed(0)
    device = torch.device(args.device)
    for precision in args.precisions.split(","):
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        for workload in args.workloads.split(","):
            line = dict(name=WORKLOADS[workload], precision=precision, attention=args.attention, error=None)
            try:
                batch, items, (f, b, peak) = BENCHES[workload](device, plan, args.attention)
                line.update(batch=batch, items=items, forward_s=f, backward_s=b, total_s=f + b,
                            samples_per_s=items / (f + b), peak_memory_bytes=peak)
            except Exception as e:  # out of memory and the like: reported, the others go on
                line.update(error=f"{type(e).__name__}: {(str(e).splitlines() or ['?'])[0][:200]}")
            print(json.dumps(line), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
