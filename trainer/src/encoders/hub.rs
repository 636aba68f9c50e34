//! Where the pretrained backbones come from, and turning a checkpoint into trainable variables.
//!
//! A backbone is named either by a local Hugging Face model folder (`config.json`, the weights, plus the tokenizer
//! files for GPT-2), or for ResNet-50 by a weights file, or by a hub id (`gpt2`, `facebook/wav2vec2-base`), with an
//! optional revision after `@` (`facebook/wav2vec2-base@refs/pr/2`, `gpt2@<commit hash>`), looked up in the Hugging
//! Face cache (`$HF_HOME`/`~/.cache/huggingface/hub`, laid out as `hf-hub` and `huggingface_hub` lay it out) and,
//! failing that, downloaded. The weights may be in any format of [`weights`]: `model.safetensors`,
//! `pytorch_model.bin`, their sharded forms, or a `.pth` state dict. Without network (or with `HF_HUB_OFFLINE=1`) a
//! model that is in neither place is an error that says what is needed and prints one `hf download` command that
//! fetches it whatever weight format the repository has.
//!
//! Checkpoint tensors become candle `Var`s in a [`VarMap`] under their checkpoint names (after a per-model
//! renaming that strips prefixes and drops unused heads); the model is then built from a `VarBuilder` over that
//! map, and [`CheckpointVars::finish`] insists that every model weight came from the checkpoint and every kept checkpoint
//! tensor was used, so that nothing is silently left at a random value or silently dropped. [`requested_shapes`]
//! builds a model over no memory at all to learn the shape of every weight it asks for, which `models check`
//! compares with a checkpoint's headers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::encoders::weights::{self, Checkpoint};
use crate::error::{Error, Result};

/// The backbones this module knows how to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backbone {
    Gpt2,
    /// RoBERTa (`roberta-base`, `roberta-large`): a folder with its tokenizer, as GPT-2's.
    Roberta,
    Wav2vec2,
    /// torchvision's ResNet-50: a torchvision state dict in a file (`.safetensors`, or torchvision's own `.pth`) or
    /// a folder (timm's `resnet50.tv_in1k` on the hub is torchvision's ImageNet V1 weights under the same names).
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

    /// The hub ids of the reference's checkpoint: its own, and the name the hub has moved it to since.
    pub fn reference_repos(self) -> &'static [&'static str] {
        match self {
            Backbone::Gpt2 => &["gpt2", "openai-community/gpt2"],
            Backbone::Roberta => &["roberta-base", "FacebookAI/roberta-base"],
            Backbone::Wav2vec2 => &["facebook/wav2vec2-base"],
            Backbone::Resnet50 => &["timm/resnet50.tv_in1k"],
        }
    }

    /// Whether a model folder needs the checkpoint's `config.json` (ResNet-50's widths come from its tensors).
    pub fn needs_config(self) -> bool {
        self != Backbone::Resnet50
    }

    /// Whether a model folder needs a tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`).
    pub fn needs_tokenizer(self) -> bool {
        matches!(self, Backbone::Gpt2 | Backbone::Roberta)
    }

    /// Parameters of the reference's checkpoint as the encoder keeps it: GPT-2 small without its LM head,
    /// RoBERTa-base without its pooler and LM head, wav2vec2-base without its pre-training heads, ResNet-50 without
    /// `fc` (running statistics are buffers).
    pub fn reference_parameters(self) -> u64 {
        match self {
            Backbone::Gpt2 => 124_439_808,
            Backbone::Roberta => 124_055_040,
            Backbone::Wav2vec2 => 94_371_712,
            Backbone::Resnet50 => 23_508_032,
        }
    }

    /// Whether a kept tensor (under the model's name) counts as a parameter, not a buffer.
    pub fn is_parameter(self, name: &str) -> bool {
        !(self == Backbone::Resnet50 && name.contains(".running_"))
    }

    /// The `--include` patterns of a download that fits whatever the repository holds: the config, the tokenizer,
    /// and the weights in either format, single or sharded. A pattern that matches nothing fetches nothing and is no
    /// error, unlike a file name; a repository with both formats gets both (twice the bytes, but no second try).
    pub fn include_patterns(self) -> Vec<&'static str> {
        let mut patterns = Vec::new();
        if self.needs_config() {
            patterns.push("config.json");
        }
        patterns.extend(["model*.safetensors*", "pytorch_model*.bin*"]);
        if self.needs_tokenizer() {
            patterns.extend(["tokenizer.json", "vocab.json", "merges.txt"]);
        }
        patterns
    }

    /// What a model folder holds, for messages.
    pub fn needs(self) -> String {
        let mut parts = Vec::new();
        if self.needs_config() {
            parts.push("config.json");
        }
        parts.push(
            "the weights (model.safetensors, pytorch_model.bin, either sharded with its *.index.json, or a .pth \
             state dict)",
        );
        if self.needs_tokenizer() {
            parts.push("tokenizer.json (or vocab.json + merges.txt)");
        }
        parts.join(", ")
    }

    fn folder_name(self) -> &'static str {
        match self {
            Backbone::Gpt2 => "gpt2",
            Backbone::Roberta => "roberta",
            Backbone::Wav2vec2 => "wav2vec2-base",
            Backbone::Resnet50 => "resnet50",
        }
    }

    /// The checkpoint parameter counts a wrong repository is likely to have, for a guess in the error.
    fn look_alikes(self) -> &'static [(u64, &'static str)] {
        match self {
            Backbone::Gpt2 => &[
                (81_912_576, "distilgpt2"),
                (354_823_168, "gpt2-medium"),
                (774_030_080, "gpt2-large"),
                (1_557_611_200, "gpt2-xl"),
            ],
            Backbone::Roberta => &[
                (81_527_808, "distilroberta-base"),
                (354_310_144, "roberta-large"),
            ],
            Backbone::Wav2vec2 => &[(315_438_720, "a wav2vec2-large")],
            Backbone::Resnet50 => &[(42_500_160, "ResNet-101"), (58_143_808, "ResNet-152")],
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

/// A parameter count in millions with one decimal, as model cards give them (`124.4M`).
pub fn millions(count: u64) -> String {
    format!("{:.1}M", count as f64 / 1e6)
}

/// Whether a checkpoint with `found` parameters can be the reference's `backbone` fetched by `spec`: checked only
/// when `spec` is the reference's own hub id (any revision), where anything but the reference's count means a wrong
/// repository or snapshot; other checkpoints are the user's choice. The error says what was found and guesses
/// which model it is.
pub fn check_reference_parameters(backbone: Backbone, spec: &str, found: u64) -> Result<()> {
    let expected = backbone.reference_parameters();
    let is_reference = !Path::new(spec).exists()
        && HubId::parse(spec)
            .is_ok_and(|id| backbone.reference_repos().contains(&id.repo.as_str()));
    // Counts are compared as model cards round them (0.1M): a checkpoint that differs by a buffer is no other model.
    if !is_reference || found.abs_diff(expected) < 50_000 {
        return Ok(());
    }
    let guess = backbone
        .look_alikes()
        .iter()
        .find(|(count, _)| found.abs_diff(*count) < 50_000)
        .map(|(_, name)| format!(": {name}?"))
        .unwrap_or_else(|| ".".into());
    Err(Error::Other(format!(
        "{backbone} `{spec}` has {} parameters ({found}){guess} The reference's {} has {}: this is another \
         model, or a damaged snapshot in the Hugging Face cache",
        millions(found),
        backbone.default_repo(),
        millions(expected)
    )))
}

/// A hub id with an optional revision: `facebook/wav2vec2-base`, `facebook/wav2vec2-base@refs/pr/2` (a branch,
/// tag or pull-request ref), `gpt2@<commit hash>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: Option<String>,
}

impl HubId {
    /// Splits `repo@revision`; a revision must stay inside the cache's `refs/` (no `..`, not absolute).
    pub fn parse(spec: &str) -> Result<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (spec, None),
        };
        if repo.is_empty() || revision.is_some_and(str::is_empty) {
            return Err(Error::Other(format!(
                "`{spec}` is not a hub id: expected NAME or ORG/NAME, optionally @REVISION"
            )));
        }
        if let Some(rev) = revision {
            if Path::new(rev)
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(Error::Other(format!(
                    "`{spec}`: revision `{rev}` must be a branch, tag, refs/pr/N or a commit hash"
                )));
            }
        }
        Ok(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The revision, `main` when none was given.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// The command that puts `backbone`'s files of the hub model `id` into `dir`: `hf download` (huggingface_hub ≥
/// 0.34; its `huggingface-cli` is gone since 1.0) with one `--include` per pattern (a list after a single
/// `--include` would be read as file names, which must all exist) and no file names, so it works whatever weight
/// format the repository has.
pub fn fetch_command(backbone: Backbone, id: &HubId, dir: &str) -> String {
    let mut command = format!("hf download {}", id.repo);
    if let Some(rev) = &id.revision {
        command += &format!(" --revision {rev}");
    }
    for pattern in backbone.include_patterns() {
        if pattern.contains('*') {
            command += &format!(" --include \"{pattern}\"");
        } else {
            command += &format!(" --include {pattern}");
        }
    }
    command + &format!(" --local-dir {dir}")
}

/// The reference's checkpoint of `backbone` fetched into `dir`.
fn default_fetch(backbone: Backbone, dir: &str) -> String {
    let id = HubId {
        repo: backbone.default_repo().to_string(),
        revision: None,
    };
    fetch_command(backbone, &id, dir)
}

/// What a local folder lacks for `backbone` (GPT-2's tokenizer may be `tokenizer.json` or `vocab.json` +
/// `merges.txt`); an unreadable weights layout (an index naming a missing shard, several `.pth`) is an error.
fn missing_in(dir: &Path, backbone: Backbone) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    if backbone.needs_config() && !dir.join("config.json").is_file() {
        missing.push("config.json");
    }
    if Checkpoint::find(dir)?.is_none() {
        missing.push("the weights");
    }
    if backbone.needs_tokenizer()
        && !dir.join("tokenizer.json").is_file()
        && !(dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
    {
        missing.push("tokenizer.json");
    }
    Ok(missing)
}

fn check_folder(dir: &Path, backbone: Backbone) -> Result<PathBuf> {
    let missing = missing_in(dir, backbone)?;
    if missing.is_empty() {
        return Ok(dir.to_path_buf());
    }
    Err(Error::data(
        dir,
        format!(
            "this {backbone} model folder lacks {} (it needs {}); fetch the model with\n  {}",
            missing.join(", "),
            backbone.needs(),
            default_fetch(backbone, &dir.display().to_string())
        ),
    ))
}

/// The ResNet-50 weights named by `spec`: the weights file itself, or the checkpoint (file or shard index) of the
/// folder or hub model [`resolve`] finds.
pub fn resnet50_weights(spec: &str) -> Result<PathBuf> {
    let found = resolve(Backbone::Resnet50, spec)?;
    Ok(Checkpoint::open(&found)?.path)
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

    /// The snapshot folder of `id` in the cache, if there is one: `models--ORG--NAME/refs/REV` holds the commit of a
    /// branch, tag or `refs/pr/N` (as both `huggingface_hub` and `hf-hub` write it), `snapshots/COMMIT/` the files;
    /// a revision that is itself a commit hash has no ref (`huggingface_hub` writes none) and names its snapshot.
    pub fn snapshot(&self, id: &HubId) -> Option<PathBuf> {
        let repo = hf_hub::Repo::model(id.repo.clone());
        let root = self.cache.path().join(repo.folder_name());
        let revision = id.revision();
        let commit = match std::fs::read_to_string(root.join("refs").join(revision)) {
            // huggingface_hub writes the hash without a newline, hf-hub trims it; either way no whitespace
            Ok(commit) => commit.trim().to_string(),
            Err(_) => revision.to_string(),
        };
        if commit.is_empty() || commit.contains(['/', '\\']) || commit == ".." {
            return None;
        }
        let dir = root.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }
}

/// Finds where `backbone`'s files are: `spec` is a local folder, a hub id (with an optional `@revision`) found in
/// the Hugging Face cache or downloaded into it, or for ResNet-50 a weights file, returned as it is.
pub fn resolve(backbone: Backbone, spec: &str) -> Result<PathBuf> {
    resolve_in(&HubEnv::from_env(), backbone, spec)
}

/// [`resolve`] with the cache and the offline switch given rather than read from the environment.
pub fn resolve_in(env: &HubEnv, backbone: Backbone, spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        if backbone != Backbone::Resnet50 {
            return Err(Error::data(
                path,
                format!(
                    "a {backbone} model is a folder holding {}, not one file",
                    backbone.needs()
                ),
            ));
        }
        // A single weights file: its name must say its format (the file is read later, by the loader or the check).
        return Ok(Checkpoint::file(path)?.path);
    }
    if path.is_dir() {
        return check_folder(path, backbone);
    }
    let id = HubId::parse(spec)?;
    // A spec that reads as a local path (starting with . / ~, or under an existing folder) names where the files
    // should go; a hub id has at most one `/` (a revision after `@` may have more).
    let repo_path = Path::new(&id.repo);
    let looks_local = spec.starts_with(['.', '/', '~'])
        || id.repo.matches('/').count() >= 2
        || repo_path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
    if looks_local {
        return Err(Error::Other(format!(
            "{backbone} model folder `{spec}` does not exist (nor is `{spec}` a model in the Hugging Face \
             cache); it needs {}; fetch the reference's with\n  {}",
            backbone.needs(),
            default_fetch(backbone, spec)
        )));
    }
    let cached = env.snapshot(&id);
    if let Some(dir) = &cached {
        if missing_in(dir, backbone)?.is_empty() {
            return Ok(dir.clone());
        }
    }
    let download_error = if env.offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match download(env, backbone, &id) {
            Ok(dir) => return Ok(dir),
            Err(e) => e,
        }
    };
    let where_cached = match &cached {
        Some(dir) => format!(
            "its cached snapshot {} lacks {}",
            dir.display(),
            missing_in(dir, backbone)?.join(", ")
        ),
        None => format!(
            "nor in the Hugging Face cache ({})",
            env.cache.path().display()
        ),
    };
    let dir = format!("models/{}", backbone.folder_name());
    Err(Error::Other(format!(
        "{backbone} model `{spec}` is neither a local folder {where_cached}, and it cannot be downloaded \
         ({download_error}). It needs {}; fetch them with\n  {}\nand name the folder `{dir}` instead of `{spec}`",
        backbone.needs(),
        fetch_command(backbone, &id, &dir)
    )))
}

/// Downloads `backbone`'s files of `id` into the cache: the config and tokenizer, then the weights in the first
/// format of [`weights::PREFERENCE`] the repository has (the shards of an index too). Returns the snapshot folder.
fn download(env: &HubEnv, backbone: Backbone, id: &HubId) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(env.cache.path().clone())
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        id.repo.clone(),
        hf_hub::RepoType::Model,
        id.revision().to_string(),
    ));
    // The listing says which files exist; without it (an API hiccup) each candidate is simply tried.
    let listing: Option<BTreeSet<String>> = repo
        .info()
        .ok()
        .map(|info| info.siblings.into_iter().map(|s| s.rfilename).collect());
    let has = |file: &str| listing.as_ref().is_none_or(|l| l.contains(file));
    let mut paths = Vec::new();
    let mut get = |file: &str| -> std::result::Result<PathBuf, String> {
        let path = repo.get(file).map_err(|e| format!("{file}: {e}"))?;
        paths.push(path.clone());
        Ok(path)
    };
    if backbone.needs_config() {
        get("config.json")?;
    }
    // GPT-2's tokenizer: tokenizer.json, else the vocabulary files it is built from
    if backbone.needs_tokenizer() && !(has("tokenizer.json") && get("tokenizer.json").is_ok()) {
        get("vocab.json")?;
        get("merges.txt")?;
    }
    let mut fetched = false;
    for file in weights::PREFERENCE.iter().filter(|f| has(f)) {
        let Ok(path) = get(file) else {
            continue;
        };
        if file.ends_with(".index.json") {
            for shard in shard_files(&path)? {
                get(&shard)?;
            }
        }
        fetched = true;
        break;
    }
    if !fetched {
        let held = listing
            .map(|l| l.into_iter().collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| "(no listing)".into());
        return Err(format!(
            "`{id}` has none of {} (it holds {held})",
            weights::PREFERENCE.join(", ")
        ));
    }
    same_snapshot(&paths)
        .ok_or_else(|| "downloaded files landed in different snapshots".to_string())
}

/// The shard files an `*.index.json` names.
fn shard_files(index: &Path) -> std::result::Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = value["weight_map"]
        .as_object()
        .ok_or_else(|| format!("{}: no weight_map", index.display()))?;
    Ok(map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// The one snapshot folder holding all of `paths`.
fn same_snapshot(paths: &[PathBuf]) -> Option<PathBuf> {
    let parents: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| p.parent().map(Path::to_path_buf))
        .collect::<Option<_>>()?;
    (parents.len() == 1)
        .then(|| parents.into_iter().next())
        .flatten()
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

/// The shape of every weight a model asks for while `build` constructs it over the given `VarBuilder`, under the
/// names it asks for them by. The builder hands out zero-stride views of one zero, so even GPT-2 small costs no
/// memory: only for constructors that store their weights (every model here), not for ones that compute with them.
pub fn requested_shapes(
    build: impl FnOnce(VarBuilder<'static>) -> Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let shapes = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = ShapeRecorder {
        shapes: shapes.clone(),
    };
    build(VarBuilder::from_backend(
        Box::new(backend),
        DType::F32,
        Device::Cpu,
    ))?;
    let shapes = shapes
        .lock()
        .map_err(|_| Error::Other("shape record poisoned".into()))?
        .clone();
    Ok(shapes)
}

struct ShapeRecorder {
    shapes: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut shapes) = self.shapes.lock() {
            shapes.insert(name.to_string(), s.dims().to_vec());
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("`{name}`: a weight must be requested with its shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
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
