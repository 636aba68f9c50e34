//! The face stage against the committed RetinaFace fixtures (`tests/fixtures/retinaface/`, made with numpy and
//! onnxruntime by `make_fixtures.py`; its README documents every file): priors, decoding, both profiles' NMS and
//! masks from fixed raw outputs, then the real MobileNet-0.25 model through both engines (tract and onnxruntime,
//! the library `make models` puts in models/onnxruntime/) against onnxruntime's outputs.

use std::path::{Path, PathBuf};

use meld_etl::faces::decode::{decode_box, decode_landmarks, face_probability, RawOutputs};
use meld_etl::faces::profile::{detect_default, detect_hlm12erc, detect_hlm12erc_after_nms};
use meld_etl::faces::{
    face_only, faces_from_outputs, priors, Face, FaceDetector, FaceEngine, FaceError, FaceProfile,
    RetinaFace,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/retinaface")
}

fn json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn arr<const N: usize>(v: &Value) -> [f32; N] {
    f32s(v).try_into().expect("length")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// The fixtures' sparse raw outputs made dense: loc 0, conf (1, 0), landmarks 0 at the priors left out.
fn densify(raw: &Value) -> RawOutputs {
    let n = raw["num_priors"].as_u64().unwrap() as usize;
    let mut out = RawOutputs {
        loc: vec![[0.0; 4]; n],
        scores: vec![0.0; n],
        landmarks: vec![[0.0; 10]; n],
    };
    let index = usizes(&raw["index"]);
    for (k, &i) in index.iter().enumerate() {
        out.loc[i] = arr(&raw["loc"][k]);
        out.scores[i] = arr::<2>(&raw["conf"][k])[1];
        out.landmarks[i] = arr(&raw["landmarks"][k]);
    }
    out
}

/// The same outputs as a model without the final softmax would give them: logits ln(conf), softmaxed here.
fn through_logits(raw: &Value) -> RawOutputs {
    let mut out = densify(raw);
    let index = usizes(&raw["index"]);
    let mut at = std::collections::HashMap::new();
    for (k, &i) in index.iter().enumerate() {
        at.insert(i, arr::<2>(&raw["conf"][k]));
    }
    for i in 0..out.len() {
        let conf = at.get(&i).copied().unwrap_or([1.0, 0.0]);
        out.scores[i] = face_probability([conf[0].ln(), conf[1].ln()]);
    }
    out
}

fn assert_close(got: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= tol,
            "{what}[{i}]: {g} vs {e} (tolerance {tol})\n got {got:?}\n expected {expected:?}"
        );
    }
}

fn rgb(name: &str) -> image::RgbImage {
    let path = fixtures().join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn model_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/retinaface-mnet025.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run `make models` (scripts/fetch-models.sh) first",
        path.display()
    );
    path
}

/// The engines to check: tract, and onnxruntime, whose library `make models` fetches (a missing library is a
/// failure, not a skip: CI runs `make models`).
fn engines() -> [FaceEngine; 2] {
    let model = model_path();
    if let Err(tried) = meld_etl::faces::ort_net::find_library(&model) {
        panic!("libonnxruntime.so is missing (tried {tried:?}): run `make models` (scripts/fetch-models.sh) first");
    }
    [FaceEngine::Tract, FaceEngine::Onnxruntime]
}

#[test]
fn priors_match_biubug6_prior_box() {
    let doc = json("priors.json");
    for full in doc["full"].as_array().unwrap() {
        let (h, w) = (
            full["height"].as_u64().unwrap() as u32,
            full["width"].as_u64().unwrap() as u32,
        );
        let got = priors::priors(h, w);
        let expected = full["priors"].as_array().unwrap();
        assert_eq!(got.len(), expected.len(), "{h}x{w}");
        assert_eq!(priors::prior_count(h, w), expected.len());
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            // Computed in f64 and cast, like PyTorch: bit-identical.
            assert_eq!(g, &arr::<4>(e), "{h}x{w} prior {i}");
        }
    }
    for s in doc["summary"].as_array().unwrap() {
        let (h, w) = (
            s["height"].as_u64().unwrap() as u32,
            s["width"].as_u64().unwrap() as u32,
        );
        let got = priors::priors(h, w);
        assert_eq!(
            got.len() as u64,
            s["num_priors"].as_u64().unwrap(),
            "{h}x{w}"
        );
        for level in s["levels"].as_array().unwrap() {
            let first = level["first_index"].as_u64().unwrap() as usize;
            let count = level["count"].as_u64().unwrap() as usize;
            assert_eq!(got[first], arr::<4>(&level["first"]), "{h}x{w} level first");
            assert_eq!(
                got[first + count - 1],
                arr::<4>(&level["last"]),
                "{h}x{w} level last"
            );
        }
        let bytes: Vec<u8> = got.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            meld_etl::faces::model::sha256_hex(&bytes),
            s["sha256_f32_le"].as_str().unwrap(),
            "{h}x{w}: priors differ somewhere"
        );
        let sums: Vec<f64> = (0..4)
            .map(|c| got.iter().map(|p| p[c] as f64).sum())
            .collect();
        for (g, e) in sums.iter().zip(f32s(&s["column_sums"])) {
            assert!(
                (g - e as f64).abs() < 1e-3,
                "{h}x{w} column sums {g} vs {e}"
            );
        }
    }
}

#[test]
fn synthetic_outputs_decode_and_both_profiles_keep_the_documented_boxes() {
    let doc = json("synthetic.json");
    let (h, w) = (
        doc["height"].as_u64().unwrap() as u32,
        doc["width"].as_u64().unwrap() as u32,
    );
    let raw = densify(&doc["raw"]);
    let pri = priors::priors(h, w);
    assert_eq!(raw.len(), pri.len());
    for p in doc["priors"].as_array().unwrap() {
        let i = p["prior"].as_u64().unwrap() as usize;
        let label = p["label"].as_str().unwrap();
        assert_close(
            &decode_box(&pri[i], &raw.loc[i], w, h),
            &f32s(&p["decoded_box"]),
            1e-3,
            label,
        );
        assert_close(
            &decode_landmarks(&pri[i], &raw.landmarks[i], w, h),
            &f32s(&p["decoded_landmarks"]),
            1e-3,
            label,
        );
        assert_eq!(
            raw.scores[i],
            p["score"].as_f64().unwrap() as f32,
            "{label} score"
        );
    }
    let label_of = |prior: usize| {
        doc["priors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["prior"].as_u64() == Some(prior as u64))
            .map(|p| p["label"].as_str().unwrap().to_string())
            .unwrap()
    };
    let labels = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };

    // Default: ≥ 0.5 (F at exactly 0.5 kept), continuous IoU (B kept next to A), E clipped at x = 0.
    let dflt = detect_default(&raw, &pri, w, h);
    let got: Vec<String> = dflt.iter().map(|d| label_of(d.prior)).collect();
    assert_eq!(got, labels(&doc["default"]["labels"]));
    for (d, e) in dflt
        .iter()
        .zip(doc["default"]["detections"].as_array().unwrap())
    {
        assert_close(&d.bbox, &f32s(&e["box"]), 1e-3, "default box");
        assert_close(
            &d.bbox_unclipped,
            &f32s(&e["box_unclipped"]),
            1e-3,
            "default unclipped box",
        );
        assert_close(
            &d.landmarks,
            &f32s(&e["landmarks"]),
            1e-3,
            "default landmarks",
        );
        assert_eq!(d.score, e["score"].as_f64().unwrap() as f32);
    }

    // hlm12erc: > 0.02 (G at exactly 0.02 dropped), top 10, +1 IoU (B dropped), tall C dropped after NMS.
    let after = detect_hlm12erc_after_nms(&raw, &pri, w, h);
    let expected_after = doc["hlm12erc"]["after_nms"].as_array().unwrap();
    let got: Vec<String> = after.iter().map(|(d, _)| label_of(d.prior)).collect();
    assert_eq!(got, labels(&doc["hlm12erc"]["labels_after_nms"]));
    for ((d, tall), e) in after.iter().zip(expected_after) {
        let int: Vec<i64> = e["box_int"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            d.bbox_int.unwrap().to_vec(),
            int,
            "{} box_int",
            label_of(d.prior)
        );
        assert_eq!(*tall, e["dropped_tall"].as_bool().unwrap());
        assert_close(&d.bbox, &f32s(&e["box"]), 1e-3, "hlm12erc box");
    }
    let hlm = detect_hlm12erc(&raw, &pri, w, h);
    let got: Vec<String> = hlm.iter().map(|d| label_of(d.prior)).collect();
    assert_eq!(got, labels(&doc["hlm12erc"]["labels"]));

    // Masks, pixel for pixel (E's wrap-around slice in hlm12erc blacks out nothing).
    let white = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (profile, name) in [
        (FaceProfile::Default, "default"),
        (FaceProfile::Hlm12erc, "hlm12erc"),
    ] {
        let faces = faces_from_outputs(profile, std::slice::from_ref(&raw), w, h, 1);
        let got = face_only(profile, &white, &faces);
        let expected = image::open(fixtures().join(format!("synthetic.mask_{name}.png")))
            .unwrap()
            .to_luma8();
        let mut kept = 0;
        for (x, y, p) in got.enumerate_pixels() {
            assert_eq!(
                p.0[0],
                expected.get_pixel(x, y).0[0],
                "{name} mask at ({x}, {y})"
            );
            kept += usize::from(p.0[0] == 255);
        }
        assert_eq!(
            kept as u64,
            doc[name]["mask_pixels"].as_u64().unwrap(),
            "{name}"
        );
    }
}

/// Faces of the fixtures' expected detections, for comparing with [`Face`]s.
fn expected_default_faces(doc: &Value) -> Vec<(usize, [f32; 4])> {
    doc["default"]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["tile"].as_u64().unwrap() as usize, arr::<4>(&d["box"])))
        .collect()
}

fn check_mosaic_faces(doc: &Value, name: &str, default: &[Face], hlm12erc: &[Face]) {
    let expected = expected_default_faces(doc);
    assert_eq!(
        default.len(),
        expected.len(),
        "{name}: default faces {default:?}"
    );
    for (f, (tile, bbox)) in default.iter().zip(&expected) {
        assert_eq!(f.tile, *tile, "{name}");
        assert_close(&f.bbox, bbox, 1e-3, &format!("{name} default box"));
    }
    let expected: Vec<Vec<f32>> = doc["hlm12erc"]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["box_int"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as f32)
                .collect()
        })
        .collect();
    let got: Vec<Vec<f32>> = hlm12erc.iter().map(|f| f.bbox.to_vec()).collect();
    assert_eq!(got, expected, "{name}: hlm12erc integer boxes");
    // Face-only images, pixel for pixel.
    let mosaic = rgb(doc["image"].as_str().unwrap());
    for (profile, faces) in [
        (FaceProfile::Default, default),
        (FaceProfile::Hlm12erc, hlm12erc),
    ] {
        let got = face_only(profile, &mosaic, faces);
        let expected = rgb(doc[profile.name()]["face_only_image"].as_str().unwrap());
        assert!(
            got == expected,
            "{name}: {} face-only image differs",
            profile.name()
        );
        let kept = got.pixels().filter(|p| p.0 != [0, 0, 0]).count() as u64;
        assert!(kept <= doc[profile.name()]["mask_pixels"].as_u64().unwrap());
    }
}

#[test]
fn real_outputs_give_the_fixture_detections_and_face_only_images() {
    for name in ["mosaic_face", "mosaic_noface"] {
        let doc = json(&format!("{name}.json"));
        let (h, w) = (
            doc["height"].as_u64().unwrap() as u32,
            doc["width"].as_u64().unwrap() as u32,
        );
        let tiles = doc["tiles"].as_u64().unwrap() as usize;
        for convert in [densify, through_logits] {
            let per_tile: Vec<RawOutputs> = (0..tiles)
                .map(|t| convert(&doc["runs"][format!("tile{t}")]["raw"]))
                .collect();
            let default = faces_from_outputs(FaceProfile::Default, &per_tile, w, h, tiles);
            let whole = [convert(&doc["runs"]["whole"]["raw"])];
            let hlm12erc = faces_from_outputs(FaceProfile::Hlm12erc, &whole, w, h, tiles);
            check_mosaic_faces(&doc, name, &default, &hlm12erc);
        }
    }
}

/// The real MobileNet-0.25 model through `engine`, against onnxruntime's outputs on the committed mosaics; returns
/// the largest difference at the stored priors.
fn engine_runs_the_real_model_like_onnxruntime(engine: FaceEngine, tolerance: f32) -> f32 {
    let path = model_path();
    let model = RetinaFace::load(&path, engine, 1, 240, 426).expect("model loads");
    assert_eq!(model.engine(), engine);
    assert!(model.outputs_softmaxed(), "this export ends with a softmax");
    assert_eq!(
        model.sha256(),
        json("model.json")["sha256"].as_str().unwrap(),
        "models/retinaface-mnet025.onnx is not the file the fixtures were made with"
    );
    let mut worst = 0f32;
    for name in ["mosaic_face", "mosaic_noface"] {
        let doc = json(&format!("{name}.json"));
        let mosaic = rgb(doc["image"].as_str().unwrap());
        let (w, h) = mosaic.dimensions();
        let th = doc["tile_height"].as_u64().unwrap() as u32;
        let mut runs: Vec<(String, u32, Vec<u8>)> = (0..5)
            .map(|t| {
                let rows = (t * th * w * 3) as usize..((t + 1) * th * w * 3) as usize;
                (format!("tile{t}"), th, mosaic.as_raw()[rows].to_vec())
            })
            .collect();
        runs.push(("whole".into(), h, mosaic.as_raw().clone()));
        for (run, height, pixels) in &runs {
            let got = &model.run(&[pixels.as_slice()], *height, w).expect("runs")[0];
            let doc = &doc["runs"][run.as_str()];
            let raw = &doc["raw"];
            for (k, &i) in usizes(&raw["index"]).iter().enumerate() {
                for (g, e) in got.loc[i].iter().zip(f32s(&raw["loc"][k])) {
                    worst = worst.max((g - e).abs());
                }
                for (g, e) in got.landmarks[i].iter().zip(f32s(&raw["landmarks"][k])) {
                    worst = worst.max((g - e).abs());
                }
                worst = worst.max((got.scores[i] - f32s(&raw["conf"][k])[1]).abs());
            }
            // Checksums of the full outputs (f64 sums).
            let c = &doc["checksums"];
            let loc_sum: f64 = got.loc.iter().flatten().map(|v| *v as f64).sum();
            let lm_abs: f64 = got.landmarks.iter().flatten().map(|v| v.abs() as f64).sum();
            let face_sum: f64 = got.scores.iter().map(|v| *v as f64).sum();
            for (what, g, e) in [
                ("loc sum", loc_sum, c["loc"]["sum"].as_f64().unwrap()),
                (
                    "landmarks abs sum",
                    lm_abs,
                    c["landmarks"]["abs_sum"].as_f64().unwrap(),
                ),
                (
                    "face score sum",
                    face_sum,
                    c["conf"]["column_sums"][1].as_f64().unwrap(),
                ),
            ] {
                assert!(
                    (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "{name} {run} {what}: {} {g} vs onnxruntime {e}",
                    engine.name()
                );
            }
        }
    }
    assert!(
        worst <= tolerance,
        "{} differs from onnxruntime by {worst} at the stored priors",
        engine.name()
    );
    eprintln!(
        "{} vs the fixtures (onnxruntime): max abs difference {worst:.2e} at the stored priors",
        engine.name()
    );
    worst
}

#[test]
fn tract_runs_the_real_model_like_onnxruntime() {
    engine_runs_the_real_model_like_onnxruntime(FaceEngine::Tract, 1e-4);
}

/// The fixtures were made by onnxruntime, so this engine gives them to float rounding.
#[test]
fn the_onnxruntime_engine_gives_the_fixtures_outputs() {
    engines();
    engine_runs_the_real_model_like_onnxruntime(FaceEngine::Onnxruntime, 1e-5);
}

/// `auto` picks onnxruntime when the library is next to the model, tract when there is none; `onnxruntime`
/// without the library is an error naming where it looked and `make models`.
#[test]
fn engine_selection_finds_the_library_or_says_where_it_looked() {
    let path = model_path();
    engines();
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let auto = RetinaFace::load(&path, FaceEngine::Auto, 1, 240, 426).expect("auto");
        assert_eq!(auto.engine(), FaceEngine::Onnxruntime);
        let library = auto.library().expect("a library").to_string_lossy();
        assert!(
            library.contains("models/onnxruntime/libonnxruntime.so"),
            "{library}"
        );
    }
    // A copy of the model in a folder without onnxruntime/ (and a working directory without models/).
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("rf.onnx");
    std::fs::copy(&path, &lonely).unwrap();
    if std::env::var_os("ORT_DYLIB_PATH").is_none() && !Path::new("models/onnxruntime").exists() {
        let auto = RetinaFace::load(&lonely, FaceEngine::Auto, 1, 240, 426).expect("auto");
        assert_eq!(auto.engine(), FaceEngine::Tract);
        let err = RetinaFace::load(&lonely, FaceEngine::Onnxruntime, 1, 240, 426).unwrap_err();
        assert!(matches!(err, FaceError::NoLibrary { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("make models"), "{text}");
        assert!(
            text.contains(&*dir.path().join("onnxruntime").to_string_lossy()),
            "{text}"
        );
    }
}

/// The smallest IoU of a final box with a pasted face the detector may give on the fixture mosaic, per profile.
/// The fixture's README measured 0.882, 0.882, 0.918, 0.884 (default) and 0.870, 0.833, 0.884, 0.887 (hlm12erc,
/// integer boxes); the detector must give the fixture's own values (checked to 1e-3 below), so these bounds only
/// state the claim with a margin: default ≥ 0.87 (the README's "IoU ≥ 0.87"), hlm12erc ≥ 0.82.
const MIN_IOU_DEFAULT: f64 = 0.87;
const MIN_IOU_HLM12ERC: f64 = 0.82;

/// The whole detector (either engine + post-processing + mask) gives the fixture's results on the committed
/// mosaics, and under both profiles each pasted face is found with the fixture's IoU.
#[test]
fn the_detector_finds_the_pasted_faces_in_both_profiles() {
    let path = model_path();
    for name in ["mosaic_face", "mosaic_noface"] {
        let doc = json(&format!("{name}.json"));
        let mosaic = rgb(doc["image"].as_str().unwrap());
        for engine in engines() {
            let mut found = Vec::new();
            for profile in [FaceProfile::Default, FaceProfile::Hlm12erc] {
                let detector =
                    FaceDetector::new(&path, profile, engine, 5, 240, 426).expect("detector");
                found.push(detector.detect(&mosaic, 5).expect("detect"));
            }
            check_mosaic_faces(&doc, name, &found[0], &found[1]);
            let truths = doc["ground_truth"].as_array().unwrap();
            if name == "mosaic_face" {
                assert_eq!(
                    truths.len(),
                    4,
                    "{name}: the faces pasted in tiles 0, 1, 2, 4"
                );
            }
            for g in truths {
                let tile = g["tile"].as_u64().unwrap() as usize;
                let truth = arr::<4>(&g["box"]);
                for (faces, profile, key, min) in [
                    (&found[0], "default", "best_iou_default", MIN_IOU_DEFAULT),
                    (&found[1], "hlm12erc", "best_iou_hlm12erc", MIN_IOU_HLM12ERC),
                ] {
                    let best = faces
                        .iter()
                        .filter(|f| f.tile == tile)
                        .map(|f| iou(&f.bbox, &truth))
                        .fold(0.0, f64::max);
                    let expected = g[key].as_f64().unwrap();
                    assert!(
                        (best - expected).abs() <= 1e-3,
                        "{name} {} {profile} tile {tile}: best IoU {best:.4}, the fixture's {expected:.4}",
                        engine.name()
                    );
                    assert!(
                        best >= min,
                        "{name} {} {profile} tile {tile}: best IoU {best:.3} < {min}",
                        engine.name()
                    );
                    eprintln!(
                        "{name} {} {profile} tile {tile}: IoU {best:.3} with the pasted face",
                        engine.name()
                    );
                }
            }
        }
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let (a, b) = (a.map(|v| v as f64), b.map(|v| v as f64));
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}
