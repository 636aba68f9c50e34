//! `meld-etl faces`: the detector on one image, for people checking a model. Writes the face-only image and
//! prints the boxes, with how long loading and detection took.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Face, FaceDetector, FaceEngine, FaceProfile};

#[derive(Debug, Clone, clap::Args)]
pub struct FacesArgs {
    /// RetinaFace ONNX model (biubug6-style export: input [batch, 3, H, W] BGR minus (104, 117, 123)).
    #[arg(long)]
    pub model: PathBuf,
    /// Image to run on (JPEG or PNG): a mosaic written by `extract` (with --tiles 5) or any photo.
    #[arg(long)]
    pub image: PathBuf,
    /// Where to write the face-only image (JPEG or PNG, by extension).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = FaceProfile::Default)]
    pub profile: FaceProfile,
    /// What runs the model: `auto` (onnxruntime when its library is found, else tract), `tract`, `onnxruntime`.
    #[arg(long, value_enum, default_value_t = FaceEngine::Auto)]
    pub face_engine: FaceEngine,
    /// Frames stacked top to bottom in the image (5 for an `extract` mosaic); the default profile runs the
    /// detector on each separately.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub tiles: u32,
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Run the detection this many times and report the mean time of the runs after the first (a speed check).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub repeat: u32,
}

/// Runs the detector on the image; returns the faces found.
pub fn run(args: &FacesArgs) -> Result<Vec<Face>> {
    let image = image::open(&args.image)
        .with_context(|| format!("reading {}", args.image.display()))?
        .to_rgb8();
    let (width, height) = image.dimensions();
    let tiles = args.tiles as usize;
    if height % args.tiles != 0 {
        anyhow::bail!(
            "{}: {width}x{height} cannot be cut into {tiles} frames of equal height",
            args.image.display()
        );
    }
    let started = Instant::now();
    let detector = FaceDetector::new(
        &args.model,
        args.profile,
        args.face_engine,
        tiles,
        height / args.tiles,
        width,
    )?;
    let loaded = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let faces = detector.detect(&image, tiles)?;
    let mut detected = started.elapsed().as_secs_f64();
    if args.repeat > 1 {
        let started = Instant::now();
        for _ in 1..args.repeat {
            detector.detect(&image, tiles)?;
        }
        detected = started.elapsed().as_secs_f64() / (args.repeat - 1) as f64;
    }
    let face_only = detector.face_only(&image, &faces);
    let is_jpeg = args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"));
    if is_jpeg {
        crate::mosaic::write_jpeg(
            face_only.as_raw(),
            width,
            height,
            args.jpeg_quality,
            &args.out,
        )?;
    } else {
        face_only
            .save(&args.out)
            .with_context(|| format!("writing {}", args.out.display()))?;
    }
    let model = detector.model();
    println!(
        "model {} (sha256 {}, scores {}), engine {}, profile {}, loaded and checked in {loaded:.2} s",
        model.path().display(),
        model.sha256(),
        if model.outputs_softmaxed() {
            "softmaxed by the model"
        } else {
            "logits, softmaxed here"
        },
        model.engine_description(),
        args.profile.name()
    );
    println!(
        "{} {width}x{height}, {tiles} frame(s): {} face(s) in {:.1} ms → {}",
        args.image.display(),
        faces.len(),
        detected * 1e3,
        args.out.display()
    );
    println!("tile  score     x1       y1       x2       y2      landmarks (x, y) x 5");
    for f in &faces {
        let lm: Vec<String> = f
            .landmarks
            .chunks(2)
            .map(|p| format!("({:.1}, {:.1})", p[0], p[1]))
            .collect();
        println!(
            "{:<4}  {:.4}  {:7.1}  {:7.1}  {:7.1}  {:7.1}  {}",
            f.tile,
            f.score,
            f.bbox[0],
            f.bbox[1],
            f.bbox[2],
            f.bbox[3],
            lm.join(" ")
        );
    }
    Ok(faces)
}
