//! The onnxruntime engine ([`FaceNet`]): the same RetinaFace graph run by `libonnxruntime.so`, loaded at run time
//! through the `ort` crate (`load-dynamic`, nothing is linked or downloaded at build time). About 2.7x faster than
//! tract on MobileNet-0.25 at 240x426 on one thread.
//!
//! Where the library comes from ([`find_library`]): `ORT_DYLIB_PATH` when set, else
//! `onnxruntime/libonnxruntime.so*` in the model file's folder (`models/onnxruntime/`, what `make models`
//! extracts from the PyPI `onnxruntime` wheel), else `models/onnxruntime/` under the working directory. A process
//! loads one library, once (onnxruntime allows one environment per process); later models share it.
//!
//! `Session::run` takes `&mut self`, so a net keeps a pool of sessions: a worker takes one (or builds one when all
//! are busy), runs, and puts it back, so the rayon workers never wait on each other and each session runs on one
//! intra-op thread (the clips are already spread over the cores).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::net::{check_declared_input, FaceEngine, FaceNet, NetOutput};
use super::FaceError;

/// The library file names searched for in a folder, best first (the wheel ships `libonnxruntime.so.1.X.Y`).
const LIBRARY_NAME: &str = "libonnxruntime.so";

/// The environment variable naming the library explicitly (the `ort` crate's own convention).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// The library and the environment of this process, once one has been loaded.
static RUNTIME: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

/// The onnxruntime library for a model at `model`, or every path tried.
pub fn find_library(model: &Path) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(vec![path])
        };
    }
    let mut folders = Vec::new();
    if let Some(parent) = model.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        folders.push(parent.join("onnxruntime"));
    }
    folders.push(PathBuf::from("models/onnxruntime"));
    let mut tried = Vec::new();
    for folder in folders {
        if let Some(found) = library_in(&folder) {
            return Ok(found);
        }
        tried.push(folder.join(format!("{LIBRARY_NAME}*")));
    }
    Err(tried)
}

/// `libonnxruntime.so`, else the highest-sorting `libonnxruntime.so.*`, in `folder`.
fn library_in(folder: &Path) -> Option<PathBuf> {
    let exact = folder.join(LIBRARY_NAME);
    if exact.is_file() {
        return Some(exact);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(folder)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{LIBRARY_NAME}.")))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// The process's onnxruntime environment, loading `library` first if none is loaded yet; returns the library in
/// use (an earlier load wins: one process holds one onnxruntime).
fn runtime(library: &Path) -> Result<(Environment, PathBuf), FaceError> {
    let mut runtime = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((env, path)) = runtime.as_ref() {
        return Ok((env.clone(), path.clone()));
    }
    let absolute = std::path::absolute(library).unwrap_or_else(|_| library.to_path_buf());
    let error = |message: String| FaceError::Library {
        library: absolute.clone(),
        message,
    };
    let env = ort::init_from(&absolute)
        .map_err(|e| error(e.to_string()))?
        .with_name("meld-etl")
        .with_telemetry(false)
        .build()
        .map_err(|e| error(e.to_string()))?;
    *runtime = Some((env.clone(), absolute.clone()));
    Ok((env, absolute))
}

/// A RetinaFace graph loaded into onnxruntime.
pub struct OrtNet {
    path: PathBuf,
    library: PathBuf,
    version: String,
    env: Environment,
    bytes: Vec<u8>,
    /// The declared input dims (None: dynamic).
    declared: Vec<Option<i64>>,
    sessions: Mutex<Vec<Session>>,
}

impl OrtNet {
    /// Loads `library` (if the process has none yet) and the model's ONNX `bytes` (read from `path`), and checks
    /// that it has one float32 input of rank 4.
    pub fn load(path: &Path, bytes: Vec<u8>, library: &Path) -> Result<Self, FaceError> {
        let (env, library) = runtime(library)?;
        // The wheel's build info carries no version; its file name does (`libonnxruntime.so.1.31.1`, behind the
        // `libonnxruntime.so` link).
        let version = std::fs::canonicalize(&library)
            .ok()
            .and_then(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&format!("{LIBRARY_NAME}.")))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "(version not in the file name)".to_string());
        let mut net = OrtNet {
            path: path.to_path_buf(),
            library,
            version,
            env,
            bytes,
            declared: Vec::new(),
            sessions: Mutex::new(Vec::new()),
        };
        let session = net.session()?;
        let load_error = |message: String| FaceError::Load {
            path: path.to_path_buf(),
            message,
        };
        if session.inputs().len() != 1 {
            return Err(load_error(format!(
                "{} inputs; expected one image input [batch, 3, height, width]",
                session.inputs().len()
            )));
        }
        match session.inputs()[0].dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } => net.declared = shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
            other => {
                return Err(load_error(format!(
                    "its input is {other}; expected a float32 tensor [batch, 3, height, width]"
                )))
            }
        }
        net.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        Ok(net)
    }

    /// A new session: one intra-op thread, no spinning, all graph optimisations.
    fn session(&self) -> Result<Session, FaceError> {
        let error = |message: String| FaceError::Load {
            path: self.path.clone(),
            message: format!("onnxruntime ({}): {message}", self.library.display()),
        };
        let text = |e: &dyn std::fmt::Display| error(e.to_string());
        let builder = Session::builder(&self.env).map_err(|e| text(&e))?;
        let builder = builder
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| text(&e))?;
        let builder = builder.with_intra_threads(1).map_err(|e| text(&e))?;
        let builder = builder.with_inter_threads(1).map_err(|e| text(&e))?;
        let builder = builder
            .with_parallel_execution(false)
            .map_err(|e| text(&e))?;
        let mut builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| text(&e))?;
        builder
            .commit_from_memory(&self.bytes)
            .map_err(|e| text(&e))
    }
}

impl FaceNet for OrtNet {
    /// Checks `shape` = [batch, 3, height, width] against the model's declared input.
    fn prepare(&self, shape: [usize; 4]) -> Result<(), FaceError> {
        check_declared_input(&self.path, Some(&self.declared), shape)
    }

    fn run(&self, input: &[f32], shape: [usize; 4]) -> Result<Vec<NetOutput>, FaceError> {
        self.prepare(shape)?;
        let error = |message: String| FaceError::Run {
            path: self.path.clone(),
            height: shape[2] as u32,
            width: shape[3] as u32,
            message,
        };
        let taken = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut session = match taken {
            Some(session) => session,
            None => self.session()?,
        };
        let outputs = (|| {
            let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| e.to_string())?;
            let outputs = session
                .run(ort::inputs![tensor])
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                outputs
                    .iter()
                    .map(|(_, value)| match value.try_extract_tensor::<f32>() {
                        Ok((shape, data)) => NetOutput {
                            shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                            values: Some(data.to_vec()),
                        },
                        Err(_) => NetOutput {
                            shape: value
                                .dtype()
                                .tensor_shape()
                                .map(|s| s.iter().map(|&d| d.max(0) as usize).collect())
                                .unwrap_or_default(),
                            values: None,
                        },
                    })
                    .collect(),
            )
        })();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        outputs.map_err(error)
    }

    fn engine(&self) -> FaceEngine {
        FaceEngine::Onnxruntime
    }

    fn description(&self) -> String {
        format!(
            "onnxruntime {} ({}, 1 thread per session)",
            self.version,
            self.library.display()
        )
    }

    fn library(&self) -> Option<&Path> {
        Some(&self.library)
    }
}
