//! Helpers for the end-to-end tests: locate the built binaries, run them, and inspect media through an
//! independent path (the ffmpeg CLI tools), never through the code under test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory of the built binaries: `MELD_BIN_DIR`, or the profile directory the test binary runs from
/// (`target/release/deps/<test>` → `target/release`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MELD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test executable lives in target/<profile>/deps")
}

/// A command for one of the workspace's binaries (`meld-etl`, `erc-train`).
pub fn bin(name: &str) -> Command {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `make test` (or `cargo build --release --bins` before `cargo test --release`)",
        path.display()
    );
    Command::new(path)
}

/// Runs a command and returns its output, failing the test with its stderr if it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// ffprobe's JSON for a file's streams and format, or `None` if ffprobe cannot read it.
pub fn ffprobe(path: &Path) -> Option<serde_json::Value> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed (apt package ffmpeg)");
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// The stream of a given codec type (`video`, `audio`) in ffprobe's JSON.
pub fn stream<'a>(probe: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

/// A numeric field that ffprobe prints as a string (`"duration": "2.460000"`).
pub fn number(value: &serde_json::Value) -> f64 {
    match value {
        serde_json::Value::String(s) => s.parse().unwrap_or(f64::NAN),
        v => v.as_f64().unwrap_or(f64::NAN),
    }
}

/// Number of keyframes of the first video stream (ffprobe decodes only keyframes here, so it is quick).
pub fn keyframe_count(path: &Path) -> usize {
    let output = run_ok(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-skip_frame",
                "nokey",
                "-show_entries",
                "frame=key_frame",
                "-of",
                "csv=p=0",
            ])
            .arg(path),
    );
    // ffprobe ends each csv line with a separator for the (empty) side-data section: `1,`.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.trim().trim_end_matches(',') == "1")
        .count()
}

/// Parses a CSV file into its header and records (independently of the project's readers).
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<csv::StringRecord>) {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let records = reader.records().map(|r| r.expect("record")).collect();
    (header, records)
}

/// A CSV file's records as maps of column → value.
pub fn read_csv_maps(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let (header, records) = read_csv(path);
    records
        .iter()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.iter().map(str::to_string))
                .collect()
        })
        .collect()
}

/// A file of the repository's `models/` folder (fetched by `make models`); fails the test with what to run when
/// it is missing (CI runs `make models` before `make test`, so a missing model is an error, not a skip).
pub fn model_file(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make models` (scripts/fetch-models.sh) first",
        path.display()
    );
    path
}

/// An image (JPEG, PNG) decoded by the ffmpeg CLI to packed RGB24 bytes.
pub fn image_rgb24(path: &Path) -> Vec<u8> {
    run_ok(
        Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(path)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]),
    )
    .stdout
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny checkpoint of the trainer's backbone fixtures (`gpt2-tiny`, `wav2vec2-tiny`, `resnet50-tiny`): the real
/// architectures and file layouts with random weights.
pub fn backbone_fixture(name: &str) -> PathBuf {
    repo().join("trainer/tests/fixtures/backbones").join(name)
}

/// A GloVe-format file: random (fixed-seed) 50-d vectors for every cue word and a few common words.
pub fn write_glove(path: &Path) {
    let mut words: Vec<&str> = meld_shared::Emotion::ALL
        .iter()
        .flat_map(|e| meld_etl::synth::cue_words(*e).iter().copied())
        .collect();
    words.extend([
        "the", "speaker", "said", "i", "you", "was", "is", "so", "well", "today",
    ]);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let mut text = String::new();
    for word in words {
        let values: Vec<String> = (0..50).map(|_| format!("{:.5}", next())).collect();
        text += &format!("{word} {}\n", values.join(" "));
    }
    std::fs::write(path, text).expect("write glove");
}

/// `meld-etl synth --dialogues N --seed S --durations D [EXTRA...] --out OUT`: a synthetic MELD.Raw tree (or, with
/// `--episode`, a long video and its subtitles), failing the test if synth fails.
pub fn synth(out: &Path, dialogues: u32, seed: u64, durations: &str, extra: &[&str]) -> Output {
    run_ok(
        bin("meld-etl")
            .arg("synth")
            .args(["--dialogues", &dialogues.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--durations", durations])
            .args(extra)
            .arg("--out")
            .arg(out),
    )
}

/// The folder a test binary's shared dataset lives in (the one its `static` builds once for all its tests):
/// `<target>/tmp/<name>`, emptied when the binary builds it. A `static` `TempDir` is never dropped — Rust runs no
/// destructors for statics — so each run of the suite left its datasets (up to 1.4 GB each) in /tmp until the disk
/// filled; this folder is reused instead, one per test binary, under the target directory `cargo clean` empties.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// `target_tmpdir`: the test binary's `env!("CARGO_TARGET_TMPDIR")`.
    pub fn new(target_tmpdir: &str, name: &str) -> Scratch {
        let dir = Path::new(target_tmpdir).join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("emptying {}: {e}", dir.display()));
        }
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// The plain extraction (`meld-etl extract`, no faces) of `synth(dialogues, seed, durations)`, built once and shared
/// by every test binary that asks for the same one: `<target>/tmp/datasets/<dialogues>-<seed>-<durations>/data`.
/// Rebuilt when the meld-etl binary changed since (its size and modification time are the stamp). The synthetic
/// videos are removed once extracted. The trainer only reads a dataset, so the binaries can share it; a test that
/// alters one copies it first.
pub fn extracted_synth(target_tmpdir: &str, dialogues: u32, seed: u64, durations: &str) -> PathBuf {
    let dir = Path::new(target_tmpdir)
        .join("datasets")
        .join(format!("{dialogues}-{seed}-{durations}"));
    let etl = bin_dir().join("meld-etl");
    let meta = std::fs::metadata(&etl).unwrap_or_else(|e| panic!("{}: {e}", etl.display()));
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stamp = format!("meld-etl {} bytes, modified {modified}\n", meta.len());
    let complete = dir.join("complete.txt");
    let data = dir.join("data");
    if std::fs::read_to_string(&complete).ok().as_deref() == Some(stamp.as_str()) {
        return data;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("emptying {}: {e}", dir.display()));
    }
    let raw = dir.join("MELD.Raw");
    synth(&raw, dialogues, seed, durations, &[]);
    run_ok(
        bin("meld-etl")
            .args(["extract", "--raw"])
            .arg(&raw)
            .arg("--out")
            .arg(&data),
    );
    std::fs::remove_dir_all(&raw).unwrap_or_else(|e| panic!("{}: {e}", raw.display()));
    std::fs::write(&complete, stamp).unwrap_or_else(|e| panic!("{}: {e}", complete.display()));
    data
}

/// A run folder's `summary.json`.
pub fn run_summary(run: &Path) -> serde_json::Value {
    let path = run.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A split's weighted F1 in a run's summary (`valid` or `test`).
pub fn split_f1(summary: &serde_json::Value, split: &str) -> f64 {
    summary["splits"]
        .as_array()
        .expect("splits")
        .iter()
        .find(|s| s["split"] == split)
        .unwrap_or_else(|| panic!("no split {split} in {summary}"))["f1_weighted"]
        .as_f64()
        .expect("f1_weighted")
}

/// `configs/seeds/<file>` with `keys` set (each must be in the file) and the keys `drop` left out.
pub fn seed_config(file: &str, keys: &[(&str, &str)], drop: &[&str]) -> String {
    let yaml = std::fs::read_to_string(repo().join("configs/seeds").join(file))
        .unwrap_or_else(|e| panic!("configs/seeds/{file}: {e}"));
    for (key, _) in keys {
        assert!(yaml.contains(&format!("\n{key}:")), "{file} has no {key}");
    }
    let mut out = String::new();
    for line in yaml.lines() {
        let key = line.split(':').next().unwrap_or("");
        if drop.contains(&key) {
            continue;
        }
        match keys.iter().find(|(k, _)| *k == key) {
            Some((key, value)) => out += &format!("{key}: {value}\n"),
            None => out += &format!("{line}\n"),
        }
    }
    out
}

/// The run folder `erc-train` printed (its `run folder: PATH` line).
pub fn run_folder(output: &Output) -> PathBuf {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("run folder: "))
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| panic!("no run folder in:\n{stdout}"))
}
