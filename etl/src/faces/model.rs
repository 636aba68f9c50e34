//! A RetinaFace ONNX export behind one of two engines: choosing and loading the engine, checking the model, the
//! input tensor, and the network's three outputs as [`RawOutputs`], whichever engine runs it.
//!
//! Exports of biubug6's RetinaFace (MobileNet-0.25 or ResNet-50 backbone, the same heads) take one input
//! `[batch, 3, H, W]`: the image in BGR order minus (104, 117, 123), not scaled. Their three outputs are told apart
//! by shape ([`identify_outputs`]) on a probe run on a flat image at load time, which also tells whether the model
//! ends with a softmax; logits are softmaxed here.
//!
//! Engines ([`FaceEngine`], chosen in [`open_net`] and nowhere else): tract ([`super::tract_net`], pure Rust,
//! always there) or onnxruntime ([`super::ort_net`], `libonnxruntime.so` loaded at run time, ~2.7x faster), both
//! behind [`FaceNet`]. Both get the same input tensor, the same input-shape checks, output identification and
//! errors; profiles, decoding and NMS never see which ran. [`RetinaFace::load`] checks the model on the shape a
//! run needs, so a bad file, unexpected outputs or a size the model rejects stop a run before any clip is
//! processed.

use std::path::{Path, PathBuf};

use super::decode::{face_probability, RawOutputs};
use super::net::{identify_outputs, FaceEngine, FaceNet, OutputLayout};
use super::ort_net::{find_library, OrtNet, LIBRARY_ENV};
use super::priors::prior_count;
use super::tract_net::TractNet;
use super::FaceError;

/// Per-channel means subtracted from the BGR pixels (biubug6's `cfg`, what the reference used).
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];

/// A loaded RetinaFace model.
pub struct RetinaFace {
    path: PathBuf,
    sha256: String,
    outputs: OutputLayout,
    net: Box<dyn FaceNet>,
}

impl std::fmt::Debug for RetinaFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetinaFace")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("engine", &self.engine())
            .finish_non_exhaustive()
    }
}

/// Hex digest of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RetinaFace {
    /// Loads the model at `path` with `engine` and checks it on a `batch x 3 x height x width` input: it must
    /// load, accept that shape and give RetinaFace's three outputs for it.
    pub fn load(
        path: &Path,
        engine: FaceEngine,
        batch: usize,
        height: u32,
        width: u32,
    ) -> Result<Self, FaceError> {
        let bytes = std::fs::read(path).map_err(|e| FaceError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let sha256 = sha256_hex(&bytes);
        let net = open_net(path, bytes, engine)?;
        let shape = [batch, 3, height as usize, width as usize];
        net.prepare(shape)?;
        let probe = vec![0u8; height as usize * width as usize * 3];
        let images: Vec<&[u8]> = (0..batch).map(|_| &probe[..]).collect();
        let input = input_tensor(&images, height, width).map_err(|message| FaceError::Run {
            path: path.to_path_buf(),
            height,
            width,
            message,
        })?;
        let values = net.run(&input, shape)?;
        let outputs = identify_outputs(path, &values, batch, height, width)?;
        let model = RetinaFace {
            path: path.to_path_buf(),
            sha256,
            outputs,
            net,
        };
        tracing::info!("face engine: {}", model.engine_description());
        Ok(model)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The engine running the network: `tract` or `onnxruntime`.
    pub fn engine(&self) -> FaceEngine {
        self.net.engine()
    }

    /// The engine with its version and library, for logs and the manifest.
    pub fn engine_description(&self) -> String {
        self.net.description()
    }

    /// The onnxruntime library file, when that engine runs.
    pub fn library(&self) -> Option<&Path> {
        self.net.library()
    }

    /// Whether the model's class scores are probabilities (it ends with a softmax) or logits.
    pub fn outputs_softmaxed(&self) -> bool {
        self.outputs.softmaxed
    }

    /// Makes sure the model can run `batch` images of `height x width` (tract builds its plan for it here).
    pub fn prepare(&self, batch: usize, height: u32, width: u32) -> Result<(), FaceError> {
        self.net
            .prepare([batch, 3, height as usize, width as usize])
    }

    /// Runs the network on `images` (each packed RGB24 of `width x height`) as one batch.
    pub fn run(
        &self,
        images: &[&[u8]],
        height: u32,
        width: u32,
    ) -> Result<Vec<RawOutputs>, FaceError> {
        let input = input_tensor(images, height, width)
            .map_err(|message| self.run_error(height, width, message))?;
        let shape = [images.len(), 3, height as usize, width as usize];
        let values = self.net.run(&input, shape)?;
        let n = prior_count(height, width);
        let o = self.outputs;
        let slice = |k: usize| -> Result<&[f32], FaceError> {
            values
                .get(k)
                .and_then(|v| v.values.as_deref())
                .ok_or_else(|| self.run_error(height, width, format!("output {k} is not float32")))
        };
        let (loc, conf, landmarks) = (slice(o.loc)?, slice(o.conf)?, slice(o.landmarks)?);
        let expected = images.len() * n;
        if loc.len() != expected * 4
            || conf.len() != expected * 2
            || landmarks.len() != expected * 10
        {
            return Err(self.run_error(
                height,
                width,
                format!(
                    "outputs of {}/{}/{} values, expected {expected} priors x 4/2/10",
                    loc.len(),
                    conf.len(),
                    landmarks.len()
                ),
            ));
        }
        Ok((0..images.len())
            .map(|b| {
                let rows = b * n..(b + 1) * n;
                RawOutputs {
                    loc: rows
                        .clone()
                        .map(|i| [loc[4 * i], loc[4 * i + 1], loc[4 * i + 2], loc[4 * i + 3]])
                        .collect(),
                    scores: rows
                        .clone()
                        .map(|i| {
                            let pair = [conf[2 * i], conf[2 * i + 1]];
                            if o.softmaxed {
                                pair[1]
                            } else {
                                face_probability(pair)
                            }
                        })
                        .collect(),
                    landmarks: rows
                        .map(|i| {
                            let mut l = [0f32; 10];
                            l.copy_from_slice(&landmarks[10 * i..10 * i + 10]);
                            l
                        })
                        .collect(),
                }
            })
            .collect())
    }

    fn run_error(&self, height: u32, width: u32, message: String) -> FaceError {
        FaceError::Run {
            path: self.path.clone(),
            height,
            width,
            message,
        }
    }
}

/// The input tensor: BGR, minus the means, NCHW.
fn input_tensor(images: &[&[u8]], height: u32, width: u32) -> Result<Vec<f32>, String> {
    let (h, w) = (height as usize, width as usize);
    let plane = h * w;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (b, image) in images.iter().enumerate() {
        if image.len() != plane * 3 {
            return Err(format!(
                "image {b} has {} bytes, expected {width}x{height}x3 = {}",
                image.len(),
                plane * 3
            ));
        }
        let base = b * 3 * plane;
        for (p, rgb) in image.chunks_exact(3).enumerate() {
            data[base + p] = rgb[2] as f32 - MEAN_BGR[0];
            data[base + plane + p] = rgb[1] as f32 - MEAN_BGR[1];
            data[base + 2 * plane + p] = rgb[0] as f32 - MEAN_BGR[2];
        }
    }
    Ok(data)
}

/// The net for the model at `path` (its ONNX `bytes`) under `engine`: the one place an engine is chosen. `auto`
/// takes onnxruntime when its library is found and loads, tract otherwise.
pub fn open_net(
    path: &Path,
    bytes: Vec<u8>,
    engine: FaceEngine,
) -> Result<Box<dyn FaceNet>, FaceError> {
    let net: Box<dyn FaceNet> = match (engine, find_library(path)) {
        (FaceEngine::Tract, _) => Box::new(TractNet::load(path, &bytes)?),
        (FaceEngine::Onnxruntime, Ok(library)) => Box::new(OrtNet::load(path, bytes, &library)?),
        (FaceEngine::Onnxruntime, Err(tried)) => {
            return Err(FaceError::NoLibrary {
                tried: join_paths(&tried),
            })
        }
        (FaceEngine::Auto, Ok(library)) => match OrtNet::load(path, bytes.clone(), &library) {
            Ok(net) => Box::new(net),
            Err(e @ FaceError::Library { .. }) => {
                tracing::warn!("face engine: {e}; using tract instead");
                Box::new(TractNet::load(path, &bytes)?)
            }
            Err(e) => return Err(e),
        },
        (FaceEngine::Auto, Err(tried)) => {
            tracing::info!(
                "face engine: tract (no onnxruntime library at {}; `make models` fetches one)",
                join_paths(&tried)
            );
            Box::new(TractNet::load(path, &bytes)?)
        }
    };
    Ok(net)
}

fn join_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    if std::env::var_os(LIBRARY_ENV).is_some_and(|v| !v.is_empty()) {
        format!("{} (from {LIBRARY_ENV})", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
