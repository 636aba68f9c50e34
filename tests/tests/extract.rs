//! `meld-etl extract`, `scan` and `verify` checked from the outside, on a `synth --faults` tree: the CSVs with the
//! csv crate, media with the ffmpeg CLI (an independent decoder) and hound, faults against `synth-faults.json`,
//! tones against `synth-truth.csv`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use meld_erc_tests::{bin, ffprobe, number, read_csv, read_csv_maps, run_ok, stream, synth};
use meld_shared::Split;

/// One frame at 24000/1001 fps.
const FRAME_SECONDS: f64 = 1001.0 / 24000.0;
const SPLIT_DIRS: [(&str, &str); 3] = [("train", "train"), ("valid", "dev"), ("test", "test")];

struct Extraction {
    _dir: meld_erc_tests::Scratch,
    raw: PathBuf,
    out: PathBuf,
    stdout: String,
}

/// One faulty plain-layout tree and its uninterrupted extraction, shared by the tests of this file.
fn extraction() -> &'static Extraction {
    static EXTRACTION: OnceLock<Extraction> = OnceLock::new();
    EXTRACTION.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "extract");
        let raw = dir.path().join("MELD.Raw");
        synth(&raw, 3, 21, "1-2.5", &["--faults"]);
        let out = dir.path().join("data");
        let output = run_ok(
            bin("meld-etl")
                .args(["extract", "--jobs", "2", "--raw"])
                .arg(&raw)
                .arg("--out")
                .arg(&out),
        );
        Extraction {
            _dir: dir,
            raw,
            out,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        }
    })
}

fn meld_split(dataset_name: &str) -> Split {
    dataset_name.parse().expect("split name")
}

/// Rows of a MELD CSV of the plain layout as (dialogue, utterance).
fn raw_keys(raw: &Path, split: Split) -> Vec<(u32, u32)> {
    let (_, records) = read_csv(&raw.join(split.meld_csv()));
    records
        .iter()
        .map(|r| (r[5].parse().unwrap(), r[6].parse().unwrap()))
        .collect()
}

fn faults(raw: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(raw.join("synth-faults.json")).expect("synth-faults.json");
    serde_json::from_str::<serde_json::Value>(&text)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

/// synth-truth.csv: file → (tone_hz, fault)
fn truth(raw: &Path) -> HashMap<String, (f64, String)> {
    let (_, records) = read_csv(&raw.join("synth-truth.csv"));
    records
        .iter()
        .map(|r| (r[3].to_string(), (r[8].parse().unwrap(), r[10].to_string())))
        .collect()
}

/// The output CSV of a split as maps of column → value.
fn output_rows(out: &Path, dataset_name: &str) -> Vec<HashMap<String, String>> {
    read_csv_maps(&out.join(format!("{dataset_name}.csv")))
}

#[test]
fn every_row_is_kept_sorted_with_the_reference_columns_first() {
    let e = extraction();
    for (name, meld) in SPLIT_DIRS {
        let split = meld_split(meld);
        let (header, _) = read_csv(&e.out.join(format!("{name}.csv")));
        assert_eq!(
            &header[..7],
            ["dialogue", "sequence", "speaker", "x_text", "x_visual", "x_audio", "label"]
        );
        let rows = output_rows(&e.out, name);
        let mut expected = raw_keys(&e.raw, split);
        expected.sort();
        let got: Vec<(u32, u32)> = rows
            .iter()
            .map(|r| {
                (
                    r["dialogue"].parse().unwrap(),
                    r["sequence"].parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got, expected,
            "{name}: rows differ from the MELD CSV or are not sorted"
        );
        for r in &rows {
            for (column, ext) in [("x_visual", "jpg"), ("x_audio", "wav")] {
                let cell = &r[column];
                if !cell.is_empty() {
                    assert_eq!(
                        cell,
                        &format!("{name}/d-{}-seq-{}.{ext}", r["dialogue"], r["sequence"])
                    );
                    assert!(e.out.join(cell).is_file(), "{cell} missing");
                }
            }
            assert!(
                !r["x_text"]
                    .chars()
                    .any(|c| ('\u{80}'..='\u{a0}').contains(&c)),
                "C1 character left in {:?}",
                r["x_text"]
            );
        }
    }
    let train = std::fs::read_to_string(e.out.join("train.csv")).unwrap();
    assert!(
        train.contains('’'),
        "the C1 apostrophes were not mapped to ’"
    );
    assert!(e.stdout.contains("clips/s"), "no summary:\n{}", e.stdout);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.out.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["settings"]["sample_rate"], 16000);
}

#[test]
fn failures_list_exactly_the_injected_faults() {
    let e = extraction();
    let reason_of = |fault: &str| match fault {
        "missing" => "missing",
        "zero_byte" => "empty",
        "truncated" => "unreadable",
        "no_audio" => "no_audio",
        "no_video" => "no_video",
        "unlabelled" => "unlabelled",
        "prefixed" => "prefixed",
        "long" => "long_clip",
        other => panic!("unknown fault {other}"),
    };
    let expected: BTreeSet<(String, u32, u32, String)> = faults(&e.raw)
        .iter()
        .map(|f| {
            let split = meld_split(f["split"].as_str().unwrap());
            (
                split.dataset_name().to_string(),
                f["dialogue"].as_u64().unwrap() as u32,
                f["utterance"].as_u64().unwrap() as u32,
                reason_of(f["fault"].as_str().unwrap()).to_string(),
            )
        })
        .collect();
    let (header, records) = read_csv(&e.out.join("failures.csv"));
    assert_eq!(
        &header[..5],
        ["split", "dialogue", "utterance", "stage", "reason"]
    );
    let got: Vec<(String, u32, u32, String)> = records
        .iter()
        .map(|r| {
            (
                r[0].to_string(),
                r[1].parse().unwrap(),
                r[2].parse().unwrap(),
                r[4].to_string(),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "failures.csv:\n{got:#?}\nexpected:\n{expected:#?}"
    );
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);

    // The rows of the faulty clips keep text and label; only the media they could not give are empty.
    for f in faults(&e.raw) {
        let split = meld_split(f["split"].as_str().unwrap());
        let rows = output_rows(&e.out, split.dataset_name());
        let (d, u) = (f["dialogue"].to_string(), f["utterance"].to_string());
        let row = rows
            .iter()
            .find(|r| r["dialogue"] == d && r["sequence"] == u);
        let media =
            |r: &HashMap<String, String>| (!r["x_visual"].is_empty(), !r["x_audio"].is_empty());
        match f["fault"].as_str().unwrap() {
            "missing" | "zero_byte" | "truncated" => {
                assert_eq!(media(row.unwrap()), (false, false))
            }
            "no_audio" => assert_eq!(media(row.unwrap()), (true, false)),
            "no_video" => assert_eq!(media(row.unwrap()), (false, true)),
            "long" => {
                let r = row.unwrap();
                assert_eq!(media(r), (true, true));
                assert!((r["clip_duration"].parse::<f64>().unwrap() - 60.0).abs() < 0.1);
            }
            "unlabelled" => assert!(row.is_none()),
            _ => {}
        }
        if ["missing", "zero_byte", "truncated", "no_audio", "no_video"]
            .contains(&f["fault"].as_str().unwrap())
        {
            let r = row.unwrap();
            assert!(!r["x_text"].is_empty() && !r["label"].is_empty());
        }
    }
}

/// Decodes an image or clip with the ffmpeg CLI to packed RGB24 frames of `w`x`h`.
fn ffmpeg_rgb(input_args: &[&str], input: &Path, filter: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"])
        .args(input_args)
        .arg("-i")
        .arg(input);
    if let Some(f) = filter {
        cmd.args(["-vf", f]);
    }
    cmd.args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
    run_ok(&mut cmd).stdout
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-10)).log10()
}

/// Index of the frame on screen at `t` (the last frame starting at or before t).
fn frame_at(t: f64) -> usize {
    (t / FRAME_SECONDS + 1e-6).floor() as usize
}

#[test]
fn mosaic_tiles_are_the_frames_at_the_sample_times() {
    let e = extraction();
    let truth = truth(&e.raw);
    let rows = output_rows(&e.out, "train");
    let healthy: Vec<&HashMap<String, String>> = rows
        .iter()
        .filter(|r| {
            truth[&format!("train_splits/dia{}_utt{}.mp4", r["dialogue"], r["sequence"])]
                .1
                .is_empty()
        })
        .take(3)
        .collect();
    assert_eq!(healthy.len(), 3);
    let (w, h) = (426usize, 240usize);
    let tile_bytes = w * h * 3;
    for r in healthy {
        let clip = e.raw.join(format!(
            "train_splits/dia{}_utt{}.mp4",
            r["dialogue"], r["sequence"]
        ));
        let mosaic = e.out.join(&r["x_visual"]);
        let probe = ffprobe(&mosaic).expect("mosaic probes");
        let image = stream(&probe, "video").unwrap();
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(426), Some(1200)),
            "{}",
            mosaic.display()
        );
        let tiles = ffmpeg_rgb(&[], &mosaic, None);
        assert_eq!(tiles.len(), 5 * tile_bytes);

        // Every frame of the clip, decoded and scaled independently.
        let frames = ffmpeg_rgb(&[], &clip, Some("scale=426:240"));
        let count = frames.len() / tile_bytes;
        let clip_probe = ffprobe(&clip).unwrap();
        let d = number(&stream(&clip_probe, "video").unwrap()["duration"]);
        assert!(
            (count as f64 * FRAME_SECONDS - d).abs() < 1e-3,
            "{count} frames vs {d} s"
        );
        for i in 0..5 {
            let expected = if i == 4 {
                count - 1
            } else {
                frame_at(d * i as f64 / 4.0)
            };
            let tile = &tiles[i * tile_bytes..(i + 1) * tile_bytes];
            let scores: Vec<f64> = (0..count)
                .map(|k| psnr(tile, &frames[k * tile_bytes..(k + 1) * tile_bytes]))
                .collect();
            let best = scores.iter().cloned().fold(f64::MIN, f64::max);
            assert!(
                scores[expected] > 30.0,
                "{}: tile {i} vs frame {expected}: {:.1} dB",
                clip.display(),
                scores[expected]
            );
            assert!(scores[expected] >= best - 0.01, "{}: tile {i} looks most like another frame than {expected} ({:.1} vs {best:.1} dB)", clip.display(), scores[expected]);
        }
    }

    // The 60 s clip: the mid and last tiles, frames decoded alone with an accurate input seek.
    let long = faults(&e.raw)
        .into_iter()
        .find(|f| f["fault"] == "long")
        .unwrap();
    let (d, u) = (long["dialogue"].to_string(), long["utterance"].to_string());
    let row = rows
        .iter()
        .find(|r| r["dialogue"] == d && r["sequence"] == u)
        .unwrap();
    let clip = e.raw.join(long["file"].as_str().unwrap());
    let tiles = ffmpeg_rgb(&[], &e.out.join(&row["x_visual"]), None);
    let probe = ffprobe(&clip).unwrap();
    let video = stream(&probe, "video").unwrap();
    let duration = number(&video["duration"]);
    let count: usize = video["nb_frames"].as_str().unwrap().parse().unwrap();
    for (i, k) in [(2, frame_at(duration / 2.0)), (4, count - 1)] {
        // Seeking to half a frame before frame k makes frame k the first one ffmpeg outputs.
        let seek = format!("{:.6}", (k as f64 - 0.5) * FRAME_SECONDS);
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-v", "error", "-nostdin", "-ss", &seek, "-i"])
            .arg(&clip)
            .args([
                "-frames:v",
                "1",
                "-vf",
                "scale=426:240",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ]);
        let frame = run_ok(&mut cmd).stdout;
        let score = psnr(&tiles[i * tile_bytes..(i + 1) * tile_bytes], &frame);
        assert!(
            score > 30.0,
            "long clip tile {i} vs frame {k}: {score:.1} dB"
        );
    }
}

/// Power of `samples` at `hz` (Goertzel).
fn power_at(samples: &[f64], rate: f64, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

#[test]
fn wavs_last_as_long_as_the_audio_and_carry_the_planted_tone() {
    let e = extraction();
    let truth = truth(&e.raw);
    let mut checked = 0;
    for (name, meld) in SPLIT_DIRS {
        let split = meld_split(meld);
        for r in output_rows(&e.out, name) {
            if r["x_audio"].is_empty() {
                continue;
            }
            let file = format!(
                "{}/dia{}_utt{}.mp4",
                split.meld_clip_dir(),
                r["dialogue"],
                r["sequence"]
            );
            let (tone, fault) = &truth[&file];
            let probe = ffprobe(&e.raw.join(&file)).unwrap();
            let audio_seconds = number(&stream(&probe, "audio").unwrap()["duration"]);

            let mut reader = hound::WavReader::open(e.out.join(&r["x_audio"])).unwrap();
            let spec = reader.spec();
            assert_eq!(
                (spec.sample_rate, spec.channels, spec.bits_per_sample),
                (16000, 1, 16)
            );
            let samples: Vec<f64> = reader
                .samples::<i16>()
                .map(|s| s.unwrap() as f64 / 32768.0)
                .collect();
            let seconds = samples.len() as f64 / 16000.0;
            assert!(
                (seconds - audio_seconds).abs() <= FRAME_SECONDS,
                "{file}: WAV {seconds} s vs audio stream {audio_seconds} s"
            );
            if fault == "long" {
                continue; // 60 s: the tone is there too, but the scan below would be slow
            }
            // Peak of the spectrum between 150 and 800 Hz, in 0.5 Hz steps.
            let peak = (300..1600)
                .map(|k| k as f64 * 0.5)
                .max_by(|a, b| {
                    power_at(&samples, 16000.0, *a).total_cmp(&power_at(&samples, 16000.0, *b))
                })
                .unwrap();
            assert!(
                (peak - tone).abs() < 2.0,
                "{file}: spectral peak {peak} Hz, planted tone {tone} Hz"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} WAVs checked");
}

#[test]
fn both_layouts_are_discovered_and_the_reference_profile_is_44k_stereo() {
    let e = extraction();
    let scan = run_ok(bin("meld-etl").args(["scan", "--raw"]).arg(&e.raw));
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(text.contains("layout: plain"), "{text}");
    assert!(
        text.contains("unlabelled") && text.contains("prefixed") && text.contains("missing clip"),
        "{text}"
    );

    // The same files in the Kaggle nesting (hard links: no copy).
    let kaggle = e._dir.path().join("kaggle");
    for split in Split::ALL {
        let base = kaggle.join("MELD-RAW/MELD.Raw").join(split.meld_name());
        let clips = base.join(split.meld_clip_dir());
        std::fs::create_dir_all(&clips).unwrap();
        std::fs::hard_link(e.raw.join(split.meld_csv()), base.join(split.meld_csv())).unwrap();
        for entry in std::fs::read_dir(e.raw.join(split.meld_clip_dir())).unwrap() {
            let entry = entry.unwrap();
            std::fs::hard_link(entry.path(), clips.join(entry.file_name())).unwrap();
        }
    }
    let scan = run_ok(bin("meld-etl").args(["scan", "--raw"]).arg(&kaggle));
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(text.contains("layout: kaggle"), "{text}");

    let out = e._dir.path().join("kaggle-data");
    // Extracts the first 3 dev rows at the hlm12erc profile; returns how many clips were decoded.
    let decoded = |extra: &[&str]| {
        run_ok(
            bin("meld-etl")
                .args([
                    "extract",
                    "--splits",
                    "dev",
                    "--limit",
                    "3",
                    "--profile",
                    "hlm12erc",
                ])
                .args(extra)
                .arg("--raw")
                .arg(&kaggle)
                .arg("--out")
                .arg(&out),
        );
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        manifest["clips_decoded"].as_u64().unwrap()
    };
    decoded(&[]);
    let rows = output_rows(&out, "valid");
    assert_eq!(rows.len(), 3);
    let plain = output_rows(&e.out, "valid");
    let (_, raw_rows) = read_csv(&e.raw.join(Split::Dev.meld_csv()));
    for (r, raw) in rows.iter().zip(&raw_rows) {
        assert_eq!(
            (r["dialogue"].as_str(), r["sequence"].as_str()),
            (&raw[5], &raw[6])
        );
        let same = plain
            .iter()
            .find(|p| p["dialogue"] == r["dialogue"] && p["sequence"] == r["sequence"])
            .unwrap();
        assert_eq!(
            (&r["x_text"], &r["label"], &r["x_visual"]),
            (&same["x_text"], &same["label"], &same["x_visual"])
        );
        if !r["x_audio"].is_empty() {
            let spec = hound::WavReader::open(out.join(&r["x_audio"]))
                .unwrap()
                .spec();
            assert_eq!((spec.sample_rate, spec.channels), (44100, 2));
        }
    }
    assert!(!out.join("train.csv").exists() && !out.join("test.csv").exists());

    // --force redoes the rows; without it a rerun reuses them.
    let with_clip = rows
        .iter()
        .filter(|r| !r["x_visual"].is_empty() || !r["x_audio"].is_empty())
        .count() as u64;
    assert_eq!(decoded(&["--force"]), with_clip);
    assert_eq!(decoded(&[]), 0);
}

fn modified_times(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut all = Vec::new();
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "jpg" || e == "wav") {
            all.push((
                entry.clone(),
                std::fs::metadata(&entry).unwrap().modified().unwrap(),
            ));
        }
    }
    all.sort();
    all
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn a_second_run_does_no_work() {
    let e = extraction();
    let before = modified_times(&e.out);
    let csv_before = std::fs::read(e.out.join("train.csv")).unwrap();
    run_ok(
        bin("meld-etl")
            .args(["extract", "--jobs", "2", "--raw"])
            .arg(&e.raw)
            .arg("--out")
            .arg(&e.out),
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.out.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["clips_decoded"], 0, "{manifest:#}");
    assert!(manifest["clips_reused"].as_u64().unwrap() > 50);
    assert_eq!(modified_times(&e.out), before, "media were rewritten");
    assert_eq!(std::fs::read(e.out.join("train.csv")).unwrap(), csv_before);
}

/// Rows with a finished record in an output folder (all splits).
fn records_done(out: &Path) -> usize {
    ["train", "valid", "test"]
        .iter()
        .map(|s| {
            std::fs::read_dir(out.join(".extract").join(s))
                .map(|d| {
                    d.filter(|e| {
                        e.as_ref()
                            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                    })
                    .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Starts an extraction and waits until it has finished `more` rows (or exited).
fn start_and_wait(raw: &Path, out: &Path, more: usize) -> Child {
    let before = records_done(out);
    let mut child = bin("meld-etl")
        .args(["extract", "--jobs", "2", "--raw"])
        .arg(raw)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..6000 {
        if records_done(out) >= before + more || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn interrupted_runs_resume_to_the_uninterrupted_result() {
    let e = extraction();
    let out = e._dir.path().join("resumed");

    // Ctrl-C: the rows in flight finish and the CSVs are still written with every row.
    let child = start_and_wait(&e.raw, &out, 3);
    run_ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let status = child.wait_with_output().unwrap().status;
    assert!(status.code() == Some(130) || status.success(), "{status}");
    let failures = std::fs::read_to_string(out.join("failures.csv")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    if status.code() == Some(130) {
        // Rows not reached are listed as interrupted, never silently missing.
        assert!(failures.contains(",interrupted,"), "{failures}");
        assert_eq!(manifest["complete"], false);
    }
    for (name, meld) in SPLIT_DIRS {
        assert_eq!(
            output_rows(&out, name).len(),
            raw_keys(&e.raw, meld_split(meld)).len()
        );
    }

    // kill -9 in the middle of the rerun, then a last run.
    let mut child = start_and_wait(&e.raw, &out, 8);
    child.kill().unwrap();
    child.wait().unwrap();
    run_ok(
        bin("meld-etl")
            .args(["extract", "--jobs", "2", "--raw"])
            .arg(&e.raw)
            .arg("--out")
            .arg(&out),
    );

    let files = |dir: &Path| -> Vec<PathBuf> {
        // `.tmp`: another test may be rerunning the shared extraction at this moment (its renames are atomic).
        walk(dir)
            .into_iter()
            .filter(|p| {
                !p.starts_with(dir.join(".extract"))
                    && !p.ends_with("manifest.json")
                    && !p.to_string_lossy().ends_with(".tmp")
            })
            .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
            .collect()
    };
    let resumed = files(&out);
    assert_eq!(resumed, files(&e.out), "different files");
    assert!(
        walk(&out)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".tmp")),
        "temporary files left"
    );
    for f in resumed {
        assert!(
            std::fs::read(out.join(&f)).unwrap() == std::fs::read(e.out.join(&f)).unwrap(),
            "{} differs",
            f.display()
        );
    }
}

#[test]
fn verify_accepts_the_output_and_names_damaged_files() {
    let e = extraction();
    let ok = run_ok(bin("meld-etl").args(["verify", "--data"]).arg(&e.out));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verify: OK"));

    let copy = e._dir.path().join("damaged");
    for file in walk(&e.out)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
    {
        let rel = file.strip_prefix(&e.out).unwrap();
        std::fs::create_dir_all(copy.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&file, copy.join(rel)).unwrap();
    }
    let rows = output_rows(&copy, "test");
    let jpg = rows.iter().find(|r| !r["x_visual"].is_empty()).unwrap()["x_visual"].clone();
    let wav = rows.iter().find(|r| !r["x_audio"].is_empty()).unwrap()["x_audio"].clone();
    let bytes = std::fs::read(copy.join(&jpg)).unwrap();
    std::fs::write(copy.join(&jpg), &bytes[..bytes.len() / 3]).unwrap();
    let bytes = std::fs::read(copy.join(&wav)).unwrap();
    std::fs::write(copy.join(&wav), &bytes[..bytes.len() / 2]).unwrap();
    let output = bin("meld-etl")
        .args(["verify", "--data"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&jpg) && text.contains(&wav), "{text}");
}

#[test]
fn a_malformed_csv_is_an_error_naming_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime";
    let good = |n: u32| {
        format!(
            "{n},\"Hi, there\",Ross,joy,positive,0,{n},3,12,\"00:00:01,000\",\"00:00:02,000\"\n"
        )
    };
    for split in Split::ALL {
        std::fs::create_dir_all(dir.path().join(split.meld_clip_dir())).unwrap();
        let body = if split == Split::Train {
            format!("{header}\n{}{}4,\"bad\",Ross,joy,positive,zero,3,3,12,\"00:00:01,000\",\"00:00:02,000\"\n", good(1), good(2))
        } else {
            format!("{header}\n{}", good(1))
        };
        std::fs::write(dir.path().join(split.meld_csv()), body).unwrap();
    }
    let output = bin("meld-etl")
        .args(["extract", "--raw"])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("train_sent_emo.csv")
            && err.contains("row 3")
            && err.contains("Dialogue_ID")
            && err.contains("zero"),
        "{err}"
    );
    assert!(!dir.path().join("out/train.csv").exists());
}

#[test]
fn duplicate_rows_and_missing_clips_are_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime";
    let row = |n: u32, u: u32| {
        format!("{n},\"Hi, there\u{92}s more\",Ross,joy,positive,0,{u},3,12,\"00:00:01,000\",\"00:00:02,000\"\r\n")
    };
    for split in Split::ALL {
        std::fs::create_dir_all(dir.path().join(split.meld_clip_dir())).unwrap();
        let body = format!(
            "\u{feff}{header}\r\n{}{}{}",
            row(1, 0),
            row(2, 1),
            row(3, 0)
        );
        std::fs::write(dir.path().join(split.meld_csv()), body).unwrap();
    }
    let scan = run_ok(bin("meld-etl").args(["scan", "--raw"]).arg(dir.path()));
    let text = String::from_utf8_lossy(&scan.stdout);
    assert!(text.contains("rows 1, 3 share"), "{text}");

    let out = dir.path().join("out");
    run_ok(
        bin("meld-etl")
            .args(["extract", "--raw"])
            .arg(dir.path())
            .arg("--out")
            .arg(&out),
    );
    for (name, _) in SPLIT_DIRS {
        let rows = output_rows(&out, name);
        assert_eq!(
            rows.len(),
            3,
            "{name}: every row is kept, duplicates included"
        );
        assert!(rows
            .iter()
            .all(|r| r["x_text"] == "Hi, there’s more" && r["x_visual"].is_empty()));
    }
    let (_, failures) = read_csv(&out.join("failures.csv"));
    let reasons: Vec<(String, String)> = failures
        .iter()
        .map(|r| (r[0].to_string(), r[4].to_string()))
        .collect();
    for (name, _) in SPLIT_DIRS {
        assert_eq!(
            reasons
                .iter()
                .filter(|(s, r)| s == name && r == "duplicate")
                .count(),
            1,
            "{reasons:?}"
        );
        assert_eq!(
            reasons
                .iter()
                .filter(|(s, r)| s == name && r == "missing")
                .count(),
            2,
            "{reasons:?}"
        );
    }
}
