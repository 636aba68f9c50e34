//! `erc-train predict` end to end on a synthetic MELD.Raw tree and a model trained on it (the demo's GloVe +
//! raw-waveform config): the three inputs agree (the same clips as an extracted split, as a raw folder, and cut
//! from one long video made by concatenating them with ffmpeg), `--data` reproduces `eval`'s weighted F1, every
//! bad input gets its reason, and `synth --episode` is labelled with its timeline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meld_erc_tests::{bin, read_csv_maps, repo, run_folder, run_ok, synth, write_glove};

struct Setup {
    dir: meld_erc_tests::Scratch,
    raw: PathBuf,
    data: PathBuf,
    run: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "predict");
        let raw = dir.path().join("MELD.Raw");
        synth(&raw, 12, 7, "1-2", &[]);
        let data = dir.path().join("data");
        run_ok(
            bin("meld-etl")
                .arg("extract")
                .arg("--raw")
                .arg(&raw)
                .arg("--out")
                .arg(&data),
        );
        let glove = dir.path().join("glove.txt");
        write_glove(&glove);
        let out = dir.path().join("runs");
        let output = run_ok(
            bin("erc-train")
                .arg("--config")
                .arg(repo().join("configs/demo-glove-waveform.yml"))
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(&out)
                .arg("--glove")
                .arg(&glove)
                .args(["--epochs", "4"]),
        );
        let run = run_folder(&output);
        Setup {
            dir,
            raw,
            data,
            run,
        }
    })
}

fn predict(out: &Path, input: &[&std::ffi::OsStr]) -> std::process::Output {
    bin("erc-train")
        .arg("predict")
        .arg("--run")
        .arg(&setup().run)
        .arg("--out")
        .arg(out)
        .args(input)
        .output()
        .expect("running erc-train predict")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn probabilities(row: &std::collections::HashMap<String, String>) -> Option<Vec<f64>> {
    let mut keys: Vec<&String> = row.keys().filter(|k| k.starts_with("p_")).collect();
    keys.sort();
    keys.iter()
        .map(|k| row[*k].parse::<f64>().ok())
        .collect::<Option<Vec<f64>>>()
}

#[test]
fn the_three_inputs_agree_and_data_reproduces_eval() {
    let s = setup();
    let dir = s.dir.path();
    // 1. the extracted split
    let by_data = dir.join("p-data");
    let output = predict(
        &by_data,
        &[os("--data"), s.data.as_os_str(), os("--split"), os("test")],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `eval`'s weighted F1 on the same split, and the one printed from the predictions
    let eval = run_ok(
        bin("erc-train")
            .args(["eval", "--split", "test", "--run"])
            .arg(&s.run),
    );
    let eval_f1 = String::from_utf8_lossy(&eval.stdout)
        .split("weighted F1 ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(str::to_string)
        .expect("eval prints its weighted F1");
    assert!(
        stdout.contains(&format!("weighted F1 {eval_f1}")),
        "predict: {stdout}\neval: {eval_f1}"
    );
    let data_rows = read_csv_maps(&by_data.join("predictions.csv"));
    let test_rows = read_csv_maps(&s.data.join("test.csv"));
    assert_eq!(data_rows.len(), test_rows.len(), "one line per utterance");
    assert!(data_rows
        .iter()
        .all(|r| !r["true"].is_empty() && r["reason"].is_empty()));
    let srt = std::fs::read_to_string(by_data.join("emotions.srt")).unwrap();
    assert_eq!(srt.matches(" --> ").count(), data_rows.len());

    // 2. the raw folder: extracted by meld-etl into a temporary folder, the same numbers
    let by_raw = dir.join("p-raw");
    let output = predict(
        &by_raw,
        &[os("--raw"), s.raw.as_os_str(), os("--split"), os("test")],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let raw_rows = read_csv_maps(&by_raw.join("predictions.csv"));
    for (a, b) in data_rows.iter().zip(&raw_rows) {
        assert_eq!(a["id"], b["id"]);
        let (pa, pb) = (probabilities(a).unwrap(), probabilities(b).unwrap());
        let worst = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "{}: {worst}", a["id"]);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&by_raw)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".predict-media")
        })
        .collect();
    assert!(leftovers.is_empty(), "the temporary media were not removed");

    // 3. one long video: the test clips concatenated (stream copy), the utterances as CSV with their dialogues
    let mut list = String::new();
    let mut subtitles = String::from("start,end,text,speaker,dialogue\n");
    let mut t = 0.0;
    for row in &test_rows {
        let clip = s
            .raw
            .join("output_repeated_splits_test")
            .join(format!("dia{}_utt{}.mp4", row["dialogue"], row["sequence"]));
        let probe = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&clip)
            .output()
            .expect("ffprobe");
        let d: f64 = String::from_utf8_lossy(&probe.stdout)
            .trim()
            .parse()
            .expect("a duration");
        list += &format!("file '{}'\n", clip.display());
        let text = row["x_text"].replace('"', "\"\"");
        subtitles += &format!(
            "{t:.6},{:.6},\"{text}\",{},{}\n",
            t + d,
            row["speaker"],
            row["dialogue"]
        );
        t += d;
    }
    std::fs::write(dir.join("list.txt"), list).unwrap();
    std::fs::write(dir.join("video.csv"), subtitles).unwrap();
    let video = dir.join("video.mp4");
    run_ok(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "concat", "-safe", "0", "-i"])
            .arg(dir.join("list.txt"))
            .args(["-c", "copy"])
            .arg(&video),
    );
    let by_video = dir.join("p-video");
    let output = predict(
        &by_video,
        &[
            os("--video"),
            video.as_os_str(),
            os("--subtitles"),
            dir.join("video.csv").as_os_str(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let video_rows = read_csv_maps(&by_video.join("predictions.csv"));
    assert_eq!(video_rows.len(), data_rows.len());
    // Frame-timing tolerance: stream-copied clips keep each clip's AAC priming (~21 ms at every join) and their
    // frames shift by up to one frame, so the waveform's samples move a little; the probabilities stay within
    // 0.05, and a label may differ only where the dataset's top two classes are that close.
    for (a, b) in data_rows.iter().zip(&video_rows) {
        assert_eq!(
            (a["dialogue"].as_str(), a["sequence"].as_str()),
            (b["dialogue"].as_str(), b["sequence"].as_str())
        );
        let (pa, pb) = (probabilities(a).unwrap(), probabilities(b).unwrap());
        let worst = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.05, "{}: {worst}", a["id"]);
        if a["predicted"] != b["predicted"] {
            let mut sorted = pa.clone();
            sorted.sort_by(|x, y| y.partial_cmp(x).unwrap());
            assert!(
                sorted[0] - sorted[1] < 2.0 * worst,
                "{}: a clear label changed",
                a["id"]
            );
        }
    }
    assert!(by_video.join("timeline.png").is_file());
}

#[test]
fn every_bad_input_gets_its_reason_and_no_line_is_dropped() {
    let s = setup();
    let dir = s.dir.path();
    // a video of the test clips, and subtitles with every kind of bad line among good ones
    let clip = s.raw.join("output_repeated_splits_test/dia0_utt0.mp4");
    let video = dir.join("one.mp4");
    std::fs::copy(&clip, &video).unwrap();
    let srt = dir.join("bad.srt");
    std::fs::write(
        &srt,
        "1\n00:00:00,000 --> 00:00:00,800\nRoss: a good line\n\n\
         2\n00:00:00,900 --> 00:00:00,900\nRoss: empty\n\n\
         3\n00:00:00,950 --> 00:00:00,700\nRoss: inverted\n\n\
         4\n00:00:00,500 --> 00:00:00,900\nRachel: overlapping the first\n\n\
         5\n00:00:30,000 --> 00:00:31,000\nJoey: past the end\n",
    )
    .unwrap();
    let out = dir.join("p-bad");
    let output = predict(
        &out,
        &[
            os("--video"),
            video.as_os_str(),
            os("--subtitles"),
            srt.as_os_str(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = read_csv_maps(&out.join("predictions.csv"));
    let reasons: Vec<&str> = rows
        .iter()
        .map(|r| r["reason"].split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons,
        ["", "empty_range", "inverted_range", "overlap", "past_end"]
    );
    assert!(probabilities(&rows[0]).is_some());
    assert!(rows[1..]
        .iter()
        .all(|r| probabilities(r).is_none() && r["predicted"].is_empty()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("5 utterances, 1 predicted, 4 without a prediction"),
        "{stdout}"
    );

    // a raw folder with the release's kinds of damage: the damaged clips' rows are there, with the ETL's reason
    let faulty = dir.join("faulty");
    synth(&faulty, 12, 7, "1-2", &["--faults"]);
    let out = dir.join("p-faulty");
    let output = predict(
        &out,
        &[os("--raw"), faulty.as_os_str(), os("--split"), os("train")],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = read_csv_maps(&out.join("predictions.csv"));
    let truth = read_csv_maps(&faulty.join("synth-truth.csv"));
    let damaged: Vec<(String, String)> = truth
        .iter()
        .filter(|t| {
            t["split"] == "train"
                && ["missing", "zero_byte", "truncated", "no_audio"].contains(&t["fault"].as_str())
        })
        .map(|t| (t["dialogue"].clone(), t["utterance"].clone()))
        .collect();
    assert!(
        !damaged.is_empty(),
        "the synth tree has damaged train clips"
    );
    for (d, u) in &damaged {
        let row = rows
            .iter()
            .find(|r| &r["dialogue"] == d && &r["sequence"] == u)
            .unwrap_or_else(|| panic!("row {d}-{u} dropped"));
        assert!(
            !row["reason"].is_empty() && row["predicted"].is_empty(),
            "{row:?}"
        );
    }

    // a subtitles file that cannot be read is an error naming its line; a run that is not finished names what
    // it lacks
    std::fs::write(
        &srt,
        "1\n00:00:00,000 --> 00:00:00,800\nok\n\n2\nsoon --> later\nbad\n",
    )
    .unwrap();
    let output = predict(
        &dir.join("p-unreadable"),
        &[
            os("--video"),
            video.as_os_str(),
            os("--subtitles"),
            srt.as_os_str(),
        ],
    );
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("bad.srt line 6"), "{err}");
    let unfinished = dir.join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    for file in ["run.json", "config.yml"] {
        std::fs::copy(s.run.join(file), unfinished.join(file)).unwrap();
    }
    let output = bin("erc-train")
        .args(["predict", "--run"])
        .arg(&unfinished)
        .arg("--out")
        .arg(dir.join("p-unfinished"))
        .arg("--data")
        .arg(&s.data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && err.contains("model.safetensors")
            && err.contains("summary.json"),
        "{err}"
    );
}

#[test]
fn a_synthetic_episode_is_labelled_with_its_timeline() {
    let s = setup();
    let dir = s.dir.path().join("episode");
    synth(&dir, 12, 7, "1-2", &["--episode"]);
    let out = s.dir.path().join("p-episode");
    let output = predict(
        &out,
        &[
            os("--video"),
            dir.join("episode.mp4").as_os_str(),
            os("--subtitles"),
            dir.join("episode.srt").as_os_str(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = read_csv_maps(&out.join("predictions.csv"));
    let truth = read_csv_maps(&dir.join("episode-truth.csv"));
    assert_eq!(
        rows.len(),
        truth.len(),
        "one prediction line per subtitle line"
    );
    for (row, t) in rows.iter().zip(&truth) {
        match t["damage"].as_str() {
            "" => assert!(probabilities(row).is_some(), "{row:?}"),
            damage => assert!(row["reason"].starts_with(damage), "{damage}: {row:?}"),
        }
    }
    // the cues are learnable: the model beats chance on the episode's labels
    let (mut right, mut total) = (0, 0);
    for (row, t) in rows.iter().zip(&truth) {
        if !row["predicted"].is_empty() {
            total += 1;
            right += usize::from(row["predicted"] == t["emotion"]);
        }
    }
    assert!(
        right as f64 / total as f64 > 1.0 / 7.0 + 0.1,
        "{right} of {total}"
    );
    let srt = std::fs::read_to_string(out.join("emotions.srt")).unwrap();
    assert!(srt.contains("[no prediction: overlap"), "{srt}");
    let png = std::fs::read(out.join("timeline.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}
