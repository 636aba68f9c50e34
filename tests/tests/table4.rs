//! `erc-train table4` end to end on a MELD-shaped dataset extracted as the reference's rows need it (44.1 kHz
//! stereo WAVs with `--profile hlm12erc`, face-only mosaics with `--faces`), with the tiny checkpoints of the
//! backbone fixtures standing in for GPT-2, wav2vec2 and ResNet-50: the table's files, the preflight, every row
//! taking a training step, and resuming after SIGKILL or a corrupt checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meld_erc_tests::{backbone_fixture, bin, model_file, read_csv_maps, run_ok, write_glove};

struct Dataset {
    dir: tempfile::TempDir,
    /// `--profile hlm12erc --faces`.
    data: PathBuf,
    /// The default extraction, without faces.
    plain: PathBuf,
    glove: PathBuf,
}

fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = dir.path().join("MELD.Raw");
        run_ok(
            bin("meld-etl")
                .args([
                    "synth",
                    "--dialogues",
                    "12",
                    "--seed",
                    "5",
                    "--durations",
                    "1-2",
                    "--out",
                ])
                .arg(&raw),
        );
        let data = dir.path().join("data");
        run_ok(
            bin("meld-etl")
                .args([
                    "extract",
                    "--profile",
                    "hlm12erc",
                    "--face-profile",
                    "hlm12erc",
                    "--raw",
                ])
                .arg(&raw)
                .arg("--out")
                .arg(&data)
                .arg("--faces")
                .arg(model_file("retinaface-mnet025.onnx")),
        );
        let plain = dir.path().join("plain");
        run_ok(
            bin("meld-etl")
                .args(["extract", "--raw"])
                .arg(&raw)
                .arg("--out")
                .arg(&plain),
        );
        let glove = dir.path().join("glove.txt");
        write_glove(&glove);
        Dataset {
            dir,
            data,
            plain,
            glove,
        }
    })
}

/// `erc-train table4` on the dataset with the tiny backbones, writing under `out`.
fn table4(out: &Path, data: &Path, extra: &[&str]) -> Command {
    let mut cmd = bin("erc-train");
    cmd.arg("table4")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--glove")
        .arg(&dataset().glove)
        .arg("--text-model")
        .arg(backbone_fixture("gpt2-tiny"))
        .arg("--audio-model")
        .arg(backbone_fixture("wav2vec2-tiny"))
        .arg("--visual-model")
        .arg(backbone_fixture("resnet50-tiny"))
        .args(extra);
    cmd
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).unwrap()
}

fn valid(summary: &serde_json::Value) -> &serde_json::Value {
    summary["splits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["split"] == "valid")
        .unwrap()
}

#[test]
fn rows_of_every_family_fill_the_tables_beside_the_papers_numbers() {
    let ds = dataset();
    let out = ds.dir.path().join("families");
    // GloVe (04), GPT-2 (05), wav2vec2 (08), face-only ResNet-50 (11)
    run_ok(&mut table4(
        &out,
        &ds.data,
        &["--rows", "04-05,08,11", "--epochs", "1", "--max-rows", "24"],
    ));
    for name in [
        "04-t-um-glove",
        "05-t-um-gpt2",
        "08-a-um-wav2vec2",
        "11-v-um-retinaface",
    ] {
        let s = summary(&out.join(name));
        assert_eq!(s["epochs_run"], 1, "{name}");
        assert!(valid(&s)["f1_weighted"].as_f64().is_some(), "{name}");
    }
    // row 08's run evaluated at the paper's batch, row 04's config is its own
    assert_eq!(
        summary(&out.join("08-a-um-wav2vec2"))["eval_batch_size"],
        16
    );
    let rows = read_csv_maps(&out.join("table4.csv"));
    assert_eq!(rows.len(), 30);
    let row04 = &rows[3];
    assert_eq!(row04["row"], "04");
    assert_eq!(row04["paper_weighted_f1"], "0.29");
    let ours: f64 = row04["ours_weighted_f1"].parse().unwrap();
    let expected = valid(&summary(&out.join("04-t-um-glove")))["f1_weighted"]
        .as_f64()
        .unwrap();
    assert!((ours - expected).abs() < 1e-9, "{ours} vs {expected}");
    assert_eq!(row04["status"], "done");
    assert_eq!(rows[29]["status"], "not run");
    assert_eq!(rows[29]["ours_weighted_f1"], "");
    let md = std::fs::read_to_string(out.join("table4.md")).unwrap();
    assert!(
        md.contains("t-um-glove") && md.contains("not run") && md.contains("[^28]"),
        "{md}"
    );
    let table3 = std::fs::read_to_string(out.join("table3.md")).unwrap();
    assert!(
        table3.contains("baseline-dice") && table3.contains("wav2vec2-200Kx1536"),
        "{table3}"
    );
    let png = std::fs::read(out.join("table4.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000);

    // A rerun trains nothing: every asked row is complete for this config and data.
    let before = std::fs::metadata(out.join("05-t-um-gpt2/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let output = run_ok(&mut table4(
        &out,
        &ds.data,
        &["--rows", "04-05,08,11", "--epochs", "1", "--max-rows", "24"],
    ));
    let after = std::fs::metadata(out.join("05-t-um-gpt2/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    assert!(
        stderr(&output).contains("complete in"),
        "{}",
        stderr(&output)
    );
    // `--collect` assembles the same table from the folders alone.
    std::fs::remove_file(out.join("table4.csv")).unwrap();
    run_ok(bin("erc-train").args(["table4", "--collect"]).arg(&out));
    assert_eq!(
        read_csv_maps(&out.join("table4.csv"))[3]["ours_weighted_f1"],
        row04["ours_weighted_f1"]
    );
}

#[test]
fn dry_run_names_what_each_row_lacks_and_trains_nothing() {
    let ds = dataset();
    let out = ds.dir.path().join("dry");
    let output = table4(&out, &ds.plain, &["--rows", "04,07,11-12", "--dry-run"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(
        text.contains("--faces") && text.contains("x_visual_faces"),
        "{text}"
    );
    assert!(
        text.contains("--profile hlm12erc") && text.contains("16000 Hz"),
        "{text}"
    );
    assert!(
        text.contains("11 v-um-retinaface") && text.contains("MISSING"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(!out.exists(), "a dry run writes nothing");
    // without --dry-run, nothing starts either
    let output = table4(&out, &ds.plain, &["--rows", "04,11", "--epochs", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot start"),
        "{}",
        stderr(&output)
    );
    assert!(
        !out.join("04-t-um-glove").exists(),
        "row 04 was not trained"
    );
}

#[test]
fn every_row_builds_and_takes_a_training_step() {
    let ds = dataset();
    let out = ds.dir.path().join("smoke");
    let output = run_ok(&mut table4(&out, &ds.data, &["--smoke"]));
    let rows = read_csv_maps(&out.join("table4.csv"));
    let done: Vec<&String> = rows
        .iter()
        .filter(|r| r["status"] == "done")
        .map(|r| &r["row"])
        .collect();
    assert_eq!(
        done.len(),
        30,
        "{:?}\n{}",
        rows.iter().map(|r| &r["status"]).collect::<Vec<_>>(),
        stderr(&output)
    );
    for row in &rows {
        let dir = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", row["row"]))
            })
            .unwrap()
            .path();
        let s = summary(&dir);
        let steps = s["steps"].as_u64().unwrap();
        if row["row"] == "16" {
            // the class-balanced triplet sampler's epoch: (largest class) x (classes present) items
            assert!(steps >= 1, "row 16: {steps} steps");
        } else {
            assert_eq!(steps, 1, "{}: one training step", row["row"]);
        }
    }
}

/// Polls `path` until it has `lines` lines (or fails after a minute).
fn wait_for_lines(path: &Path, lines: usize, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= lines {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the run ended ({status}) before {} had {lines} lines",
                path.display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_killed_table_resumes_where_it_stopped_with_the_same_numbers() {
    let ds = dataset();
    let args = ["--rows", "04,07", "--epochs", "12", "--max-rows", "48"];
    // uninterrupted
    let whole = ds.dir.path().join("whole");
    run_ok(&mut table4(&whole, &ds.data, &args));
    // killed in the middle of row 07, after its second epoch's checkpoint
    let out = ds.dir.path().join("killed");
    let mut child = table4(&out, &ds.data, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("07-a-um-waveform/metrics.jsonl");
    wait_for_lines(&metrics, 2, &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !out.join("07-a-um-waveform/summary.json").exists(),
        "killed before the end"
    );
    let done04 = std::fs::metadata(out.join("04-t-um-glove/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let output = run_ok(&mut table4(&out, &ds.data, &args));
    let log = stderr(&output);
    assert!(log.contains("resuming a-um-waveform after epoch"), "{log}");
    assert_eq!(
        std::fs::metadata(out.join("04-t-um-glove/summary.json"))
            .unwrap()
            .modified()
            .unwrap(),
        done04,
        "row 04 was not retrained"
    );
    for row in ["04-t-um-glove", "07-a-um-waveform"] {
        let (a, b) = (summary(&whole.join(row)), summary(&out.join(row)));
        assert_eq!(
            a["splits"], b["splits"],
            "{row}: the resumed run ends with the uninterrupted run's metrics"
        );
        assert_eq!(a["best_epoch"], b["best_epoch"], "{row}");
    }
    assert_eq!(summary(&out.join("07-a-um-waveform"))["resumed"], true);
    let lines = std::fs::read_to_string(out.join("07-a-um-waveform/metrics.jsonl")).unwrap();
    let epochs = summary(&out.join("07-a-um-waveform"))["epochs_run"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(
        lines.lines().count(),
        epochs,
        "one line per epoch, none twice"
    );
}

#[test]
fn a_corrupt_checkpoint_is_named_and_its_row_started_over() {
    let ds = dataset();
    let out = ds.dir.path().join("corrupt");
    let args = ["--rows", "04", "--epochs", "2", "--max-rows", "24"];
    run_ok(&mut table4(&out, &ds.data, &args));
    let row = out.join("04-t-um-glove");
    // an interrupted state: no summary, a truncated checkpoint
    std::fs::remove_file(row.join("summary.json")).unwrap();
    let checkpoint = row.join("resume.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    // plain erc-train --resume: an error naming the file, no panic
    let output = bin("erc-train").arg("--resume").arg(&row).output().unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("resume.safetensors")
            && err.contains("cannot be read")
            && !err.contains("panicked"),
        "{err}"
    );
    // the table: the row starts over, saying why, and completes
    let output = run_ok(&mut table4(&out, &ds.data, &args));
    let log = stderr(&output);
    assert!(
        log.contains("starting this row over") && log.contains("resume.safetensors"),
        "{log}"
    );
    assert_eq!(summary(&row)["epochs_run"], 2);
    assert_eq!(summary(&row)["resumed"], false);
}
