//! MESM end to end on a MELD-shaped synthetic dataset (a plain `meld-etl extract`), with the tiny RoBERTa and the
//! narrow ResNet-50 of the backbone fixtures: the seeds table's MESM rows (04–06) pass `--dry-run`; each config
//! takes its training steps and learns the planted cues (text words, audio tone, the frames' colour block)
//! above chance in a short run, and records the fraction of feature-map positions each CNN kept per epoch in
//! `metrics.jsonl` (p = 0.5 keeps fewer than p = 0.7; the dense FE2E CNNs keep all).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meld_erc_tests::{
    backbone_fixture, bin, run_folder, run_ok, run_summary, seed_config, split_f1,
};

struct Dataset {
    dir: PathBuf,
    data: PathBuf,
}

/// One synthetic dataset for the file's tests, in cargo's per-target temporary folder: a static is never dropped,
/// so a `tempfile` folder would outlive every run; this one is replaced by the next run instead.
fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seed_mesm");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the last run's runs");
        }
        std::fs::create_dir_all(&dir).expect("the runs' folder");
        let data = meld_erc_tests::extracted_synth(env!("CARGO_TARGET_TMPDIR"), 30, 3, "1-2");
        Dataset { dir, data }
    })
}

/// The tiny checkpoints in place of roberta-base and a full-width ResNet-50.
fn models(cmd: &mut Command) -> &mut Command {
    cmd.arg("--text-model")
        .arg(backbone_fixture("roberta-tiny"))
        .arg("--visual-model")
        .arg(backbone_fixture("resnet50-tiny"))
}

/// `configs/seeds/<file>` sized for the tiny models and CI: mosaics 32 pixels wide (frames of 18 x 32), 0.5 s of
/// audio, a learning rate for
/// models trained from random weights, few epochs of batch 16, no early stopping.
fn short_run(file: &str) -> String {
    let keys = [
        ("classifier_learning_rate", "2.0e-3"),
        ("classifier_warmup_steps", "10"),
        ("epochs", "3"),
        ("audio_in_features", "8000"),
        ("batch_size", "16"),
    ];
    seed_config(file, &keys, &["classifier_early_stopping_patience"]) + "visual_short_side: 32\n"
}

/// Each MESM config learns the cues well above chance (≈ 0.25–0.3 for a prior-following or majority guesser),
/// and each epoch's line of `metrics.jsonl` (and the log) carries the fraction of positions kept.
#[test]
fn mesm_configs_learn_the_synth_cues_and_report_the_positions_kept() {
    let ds = dataset();
    let mut kept = Vec::new();
    for file in ["mesm-p05.yml", "mesm-p07.yml", "mesm-dense.yml"] {
        let started = std::time::Instant::now();
        let config = ds.dir.join(file);
        std::fs::write(&config, short_run(file)).unwrap();
        let output = run_ok(
            models(&mut bin("erc-train"))
                .arg("--config")
                .arg(&config)
                .arg("--data")
                .arg(&ds.data)
                .arg("--out")
                .arg(ds.dir.join("runs")),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let run = run_folder(&output);
        let summary = run_summary(&run);
        let (valid, test) = (split_f1(&summary, "valid"), split_f1(&summary, "test"));
        // (visual, audio) per epoch
        let epochs: Vec<(f64, f64)> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).unwrap();
                let of = |m: &str| {
                    line["mesm_kept_fraction"][m]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{file}: no {m} kept fraction in {l}"))
                };
                (of("visual"), of("audio"))
            })
            .collect();
        eprintln!(
            "{file}: valid weighted F1 {valid:.4}, test {test:.4}; kept per epoch {epochs:.3?}; {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            valid > 0.4 && test > 0.4,
            "{file}: valid {valid}, test {test} (chance ≈ 0.25–0.3)"
        );
        assert_eq!(epochs.len(), 3, "{file}: one kept fraction per epoch");
        assert!(
            stderr.contains("MESM kept audio") && stderr.contains(", visual "),
            "{file}: the log shows no kept fraction:\n{stderr}"
        );
        let n = epochs.len() as f64;
        kept.push((
            epochs.iter().map(|e| e.0).sum::<f64>() / n,
            epochs.iter().map(|e| e.1).sum::<f64>() / n,
        ));
    }
    // in both CNNs p = 0.5 keeps fewer positions than p = 0.7, both fewer than all; the dense CNNs see every one
    for (m, of) in [
        ("visual", (|k: (f64, f64)| k.0) as fn((f64, f64)) -> f64),
        ("audio", |k| k.1),
    ] {
        let k: Vec<f64> = kept.iter().map(|x| of(*x)).collect();
        assert!(
            0.0 < k[0] && k[0] < k[1] && k[1] < 1.0,
            "{m}: mean kept fractions {k:?}"
        );
        assert_eq!(k[2], 1.0, "{m}");
    }
}

/// The seeds table's MESM rows pass its checks (data, audio format, backbones) with the tiny models; the training
/// step of each config is the learning test's (and `backbone_configs`'s one step on the real loading path), so no
/// `--smoke` run is repeated here.
#[test]
fn the_mesm_rows_pass_the_table_checks() {
    let ds = dataset();
    let out = ds.dir.join("seeds");
    let mut cmd = bin("erc-train");
    cmd.args([
        "table4",
        "--table",
        "seeds",
        "--rows",
        "04-06",
        "--dry-run",
        "--data",
    ])
    .arg(&ds.data)
    .arg("--out")
    .arg(&out);
    let output = run_ok(models(&mut cmd));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("every asked row can run"), "{stdout}");
    for name in ["mesm-p05", "mesm-p07", "mesm-dense"] {
        assert!(stdout.contains(name), "{name} not checked:\n{stdout}");
    }
    assert!(!out.exists(), "a dry run writes nothing");
}
