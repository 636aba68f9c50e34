//! `meld-etl extract --faces` and `meld-etl faces` with the real RetinaFace model (models/, `make models`) on a
//! synth tree whose clips carry a real face (models/astronaut.png) at the place `synth-faces.csv` records.
//! Checked from the outside: faces.csv with the csv crate, images decoded by the ffmpeg CLI. The default engine
//! (`auto`) runs onnxruntime, whose library `make models` puts next to the model; the bad-model errors are checked
//! with both engines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use meld_erc_tests::{bin, image_rgb24, model_file, read_csv_maps as rows, run_ok};

/// The face box in astronaut.png (512x512), set by eye (the fixtures' README: the detector's box on the photo
/// has IoU 0.83 with it).
const FACE_BOX: &str = "180,72,271,178";
/// Rows of each split extracted (dialogue 0's first utterances: the even ones carry the face).
const LIMIT: &str = "10";
const TILE_W: usize = 426;
const TILE_H: usize = 240;
const TILES: usize = 5;
/// README: "the real detector finds a real face pasted into synthetic clips in every frame (IoU ≥ 0.87)"; the
/// worst measured was 0.876 (onnxruntime 1.31.1, default profile). The bound keeps a small margin under the claim
/// for ffmpeg/JPEG differences between machines, nothing like the 0.5 of a detection that merely overlaps.
const MIN_IOU_DEFAULT: f64 = 0.85;
/// hlm12erc boxes are truncated to integers on the whole mosaic, which costs IoU: the fixtures' README measured
/// 0.833 to 0.887 for the same face on its mosaic; on the synth clips the worst was 0.831.
const MIN_IOU_HLM12ERC: f64 = 0.80;
/// The pasted face is a clear frontal face: the fixtures measured scores 0.9917 to 0.9973 for it under both
/// profiles, on the synth clips the lowest was 0.9893. A bound well above both profiles' own thresholds
/// (0.5, 0.02), so a barely-kept box fails.
const MIN_FACE_SCORE: f64 = 0.95;

struct Setup {
    _dir: meld_erc_tests::Scratch,
    dir: PathBuf,
    raw: PathBuf,
    /// `extract --faces` in one go.
    fresh: PathBuf,
}

fn extract(raw: &Path, out: &Path, more: &[&str]) -> std::process::Output {
    run_ok(
        bin("meld-etl")
            .args([
                "extract", "--jobs", "2", "--splits", "train", "--limit", LIMIT, "--raw",
            ])
            .arg(raw)
            .arg("--out")
            .arg(out)
            .args(more),
    )
}

fn model() -> String {
    model_file("retinaface-mnet025.onnx")
        .to_string_lossy()
        .into_owned()
}

/// The onnxruntime library `make models` extracts (a missing one fails the tests: CI runs `make models`).
fn onnxruntime_library() -> PathBuf {
    model_file("onnxruntime/libonnxruntime.so")
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let photo = model_file("astronaut.png");
        let dir = meld_erc_tests::Scratch::new(env!("CARGO_TARGET_TMPDIR"), "faces");
        let raw = dir.path().join("MELD.Raw");
        run_ok(
            bin("meld-etl")
                .args([
                    "synth",
                    "--dialogues",
                    "2",
                    "--seed",
                    "7",
                    "--durations",
                    "1-1.2",
                ])
                .arg("--face-image")
                .arg(&photo)
                .args(["--face-box", FACE_BOX, "--out"])
                .arg(&raw),
        );
        let fresh = dir.path().join("fresh");
        extract(&raw, &fresh, &["--faces", &model()]);
        Setup {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            raw,
            fresh,
        }
    })
}

/// synth-faces.csv: (dialogue, utterance) → face box in mosaic-tile pixels (426x240 from 1280x720).
fn pasted(raw: &Path) -> HashMap<(u32, u32), [f64; 4]> {
    rows(&raw.join("synth-faces.csv"))
        .iter()
        .filter(|r| r["split"] == "train")
        .map(|r| {
            let v = |c: &str| r[c].parse::<f64>().unwrap();
            let (sx, sy) = (TILE_W as f64 / 1280.0, TILE_H as f64 / 720.0);
            (
                (
                    r["dialogue"].parse().unwrap(),
                    r["utterance"].parse().unwrap(),
                ),
                [v("x1") * sx, v("y1") * sy, v("x2") * sx, v("y2") * sy],
            )
        })
        .collect()
}

/// One line of faces.csv: (tile, box, score).
type Detected = (usize, [f64; 4], f64);

/// faces.csv: (dialogue, utterance) → its faces.
fn detected(out: &Path) -> HashMap<(u32, u32), Vec<Detected>> {
    let mut found: HashMap<(u32, u32), Vec<Detected>> = HashMap::new();
    for r in rows(&out.join("train/faces.csv")) {
        let v = |c: &str| r[c].parse::<f64>().unwrap();
        assert_eq!(r["split"], "train");
        found
            .entry((
                r["dialogue_id"].parse().unwrap(),
                r["utterance_id"].parse().unwrap(),
            ))
            .or_default()
            .push((
                r["tile"].parse().unwrap(),
                [v("x1"), v("y1"), v("x2"), v("y2")],
                v("score"),
            ));
    }
    found
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn faces_are_found_where_they_were_pasted_in_every_frame() {
    let s = setup();
    let truth = pasted(&s.raw);
    let found = detected(&s.fresh);
    let dataset = rows(&s.fresh.join("train.csv"));
    assert_eq!(dataset.len(), 10);
    let with_face: Vec<(u32, u32)> = dataset
        .iter()
        .map(|r| {
            (
                r["dialogue"].parse().unwrap(),
                r["sequence"].parse().unwrap(),
            )
        })
        .filter(|k| truth.contains_key(k))
        .collect();
    assert!(
        with_face.len() >= 4,
        "too few rows with a face: {with_face:?}"
    );
    let (mut worst, mut lowest_score) = (f64::MAX, f64::MAX);
    for key in &with_face {
        let faces = found.get(key).map(Vec::as_slice).unwrap_or_default();
        for tile in 0..TILES {
            let t = truth[key];
            let dy = (tile * TILE_H) as f64;
            let expected = [t[0], t[1] + dy, t[2], t[3] + dy];
            let best = faces
                .iter()
                .filter(|f| f.0 == tile)
                .map(|f| iou(&f.1, &expected))
                .fold(0.0, f64::max);
            assert!(
                best >= MIN_IOU_DEFAULT,
                "{key:?} tile {tile}: best IoU {best:.3} with the pasted face; found {faces:?}"
            );
            worst = worst.min(best);
        }
        // Exactly the pasted face: one box per frame, each inside its frame.
        assert_eq!(faces.len(), TILES, "{key:?}: {faces:?}");
        for (tile, b, score) in faces {
            assert!(
                *score >= MIN_FACE_SCORE,
                "{key:?} tile {tile}: score {score} for the pasted face"
            );
            lowest_score = lowest_score.min(*score);
            let (top, bottom) = ((tile * TILE_H) as f64, ((tile + 1) * TILE_H) as f64);
            assert!(
                b[1] >= top && b[3] <= bottom,
                "{key:?}: box {b:?} leaves tile {tile}"
            );
        }
    }
    eprintln!(
        "{} rows with a face: worst IoU with the pasted box {worst:.3}, lowest score {lowest_score:.4}",
        with_face.len()
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.fresh.join("manifest.json")).unwrap())
            .unwrap();
    let faces = &manifest["faces"];
    assert_eq!(faces["profile"], "default");
    // `auto` found the library next to the model.
    onnxruntime_library();
    assert_eq!(faces["engine"], "onnxruntime", "{faces}");
    assert!(faces["engine_library"]
        .as_str()
        .is_some_and(|l| l.contains("models/onnxruntime/libonnxruntime.so")));
    assert_eq!(faces["sha256"].as_str().map(str::len), Some(64));
    assert!(faces["model"]
        .as_str()
        .unwrap()
        .ends_with("retinaface-mnet025.onnx"));
    assert_eq!(faces["images"], 10);
    assert_eq!(faces["images_made"], 10);
    assert_eq!(faces["rows_with_faces"], with_face.len());
    // verify decodes the face images too, and names one that is damaged.
    let ok = run_ok(bin("meld-etl").args(["verify", "--data"]).arg(&s.fresh));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verify: OK"));
    let copy = s.dir.join("verify-copy");
    std::fs::create_dir_all(copy.join("train")).unwrap();
    for file in ["train.csv", "manifest.json"] {
        std::fs::copy(s.fresh.join(file), copy.join(file)).unwrap();
    }
    for r in &dataset {
        for column in ["x_visual", "x_visual_faces", "x_audio"] {
            std::fs::copy(s.fresh.join(&r[column]), copy.join(&r[column])).unwrap();
        }
    }
    let damaged = copy.join(&dataset[0]["x_visual_faces"]);
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let output = bin("meld-etl")
        .args(["verify", "--data"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&dataset[0]["x_visual_faces"]), "{stdout}");
}

/// Pixels of a mosaic as (width, rows of RGB) with a per-pixel accessor.
struct Rgb {
    bytes: Vec<u8>,
}

impl Rgb {
    fn load(path: &Path) -> Rgb {
        let bytes = image_rgb24(path);
        assert_eq!(
            bytes.len(),
            TILE_W * TILE_H * TILES * 3,
            "{}",
            path.display()
        );
        Rgb { bytes }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * TILE_W + x) * 3;
        [self.bytes[i], self.bytes[i + 1], self.bytes[i + 2]]
    }
}

#[test]
fn face_images_keep_the_faces_and_black_out_the_rest() {
    let s = setup();
    let found = detected(&s.fresh);
    let truth = pasted(&s.raw);
    let mut black_rows = 0;
    for r in rows(&s.fresh.join("train.csv")) {
        let key: (u32, u32) = (
            r["dialogue"].parse().unwrap(),
            r["sequence"].parse().unwrap(),
        );
        assert_eq!(
            r["x_visual_faces"],
            format!("train/d-{}-seq-{}.faces.jpg", key.0, key.1)
        );
        let faces = Rgb::load(&s.fresh.join(&r["x_visual_faces"]));
        let Some(boxes) = found.get(&key) else {
            // No face in the clip (the synthetic picture: gradients, a coloured block, a moving band).
            assert!(
                !truth.contains_key(&key),
                "{key:?}: the pasted face was missed"
            );
            let max = faces.bytes.iter().copied().max().unwrap();
            assert!(
                max <= 2,
                "{key:?}: the face image of a clip without faces is not black (max {max})"
            );
            black_rows += 1;
            continue;
        };
        let mosaic = Rgb::load(&s.fresh.join(&r["x_visual"]));
        // JPEG blocks are 8x8 (16x16 for chroma): compare away from the box edges.
        let margin = 16.0;
        let inside = |x: f64, y: f64, m: f64| {
            boxes
                .iter()
                .any(|(_, b, _)| x >= b[0] + m && x < b[2] - m && y >= b[1] + m && y < b[3] - m)
        };
        let (mut kept_diff, mut kept_n, mut outside_max) = (0u64, 0u64, 0u8);
        for y in 0..TILE_H * TILES {
            for x in 0..TILE_W {
                let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
                if inside(fx, fy, margin) {
                    let (a, b) = (faces.at(x, y), mosaic.at(x, y));
                    kept_diff += (0..3).map(|c| a[c].abs_diff(b[c]) as u64).sum::<u64>();
                    kept_n += 3;
                } else if !inside(fx, fy, -margin) {
                    outside_max = outside_max.max(*faces.at(x, y).iter().max().unwrap());
                }
            }
        }
        let mean = kept_diff as f64 / kept_n.max(1) as f64;
        assert!(
            kept_n > 0 && mean < 4.0,
            "{key:?}: face pixels differ from the mosaic by {mean:.2} on average"
        );
        assert!(
            outside_max <= 2,
            "{key:?}: a pixel away from every face box is {outside_max}, not black"
        );
    }
    assert!(black_rows >= 4, "only {black_rows} rows without a face");
}

fn modified_times(dir: &Path, suffix: &str) -> Vec<(PathBuf, SystemTime)> {
    let mut files: Vec<(PathBuf, SystemTime)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(suffix) && !(suffix == ".jpg" && name.ends_with(".faces.jpg"))
        })
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    files.sort();
    files
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_rerun_with_faces_keeps_the_mosaics_and_adds_only_the_face_images() {
    let s = setup();
    let out = s.dir.join("two-step");
    extract(&s.raw, &out, &[]);
    assert!(!out.join("train/faces.csv").exists());
    assert!(rows(&out.join("train.csv"))
        .iter()
        .all(|r| r["x_visual_faces"].is_empty()));
    let media = [
        modified_times(&out.join("train"), ".jpg"),
        modified_times(&out.join("train"), ".wav"),
    ];
    assert_eq!(media[0].len(), 10);

    extract(&s.raw, &out, &["--faces", &model()]);
    let m = manifest(&out);
    assert_eq!(m["clips_decoded"], 0, "the rerun decoded clips again");
    assert_eq!(m["clips_reused"], 10);
    assert_eq!(m["faces"]["images_made"], 10);
    let after = [
        modified_times(&out.join("train"), ".jpg"),
        modified_times(&out.join("train"), ".wav"),
    ];
    assert_eq!(media, after, "the rerun rewrote mosaics or WAVs");
    // The same boxes and images as a one-go run: both detect on the mosaic as stored.
    for file in ["train/faces.csv", "train.csv"] {
        assert_eq!(
            std::fs::read(s.fresh.join(file)).unwrap(),
            std::fs::read(out.join(file)).unwrap(),
            "{file} differs between the one-go and the two-step run"
        );
    }
    for r in rows(&out.join("train.csv")) {
        let cell = &r["x_visual_faces"];
        assert_eq!(
            std::fs::read(s.fresh.join(cell)).unwrap(),
            std::fs::read(out.join(cell)).unwrap(),
            "{cell} differs"
        );
    }

    // Again: nothing to do. Then the reference's profile: only the face images are made again.
    let faces_before = modified_times(&out.join("train"), ".faces.jpg");
    extract(&s.raw, &out, &["--faces", &model()]);
    let m = manifest(&out);
    assert_eq!(
        (
            m["clips_decoded"].as_u64(),
            m["faces"]["images_made"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        faces_before,
        modified_times(&out.join("train"), ".faces.jpg")
    );

    extract(
        &s.raw,
        &out,
        &["--faces", &model(), "--face-profile", "hlm12erc"],
    );
    let m = manifest(&out);
    assert_eq!(m["faces"]["profile"], "hlm12erc");
    assert_eq!(
        (
            m["clips_decoded"].as_u64(),
            m["faces"]["images_made"].as_u64()
        ),
        (Some(0), Some(10))
    );
    assert_eq!(media[0], modified_times(&out.join("train"), ".jpg"));
    // Whole-mosaic boxes, truncated to integers like the reference; still on the pasted faces: every row with a
    // face has it found in each of its frames, and no box elsewhere.
    let truth = pasted(&s.raw);
    let found = detected(&out);
    let with_face: Vec<(u32, u32)> = rows(&out.join("train.csv"))
        .iter()
        .map(|r| {
            (
                r["dialogue"].parse().unwrap(),
                r["sequence"].parse().unwrap(),
            )
        })
        .filter(|k| truth.contains_key(k))
        .collect();
    assert!(
        with_face.len() >= 4,
        "too few rows with a face: {with_face:?}"
    );
    for key in found.keys() {
        assert!(
            with_face.contains(key),
            "{key:?}: a face where none was pasted: {:?}",
            found[key]
        );
    }
    let (mut worst, mut lowest_score) = (f64::MAX, f64::MAX);
    for key in &with_face {
        let faces = found.get(key).map(Vec::as_slice).unwrap_or_default();
        let mut tiles: Vec<usize> = faces.iter().map(|f| f.0).collect();
        tiles.sort();
        assert_eq!(
            tiles,
            (0..TILES).collect::<Vec<_>>(),
            "{key:?}: not one face per frame: {faces:?}"
        );
        for (tile, b, score) in faces {
            assert!(
                b.iter().all(|v| v.fract() == 0.0),
                "{key:?}: {b:?} is not an integer box"
            );
            assert!(
                *score >= MIN_FACE_SCORE,
                "{key:?} tile {tile}: score {score} for the pasted face"
            );
            let t = truth[key];
            let dy = (tile * TILE_H) as f64;
            let overlap = iou(b, &[t[0], t[1] + dy, t[2], t[3] + dy]);
            assert!(
                overlap >= MIN_IOU_HLM12ERC,
                "{key:?}: {b:?} in tile {tile}: IoU {overlap:.3} with the pasted face"
            );
            worst = worst.min(overlap);
            lowest_score = lowest_score.min(*score);
        }
    }
    eprintln!(
        "hlm12erc, {} rows with a face: worst IoU with the pasted box {worst:.3}, lowest score {lowest_score:.4}",
        with_face.len()
    );

    // Without --faces again: a dataset without face images, and no faces.csv left to mislead.
    extract(&s.raw, &out, &[]);
    assert_eq!(manifest(&out)["faces"], serde_json::Value::Null);
    assert!(!out.join("train/faces.csv").exists());
    assert!(rows(&out.join("train.csv"))
        .iter()
        .all(|r| r["x_visual_faces"].is_empty()));
    assert_eq!(media[0], modified_times(&out.join("train"), ".jpg"));
}

// ---------------------------------------------------------------------------------------------------------
// Models that must be refused, written as ONNX protobuf by hand (a few fields of onnx.proto).

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn field_int(field: u32, v: u64, out: &mut Vec<u8>) {
    varint((field as u64) << 3, out);
    varint(v, out);
}

/// ValueInfoProto { name, type: TypeProto { tensor_type: { elem_type: FLOAT, shape } } }; a dim is a number or
/// a symbol.
fn value_info(name: &str, dims: &[Result<u64, &str>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Ok(v) => field_int(1, *v, &mut dim),
            Err(s) => field_bytes(2, s.as_bytes(), &mut dim),
        }
        field_bytes(1, &dim, &mut shape);
    }
    let mut tensor = Vec::new();
    field_int(1, 1, &mut tensor);
    field_bytes(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    field_bytes(1, &tensor, &mut ty);
    let mut info = Vec::new();
    field_bytes(1, name.as_bytes(), &mut info);
    field_bytes(2, &ty, &mut info);
    info
}

/// A model whose only node is Identity(input) → output: loads, runs, but is no face detector.
fn identity_model(dims: &[Result<u64, &str>]) -> Vec<u8> {
    let mut node = Vec::new();
    field_bytes(1, b"input", &mut node);
    field_bytes(2, b"output", &mut node);
    field_bytes(4, b"Identity", &mut node);
    let mut graph = Vec::new();
    field_bytes(1, &node, &mut graph);
    field_bytes(2, b"identity", &mut graph);
    field_bytes(11, &value_info("input", dims), &mut graph);
    field_bytes(12, &value_info("output", dims), &mut graph);
    let mut opset = Vec::new();
    field_int(2, 11, &mut opset);
    let mut model = Vec::new();
    field_int(1, 6, &mut model);
    field_bytes(8, &opset, &mut model);
    field_bytes(7, &graph, &mut model);
    model
}

#[test]
fn bad_models_stop_extract_before_any_clip_naming_the_file() {
    let s = setup();
    let dir = s.dir.join("bad-models");
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf \xff\xfe\x00\x01 at all").unwrap();
    let dynamic = dir.join("identity-dynamic.onnx");
    std::fs::write(
        &dynamic,
        identity_model(&[Err("n"), Ok(3), Err("h"), Err("w")]),
    )
    .unwrap();
    let fixed = dir.join("identity-640.onnx");
    std::fs::write(&fixed, identity_model(&[Ok(1), Ok(3), Ok(640), Ok(640)])).unwrap();
    let missing = dir.join("missing.onnx");
    let cases: [(&Path, &[&str]); 4] = [
        (&missing, &["cannot read the face model"]),
        (&garbage, &["not a usable ONNX model"]),
        (
            &dynamic,
            &[
                "unexpected outputs",
                "[1, 3, 240, 426]",
                "[1, 4274, 4]",
                "[1, 4274, 10]",
            ],
        ),
        (
            &fixed,
            &["does not take a 1x3x240x426 input", "[1, 3, 640, 640]"],
        ),
    ];
    let library = onnxruntime_library();
    for ((i, (model, expected)), engine) in cases
        .iter()
        .enumerate()
        .flat_map(|c| ["tract", "onnxruntime"].map(|e| (c, e)))
    {
        let out = dir.join(format!("out{i}-{engine}"));
        let output = bin("meld-etl")
            .env("ORT_DYLIB_PATH", &library)
            .args([
                "extract", "--jobs", "2", "--splits", "train", "--limit", "2", "--raw",
            ])
            .arg(&s.raw)
            .arg("--out")
            .arg(&out)
            .arg("--faces")
            .arg(model)
            .args(["--face-engine", engine])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{} ({engine}): extract succeeded",
            model.display()
        );
        assert!(
            stderr.contains(&*model.to_string_lossy()),
            "the error does not name {}:\n{stderr}",
            model.display()
        );
        for e in *expected {
            assert!(
                stderr.contains(e),
                "{} ({engine}): `{e}` not in:\n{stderr}",
                model.display()
            );
        }
        assert!(
            !out.exists(),
            "{}: extract wrote {} before failing",
            model.display(),
            out.display()
        );
    }
    // The hlm12erc profile needs the whole 1200-row mosaic.
    let output = bin("meld-etl")
        .args([
            "extract",
            "--splits",
            "train",
            "--face-profile",
            "hlm12erc",
            "--raw",
        ])
        .arg(&s.raw)
        .arg("--out")
        .arg(dir.join("out-hlm"))
        .arg("--faces")
        .arg(&fixed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("1x3x1200x426"),
        "{stderr}"
    );

    // `--face-engine onnxruntime` without the library: an error naming where it looked and `make models`,
    // before any clip; `auto` falls back to tract and says so.
    let nowhere = dir.join("no-such-lib/libonnxruntime.so");
    let run = |engine: &str, out: &Path| {
        bin("meld-etl")
            .env("ORT_DYLIB_PATH", &nowhere)
            .args([
                "extract", "--jobs", "2", "--splits", "train", "--limit", "2", "--raw",
            ])
            .arg(&s.raw)
            .arg("--out")
            .arg(out)
            .args(["--faces", &model(), "--face-engine", engine])
            .output()
            .unwrap()
    };
    let out = dir.join("out-nolib");
    let output = run("onnxruntime", &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&*nowhere.to_string_lossy()) && stderr.contains("make models"),
        "{stderr}"
    );
    assert!(!out.exists());
    let out = dir.join("out-auto-nolib");
    let output = run("auto", &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("face engine: tract"), "{stderr}");
    assert_eq!(manifest(&out)["faces"]["engine"], "tract");
}

/// The face lines `meld-etl faces` prints: (tile, score, box), in the order printed.
fn printed_faces(stdout: &str) -> Vec<(usize, f64, [f64; 4])> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("tile  score"))
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| -> f64 {
                v[i].parse()
                    .unwrap_or_else(|e| panic!("`{l}` field {i}: {e}"))
            };
            (
                v[0].parse().unwrap(),
                num(1),
                [num(2), num(3), num(4), num(5)],
            )
        })
        .collect()
}

/// The fixtures' (numpy + onnxruntime) detections on `mosaic_face.png` for `profile`, as (tile, score, box):
/// default boxes in float, hlm12erc boxes as the integers the reference uses (its tile: the one holding the box's
/// vertical centre).
fn fixture_faces(profile: &str) -> Vec<(usize, f64, [f64; 4])> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../etl/tests/fixtures/retinaface/mosaic_face.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let key = if profile == "default" {
        "box"
    } else {
        "box_int"
    };
    doc[profile]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b: Vec<f64> = d[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let tile = d["tile"].as_u64().map_or_else(
                || (((b[1] + b[3]) / 2.0) / TILE_H as f64).floor() as usize,
                |t| t as usize,
            );
            (tile, d["score"].as_f64().unwrap(), [b[0], b[1], b[2], b[3]])
        })
        .collect()
}

/// Printed faces against the fixture's: the same number, in the same order, same tiles; boxes within `box_tol` px
/// and scores within 1e-4 (printed to 0.1 px and 4 decimals: half a printed unit, plus float rounding).
fn assert_printed_like_fixture(
    got: &[(usize, f64, [f64; 4])],
    expected: &[(usize, f64, [f64; 4])],
    box_tol: f64,
    what: &str,
) {
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: printed {got:?}, the fixture has {expected:?}"
    );
    for ((tile, score, b), (e_tile, e_score, e_b)) in got.iter().zip(expected) {
        assert_eq!(tile, e_tile, "{what}: {got:?} vs {expected:?}");
        assert!(
            (score - e_score).abs() <= 1e-4,
            "{what} tile {tile}: score {score} vs the fixture's {e_score}"
        );
        for (g, e) in b.iter().zip(e_b) {
            assert!(
                (g - e).abs() <= box_tol,
                "{what} tile {tile}: box {b:?} vs the fixture's {e_b:?} (tolerance {box_tol} px)"
            );
        }
    }
}

#[test]
fn the_faces_command_runs_the_detector_on_one_image() {
    let s = setup();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../etl/tests/fixtures/retinaface/mosaic_face.png");
    let out = s.dir.join("checked.faces.jpg");
    let output = run_ok(
        bin("meld-etl")
            .args(["faces", "--tiles", "5", "--model", &model(), "--image"])
            .arg(&fixture)
            .arg("--out")
            .arg(&out),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("4 face(s)"), "{stdout}");
    assert!(stdout.contains("engine onnxruntime"), "{stdout}");
    // One line per face: tile, score, box; the fixture's faces are in tiles 0, 1, 2 and 4.
    let tiles: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|s| s.starts_with("0.99"))
        })
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(tiles, ["0", "1", "2", "4"], "{stdout}");
    // Every printed box is one of the fixture's (numpy + onnxruntime), and there are as many.
    assert_printed_like_fixture(
        &printed_faces(&stdout),
        &fixture_faces("default"),
        0.06,
        "faces --profile default",
    );
    let pixels = image_rgb24(&out);
    assert_eq!(pixels.len(), TILE_W * TILE_H * TILES * 3);
    assert!(
        pixels.iter().any(|v| *v > 50)
            && pixels.iter().filter(|v| **v <= 2).count() > pixels.len() * 9 / 10
    );

    // The reference's profile: the fixture's integer boxes, exactly, in its (score) order.
    let output = run_ok(
        bin("meld-etl")
            .args([
                "faces",
                "--tiles",
                "5",
                "--profile",
                "hlm12erc",
                "--model",
                &model(),
            ])
            .arg("--image")
            .arg(&fixture)
            .arg("--out")
            .arg(s.dir.join("checked-hlm12erc.faces.png")),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_printed_like_fixture(
        &printed_faces(&stdout),
        &fixture_faces("hlm12erc"),
        0.0,
        "faces --profile hlm12erc",
    );

    let output = bin("meld-etl")
        .args(["faces", "--model"])
        .arg(s.dir.join("nowhere.onnx"))
        .arg("--image")
        .arg(&fixture)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere.onnx"));
}
