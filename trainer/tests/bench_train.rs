//! Benchmark, not a test (ignored by default): training samples/s of the Table-4 `t-um-glove` and `a-um-waveform`
//! models and of the baseline's concat fusion + head alone, on CPU, through the trainer's real code path (model from
//! the config, loss, backward, AdamW with clipping and the schedule). `scripts/bench_train_torch.py` runs the same
//! models in PyTorch on the same input shapes; `scripts/bench-trainer.sh` runs both and prints the ratios.
//!
//! Inputs are random tensors of the real shapes: prompts of 60–200 GloVe tokens (MELD's dialogue prompts average
//! ~130), 150 000 audio samples, 2148 fused features; batch 64 as in the reference. Our GloVe embedding holds the
//! dataset's vocabulary (here 8 000 words, about MELD's), not all 400 000 GloVe rows: rows no prompt can reach
//! change nothing in the outputs, and the reference's dense AdamW update over all of them is pure cost.
//!
//! `BENCH_STEPS=20 [BENCH_MODELS=t-um-glove,...] cargo test --release --workspace --test bench_train -- --ignored --nocapture`
//! — preferably through `scripts/bench-trainer.sh`, which also sets `MALLOC_ARENA_MAX=1` so that this (libtest)
//! thread allocates as the trainer's main thread does (see the script and `erc_train::train::heap`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use erc_train::config::Config;
use erc_train::data::GloveVocab;
use erc_train::data::{Batch, MediaCounts};
use erc_train::model::fusion::Fusion;
use erc_train::model::Head;
use erc_train::model::Model;
use erc_train::nn::Ctx;
use erc_train::nn::ParamStore;
use erc_train::train::losses::Loss;
use erc_train::train::optim::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 64;
const VOCAB_WORDS: usize = 8_000;
const CLASSES: usize = 7;

fn config(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(format!("{name}.yml"));
    Config::load(&path).unwrap().config
}

fn optimizer(config: &Config, store: &ParamStore) -> AdamW {
    AdamW::new(
        store.trainable(),
        AdamWConfig::for_experiment(config, 10 * 157),
    )
    .unwrap()
}

fn batch(rng: &mut ChaCha8Rng, text: bool, audio: Option<usize>) -> Batch {
    let text_ids = if text {
        (0..BATCH)
            .map(|_| {
                let n = rng.gen_range(60..=200);
                (0..n)
                    .map(|_| rng.gen_range(0..VOCAB_WORDS as u32))
                    .collect()
            })
            .collect()
    } else {
        vec![Vec::new(); BATCH]
    };
    let audio = audio.map(|n| {
        let samples: Vec<f32> = (0..BATCH * n)
            .map(|_| rng.gen_range(-3000..3000) as f32)
            .collect();
        Tensor::from_vec(samples, (BATCH, n), &Device::Cpu).unwrap()
    });
    Batch {
        indices: (0..BATCH).collect(),
        text_ids,
        visual: None,
        audio,
        labels: (0..BATCH).map(|_| rng.gen_range(0..CLASSES)).collect(),
        sentiments: Vec::new(),
        missing: MediaCounts::default(),
        faces: None,
    }
}

/// Samples/s over `steps` training steps after two warm-up steps.
fn measure(steps: usize, mut step: impl FnMut(usize)) -> f64 {
    step(0);
    step(1);
    let start = Instant::now();
    for i in 0..steps {
        step(i + 2);
    }
    (steps * BATCH) as f64 / start.elapsed().as_secs_f64()
}

fn bench_model(name: &str, steps: usize) -> f64 {
    let config = config(name);
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let vocab = config.uses_text().then(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("glove.txt");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for w in 0..VOCAB_WORDS {
            write!(file, "w{w}").unwrap();
            for _ in 0..50 {
                write!(file, " {:.5}", rng.gen_range(-1.0f32..1.0)).unwrap();
            }
            writeln!(file).unwrap();
        }
        drop(file);
        let wanted = (0..VOCAB_WORDS).map(|w| format!("w{w}")).collect();
        GloveVocab::load(&path, 50, &wanted).unwrap()
    });
    let model = Model::build(&config, vocab.as_ref(), &Device::Cpu, 11).unwrap();
    let audio = config.uses_audio().then(|| config.audio_samples());
    let batches: Vec<Batch> = (0..4)
        .map(|_| batch(&mut rng, config.uses_text(), audio))
        .collect();
    let loss_fn = Loss::new(&config);
    let mut opt = optimizer(&config, &model.store);
    let mut ctx = Ctx::train(7);
    measure(steps, |i| {
        let b = &batches[i % batches.len()];
        let out = model.forward(b, &mut ctx).unwrap();
        let y = b.one_hot(CLASSES, &Device::Cpu).unwrap();
        let loss = loss_fn
            .training(&out.probs, &out.logits, &y, &out.hidden, &b.labels)
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    })
}

/// The baseline's fusion + head over fixed encoder outputs (GloVe 50 + ResNet-50 2048 + waveform 50).
fn bench_baseline_head(steps: usize) -> f64 {
    let config = config("baseline-dice");
    let dims = [50, 2048, 50];
    let fusion = Fusion::concat(&dims);
    let mut store = ParamStore::new(&Device::Cpu, 11);
    let layers = config.feedforward_layers.clone().unwrap_or_default();
    let head = Head::new(
        &mut store,
        "head",
        fusion.out_features(),
        &layers,
        config.feedforward_l2norm,
        CLASSES,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let inputs: Vec<Vec<Tensor>> = (0..4)
        .map(|_| {
            dims.iter()
                .map(|d| Tensor::rand(0f32, 1f32, (BATCH, *d), &Device::Cpu).unwrap())
                .collect()
        })
        .collect();
    let labels: Vec<usize> = (0..BATCH).map(|_| rng.gen_range(0..CLASSES)).collect();
    let mut y = vec![0f32; BATCH * CLASSES];
    for (i, l) in labels.iter().enumerate() {
        y[i * CLASSES + l] = 1.0;
    }
    let y = Tensor::from_vec(y, (BATCH, CLASSES), &Device::Cpu).unwrap();
    let loss_fn = Loss::new(&config);
    let mut opt = optimizer(&config, &store);
    let mut ctx = Ctx::train(7);
    measure(steps, |i| {
        let fused = fusion.forward(&inputs[i % inputs.len()]).unwrap();
        let out = head.forward(&fused, &mut ctx).unwrap();
        let loss = loss_fn
            .training(&out.probs, &out.logits, &y, &out.hidden, &labels)
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    })
}

#[test]
#[ignore = "benchmark: scripts/bench-trainer.sh"]
fn training_throughput() {
    // The trainer's own start-up settings (thread counts), so that both run candle the same way.
    erc_train::init_cpu_threads();
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let wanted = std::env::var("BENCH_MODELS")
        .unwrap_or_else(|_| "t-um-glove,a-um-waveform,baseline-head".into());
    for name in wanted.split(',') {
        let rate = if name == "baseline-head" {
            bench_baseline_head(steps)
        } else {
            bench_model(name, steps)
        };
        println!(
            "{{\"model\": \"{name}\", \"batch_size\": {BATCH}, \"steps\": {steps}, \"samples_per_s\": {rate:.2}, \"threads\": {}}}",
            rayon::current_num_threads()
        );
    }
}
