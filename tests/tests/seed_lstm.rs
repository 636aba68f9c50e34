//! The frames + voice + LSTM seed system (seeds rows 10 and 11) end to end on a MELD-shaped synthetic dataset (a
//! plain `meld-etl extract`: 5-frame mosaics, 16 kHz mono WAVs), with the tiny ResNet-50 of the backbone fixtures
//! in place of ImageNet's: both configs pass the seeds table's `--dry-run` (their `--smoke` training step is
//! `seed_systems.rs`'s), and each learns the planted audio-tone and colour-block cues in a short run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meld_erc_tests::{backbone_fixture, bin, repo, run_ok, synth};

const CONFIGS: [&str; 2] = ["frames-lstm.yml", "frames-lstm-scratch.yml"];

struct Dataset {
    dir: tempfile::TempDir,
    data: PathBuf,
}

fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = dir.path().join("MELD.Raw");
        synth(&raw, 30, 3, "1-2", &[]);
        let data = dir.path().join("data");
        run_ok(
            bin("meld-etl")
                .args(["extract", "--raw"])
                .arg(&raw)
                .arg("--out")
                .arg(&data),
        );
        // the raw clips (most of the tree's size) are not read again
        std::fs::remove_dir_all(&raw).expect("remove the raw clips");
        Dataset { dir, data }
    })
}

/// The tiny ResNet-50 checkpoint in place of ImageNet's (`visual_pretrained: false` reads only its widths).
fn tiny_resnet() -> PathBuf {
    backbone_fixture("resnet50-tiny").join("model.safetensors")
}

fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).unwrap()
}

fn f1(summary: &serde_json::Value, split: &str) -> f64 {
    summary["splits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["split"] == split)
        .unwrap()["f1_weighted"]
        .as_f64()
        .unwrap()
}

/// `configs/seeds/<file>` sized for CI: 32-pixel-wide mosaics (frames of 18 × 32), 1 s of audio (5 windows of
/// 200 ms), a learning rate for models trained from random weights, 6 epochs of batch 16, no early stopping.
fn short_run(file: &str) -> String {
    let yaml = std::fs::read_to_string(repo().join("configs/seeds").join(file)).unwrap();
    let sizes = [
        ("classifier_learning_rate", "1.0e-3"),
        ("classifier_warmup_steps", "10"),
        ("visual_short_side", "32"),
        ("audio_in_features", "16000"),
        ("audio_out_features", "32"),
        ("fusion_out_features", "32"),
        ("epochs", "6"),
        ("batch_size", "16"),
    ];
    for (key, _) in sizes {
        assert!(yaml.contains(&format!("\n{key}:")), "{file} has no {key}");
    }
    yaml.lines()
        .filter(|l| !l.starts_with("classifier_early_stopping_patience"))
        .map(|l| {
            sizes
                .iter()
                .find(|(key, _)| l.starts_with(&format!("{key}:")))
                .map_or(l.to_string(), |(key, value)| format!("{key}: {value}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Both configs learn the planted cues (audio tone pitch, colour of the moving block: 85% agreement with the
/// label) far above chance (≈ 0.25–0.3 for a prior-following or majority guesser) in a short run; the run's
/// config kept the system's switches.
#[test]
fn both_frames_lstm_configs_learn_the_synth_cues() {
    let ds = dataset();
    for file in CONFIGS {
        let config = ds.dir.path().join(file);
        std::fs::write(&config, short_run(file)).unwrap();
        let started = std::time::Instant::now();
        let output = run_ok(
            bin("erc-train")
                .arg("--config")
                .arg(&config)
                .arg("--data")
                .arg(&ds.data)
                .arg("--out")
                .arg(ds.dir.path().join("runs"))
                .arg("--visual-model")
                .arg(tiny_resnet()),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let run = stdout
            .lines()
            .find_map(|l| l.strip_prefix("run folder: "))
            .map(|l| PathBuf::from(l.trim()))
            .unwrap_or_else(|| panic!("no run folder in:\n{stdout}"));
        let s = summary(&run);
        let (valid, test) = (f1(&s, "valid"), f1(&s, "test"));
        eprintln!(
            "{file}: valid weighted F1 {valid:.4}, test {test:.4} ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        assert!(
            valid > 0.45 && test > 0.45,
            "{file}: valid {valid}, test {test} (chance ≈ 0.25–0.3)"
        );
        let used = std::fs::read_to_string(run.join("config.yml")).unwrap();
        for key in [
            "modules_fusion: lstm",
            "modules_audio_encoder: vocal_net",
            "visual_crop: full",
        ] {
            assert!(used.contains(key), "{file}: no `{key}` in\n{used}");
        }
    }
}

/// Rows 10 and 11 of the seeds table pass `--dry-run` (with the tiny ResNet; without it, row 10 names the ImageNet
/// checkpoint it lacks, row 11 needs none). Their `--smoke` training step is `seed_systems.rs`'s, with every row's.
#[test]
fn the_seeds_table_dry_runs_rows_10_and_11() {
    let ds = dataset();
    let out = ds.dir.path().join("seeds");
    let table = |rows: &str, extra: &[&str]| {
        let mut cmd = bin("erc-train");
        cmd.args(["table4", "--table", "seeds", "--rows", rows, "--data"])
            .arg(&ds.data)
            .arg("--out")
            .arg(&out)
            .args(extra);
        cmd
    };
    let with_tiny = |mut cmd: std::process::Command| {
        cmd.arg("--visual-model").arg(tiny_resnet());
        cmd
    };
    let output = run_ok(&mut with_tiny(table("10-11", &["--dry-run"])));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("every asked row can run"), "{stdout}");
    assert!(!out.exists(), "a dry run writes nothing");
    // offline without the ImageNet weights: row 10 cannot start and says which model; row 11 trains from scratch
    let empty_cache = tempfile::tempdir().unwrap();
    let output = table("11", &["--dry-run"])
        .env("HF_HOME", empty_cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = table("10", &["--dry-run"])
        .env("HF_HOME", empty_cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("MISSING") && stdout.contains("resnet50"),
        "{stdout}"
    );
}
