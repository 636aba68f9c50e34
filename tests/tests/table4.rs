//! `erc-train table4` end to end on a MELD-shaped dataset extracted as the reference's rows need it (44.1 kHz
//! stereo WAVs with `--profile hlm12erc`, face-only mosaics with `--faces`), with the tiny checkpoints of the
//! backbone fixtures standing in for GPT-2, wav2vec2 and ResNet-50: the table's files, the preflight, every row
//! taking a training step, and resuming after SIGKILL or a corrupt checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meld_erc_tests::{
    backbone_fixture, bin, model_file, read_csv_maps, run_ok, synth, write_glove,
};

struct Dataset {
    dir: meld_erc_tests::Scratch,
    /// `--profile hlm12erc --faces`.
    data: PathBuf,
    /// The default extraction, without faces.
    plain: PathBuf,
    glove: PathBuf,
}

fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "table4");
        let raw = dir.path().join("MELD.Raw");
        synth(&raw, 12, 5, "1-2", &[]);
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
    // shortened runs on a row limit are listed with what they were, never beside the paper's numbers
    let rows = read_csv_maps(&out.join("table4.csv"));
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[3]["ours_weighted_f1"], "");
    assert!(
        rows[3]["status"].starts_with("1 of 10 epochs, max-rows 24: wF1 "),
        "{}",
        rows[3]["status"]
    );
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
    // row 04 as the paper ran it (its 10 epochs, the whole dataset): beside the paper's number
    run_ok(&mut table4(&out, &ds.data, &["--rows", "04"]));
    let rows = read_csv_maps(&out.join("table4.csv"));
    let row04 = rows[3].clone();
    assert_eq!(row04["row"], "04");
    assert_eq!(row04["paper_weighted_f1"], "0.29");
    let ours: f64 = row04["ours_weighted_f1"].parse().unwrap();
    let expected = valid(&summary(&out.join("04-t-um-glove")))["f1_weighted"]
        .as_f64()
        .unwrap();
    assert!((ours - expected).abs() < 1e-9, "{ours} vs {expected}");
    assert_eq!(row04["status"], "done");
    // `--collect` assembles the same table from the folders alone (on the same data and model locations); a
    // smoke run is labelled so; on other data nothing stands beside the paper; a folder without runs is an error
    // that creates nothing.
    run_ok(&mut table4(&out, &ds.data, &["--rows", "07", "--smoke"]));
    std::fs::remove_file(out.join("table4.csv")).unwrap();
    run_ok(table4(&out, &ds.data, &["--collect"]).arg(&out));
    let rows = read_csv_maps(&out.join("table4.csv"));
    assert_eq!(rows[3]["ours_weighted_f1"], row04["ours_weighted_f1"]);
    assert!(
        rows[6]["status"].starts_with("smoke: wF1 "),
        "{}",
        rows[6]["status"]
    );
    assert_eq!(rows[6]["ours_weighted_f1"], "");
    run_ok(table4(&out, &ds.plain, &["--collect"]).arg(&out));
    let rows = read_csv_maps(&out.join("table4.csv"));
    assert!(
        rows[3]["status"].starts_with("other data: wF1 "),
        "{}",
        rows[3]["status"]
    );
    let md = std::fs::read_to_string(out.join("table4.md")).unwrap();
    assert!(md.contains("not as the paper ran them"), "{md}");
    let mistyped = ds.dir.path().join("no-such-table");
    let output = table4(&mistyped, &ds.data, &["--collect"])
        .arg(&mistyped)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no Table 4 row folders"),
        "{}",
        stderr(&output)
    );
    assert!(!mistyped.exists(), "--collect created the mistyped folder");
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

    // The backbone cells are `models check`: a PyTorch pickle loads, a checkpoint that does not fit its
    // config.json is named with the tensor (wav2vec2 as a pytorch_model.bin whose config claims a third layer).
    let misfit = ds.dir.path().join("wav2vec2-misfit");
    std::fs::create_dir_all(&misfit).unwrap();
    let pickle = backbone_fixture("wav2vec2-tiny-pickle");
    let config = std::fs::read_to_string(pickle.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["num_hidden_layers"] = 3.into();
    std::fs::write(misfit.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        pickle.join("pytorch_model.bin"),
        misfit.join("pytorch_model.bin"),
    )
    .unwrap();
    let output = bin("erc-train")
        .args(["table4", "--rows", "05,08", "--dry-run", "--data"])
        .arg(&ds.data)
        .arg("--out")
        .arg(&out)
        .arg("--text-model")
        .arg(backbone_fixture("gpt2-tiny-pickle"))
        .arg("--audio-model")
        .arg(&misfit)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(
        text.contains("wav2vec2: wav2vec2 `")
            && text.contains("tensor `encoder.layers.2.")
            && text.contains("missing from the checkpoint"),
        "{text}"
    );
    assert!(!text.contains("gpt2: "), "the pickled GPT-2 fits: {text}");
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
    // every row ran; a smoke run is listed as one, never beside the paper's numbers
    let rows = read_csv_maps(&out.join("table4.csv"));
    let done: Vec<&String> = rows
        .iter()
        .filter(|r| r["status"].starts_with("smoke: wF1 ") && r["ours_weighted_f1"].is_empty())
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
    // killed in the middle of row 07: its 4th metrics line is written, so the checkpoint of epoch 3 (at least)
    // is on disk
    let out = ds.dir.path().join("killed");
    let mut child = table4(&out, &ds.data, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("07-a-um-waveform/metrics.jsonl");
    wait_for_lines(&metrics, 4, &mut child);
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
    let after: usize = log
        .split("resuming a-um-waveform after epoch ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line: {log}"));
    assert!(after >= 3, "resumed after epoch {after}");
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
    // every per-epoch value (all but the clock and the memory) equals the uninterrupted run's, line for line
    let values = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("07-a-um-waveform/metrics.jsonl"))
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
                    assert!(record.remove(timing).is_some(), "no {timing} in {l}");
                }
                v
            })
            .collect()
    };
    let (resumed, uninterrupted) = (values(&out), values(&whole));
    assert_eq!(
        resumed.len(),
        summary(&out.join("07-a-um-waveform"))["epochs_run"]
            .as_u64()
            .unwrap() as usize,
        "one line per epoch, none twice"
    );
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn a_corrupt_checkpoint_is_named_and_its_row_started_over() {
    let ds = dataset();
    let out = ds.dir.path().join("corrupt");
    let args = [
        "--rows",
        "04",
        "--epochs",
        "2",
        "--max-rows",
        "24",
        "--keep-checkpoints",
    ];
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
    // a flipped byte in the tensor data (which safetensors alone would load as another number): named, the row
    // started over, saying why
    std::fs::remove_file(row.join("summary.json")).unwrap();
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    let at = bytes.len() - bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&checkpoint, &bytes).unwrap();
    let output = run_ok(&mut table4(&out, &ds.data, &args));
    let log = stderr(&output);
    assert!(
        log.contains("starting this row over") && log.contains("does not match its checksum"),
        "{log}"
    );
    assert_eq!(summary(&row)["resumed"], false);
}

/// A finished row keeps its state alone (no weights, no moments: kilobytes, not gigabytes); should its summary be
/// damaged, the rerun evaluates its best weights again instead of training it anew.
#[test]
fn a_torn_summary_is_evaluated_again_not_retrained() {
    let ds = dataset();
    let out = ds.dir.path().join("torn");
    let args = ["--rows", "04", "--epochs", "3", "--max-rows", "24"];
    run_ok(&mut table4(&out, &ds.data, &args));
    let row = out.join("04-t-um-glove");
    let checkpoint = std::fs::metadata(row.join("resume.safetensors")).unwrap();
    assert!(
        checkpoint.len() < 64 << 10,
        "{} bytes kept",
        checkpoint.len()
    );
    let whole = summary(&row);
    let modified = |f: &str| std::fs::metadata(row.join(f)).unwrap().modified().unwrap();
    let (weights, metrics) = (modified("model.safetensors"), modified("metrics.jsonl"));
    let text = std::fs::read_to_string(row.join("summary.json")).unwrap();
    std::fs::write(row.join("summary.json"), &text[..text.len() / 2]).unwrap();
    let output = run_ok(&mut table4(&out, &ds.data, &args));
    let log = stderr(&output);
    assert!(
        log.contains("evaluated again from its checkpoint, not retrained"),
        "{log}"
    );
    assert_eq!(
        modified("model.safetensors"),
        weights,
        "the best weights were rewritten"
    );
    let again = summary(&row);
    assert_eq!(again["splits"], whole["splits"]);
    assert_eq!(again["epochs_run"], 3);
    assert_eq!(
        std::fs::read_to_string(row.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    let _ = metrics;
}

/// Nothing but a problem of the whole table ends it: a model family whose steps cannot be timed runs anyway, a
/// row that panics is recorded and the next row runs, and a device that cannot be opened drops out while the
/// others take the queue.
#[test]
fn failures_at_any_stage_are_recorded_and_the_table_goes_on() {
    let ds = dataset();
    let out = ds.dir.path().join("failures");
    let output = table4(
        &out,
        &ds.data,
        &[
            "--rows",
            "04,07,10",
            "--epochs",
            "1",
            "--max-rows",
            "24",
            "--devices",
            "cpu,cuda:3",
        ],
    )
    .env("ERC_FAILPOINTS", "estimate=04,panic=07")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a row failed: the exit status says so"
    );
    assert!(stdout.contains("device dropped out: cuda:3"), "{stdout}");
    assert!(
        stdout.contains("could not be timed: failpoint: estimate; the row runs anyway"),
        "{stdout}"
    );
    assert_eq!(summary(&out.join("04-t-um-glove"))["epochs_run"], 1);
    assert_eq!(summary(&out.join("10-v-um-resnet50"))["epochs_run"], 1);
    let failed = std::fs::read_to_string(out.join("07-a-um-waveform/failed.txt")).unwrap();
    assert!(failed.contains("panicked: failpoint"), "{failed}");
    let rows = read_csv_maps(&out.join("table4.csv"));
    assert!(
        rows[6]["status"].starts_with("failed: panicked"),
        "{}",
        rows[6]["status"]
    );
}

/// README's multi-device call, `make reproduce-table4 ... TABLE4_FLAGS="--devices …"`, with the CPU standing in
/// for two devices: the recipe drops its own --device, and both rows run.
#[test]
fn make_reproduce_table4_takes_devices_as_documented() {
    let ds = dataset();
    let out = ds.dir.path().join("make-devices");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let flags = format!(
        "--devices cpu,cpu --epochs 1 --max-rows 24 --glove {}",
        ds.glove.display()
    );
    let output = Command::new("make")
        .current_dir(repo)
        .arg("-s")
        .arg("reproduce-table4")
        .arg("CARGO=true") // the binaries are built: no cargo inside a test
        .arg(format!("DATA={}", ds.data.display()))
        .arg(format!("OUT={}", out.display()))
        .arg("ROWS=04,07")
        .arg(format!("TABLE4_FLAGS={flags}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    for row in ["04-t-um-glove", "07-a-um-waveform"] {
        assert_eq!(summary(&out.join(row))["epochs_run"], 1, "{row}");
    }
}

/// `--corrected` rows train on their own dataset (16 kHz mono WAVs for `normalized_mono`) with every corrected
/// switch, `text_context: utterance` included; without a fitting dataset, preflight names the plain extraction.
#[test]
fn corrected_rows_take_their_own_data_and_every_switch() {
    let ds = dataset();
    let out = ds.dir.path().join("corrected");
    // the reference rows' 44.1 kHz stereo WAVs do not serve the corrected rows
    let output = table4(
        &out,
        &ds.data,
        &["--rows", "04,07", "--corrected", "--dry-run"],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        text.contains("16 kHz mono") && text.contains("--corrected-data"),
        "{text}"
    );
    let mut cmd = table4(
        &out,
        &ds.data,
        &[
            "--rows",
            "04,07",
            "--corrected",
            "--epochs",
            "1",
            "--max-rows",
            "24",
        ],
    );
    cmd.arg("--corrected-data").arg(&ds.plain);
    run_ok(&mut cmd);
    for (row, data) in [
        ("04-t-um-glove", &ds.data),
        ("07-a-um-waveform", &ds.data),
        ("corrected/04-t-um-glove", &ds.plain),
        ("corrected/07-a-um-waveform", &ds.plain),
    ] {
        let s = summary(&out.join(row));
        assert_eq!(s["data"], data.display().to_string(), "{row}");
    }
    let config = |row: &str| std::fs::read_to_string(out.join(row).join("config.yml")).unwrap();
    for (key, reference, corrected) in [
        ("text_context", "dialogue", "utterance"),
        ("audio_input", "reference", "normalized_mono"),
        ("visual_crop", "reference", "full"),
        ("attention_scope", "batch", "sample"),
    ] {
        assert!(
            config("07-a-um-waveform").contains(&format!("{key}: {reference}")),
            "{key}"
        );
        assert!(
            config("corrected/07-a-um-waveform").contains(&format!("{key}: {corrected}")),
            "{key}"
        );
    }
    let rows = read_csv_maps(&out.join("table4.csv"));
    assert!(rows[3].contains_key("corrected_status"), "{:?}", rows[3]);
}

/// SIGTERM (Slurm's preemption, or its warning before the time limit) stops the table at a step boundary: exit
/// code 130, the row neither failed nor complete, its last epoch's checkpoint intact; the rerun resumes it.
#[test]
fn sigterm_stops_at_a_step_boundary_and_the_rerun_resumes() {
    let ds = dataset();
    let out = ds.dir.path().join("sigterm");
    let args = ["--rows", "07", "--epochs", "8", "--max-rows", "48"];
    let mut child = table4(&out, &ds.data, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let row = out.join("07-a-um-waveform");
    wait_for_lines(&row.join("metrics.jsonl"), 2, &mut child);
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let output = child.wait_with_output().unwrap();
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{log}");
    assert!(log.contains("stopped during epoch"), "{log}");
    assert!(!row.join("summary.json").exists() && !row.join("failed.txt").exists());
    let output = run_ok(&mut table4(&out, &ds.data, &args));
    assert!(stderr(&output).contains("resuming a-um-waveform after epoch"));
    assert_eq!(summary(&row)["epochs_run"], 8);
}
