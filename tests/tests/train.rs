//! `erc-train` end to end, as a user runs it: `meld-etl synth` → `meld-etl extract` → `erc-train` on the
//! dataset, then `erc-train eval` and `erc-train check` on the results. The synthetic clips carry planted cues
//! (the text's cue words and the audio's tone pitch match the label 85% of the time), so a model that trains
//! correctly reaches a weighted F1 far above chance (≈ 0.25–0.3 for a prior-following or majority guesser).
//!
//! GloVe vectors: a small GloVe-format file written here (random 50-d vectors for the cue words and a few
//! fillers), so no download is needed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meld_erc_tests::{
    backbone_fixture, bin, repo, run_folder, run_ok, run_summary, split_f1, write_glove,
};

/// Synth durations (30 train dialogues, seed 3; dev and test get MELD's proportions, ≈ 11% and 27%).
const DIALOGUES_DURATIONS: &str = "1-2";

struct Dataset {
    dir: meld_erc_tests::Scratch,
    data: PathBuf,
    glove: PathBuf,
}

fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "train");
        let data = meld_erc_tests::extracted_synth(
            env!("CARGO_TARGET_TMPDIR"),
            30,
            3,
            DIALOGUES_DURATIONS,
        );
        let glove = dir.path().join("glove.test.50d.txt");
        write_glove(&glove);
        Dataset { dir, data, glove }
    })
}

const CLASSES: &str =
    "classifier_classes: [anger, disgust, fear, joy, neutral, sadness, surprise]\n";

/// The tiny GPT-2 of the backbone fixtures: a complete model folder (config, weights, a 512-token cut of the
/// real vocabulary).
fn gpt2_tiny() -> PathBuf {
    backbone_fixture("gpt2-tiny")
}

/// Writes a config next to the dataset and trains it; returns the run folder.
fn train(name: &str, yaml: &str, extra: &[&str]) -> PathBuf {
    let ds = dataset();
    let config = ds.dir.path().join(format!("{name}.yml"));
    std::fs::write(&config, format!("classifier_name: {name}\n{CLASSES}{yaml}")).expect("config");
    let out = ds.dir.path().join("runs");
    let output = run_ok(
        bin("erc-train")
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&ds.data)
            .arg("--out")
            .arg(&out)
            .arg("--glove")
            .arg(&ds.glove)
            .args(extra),
    );
    run_folder(&output)
}

fn epochs(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl line"))
        .collect()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
        .unwrap_or(false)
}

const GLOVE: &str = "modules_text_encoder: glove\ntext_out_features: 50\ntext_context: utterance\nclassifier_loss_fn: dice\nclassifier_learning_rate: 0.005\nclassifier_warmup_steps: 10\nclassifier_metric_for_best_model: f1_weighted\nclassifier_early_stopping_patience: 5\nfeedforward_layers:\n  - out_features: 64\n    dropout: 0.2\nbatch_size: 16\nepochs: 12\n";

#[test]
fn glove_text_model_learns_the_cue_words_and_writes_a_complete_run_folder() {
    let run = train("glove-text", GLOVE, &[]);
    let s = run_summary(&run);
    let f1 = split_f1(&s, "valid");
    eprintln!(
        "glove text: valid weighted F1 {f1:.4}, test {:.4}",
        split_f1(&s, "test")
    );
    assert!(f1 > 0.5, "valid weighted F1 {f1} (chance ≈ 0.25–0.3)");
    assert!(
        split_f1(&s, "test") > 0.5,
        "test weighted F1 {}",
        split_f1(&s, "test")
    );
    for file in [
        "config.yml",
        "run.json",
        "model.safetensors",
        "glove-vocab.txt",
        "report-valid.txt",
        "report-test.txt",
        "confusion-valid.csv",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing from {}",
            run.display()
        );
    }
    for png in ["curves.png", "confusion-valid.png", "confusion-test.png"] {
        assert!(is_png(&run.join(png)), "{png} is not a PNG");
    }
    let lines = epochs(&run);
    assert_eq!(lines.len() as u64, s["epochs_run"].as_u64().unwrap());
    let report = std::fs::read_to_string(run.join("report-valid.txt")).unwrap();
    assert!(
        report.starts_with("              precision    recall  f1-score   support\n\n"),
        "{report}"
    );

    // `eval` reproduces the summary's number from the saved weights.
    let output = run_ok(
        bin("erc-train")
            .args(["eval", "--split", "valid", "--run"])
            .arg(&run),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("weighted F1 {f1:.4}")),
        "eval printed:\n{stdout}\nsummary F1 {f1:.4}"
    );
    assert!(stdout.contains("weighted avg"), "{stdout}");
}

#[test]
fn same_seed_gives_the_same_numbers() {
    let a = epochs(&train(
        "determinism",
        GLOVE,
        &["--epochs", "2", "--seed", "9"],
    ));
    let b = epochs(&train(
        "determinism",
        GLOVE,
        &["--epochs", "2", "--seed", "9"],
    ));
    for key in ["train_loss", "valid_loss", "valid_f1_weighted"] {
        let va: Vec<f64> = a.iter().map(|l| l[key].as_f64().unwrap()).collect();
        let vb: Vec<f64> = b.iter().map(|l| l[key].as_f64().unwrap()).collect();
        assert_eq!(va, vb, "{key}");
    }
}

#[test]
fn waveform_model_learns_the_tone_pitch() {
    let run = train(
        "waveform",
        "modules_audio_encoder: waveform\naudio_input: normalized_mono\naudio_in_features: 16000\naudio_out_features: 50\nclassifier_loss_fn: dice\nclassifier_learning_rate: 0.0005\nclassifier_warmup_steps: 10\nclassifier_metric_for_best_model: f1_weighted\nclassifier_early_stopping_patience: 5\nfeedforward_layers:\n  - out_features: 64\n    dropout: 0.2\nbatch_size: 16\nepochs: 12\n",
        &[],
    );
    let f1 = split_f1(&run_summary(&run), "valid");
    eprintln!("waveform: valid weighted F1 {f1:.4}");
    assert!(f1 > 0.5, "valid weighted F1 {f1} (chance ≈ 0.25–0.3)");
}

#[test]
fn small_resnet_model_trains_and_its_loss_falls() {
    // The full ResNet-50 on a slice of the data sized for CI: 32-pixel-high crops (visual_short_side: 32 instead of
    // 256, ~64x fewer FLOPs than 3x256x721), the first 32 rows of each split (--max-rows), batch 8: 12 steps.
    let run = train(
        "resnet",
        "modules_visual_encoder: resnet50\nvisual_model: random\nvisual_short_side: 32\nclassifier_loss_fn: ce\nclassifier_learning_rate: 0.001\nclassifier_warmup_steps: 2\nclassifier_metric_for_best_model: f1_weighted\nfeedforward_layers:\n  - out_features: 32\n    dropout: 0.0\nbatch_size: 8\nepochs: 3\n",
        &["--max-rows", "32"],
    );
    let lines = epochs(&run);
    let first = lines.first().unwrap()["train_loss"].as_f64().unwrap();
    let last = lines.last().unwrap()["train_loss"].as_f64().unwrap();
    eprintln!("resnet: train loss {first:.4} → {last:.4}");
    assert!(last < first, "train loss {first} → {last}");
    assert!(is_png(&run.join("curves.png")));
    // the run records which body its ops took: under `make test-generic` only the generic compositions
    let bodies = &run_summary(&run)["op_bodies"];
    let (cpu, generic) = (
        bodies["cpu"].as_u64().unwrap(),
        bodies["generic"].as_u64().unwrap(),
    );
    if std::env::var("ERC_EXPECT_OPS").as_deref() == Ok("generic") {
        assert!(
            cpu == 0 && generic > 0,
            "ERC_EXPECT_OPS=generic, the run's ops: {bodies}"
        );
    } else if std::env::var_os("ERC_OPS").is_none() {
        assert!(cpu > 0, "no CPU kernel ran: {bodies}");
    }
}

#[test]
fn gpt2_model_trains_from_a_local_model_folder_and_eval_reloads_it() {
    // The real loading path (model folder → tokenizer, checkpoint, [PAD] row) with the tiny GPT-2, on the
    // dialogue prompts of the first rows. One epoch: this checks the plumbing, not learning. The run folder's
    // config records where the model came from, so `eval` needs no --text-model.
    let run = train(
        "gpt2",
        "modules_text_encoder: gpt2\nclassifier_loss_fn: ce\nclassifier_warmup_steps: 2\nfeedforward_layers:\n  - out_features: 16\n    dropout: 0.1\nbatch_size: 4\nepochs: 1\n",
        &["--max-rows", "12", "--text-model", gpt2_tiny().to_str().unwrap()],
    );
    let s = run_summary(&run);
    assert_eq!(s["epochs_run"], 1);
    let f1 = split_f1(&s, "valid");
    let output = run_ok(
        bin("erc-train")
            .args(["eval", "--split", "valid", "--max-rows", "12", "--run"])
            .arg(&run),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("weighted F1 {f1:.4}")),
        "{stdout}\nsummary F1 {f1:.4}"
    );
}

#[test]
fn check_describes_the_run_and_names_missing_models_and_media() {
    let ds = dataset();
    let config = ds.dir.path().join("check.yml");
    std::fs::write(&config, format!("{CLASSES}{GLOVE}")).unwrap();
    let output = run_ok(
        bin("erc-train")
            .arg("check")
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&ds.data)
            .arg("--glove")
            .arg(&ds.glove),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("parameters") && stdout.contains("steps"),
        "{stdout}"
    );

    // A backbone that is neither a local folder nor cached, offline: the error names the files and the command.
    let gpt2 = repo().join("configs/t-um-gpt2.yml");
    let empty_cache = tempfile::tempdir().unwrap();
    let output = Command::new(meld_erc_tests::bin_dir().join("erc-train"))
        .arg("check")
        .arg("--config")
        .arg(&gpt2)
        .arg("--data")
        .arg(&ds.data)
        .env("HF_HOME", empty_cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("model.safetensors, pytorch_model.bin")
            && stderr.contains("hf download gpt2 --include config.json")
            && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    // The same config pointed at a local model folder describes the run.
    let output = run_ok(
        bin("erc-train")
            .arg("check")
            .arg("--config")
            .arg(&gpt2)
            .arg("--data")
            .arg(&ds.data)
            .arg("--text-model")
            .arg(gpt2_tiny()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pretrained = format!("gpt2     pretrained weights from {}", gpt2_tiny().display());
    // --device cuda on this CPU build: one line naming the cause and the fix, no panic.
    let output = Command::new(meld_erc_tests::bin_dir().join("erc-train"))
        .args(["--device", "cuda", "--config"])
        .arg(repo().join("configs/t-um-glove.yml"))
        .arg("--data")
        .arg(&ds.data)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("built without CUDA") && errors[0].contains("make cuda"),
        "{stderr}"
    );
    // The reference's audio input on the default 16 kHz mono WAVs: refused, with the extraction that fits.
    let reference_audio = ds.dir.path().join("reference-audio.yml");
    std::fs::write(
        &reference_audio,
        format!("{CLASSES}modules_audio_encoder: waveform\naudio_in_features: 150000\naudio_out_features: 50\n"),
    )
    .unwrap();
    let output = Command::new(meld_erc_tests::bin_dir().join("erc-train"))
        .args(["--config"])
        .arg(&reference_audio)
        .arg("--data")
        .arg(&ds.data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("16000 Hz with 1 channel")
            && stderr.contains("--profile hlm12erc")
            && stderr.contains("audio_input: normalized_mono"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&pretrained)
            && stdout.contains("encoders text Gpt2, visual None, audio None"),
        "{stdout}"
    );

    // Face-only images asked for, but the data was extracted without --faces.
    let faces = ds.dir.path().join("faces-only.yml");
    std::fs::write(
        &faces,
        format!("{CLASSES}modules_visual_encoder: resnet50\nvisual_model: random\nvisual_preprocess_faceonly: true\n"),
    )
    .unwrap();
    let output = Command::new(meld_erc_tests::bin_dir().join("erc-train"))
        .arg("check")
        .arg("--config")
        .arg(&faces)
        .arg("--data")
        .arg(&ds.data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("x_visual_faces") && stderr.contains("--faces"),
        "{stderr}"
    );

    // A data folder without the medium a config needs fails before training.
    let textless = ds.dir.path().join("textless");
    std::fs::create_dir_all(&textless).unwrap();
    let mut seen = HashSet::new();
    for split in ["train", "valid", "test"] {
        let text = std::fs::read_to_string(ds.data.join(format!("{split}.csv"))).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header = reader.headers().unwrap().clone();
        let audio_col = header.iter().position(|h| h == "x_audio").unwrap();
        let mut writer = csv::Writer::from_path(textless.join(format!("{split}.csv"))).unwrap();
        writer.write_record(&header).unwrap();
        for record in reader.records() {
            let record = record.unwrap();
            let row: Vec<&str> = record
                .iter()
                .enumerate()
                .map(|(i, v)| if i == audio_col { "" } else { v })
                .collect();
            seen.insert(split);
            writer.write_record(&row).unwrap();
        }
        writer.flush().unwrap();
    }
    assert_eq!(seen.len(), 3);
    let wave = ds.dir.path().join("wave.yml");
    std::fs::write(&wave, format!("{CLASSES}modules_audio_encoder: waveform\naudio_in_features: 100\naudio_out_features: 4\n")).unwrap();
    let output = Command::new(meld_erc_tests::bin_dir().join("erc-train"))
        .arg("--config")
        .arg(&wave)
        .arg("--data")
        .arg(&textless)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("x_audio") && stderr.contains("train.csv"),
        "{stderr}"
    );
}

/// The feature-spread diagnostic (the frames + voice + LSTM seed's check): with every WAV of the dataset replaced
/// by one clip, the audio encoder gives the same vector for every sample. metrics.jsonl records each modality's
/// variance across a validation batch per epoch, the audio's is zero where the text's is not, and the log warns
/// about the audio alone.
#[test]
fn a_constant_encoder_is_flagged_by_the_feature_variance_diagnostic() {
    let ds = dataset();
    let data = ds.dir.path().join("data-constant-audio");
    run_ok(Command::new("cp").arg("-r").arg(&ds.data).arg(&data));
    let wavs: Vec<PathBuf> = ["train", "valid", "test"]
        .iter()
        .flat_map(|split| {
            std::fs::read_dir(data.join(split))
                .unwrap_or_else(|e| panic!("{split}/audio: {e}"))
                .map(|e| e.unwrap().path())
        })
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    assert!(wavs.len() > 20, "{} WAVs", wavs.len());
    for wav in &wavs[1..] {
        std::fs::copy(&wavs[0], wav).unwrap();
    }
    let config = ds.dir.path().join("constant-audio.yml");
    std::fs::write(
        &config,
        format!("classifier_name: constant-audio\n{CLASSES}modules_text_encoder: glove\ntext_out_features: 50\ntext_context: utterance\nmodules_audio_encoder: waveform\naudio_input: normalized_mono\naudio_in_features: 16000\naudio_out_features: 50\nclassifier_loss_fn: ce\nclassifier_learning_rate: 0.001\nclassifier_warmup_steps: 2\nbatch_size: 16\nepochs: 2\n"),
    )
    .unwrap();
    let output = run_ok(
        bin("erc-train")
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(ds.dir.path().join("runs-constant-audio"))
            .arg("--glove")
            .arg(&ds.glove)
            .args(["--max-rows", "48"]),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let run = run_folder(&output);
    let lines = epochs(&run);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let variance = &line["feature_variance"];
        let share = &line["feature_variance_share"];
        let audio = variance["audio"].as_f64().expect("audio variance");
        let text = variance["text"].as_f64().expect("text variance");
        eprintln!(
            "epoch {}: variance text {text:.3e} (share {}), audio {audio:.3e} (share {})",
            line["epoch"], share["text"], share["audio"]
        );
        assert!(audio < 1e-12, "audio variance {audio}");
        assert!(share["audio"].as_f64().unwrap() < 1e-4);
        assert!(share["text"].as_f64().unwrap() > 1e-3, "{share}");
    }
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("barely vary across the batch"))
        .collect();
    assert_eq!(warnings.len(), 2, "one warning per epoch:\n{stderr}");
    assert!(warnings.iter().all(|w| w.contains("the audio encoder")));
    // the untouched dataset's runs record every modality's spread too, none collapsed
    let normal = train(
        "spread-normal",
        "modules_text_encoder: glove\ntext_out_features: 50\ntext_context: utterance\nmodules_audio_encoder: waveform\naudio_input: normalized_mono\naudio_in_features: 16000\naudio_out_features: 50\nclassifier_loss_fn: ce\nbatch_size: 16\nepochs: 1\n",
        &["--max-rows", "48"],
    );
    let share = &epochs(&normal)[0]["feature_variance_share"];
    assert!(share["audio"].as_f64().unwrap() > 1e-3, "{share}");
    assert!(share["text"].as_f64().unwrap() > 1e-3, "{share}");
}
