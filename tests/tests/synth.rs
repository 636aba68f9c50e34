//! `meld-etl synth` checked from the outside: ffprobe's JSON for the clips, the csv crate for the CSVs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meld_erc_tests::{bin, ffprobe, keyframe_count, number, read_csv, run_ok, stream};
use meld_etl::layout::Layout;
use meld_etl::synth::planned_label_counts;
use meld_shared::{Emotion, Split};

const MELD_HEADER: &str =
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime";
/// One frame at 24000/1001 fps.
const FRAME_SECONDS: f64 = 1001.0 / 24000.0;

struct Tree {
    _dir: meld_erc_tests::Scratch,
    root: PathBuf,
    stdout: String,
}

/// One Kaggle-layout tree with every fault, shared by the tests of this file (encoding is the slow part).
fn faulty_kaggle_tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "synth");
        let root = dir.path().join("MELD.Raw");
        let output = run_ok(
            bin("meld-etl")
                .args([
                    "synth",
                    "--dialogues",
                    "4",
                    "--seed",
                    "11",
                    "--layout",
                    "kaggle",
                    "--faults",
                    "--durations",
                    "1-2.5",
                    "--out",
                ])
                .arg(&root),
        );
        Tree {
            _dir: dir,
            root,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        }
    })
}

struct TruthRow {
    emotion: String,
    seconds: f64,
    fault: String,
}

fn truth(root: &Path) -> HashMap<String, TruthRow> {
    let (_, records) = read_csv(&root.join("synth-truth.csv"));
    records
        .iter()
        .map(|r| {
            (
                r[3].to_string(),
                TruthRow {
                    emotion: r[4].to_string(),
                    seconds: r[9].parse().expect("seconds"),
                    fault: r[10].to_string(),
                },
            )
        })
        .collect()
}

fn faults(root: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(root.join("synth-faults.json")).expect("synth-faults.json");
    serde_json::from_str::<serde_json::Value>(&text)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

#[test]
fn csvs_have_the_real_header_planned_rows_and_labels() {
    let tree = faulty_kaggle_tree();
    for split in Split::ALL {
        let csv = Layout::Kaggle.csv_path(&tree.root, split);
        let text = std::fs::read_to_string(&csv).expect("csv");
        assert_eq!(text.lines().next(), Some(MELD_HEADER), "{}", csv.display());
        // Times are quoted "hh:mm:ss,mmm", as in the real files.
        assert!(
            text.contains(",\"00:"),
            "unquoted times in {}",
            csv.display()
        );

        let (_, records) = read_csv(&csv);
        let mut counts = [0usize; 7];
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.len(), 11);
            assert_eq!(r[0].parse::<usize>().expect("Sr No."), i + 1);
            let emotion: Emotion = r[3].parse().expect("emotion");
            counts[emotion.index()] += 1;
            let utterance: u32 = r[6].parse().expect("Utterance_ID");
            assert!(utterance < 20, "dialogues have at most 20 utterances");
        }
        assert_eq!(counts, planned_label_counts(records.len()), "{split}");
        let dialogues: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.get(5).unwrap_or("")).collect();
        assert!(
            dialogues.len() >= 2,
            "{split}: {} dialogues",
            dialogues.len()
        );
    }
    let train =
        std::fs::read_to_string(Layout::Kaggle.csv_path(&tree.root, Split::Train)).expect("csv");
    assert!(
        train.contains('\u{92}'),
        "the C1 apostrophe of the real release is missing"
    );
    let (_, records) = read_csv(&Layout::Kaggle.csv_path(&tree.root, Split::Train));
    let neutral =
        records.iter().filter(|r| &r[3] == "neutral").count() as f64 / records.len() as f64;
    assert!((0.40..0.55).contains(&neutral), "neutral share {neutral}");
}

#[test]
fn healthy_clips_are_encoded_like_meld_and_last_as_annotated() {
    let tree = faulty_kaggle_tree();
    let truth = truth(&tree.root);
    let mut checked = 0;
    for split in Split::ALL {
        let (_, records) = read_csv(&Layout::Kaggle.csv_path(&tree.root, split));
        for r in &records {
            let file = format!("{}/dia{}_utt{}.mp4", split.meld_clip_dir(), &r[5], &r[6]);
            let row_truth = &truth[&file];
            assert_eq!(row_truth.emotion, &r[3]);
            if !row_truth.fault.is_empty() {
                continue;
            }
            let path = Layout::Kaggle.split_root(&tree.root, split).join(&file);
            let probe =
                ffprobe(&path).unwrap_or_else(|| panic!("{} does not probe", path.display()));
            let video = stream(&probe, "video").expect("video stream");
            assert_eq!(video["codec_name"], "h264");
            assert_eq!(video["profile"], "High");
            assert_eq!(
                (video["width"].as_u64(), video["height"].as_u64()),
                (Some(1280), Some(720))
            );
            assert_eq!(video["r_frame_rate"], "24000/1001");
            let audio = stream(&probe, "audio").expect("audio stream");
            assert_eq!(audio["codec_name"], "aac");
            assert_eq!(audio["channels"].as_u64(), Some(6));
            assert_eq!(audio["sample_rate"], "48000");

            let start: f64 = parse_time(&r[9]);
            let end: f64 = parse_time(&r[10]);
            let annotated = end - start;
            assert!((annotated - row_truth.seconds).abs() < 1e-6);
            assert!((1.0..=2.5).contains(&annotated), "{annotated}");
            let video_seconds = number(&video["duration"]);
            assert!(
                (video_seconds - annotated).abs() <= FRAME_SECONDS,
                "{file}: video {video_seconds} vs CSV {annotated}"
            );
            let audio_seconds = number(&audio["duration"]);
            assert!(
                (audio_seconds - annotated).abs() <= FRAME_SECONDS,
                "{file}: audio {audio_seconds} vs CSV {annotated}"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} healthy clips");
    // One keyframe (the first frame), then P/B frames, like the real clips: checked on a few clips.
    for file in truth.keys().filter(|f| truth[*f].fault.is_empty()).take(5) {
        let split = if file.starts_with("train") {
            Split::Train
        } else if file.starts_with("dev") {
            Split::Dev
        } else {
            Split::Test
        };
        let path = Layout::Kaggle.split_root(&tree.root, split).join(file);
        assert_eq!(keyframe_count(&path), 1, "{}", path.display());
    }
}

fn parse_time(s: &str) -> f64 {
    let (hms, ms) = s.split_once(',').expect("hh:mm:ss,mmm");
    let parts: Vec<f64> = hms.split(':').map(|p| p.parse().expect("number")).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2] + ms.parse::<f64>().expect("ms") / 1000.0
}

#[test]
fn every_fault_is_injected_and_listed() {
    let tree = faulty_kaggle_tree();
    let faults = faults(&tree.root);
    let kinds: Vec<&str> = faults
        .iter()
        .map(|f| f["fault"].as_str().unwrap_or(""))
        .collect();
    for kind in [
        "missing",
        "zero_byte",
        "truncated",
        "no_audio",
        "no_video",
        "unlabelled",
        "prefixed",
        "long",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            1,
            "{kind} in {kinds:?}"
        );
        assert!(
            tree.stdout.contains(kind),
            "summary does not list {kind}:\n{}",
            tree.stdout
        );
    }
    for fault in &faults {
        let split: Split = fault["split"]
            .as_str()
            .expect("split")
            .parse()
            .expect("split name");
        let path = Layout::Kaggle
            .split_root(&tree.root, split)
            .join(fault["file"].as_str().expect("file"));
        let (_, rows) = read_csv(&Layout::Kaggle.csv_path(&tree.root, split));
        let (d, u) = (
            fault["dialogue"].to_string(),
            fault["utterance"].to_string(),
        );
        let has_row = rows.iter().any(|r| r[5] == d && r[6] == u);
        match fault["fault"].as_str().expect("fault") {
            "missing" => assert!(!path.exists() && has_row),
            "zero_byte" => assert_eq!(std::fs::metadata(&path).expect("exists").len(), 0),
            "truncated" => {
                assert!(std::fs::metadata(&path).expect("exists").len() > 0);
                assert!(
                    ffprobe(&path)
                        .and_then(|p| stream(&p, "video").cloned())
                        .is_none(),
                    "{} still probes",
                    path.display()
                );
            }
            "no_audio" => {
                let p = ffprobe(&path).expect("probes");
                assert!(stream(&p, "video").is_some() && stream(&p, "audio").is_none());
            }
            "no_video" => {
                let p = ffprobe(&path).expect("probes");
                assert!(stream(&p, "audio").is_some() && stream(&p, "video").is_none());
            }
            "unlabelled" => assert!(path.exists() && !has_row),
            "prefixed" => {
                assert!(path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("final_videos_testdia")));
                assert!(ffprobe(&path).is_some());
            }
            "long" => {
                let p = ffprobe(&path).expect("probes");
                assert!((number(&p["format"]["duration"]) - 60.0).abs() < 0.1);
            }
            other => panic!("unexpected fault {other}"),
        }
    }
}

#[test]
fn same_seed_same_csv_bytes_and_plain_layout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, seed: &str| {
        let root = dir.path().join(name);
        run_ok(
            bin("meld-etl")
                .args([
                    "synth",
                    "--dialogues",
                    "2",
                    "--durations",
                    "1-1.2",
                    "--seed",
                    seed,
                    "--out",
                ])
                .arg(&root),
        );
        root
    };
    let (a, b, c) = (write("a", "5"), write("b", "5"), write("c", "6"));
    for split in Split::ALL {
        let csv = |root: &Path| {
            std::fs::read(Layout::Plain.csv_path(root, split)).expect("plain-layout csv")
        };
        assert_eq!(csv(&a), csv(&b), "{split}: same seed, different CSV");
        assert_ne!(csv(&a), csv(&c), "{split}: different seeds, same CSV");
        assert!(Layout::Plain
            .clip_dir(&a, split)
            .join("dia0_utt0.mp4")
            .exists());
    }
}
