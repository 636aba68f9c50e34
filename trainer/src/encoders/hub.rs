//! Where the pretrained backbones come from, and turning a checkpoint into trainable variables.
//!
//! A backbone is named either by a local Hugging Face model folder (`config.json` + `model.safetensors`, plus the
//! tokenizer files for GPT-2) or by a hub id (`gpt2`, `facebook/wav2vec2-base`) looked up in the Hugging Face cache
//! (`$HF_HOME`/`~/.cache/huggingface/hub`, through `hf-hub`) and, failing that, downloaded. Without network
//! (or with `HF_HUB_OFFLINE=1`) a model that is in neither place is an error that lists the files needed and the
//! one command that fetches them. Weights only in PyTorch pickles (`pytorch_model.bin`, `*.pth`) are an error that
//! gives the one-line conversion to safetensors: candle does not read pickles, and safetensors loads without
//! running code.
//!
//! Checkpoint tensors become candle `Var`s in a [`VarMap`] under their checkpoint names (after a per-model
//! renaming that strips prefixes and drops unused heads); the model is then built from a `VarBuilder` over that
//! map, and [`CheckpointVars::finish`] insists that every model weight came from the checkpoint and every kept checkpoint
//! tensor was used, so that nothing is silently left at a random value or silently dropped.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// The backbones this module knows how to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backbone {
    Gpt2,
    /// RoBERTa (`roberta-base`, `roberta-large`): a folder with its tokenizer, as GPT-2's.
    Roberta,
    Wav2vec2,
    /// torchvision's ResNet-50: a folder with `model.safetensors` holding a torchvision state dict (timm's
    /// `resnet50.tv_in1k` on the hub is torchvision's ImageNet V1 weights under the same names), or that file.
    Resnet50,
}

impl Backbone {
    /// The hub id the reference uses.
    pub fn default_repo(self) -> &'static str {
        match self {
            Backbone::Gpt2 => "gpt2",
            Backbone::Roberta => "roberta-base",
            Backbone::Wav2vec2 => "facebook/wav2vec2-base",
            Backbone::Resnet50 => "timm/resnet50.tv_in1k",
        }
    }

    /// Files a download must fetch (the tokenizer as `tokenizer.json` for GPT-2).
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Backbone::Gpt2 | Backbone::Roberta => {
                &["config.json", "model.safetensors", "tokenizer.json"]
            }
            Backbone::Wav2vec2 => &["config.json", "model.safetensors"],
            Backbone::Resnet50 => &["model.safetensors"],
        }
    }

    fn folder_name(self) -> &'static str {
        match self {
            Backbone::Gpt2 => "gpt2",
            Backbone::Roberta => "roberta",
            Backbone::Wav2vec2 => "wav2vec2-base",
            Backbone::Resnet50 => "resnet50",
        }
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backbone::Gpt2 => "GPT-2",
            Backbone::Roberta => "RoBERTa",
            Backbone::Wav2vec2 => "wav2vec2",
            Backbone::Resnet50 => "ResNet-50",
        })
    }
}

/// The command that puts `files` of `repo` into `dir`.
pub fn fetch_command(repo: &str, files: &[&str], dir: &str) -> String {
    format!(
        "huggingface-cli download {repo} {} --local-dir {dir}",
        files.join(" ")
    )
}

/// The one-line conversion of a PyTorch state dict to safetensors.
pub fn conversion_command(pickle: &Path) -> String {
    let out = pickle.with_file_name("model.safetensors");
    format!(
        "python3 -c \"import torch, safetensors.torch as st; sd = torch.load('{}', map_location='cpu'); \
         st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{}')\"",
        pickle.display(),
        out.display()
    )
}

/// Files a local folder lacks for `backbone` (GPT-2's and RoBERTa's tokenizer may be `tokenizer.json` or
/// `vocab.json` + `merges.txt`).
fn missing_in(dir: &Path, backbone: Backbone) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = ["config.json", "model.safetensors"]
        .into_iter()
        .filter(|f| backbone != Backbone::Resnet50 || *f == "model.safetensors")
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if matches!(backbone, Backbone::Gpt2 | Backbone::Roberta)
        && !dir.join("tokenizer.json").is_file()
        && !(dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
    {
        missing.push("tokenizer.json");
    }
    missing
}

/// A PyTorch pickle in `dir`, if its weights are only there.
fn pickle_in(dir: &Path) -> Option<PathBuf> {
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Some(bin);
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension()
                .is_some_and(|e| e == "pth" || e == "pt" || e == "bin")
        })
}

fn check_folder(dir: &Path, backbone: Backbone) -> Result<PathBuf> {
    let missing = missing_in(dir, backbone);
    if missing.is_empty() {
        return Ok(dir.to_path_buf());
    }
    if missing.contains(&"model.safetensors") {
        if let Some(pickle) = pickle_in(dir) {
            return Err(Error::data(
                dir,
                format!(
                    "the {backbone} weights are only in the PyTorch pickle {}; candle reads safetensors. Convert \
                     once (needs `pip install torch safetensors`; config.json stays as it is):\n  {}",
                    pickle.display(),
                    conversion_command(&pickle)
                ),
            ));
        }
    }
    Err(Error::data(
        dir,
        format!(
            "this {backbone} model folder lacks {}; fetch the model with\n  {}",
            missing.join(", "),
            fetch_command(
                backbone.default_repo(),
                backbone.files(),
                &dir.display().to_string()
            )
        ),
    ))
}

/// The safetensors file of ResNet-50 weights named by `spec`: the file itself, or `model.safetensors` of the
/// folder or hub model [`resolve`] finds.
pub fn resnet50_weights(spec: &str) -> Result<PathBuf> {
    let found = resolve(Backbone::Resnet50, spec)?;
    Ok(if found.is_file() {
        found
    } else {
        found.join("model.safetensors")
    })
}

/// Where hub ids are looked up: the Hugging Face cache, and whether downloads are allowed.
pub struct HubEnv {
    pub cache: hf_hub::Cache,
    pub offline: bool,
}

impl HubEnv {
    /// A cache at `hub_dir` (the `hub` folder of an `HF_HOME`).
    pub fn new(hub_dir: PathBuf, offline: bool) -> Self {
        HubEnv {
            cache: hf_hub::Cache::new(hub_dir),
            offline,
        }
    }

    /// The process's settings: `$HF_HOME` (else `~/.cache/huggingface`) and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        HubEnv {
            cache: hf_hub::Cache::from_env(),
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        }
    }
}

/// Finds the folder holding `backbone`'s files: `spec` is a local folder, or a hub id found in the Hugging Face
/// cache or downloaded into it. For ResNet-50, `spec` may also be a `.safetensors` file, returned as it is.
pub fn resolve(backbone: Backbone, spec: &str) -> Result<PathBuf> {
    resolve_in(&HubEnv::from_env(), backbone, spec)
}

/// [`resolve`] with the cache and the offline switch given rather than read from the environment.
pub fn resolve_in(env: &HubEnv, backbone: Backbone, spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if backbone == Backbone::Resnet50 && path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(path.to_path_buf()),
            _ => Err(Error::data(
                path,
                format!(
                    "the ResNet-50 weights must be safetensors; convert this PyTorch file once (needs \
                     `pip install torch safetensors`):\n  {}",
                    conversion_command(path)
                ),
            )),
        };
    }
    if path.is_dir() {
        return check_folder(path, backbone);
    }
    let files = backbone.files();
    let cache = &env.cache;
    let cached: Vec<Option<PathBuf>> = {
        let repo = cache.model(spec.to_string());
        files.iter().map(|f| repo.get(f)).collect()
    };
    if let Some(dir) = same_snapshot(&cached) {
        return Ok(dir);
    }
    // A spec that reads as a local path (under an existing folder, or starting with . / ~) names where the
    // files should go; otherwise it is a hub id and the files go under models/.
    // (A hub id has at most one `/`.)
    let looks_local = spec.starts_with(['.', '/', '~'])
        || spec.matches('/').count() >= 2
        || path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
    if looks_local {
        return Err(Error::Other(format!(
            "{backbone} model folder `{spec}` does not exist (nor is `{spec}` a model in the Hugging Face \
             cache); it needs {}; fetch them with\n  {}",
            files.join(", "),
            fetch_command(backbone.default_repo(), files, spec)
        )));
    }
    let download_error = if env.offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match download(cache, spec, files) {
            Ok(dir) => return Ok(dir),
            Err(e) => e,
        }
    };
    let dir = format!("models/{}", backbone.folder_name());
    let rename = if dir == spec {
        String::new()
    } else {
        format!("\nand name the folder `{dir}` instead of `{spec}`")
    };
    Err(Error::Other(format!(
        "{backbone} model `{spec}` is neither a local folder nor in the Hugging Face cache ({}), and it cannot \
         be downloaded ({download_error}). It needs {}; fetch them with\n  {}{rename}",
        cache.path().display(),
        files.join(", "),
        fetch_command(spec, files, &dir)
    )))
}

/// The one snapshot folder holding all of `paths`, when every file is cached there.
fn same_snapshot(paths: &[Option<PathBuf>]) -> Option<PathBuf> {
    let parents: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| p.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf))
        .collect::<Option<_>>()?;
    (parents.len() == 1)
        .then(|| parents.into_iter().next())
        .flatten()
}

fn download(
    cache: &hf_hub::Cache,
    repo: &str,
    files: &[&str],
) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache.path().clone())
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo_api = api.model(repo.to_string());
    let mut paths = Vec::new();
    for file in files {
        match repo_api.get(file) {
            Ok(p) => paths.push(Some(p)),
            Err(e) => {
                if *file == "model.safetensors" && repo_api.get("pytorch_model.bin").is_ok() {
                    return Err(format!(
                        "`{repo}` has no model.safetensors, only pytorch_model.bin; download it with \
                         `{}` and convert it with `{}`",
                        fetch_command(repo, &["config.json", "pytorch_model.bin"], "DIR"),
                        conversion_command(Path::new("DIR/pytorch_model.bin"))
                    ));
                }
                return Err(format!("{file}: {e}"));
            }
        }
    }
    same_snapshot(&paths)
        .ok_or_else(|| "downloaded files landed in different snapshots".to_string())
}

/// Every tensor of a safetensors file as f32 on `device`, under `rename(name)`; names mapped to `None` are
/// skipped (heads the encoder does not use, mask buffers).
pub fn read_safetensors(
    path: &Path,
    device: &Device,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Tensor>> {
    let raw = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::data(path, format!("cannot read safetensors: {e}")))?;
    let mut out = HashMap::new();
    for (name, tensor) in raw {
        if let Some(new) = rename(&name) {
            let tensor = tensor.to_dtype(DType::F32)?;
            if out.insert(new.clone(), tensor).is_some() {
                return Err(Error::data(
                    path,
                    format!("tensor `{new}` appears twice (with and without a prefix)"),
                ));
            }
        }
    }
    Ok(out)
}

/// A checkpoint's tensors as trainable variables, recording which names the model asks for so that
/// [`CheckpointVars::finish`] can refuse weights the checkpoint lacks (a `VarBuilder` over a `VarMap` would quietly
/// create them at random) and checkpoint tensors no layer reads.
pub struct CheckpointVars {
    path: PathBuf,
    vars: VarMap,
    loaded: BTreeSet<String>,
    requested: Arc<Mutex<BTreeSet<String>>>,
}

impl CheckpointVars {
    /// `tensors` named as the model names its weights; `path` is only for messages.
    pub fn new(path: &Path, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let vars = VarMap::new();
        let mut loaded = BTreeSet::new();
        {
            let mut data = vars
                .data()
                .lock()
                .map_err(|_| Error::Other("variable map poisoned".into()))?;
            for (name, tensor) in tensors {
                data.insert(name.clone(), Var::from_tensor(&tensor)?);
                loaded.insert(name);
            }
        }
        Ok(CheckpointVars {
            path: path.to_path_buf(),
            vars,
            loaded,
            requested: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }

    /// A builder whose `get`s return the checkpoint's variables (shapes checked).
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        let backend = Recorder {
            vars: self.vars.clone(),
            requested: self.requested.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
    }

    /// Checks the model took every checkpoint tensor and found every weight it asked for, except names under
    /// `new_prefixes` (layers the encoder adds on top of the checkpoint, initialised at random).
    pub fn finish(self, new_prefixes: &[&str]) -> Result<VarMap> {
        let requested = self
            .requested
            .lock()
            .map_err(|_| Error::Other("variable record poisoned".into()))?;
        if let Some(missing) = requested
            .iter()
            .find(|n| !self.loaded.contains(*n) && !new_prefixes.iter().any(|p| n.starts_with(p)))
        {
            return Err(Error::data(
                &self.path,
                format!("tensor `{missing}` missing from the checkpoint"),
            ));
        }
        if let Some(unused) = self.loaded.difference(&requested).next() {
            return Err(Error::data(
                &self.path,
                format!("tensor `{unused}` of the checkpoint is not part of this model"),
            ));
        }
        drop(requested);
        Ok(self.vars)
    }
}

struct Recorder {
    vars: VarMap,
    requested: Arc<Mutex<BTreeSet<String>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut r) = self.requested.lock() {
            r.insert(name.to_string());
        }
        self.vars.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("`{name}`: a checkpoint variable must be requested with its shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// N(0, std²) values from a seeded generator (rows appended to pretrained weights).
pub fn normal(shape: &[usize], std: f64, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    // Box-Muller, one value per pair of uniforms.
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}
