//! The seed systems end to end on a MELD-shaped synthetic dataset (a plain `meld-etl extract`: 16 kHz mono WAVs,
//! MELD's sentiment column), with the tiny RoBERTa and wav2vec2 of the backbone fixtures: TMN and its two fusion
//! ablations learn the planted cues, and `erc-train table4 --table seeds` checks, trains (smoke) and writes its
//! tables; `make reproduce-seeds` passes its flags through. With the tiny ResNet-50, both frames + voice + LSTM
//! configs (rows 10–11) learn the planted tone and colour cues.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use meld_erc_tests::{
    backbone_fixture, bin, read_csv_maps, repo, run_folder, run_ok, run_summary, seed_config,
    split_f1,
};

struct Dataset {
    dir: meld_erc_tests::Scratch,
    data: PathBuf,
}

fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "seed_systems");
        let data = meld_erc_tests::extracted_synth(env!("CARGO_TARGET_TMPDIR"), 30, 3, "1-2");
        Dataset { dir, data }
    })
}

/// The tiny checkpoints in place of roberta-large, wav2vec2-base and ImageNet's ResNet-50.
fn models(cmd: &mut Command) -> &mut Command {
    cmd.arg("--text-model")
        .arg(backbone_fixture("roberta-tiny"))
        .arg("--audio-model")
        .arg(backbone_fixture("wav2vec2-tiny"))
        .arg("--visual-model")
        .arg(backbone_fixture("resnet50-tiny").join("model.safetensors"))
}

/// `configs/seeds/<file>` as it is, but sized for the tiny models and CI: 1 s of audio, a learning rate for
/// models trained from random weights, 8 epochs of batch 16, no early stopping.
fn short_run(file: &str) -> String {
    seed_config(
        file,
        &[
            ("classifier_learning_rate", "1.0e-3"),
            ("classifier_warmup_steps", "10"),
            ("audio_in_features", "16000"),
            ("epochs", "8"),
            ("batch_size", "16"),
        ],
        &["classifier_early_stopping_patience"],
    )
}

/// TMN (its label smoothing, Peaking Labels and sentiment head included) and both fusion ablations learn the
/// planted cues (text cue words, audio tone pitch: 85% agreement with the label) far above chance (≈ 0.25–0.3 for
/// a prior-following or majority guesser) in a short run.
#[test]
fn tmn_and_its_ablations_learn_the_synth_cues() {
    let ds = dataset();
    for file in ["tmn.yml", "tmn-concat.yml", "tmn-xattn.yml"] {
        let config = ds.dir.path().join(file);
        std::fs::write(&config, short_run(file)).unwrap();
        let out = ds.dir.path().join("runs");
        let output = run_ok(
            models(&mut bin("erc-train"))
                .arg("--config")
                .arg(&config)
                .arg("--data")
                .arg(&ds.data)
                .arg("--out")
                .arg(&out),
        );
        let run = run_folder(&output);
        let s = run_summary(&run);
        let (valid, test) = (split_f1(&s, "valid"), split_f1(&s, "test"));
        eprintln!("{file}: valid weighted F1 {valid:.4}, test {test:.4}");
        assert!(
            valid > 0.45 && test > 0.45,
            "{file}: valid {valid}, test {test} (chance ≈ 0.25–0.3)"
        );
        // the run's config kept the seed system's switches
        let used = std::fs::read_to_string(run.join("config.yml")).unwrap();
        for key in [
            "classifier_peak_labels: true",
            "sentiment_loss_weight: 0.5",
            "modules_text_encoder: roberta",
        ] {
            assert!(used.contains(key), "{file}: no `{key}` in\n{used}");
        }
    }
}

/// `--dry-run` passes with the tiny models and names the missing RoBERTa offline without them; `--smoke` trains
/// every row one step and writes seeds.md|csv|png, our numbers never beside the seeds' published ones.
#[test]
fn the_seeds_table_checks_trains_and_writes_its_files() {
    let ds = dataset();
    let out = ds.dir.path().join("seeds");
    let table = |extra: &[&str]| {
        let mut cmd = bin("erc-train");
        cmd.args(["table4", "--table", "seeds", "--data"])
            .arg(&ds.data)
            .arg("--out")
            .arg(&out)
            .args(extra);
        // TMN's rows: the faces rows need a `--faces` dataset (tests/tests/seed_faces.rs)
        if !extra.contains(&"--rows") {
            cmd.args(["--rows", "01-03"]);
        }
        cmd
    };
    let output = run_ok(models(&mut table(&["--dry-run"])));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("every asked row can run") && stdout.contains("roberta"),
        "{stdout}"
    );
    assert!(!out.exists(), "a dry run writes nothing");
    // offline without the models: the row cannot start, and preflight says which model and how to fetch it
    let empty_cache = tempfile::tempdir().unwrap();
    let output = table(&["--dry-run", "--rows", "01"])
        .env("HF_HOME", empty_cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("MISSING") && stdout.contains("hf download roberta-large --include"),
        "{stdout}"
    );
    // a table4-only switch is refused for this table
    let output = models(&mut table(&["--corrected", "--dry-run"]))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--corrected"));

    run_ok(models(&mut table(&["--smoke", "--rows", "01-03"])));
    for file in ["seeds.md", "seeds.csv", "seeds.png"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let png = std::fs::read(out.join("seeds.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    // TMN's rows run; the table lists the other systems' as "not run"
    let rows: Vec<_> = read_csv_maps(&out.join("seeds.csv"))
        .into_iter()
        .filter(|r| r["status"] != "not run")
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str()).collect();
    // (the other systems' rows train in their own tests: seed_mesm, seed_lstm below, seed_faces)
    assert_eq!(names, ["tmn", "tmn-concat", "tmn-xattn"]);
    for row in &rows {
        assert!(row["status"].starts_with("smoke: wF1 "), "{:?}", row);
        assert_eq!(
            row["ours_valid_weighted_f1"], "",
            "a smoke run is never reported as a result"
        );
        assert!(row["their_figure_is"].contains("not comparable"));
        let s = run_summary(&out.join(format!("{}-{}", row["row"], row["name"])));
        assert_eq!(s["steps"], 1, "{}", row["name"]);
    }
    assert_eq!(rows[0]["their_value"], "0.844");
    let md = std::fs::read_to_string(out.join("seeds.md")).unwrap();
    assert!(
        md.contains("never comparable") && md.contains("on their dataset, KEMDy19/20"),
        "{md}"
    );
    // a rerun trains nothing
    let output = run_ok(models(&mut table(&["--smoke", "--rows", "01-03"])));
    assert!(String::from_utf8_lossy(&output.stderr).contains("complete in"));
    // --collect assembles the same tables from the folders
    std::fs::remove_file(out.join("seeds.csv")).unwrap();
    run_ok(models(
        table(&["--smoke", "--rows", "01-03", "--collect"]).arg(&out),
    ));
    let collected = read_csv_maps(&out.join("seeds.csv"));
    assert_eq!(
        collected
            .iter()
            .filter(|r| r["status"] != "not run")
            .count(),
        3
    );
}

/// README's `make reproduce-seeds`: the recipe passes SEEDS_OUT, ROWS and SEEDS_FLAGS through.
#[test]
fn make_reproduce_seeds_runs_the_table() {
    let ds = dataset();
    let out = ds.dir.path().join("make-seeds");
    let flags = format!(
        "--smoke --text-model {} --audio-model {}",
        backbone_fixture("roberta-tiny").display(),
        backbone_fixture("wav2vec2-tiny").display()
    );
    let output = Command::new("make")
        .current_dir(repo())
        .arg("-s")
        .arg("reproduce-seeds")
        .arg("CARGO=true") // the binaries are built: no cargo inside a test
        .arg(format!("DATA={}", ds.data.display()))
        .arg(format!("SEEDS_OUT={}", out.display()))
        .arg("ROWS=02")
        .arg(format!("SEEDS_FLAGS={flags}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(run_summary(&out.join("02-tmn-concat"))["epochs_run"], 1);
    assert!(!out.join("01-tmn").exists(), "ROWS=02 ran row 02 only");
    assert!(out.join("seeds.md").is_file());
}

// ---- the frames + voice + LSTM system (rows 10 and 11), on the same synthetic dataset ----

/// Rows 10 and 11.
const LSTM_CONFIGS: [&str; 2] = ["frames-lstm.yml", "frames-lstm-scratch.yml"];

/// The tiny ResNet-50 checkpoint in place of ImageNet's (`visual_pretrained: false` reads only its widths).
fn tiny_resnet() -> PathBuf {
    backbone_fixture("resnet50-tiny").join("model.safetensors")
}

/// `configs/seeds/<file>` sized for CI: 32-pixel-wide mosaics (frames of 18 × 32), 1 s of audio (5 windows of
/// 200 ms), a learning rate for models trained from random weights, 6 epochs of batch 16, no early stopping.
fn short_lstm_run(file: &str) -> String {
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
    for file in LSTM_CONFIGS {
        let config = ds.dir.path().join(file);
        std::fs::write(&config, short_lstm_run(file)).unwrap();
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
        let run = run_folder(&output);
        let s = run_summary(&run);
        let (valid, test) = (split_f1(&s, "valid"), split_f1(&s, "test"));
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
/// checkpoint it lacks, row 11 needs none). Their training steps are the learning test's above.
#[test]
fn the_seeds_table_dry_runs_rows_10_and_11() {
    let ds = dataset();
    let out = ds.dir.path().join("seeds-lstm");
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
