//! Benchmark, not a test (ignored by default): forward + backward time per training batch of the trainable
//! backbones at their real sizes, random weights — GPT-2 small (124 M) on 2 × 256 tokens, wav2vec 2.0 base on
//! 2 × 150 000 samples and ResNet-50 on 2 × 3 × 256 × 721 images (the reference's input sizes, docs/reference.md §3.2, docs/reference.md §3.3,
//! docs/reference.md §3.5; batch 2 rather than the reference's 8–16 so that one step takes seconds on a laptop CPU). Training mode
//! (dropout, LayerDrop, masking, batch statistics on), loss = sum of the encoder output. Prints one table, and
//! with `BENCH_JSON=FILE` appends one JSON line per backbone for `scripts/bench-backbones.sh`, which runs the same
//! models in PyTorch (`scripts/bench_backbones_torch.py`) and prints the ratios.
//!
//! `scripts/bench-backbones.sh [gpt2|wav2vec2|resnet50|all] [ITERATIONS]`, i.e.
//! `BENCH_BACKBONES=all BENCH_ITERATIONS=3 cargo test --release --workspace --test bench_backbones -- --ignored --nocapture`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use erc_train::encoders::resnet::ResNet50;
use erc_train::encoders::{gpt2, wav2vec2};
use erc_train::nn::ParamStore;

fn params(vars: &VarMap) -> usize {
    vars.all_vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum()
}

/// Mean seconds of the forward and of the backward over `iterations` runs after one warm-up run.
fn time(iterations: usize, forward: impl Fn() -> Tensor) -> (f64, f64) {
    let step = || {
        let start = Instant::now();
        let loss = forward().sum_all().unwrap();
        // Make the forward finish before the clock moves on (lazy devices).
        loss.to_scalar::<f32>().unwrap();
        let forward_s = start.elapsed().as_secs_f64();
        drop(loss.backward().unwrap());
        (forward_s, start.elapsed().as_secs_f64() - forward_s)
    };
    step();
    let (mut f, mut b) = (0.0, 0.0);
    for _ in 0..iterations {
        let (fs, bs) = step();
        f += fs;
        b += bs;
    }
    (f / iterations as f64, b / iterations as f64)
}

#[test]
#[ignore = "benchmark: scripts/bench-backbones.sh"]
fn bench_backbones() {
    let which = std::env::var("BENCH_BACKBONES").unwrap_or_else(|_| "all".into());
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // As the trainer does (through its optimiser): freed activations and gradients are reused, not unmapped.
    erc_train::train::heap::keep_freed_memory();
    let device = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    let mut rows = Vec::new();

    if which == "all" || which == "gpt2" {
        let cfg = gpt2::Config::gpt2_small();
        let vars = VarMap::new();
        let model = gpt2::Gpt2Model::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &device))
            .unwrap();
        let encoder = gpt2::Gpt2Encoder::new(model, false);
        let (b, l) = (2usize, 256usize);
        let ids = Tensor::rand(0f32, cfg.vocab_size as f32, (b, l), &device)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap();
        // Row 1 right-padded after 200 tokens, as in a batch of prompts of different lengths.
        let mask: Vec<u32> = (0..b * l)
            .map(|i| u32::from(i < l || i % l < 200))
            .collect();
        let mask = Tensor::from_vec(mask, (b, l), &device).unwrap();
        let (f, bw) = time(iterations, || encoder.forward(&ids, &mask, true).unwrap());
        rows.push((
            "gpt2 (124M)",
            format!("{b} x {l} tokens"),
            params(&vars),
            f,
            bw,
        ));
    }
    if which == "all" || which == "wav2vec2" {
        let cfg = wav2vec2::Config::base();
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &device);
        let model = wav2vec2::Wav2Vec2Model::new(&cfg, vb.clone()).unwrap();
        let encoder = wav2vec2::Wav2Vec2Encoder::new(model, None, false, vb).unwrap();
        let (b, n) = (2usize, 150_000usize);
        let x = (Tensor::randn(0f32, 1.0, (b, n), &device).unwrap() * 3000.0).unwrap();
        let (f, bw) = time(iterations, || encoder.forward(&x, true).unwrap());
        rows.push((
            "wav2vec2-base (95M)",
            format!("{b} x {n} samples"),
            params(&vars),
            f,
            bw,
        ));
    }
    if which == "all" || which == "resnet50" {
        let mut store = ParamStore::new(&device, 0);
        let model = ResNet50::new(&mut store, "visual", false).unwrap();
        let (b, h, w) = (2usize, 256usize, 721usize);
        let x = Tensor::randn(0f32, 1.0, (b, 3, h, w), &device).unwrap();
        let (f, bw) = time(iterations, || model.forward(&x, true).unwrap());
        rows.push((
            "resnet50 (23.5M)",
            format!("{b} x 3 x {h} x {w}"),
            store.parameter_count(),
            f,
            bw,
        ));
    }

    println!("forward+backward per training batch (mean of {iterations} after 1 warm-up), CPU, {threads} threads");
    println!(
        "{:<20} {:<20} {:>12} {:>10} {:>10} {:>10}",
        "backbone", "batch", "parameters", "forward s", "backward s", "total s"
    );
    let json = std::env::var("BENCH_JSON").ok();
    for (name, batch, n, f, b) in rows {
        println!(
            "{name:<20} {batch:<20} {n:>12} {f:>10.2} {b:>10.2} {:>10.2}",
            f + b
        );
        if let Some(path) = &json {
            let key = name.split([' ', '-']).next().unwrap_or(name);
            let line = format!(
                "{{\"backbone\": \"{key}\", \"batch\": \"{batch}\", \"forward_s\": {f}, \"backward_s\": {b}, \"threads\": {threads}}}\n"
            );
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            file.write_all(line.as_bytes()).unwrap();
        }
    }
}
