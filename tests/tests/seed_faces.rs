//! Seed system 3 (faces + landmarks; README "Faces and landmarks") end to end: a synth tree whose faces carry an
//! emotion cue (`synth --face-cues`: the real face of models/astronaut.png in every healthy clip, its head rolled
//! by an angle of the clip's visual cue), `meld-etl extract --faces` with the real RetinaFace (faces.csv: boxes
//! and 5 landmarks per frame), then the seeds table's rows 07–09 pass `--dry-run` and take a training step, each
//! config learns the rolled faces above chance, and a plateau-scheduled run killed mid-way resumes to the
//! uninterrupted run's learning rates and metrics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meld_erc_tests::{
    bin, model_file, run_folder, run_ok, run_summary, seed_config, split_f1, synth,
};

struct Dataset {
    dir: meld_erc_tests::Scratch,
    data: PathBuf,
}

/// One dataset for every test here: 14 train dialogues of 1–1.2 s clips, all of them with a rolled face.
fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "seed_faces");
        let raw = dir.path().join("MELD.Raw");
        let photo = model_file("astronaut.png");
        synth(
            &raw,
            14,
            5,
            "1-1.2",
            &[
                "--face-image",
                photo.to_str().unwrap(),
                "--face-box",
                "180,72,271,178",
                "--face-cues",
            ],
        );
        let data = dir.path().join("data");
        run_ok(
            bin("meld-etl")
                .args(["extract", "--jobs", "2", "--raw"])
                .arg(&raw)
                .arg("--out")
                .arg(&data)
                .arg("--faces")
                .arg(model_file("retinaface-mnet025.onnx")),
        );
        Dataset { dir, data }
    })
}

/// `configs/seeds/<file>` with some keys set (each must be in the file).
fn edited(file: &str, keys: &[(&str, &str)]) -> String {
    seed_config(file, keys, &[])
}

fn train(config: &Path, out: &Path) -> PathBuf {
    let output = run_ok(
        bin("erc-train")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(&dataset().data)
            .arg("--out")
            .arg(out),
    );
    run_folder(&output)
}

/// Rows 07–09 as the table runs them: `--dry-run` passes on a `--faces` dataset, `--smoke` takes one step each.
#[test]
fn the_faces_rows_check_and_take_a_training_step() {
    let ds = dataset();
    let out = ds.dir.path().join("seeds");
    let table = |extra: &[&str]| {
        let mut cmd = bin("erc-train");
        cmd.args(["table4", "--table", "seeds", "--rows", "07-09", "--data"])
            .arg(&ds.data)
            .arg("--out")
            .arg(&out)
            .args(extra);
        cmd
    };
    let output = run_ok(&mut table(&["--dry-run"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("every asked row can run"), "{stdout}");
    run_ok(&mut table(&["--smoke"]));
    for row in ["07-faces-cnn", "08-faces-landmarks", "09-faces"] {
        let s = run_summary(&out.join(row));
        assert_eq!(s["steps"], 1, "{row}");
        let weights = std::fs::read_to_string(out.join(row).join("class_weights.json"))
            .unwrap_or_else(|e| panic!("{row}: class_weights.json: {e}"));
        let weights: serde_json::Value = serde_json::from_str(&weights).unwrap();
        assert_eq!(weights.as_object().unwrap().len(), 7, "{row}: {weights}");
    }
}

/// Each config (sized for CI: 16-pixel crops, 16 epochs of batch 16 — 100 of batch 8 for the landmarks alone —
/// and a learning rate for a short run) learns the rolled faces above chance (≈ 0.25–0.3 weighted F1 for a prior-following or majority guesser; the face
/// cue agrees with the label in 85% of the rows).
#[test]
fn each_faces_config_learns_the_face_cues() {
    let ds = dataset();
    // the landmarks MLP reads no image: its epochs are cheap, and its sigmoid chain needs many small steps
    for (file, lr, epochs, batch) in [
        ("faces-cnn.yml", "3.0e-3", "16", "16"),
        ("faces-landmarks.yml", "3.0e-3", "100", "8"),
        ("faces.yml", "3.0e-3", "16", "16"),
    ] {
        let mut keys = vec![
            ("classifier_learning_rate", lr),
            ("epochs", epochs),
            ("batch_size", batch),
        ];
        if file != "faces-landmarks.yml" {
            keys.push(("visual_face_size", "16"));
        }
        let config = ds.dir.path().join(file);
        std::fs::write(&config, edited(file, &keys)).unwrap();
        let started = Instant::now();
        let run = train(&config, &ds.dir.path().join("runs"));
        let s = run_summary(&run);
        let (valid, test) = (split_f1(&s, "valid"), split_f1(&s, "test"));
        eprintln!(
            "{file}: valid weighted F1 {valid:.4}, test {test:.4} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        assert!(
            valid > 0.45 && test > 0.45,
            "{file}: valid {valid}, test {test} (chance ≈ 0.25–0.3)"
        );
    }
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let record = v.as_object_mut().unwrap();
            for timing in [
                "train_samples_per_s",
                "data_wait_seconds",
                "compute_seconds",
                "eval_seconds",
                "seconds",
                "peak_memory_bytes",
            ] {
                record.remove(timing);
            }
            v
        })
        .collect()
}

/// The plateau scheduler's state is in the resume checkpoint: a run killed after epoch 3 and resumed takes the
/// uninterrupted run's learning rates (cut on the way) and ends with its metrics.
#[test]
fn a_killed_plateau_run_resumes_with_the_same_learning_rates() {
    let ds = dataset();
    let config = ds.dir.path().join("plateau.yml");
    let yaml = edited(
        "faces-landmarks.yml",
        &[
            ("classifier_learning_rate", "3.0e-2"),
            ("classifier_plateau_factor", "0.5"),
            ("classifier_plateau_patience", "0"),
            ("epochs", "8"),
            ("batch_size", "16"),
        ],
    );
    std::fs::write(&config, yaml).unwrap();
    let whole = train(&config, &ds.dir.path().join("whole"));
    let lrs: Vec<f64> = metrics(&whole)
        .iter()
        .map(|m| m["lr"].as_f64().unwrap())
        .collect();
    assert!(
        lrs.windows(2).any(|w| w[1] < w[0]),
        "the plateau never cut: {lrs:?}"
    );
    let out = ds.dir.path().join("killed");
    let mut child = bin("erc-train")
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(&ds.data)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let run = loop {
        let found = std::fs::read_dir(&out)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path());
        if let Some(run) = found.filter(|r| {
            std::fs::read_to_string(r.join("metrics.jsonl")).is_ok_and(|t| t.lines().count() >= 3)
        }) {
            break run;
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(120) {
            panic!("the run ended or stalled before its third epoch");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    if run.join("summary.json").exists() {
        eprintln!("the run finished before the kill: nothing resumed");
        return;
    }
    run_ok(bin("erc-train").arg("--resume").arg(&run));
    assert_eq!(run_summary(&run)["resumed"], true);
    assert_eq!(metrics(&run), metrics(&whole));
    assert_eq!(run_summary(&run)["splits"], run_summary(&whole)["splits"]);
}
