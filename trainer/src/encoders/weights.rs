//! A checkpoint's weights in the formats pretrained models are served in, found and read in one place for every
//! backbone.
//!
//! ```text
//! model folder → Checkpoint::find: model.safetensors ≻ model.safetensors.index.json ≻ pytorch_model.bin
//!                                  ≻ pytorch_model.bin.index.json ≻ the folder's one *.pth / *.pt
//! Checkpoint   → inventory(): every tensor's name and shape, from the headers alone (no tensor data read)
//!              → shapes(rename): the tensors a loader keeps, under its names      → compare_shapes (the check)
//!              → read(device, rename): those tensors as f32                      → CheckpointVars / ParamStore
//!              → digests(): the sha256 of every file
//! ```
//!
//! `rename` maps a checkpoint name to the model's name for it, or to `None` for a tensor the model does not use
//! (heads, mask buffers); every backbone's loader passes its own, and reads through [`Checkpoint::read`].
//!
//! PyTorch pickles are the zip archives `torch.save` has written since torch 1.6 (`pytorch_model.bin`, torchvision's
//! `.pth`): a `data.pkl` describing the tensors plus one file per storage. candle's pickle module rebuilds the
//! tensors from the pickle's opcodes without running Python code; this module walks the unpickled object itself and
//! insists that it is a flat state dict of tensors, because candle silently skips whatever else it finds. The
//! legacy pre-1.6 format (a bare pickle stream, not a zip) and pickles of anything but tensors (a whole
//! `nn.Module`, a training checkpoint with an epoch number) are errors naming the file and the one-line conversion
//! to safetensors.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The weight files of a model folder, in the order they are preferred: safetensors load without running code and
/// need no copy, so they win wherever a repository has both.
pub const PREFERENCE: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// How a checkpoint's tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// A `torch.save` zip archive (`pytorch_model.bin`, `.pth`, `.pt`).
    Pickle,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::Pickle => "PyTorch zip pickle",
        })
    }
}

/// A checkpoint on disk: one file, or the shards an `*.index.json` lists.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The weights file, or the index of a sharded checkpoint (what messages name).
    pub path: PathBuf,
    pub format: Format,
    /// The files holding the tensors: `path` itself, or the index's shards in order.
    pub shards: Vec<PathBuf>,
    /// For a sharded checkpoint, the shard the index puts each tensor in.
    weight_map: Option<BTreeMap<String, PathBuf>>,
}

/// Every tensor of a checkpoint, from its headers.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// name → shape of every tensor this module can read.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// name → why not, for tensors of a pickle that candle cannot rebuild (a storage type it lacks, e.g. a bool
    /// mask buffer): an error only if a loader keeps one.
    pub unreadable: BTreeMap<String, String>,
}

impl Inventory {
    /// Number of tensors in the checkpoint.
    pub fn len(&self) -> usize {
        self.shapes.len() + self.unreadable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Checkpoint {
    /// The weights in the model folder `dir`, in the order of [`PREFERENCE`], else the folder's only `*.pth` /
    /// `*.pt` file (torchvision's `resnet50-0676ba61.pth`); `None` when there are none.
    pub fn find(dir: &Path) -> Result<Option<Checkpoint>> {
        if let Some(name) = PREFERENCE.iter().find(|name| dir.join(name).is_file()) {
            return Checkpoint::file(&dir.join(name)).map(Some);
        }
        let mut pickles: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && matches!(extension(p).as_deref(), Some("pth" | "pt")))
            .collect();
        pickles.sort();
        match pickles.as_slice() {
            [] => Ok(None),
            [one] => Checkpoint::file(one).map(Some),
            several => Err(Error::data(
                dir,
                format!(
                    "several PyTorch state dicts ({}) and no model.safetensors / pytorch_model.bin: name the one \
                     to load",
                    names(several)
                ),
            )),
        }
    }

    /// The checkpoint at `path`: a model folder ([`Checkpoint::find`]) or a weights file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        if path.is_dir() {
            return Checkpoint::find(path)?.ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "no weights here: expected one of {} or a *.pth state dict",
                        PREFERENCE.join(", ")
                    ),
                )
            });
        }
        Checkpoint::file(path)
    }

    /// A weights file, its format told by its name: `*.safetensors`, `*.bin` / `*.pth` / `*.pt` (PyTorch), or a
    /// sharded checkpoint's `*.safetensors.index.json` / `*.bin.index.json`.
    pub fn file(path: &Path) -> Result<Checkpoint> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".index.json") {
            let format = match extension(Path::new(stem)).as_deref() {
                Some("safetensors") => Format::Safetensors,
                Some("bin" | "pth" | "pt") => Format::Pickle,
                _ => return Err(Error::data(
                    path,
                    "an index of shards must be named *.safetensors.index.json or *.bin.index.json",
                )),
            };
            return sharded(path, format);
        }
        let format = match extension(path).as_deref() {
            Some("safetensors") => Format::Safetensors,
            Some("bin" | "pth" | "pt") => Format::Pickle,
            _ => {
                return Err(Error::data(
                    path,
                    "not a weights file: expected *.safetensors, a PyTorch *.bin / *.pth / *.pt, or a sharded \
                     checkpoint's *.index.json",
                ))
            }
        };
        if !path.is_file() {
            return Err(Error::data(path, "weights file not found"));
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            format,
            shards: vec![path.to_path_buf()],
            weight_map: None,
        })
    }

    /// What the checkpoint is, in a few words: `safetensors`, `PyTorch zip pickle, 2 shards`.
    pub fn describe(&self) -> String {
        match self.shards.len() {
            1 => self.format.to_string(),
            n => format!("{}, {n} shards", self.format),
        }
    }

    /// Every file of the checkpoint: the index (if sharded) and the shards.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if self.weight_map.is_some() {
            files.push(self.path.clone());
        }
        files.extend(self.shards.iter().cloned());
        files
    }

    /// Every tensor's name and shape, from the safetensors headers or the pickles' `data.pkl` (no tensor data is
    /// read). A sharded checkpoint's shards must hold exactly the tensors its index puts in them.
    pub fn inventory(&self) -> Result<Inventory> {
        let mut all = Inventory::default();
        for shard in &self.shards {
            let part = match self.format {
                Format::Safetensors => Inventory {
                    shapes: safetensors_shapes(shard)?,
                    unreadable: BTreeMap::new(),
                },
                Format::Pickle => {
                    let pickle = PickleFile::open(shard)?;
                    Inventory {
                        shapes: pickle
                            .tensors
                            .iter()
                            .map(|t| (t.name.clone(), t.layout.dims().to_vec()))
                            .collect(),
                        unreadable: pickle.unreadable,
                    }
                }
            };
            let names = part.shapes.keys().chain(part.unreadable.keys());
            for name in names {
                if all.shapes.contains_key(name) || all.unreadable.contains_key(name) {
                    return Err(Error::data(
                        shard,
                        format!(
                            "tensor `{name}` is also in another shard of {}",
                            self.path.display()
                        ),
                    ));
                }
                if let Some(map) = &self.weight_map {
                    if map.get(name) != Some(shard) {
                        return Err(Error::data(
                            shard,
                            format!(
                                "tensor `{name}` is in this shard but {} does not put it here",
                                self.path.display()
                            ),
                        ));
                    }
                }
            }
            all.shapes.extend(part.shapes);
            all.unreadable.extend(part.unreadable);
        }
        if let Some(map) = &self.weight_map {
            if let Some((name, shard)) = map.iter().find(|(name, _)| {
                !all.shapes.contains_key(*name) && !all.unreadable.contains_key(*name)
            }) {
                return Err(Error::data(
                    &self.path,
                    format!(
                        "tensor `{name}` is missing from its shard {}",
                        shard.display()
                    ),
                ));
            }
        }
        Ok(all)
    }

    /// The tensors a loader keeps (`rename` as in [`Checkpoint::read`]) with their shapes, from the headers.
    pub fn shapes(
        &self,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Vec<usize>>> {
        let inventory = self.inventory()?;
        if let Some((name, why)) = inventory
            .unreadable
            .iter()
            .find(|(n, _)| rename(n).is_some())
        {
            return Err(unreadable(&self.path, name, why));
        }
        let mut kept = BTreeMap::new();
        for (name, shape) in inventory.shapes {
            if let Some(new) = rename(&name) {
                if kept.insert(new.clone(), shape).is_some() {
                    return Err(twice(&self.path, &new));
                }
            }
        }
        Ok(kept)
    }

    /// Every tensor as f32 on `device`, under `rename(name)`; names mapped to `None` are neither read nor kept.
    pub fn read(
        &self,
        device: &Device,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<HashMap<String, Tensor>> {
        // The headers first: a sharded checkpoint must match its index, and a kept tensor that cannot be read is
        // named before any data is read.
        self.shapes(&rename)?;
        let mut out = HashMap::new();
        for shard in &self.shards {
            let tensors = match self.format {
                Format::Safetensors => read_safetensors(shard, device, &rename)?,
                Format::Pickle => PickleFile::open(shard)?.read(device, &rename)?,
            };
            for (name, tensor) in tensors {
                if out.insert(name.clone(), tensor).is_some() {
                    return Err(twice(&self.path, &name));
                }
            }
        }
        Ok(out)
    }

    /// The sha256 (hex) of every file of the checkpoint ([`Checkpoint::files`]).
    pub fn digests(&self) -> Result<Vec<(PathBuf, String)>> {
        self.files()
            .into_iter()
            .map(|f| sha256_file(&f).map(|d| (f, d)))
            .collect()
    }
}

/// Shapes a model asks for against the shapes a checkpoint holds (both under the model's names): every problem,
/// missing tensors first, then leftovers, then shapes that differ; empty when they agree. `model` names the
/// architecture in messages ("config.json").
pub fn compare_shapes(
    expected: &BTreeMap<String, Vec<usize>>,
    found: &BTreeMap<String, Vec<usize>>,
    model: &str,
) -> Vec<String> {
    let mut problems: Vec<String> = expected
        .keys()
        .filter(|n| !found.contains_key(*n))
        .map(|n| format!("tensor `{n}` missing from the checkpoint"))
        .collect();
    problems.extend(
        found
            .keys()
            .filter(|n| !expected.contains_key(*n))
            .map(|n| format!("tensor `{n}` of the checkpoint is not part of this model ({model})")),
    );
    problems.extend(expected.iter().filter_map(|(n, want)| {
        let have = found.get(n)?;
        (have != want).then(|| format!("tensor `{n}` has shape {have:?}, {model} wants {want:?}"))
    }));
    problems
}

/// `Ok` when [`compare_shapes`] found nothing, else the first problem (and how many more) as an error naming the
/// checkpoint: a loader refuses a checkpoint before building anything from it.
pub fn ensure_matches(path: &Path, problems: Vec<String>) -> Result<()> {
    match problems.split_first() {
        None => Ok(()),
        Some((first, [])) => Err(Error::data(path, first.clone())),
        Some((first, rest)) => Err(Error::data(
            path,
            format!(
                "{first} (and {} more: `erc-train models check` lists them)",
                rest.len()
            ),
        )),
    }
}

/// Elements of the tensors in `shapes` that `count` selects (a parameter count).
pub fn count_elements(shapes: &BTreeMap<String, Vec<usize>>, count: impl Fn(&str) -> bool) -> u64 {
    shapes
        .iter()
        .filter(|(n, _)| count(n))
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// The one-line conversion of a PyTorch pickle to `model.safetensors` beside it. `trust` loads with
/// `weights_only=False` (needed for a pickled module, and it runs the pickle's code) and takes its `state_dict()`;
/// without it only tensors are unpickled. Tied tensors are copied apart (safetensors refuses shared memory) and
/// anything but tensors is left out.
pub fn conversion_command(pickle: &Path, trust: bool) -> String {
    let out = pickle.with_file_name("model.safetensors");
    let (load, state_dict) = if trust {
        (
            ", weights_only=False",
            " sd = sd.state_dict() if hasattr(sd, 'state_dict') else sd;",
        )
    } else {
        ("", "")
    };
    format!(
        "python3 -c \"import torch, safetensors.torch as st; sd = torch.load('{}', map_location='cpu'{load});\
         {state_dict} st.save_file({{k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, \
         torch.Tensor)}}, '{}')\"",
        pickle.display(),
        out.display()
    )
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or(p.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn twice(path: &Path, name: &str) -> Error {
    Error::data(
        path,
        format!("tensor `{name}` appears twice (with and without a prefix, or in two shards)"),
    )
}

fn unreadable(path: &Path, name: &str, why: &str) -> Error {
    Error::data(
        path,
        format!(
            "tensor `{name}` cannot be read from this pickle ({why}); convert the file once (needs `pip install \
             torch safetensors`):\n  {}",
            conversion_command(path, false)
        ),
    )
}

/// A sharded checkpoint: the index's `weight_map` (tensor → shard file beside the index).
fn sharded(index: &Path, format: Format) -> Result<Checkpoint> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| Error::data(index, format!("not a sharded checkpoint's index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in parsed.weight_map {
        // The shards sit beside the index; a name that climbs out of the folder is not a shard.
        let relative = Path::new(&file);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(Error::data(
                index,
                format!("shard `{file}` is not a file beside the index"),
            ));
        }
        let shard = dir.join(relative);
        if !shards.contains(&shard) {
            if !shard.is_file() {
                return Err(Error::data(
                    index,
                    format!("shard {} (holding `{tensor}`) is missing", shard.display()),
                ));
            }
            shards.push(shard.clone());
        }
        weight_map.insert(tensor, shard);
    }
    if shards.is_empty() {
        return Err(Error::data(index, "the index lists no tensors"));
    }
    shards.sort();
    Ok(Checkpoint {
        path: index.to_path_buf(),
        format,
        shards,
        weight_map: Some(weight_map),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// safetensors

/// The shape of every tensor of a safetensors file, from its header alone (an 8-byte little-endian length, then
/// JSON `{name: {dtype, shape, data_offsets}}`): a real checkpoint is hundreds of MB, its shapes a few kB.
fn safetensors_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        shape: Vec<usize>,
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(Error::data(
            path,
            format!("not a safetensors file (header length {len})"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| Error::data(path, format!("not a safetensors header: {e}")))?;
    let mut shapes = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry = serde_json::from_value(entry)
            .map_err(|e| Error::data(path, format!("tensor `{name}`: {e}")))?;
        shapes.insert(name, entry.shape);
    }
    Ok(shapes)
}

fn read_safetensors(
    path: &Path,
    device: &Device,
    rename: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = candle_core::safetensors::SliceSafetensors::new(&bytes)
        .map_err(|e| Error::data(path, format!("cannot read safetensors: {e}")))?;
    let mut out = Vec::new();
    for (name, _) in file.tensors() {
        if let Some(new) = rename(&name) {
            let tensor = file
                .load(&name, device)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| Error::data(path, format!("tensor `{name}`: {e}")))?;
            out.push((new, tensor));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// PyTorch pickles

/// A `torch.save` zip archive whose `data.pkl` is a flat state dict of tensors.
struct PickleFile {
    path: PathBuf,
    tensors: Vec<TensorInfo>,
    unreadable: BTreeMap<String, String>,
}

impl PickleFile {
    /// Reads and checks `data.pkl`: the legacy format, a pickle of anything but a dict of tensors, and a big-endian
    /// archive are errors naming the file and the conversion.
    fn open(path: &Path) -> Result<Self> {
        const ZIP: [u8; 4] = *b"PK\x03\x04";
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut magic = Vec::new();
        file.take(4)
            .read_to_end(&mut magic)
            .map_err(|e| Error::io(path, e))?;
        if magic != ZIP {
            // torch.save's legacy format starts with a pickle's PROTO opcode (0x80), a zip with "PK".
            let message = if magic.first() == Some(&0x80) {
                "a PyTorch pickle in the legacy format (torch < 1.6, not a zip archive), which only Python's \
                 unpickler reads"
            } else {
                "not a PyTorch checkpoint (neither the zip archive torch.save writes nor its legacy pickle)"
            };
            return Err(Error::data(
                path,
                format!(
                    "{message}; convert it once (needs `pip install torch safetensors`):\n  {}",
                    conversion_command(path, false)
                ),
            ));
        }
        let reader = BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| Error::data(path, format!("not a readable zip archive: {e}")))?;
        let pickles: Vec<String> = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<std::result::Result<Vec<String>, _>>()
            .map_err(|e| Error::data(path, format!("not a readable zip archive: {e}")))?
            .into_iter()
            .filter(|n| n.ends_with("data.pkl"))
            .collect();
        let [pkl] = pickles.as_slice() else {
            return Err(Error::data(
                path,
                format!(
                    "a PyTorch archive holds one data.pkl, this one {} (a TorchScript model?)",
                    pickles.len()
                ),
            ));
        };
        let root = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
        if let Ok(mut entry) = zip.by_name(&format!("{root}byteorder")) {
            let mut order = String::new();
            entry
                .read_to_string(&mut order)
                .map_err(|e| Error::io(path, e))?;
            if order.trim() != "little" {
                return Err(Error::data(
                    path,
                    format!(
                        "tensors stored {} endian; only little endian is read",
                        order.trim()
                    ),
                ));
            }
        }
        let object = {
            let entry = zip
                .by_name(pkl)
                .map_err(|e| Error::data(path, format!("{pkl}: {e}")))?;
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut BufReader::new(entry))
                .and_then(|()| stack.finalize())
                .map_err(|e| {
                    not_a_state_dict(path, &format!("a pickle this reader cannot follow ({e})"))
                })?
        };
        let entries = match object {
            Object::Dict(entries) => entries,
            other => return Err(not_a_state_dict(path, &describe(&other))),
        };
        // Storage files are `<root>data/<key>`; candle's TensorInfo joins that folder with each storage key.
        let storage_dir = PathBuf::from(format!("{root}data"));
        let mut tensors = Vec::new();
        let mut unreadable = BTreeMap::new();
        let mut others = BTreeMap::new();
        for (key, value) in entries {
            let name = match key {
                Object::Unicode(name) => name,
                other => {
                    return Err(not_a_state_dict(
                        path,
                        &format!("a dict keyed by {}", describe(&other)),
                    ))
                }
            };
            let what = describe(&value);
            match value.into_tensor_info(Object::Unicode(name.clone()), &storage_dir) {
                Ok(Some(info)) => tensors.push(info),
                // `state_dict()` is an OrderedDict whose `_metadata` attribute (module versions) the pickle
                // stores beside the items.
                Ok(None) if name == "_metadata" => {}
                Ok(None) => {
                    others.insert(name, what);
                }
                Err(e) => {
                    unreadable.insert(name, e.to_string());
                }
            }
        }
        if !others.is_empty() {
            let listed: Vec<String> = others
                .iter()
                .map(|(name, what)| format!("`{name}` ({what})"))
                .collect();
            return Err(not_a_state_dict(
                path,
                &format!("entries that are not tensors: {}", listed.join(", ")),
            ));
        }
        Ok(PickleFile {
            path: path.to_path_buf(),
            tensors,
            unreadable,
        })
    }

    /// The kept tensors as f32 on `device`, read from the archive's storage files.
    fn read(
        &self,
        device: &Device,
        rename: &impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, Tensor)>> {
        let path = &self.path;
        if let Some((name, why)) = self.unreadable.iter().find(|(n, _)| rename(n).is_some()) {
            return Err(unreadable(path, name, why));
        }
        let reader = BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| Error::data(path, format!("not a readable zip archive: {e}")))?;
        let mut out = Vec::new();
        for info in &self.tensors {
            let Some(new) = rename(&info.name) else {
                continue;
            };
            let tensor = read_storage(&mut zip, info)
                .and_then(|t| {
                    t.to_dtype(DType::F32)
                        .and_then(|t| t.to_device(device))
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| Error::data(path, format!("tensor `{}`: {e}", info.name)))?;
            out.push((new, tensor));
        }
        Ok(out)
    }
}

/// One tensor from its storage file: `numel` elements from the tensor's offset, contiguous in C or Fortran order
/// (a transposed matrix saved as it is). Other strides would need the whole storage and a gather: refused.
fn read_storage<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &TensorInfo,
) -> std::result::Result<Tensor, String> {
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous() && !layout.is_contiguous();
    if !layout.is_contiguous() && !fortran {
        return Err(format!(
            "stored with strides {:?}, not contiguous; save it with .contiguous()",
            layout.stride()
        ));
    }
    let bytes_wanted = layout.shape().elem_count() * info.dtype.size_in_bytes();
    let mut entry = zip
        .by_name(&info.path)
        .map_err(|e| format!("storage {}: {e}", info.path))?;
    let offset = layout.start_offset() as u64;
    let skipped = std::io::copy(&mut (&mut entry).take(offset), &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; bytes_wanted];
    if skipped < offset || entry.read_exact(&mut bytes).is_err() {
        return Err(format!(
            "storage {} is shorter than the tensor's offset {offset} + {bytes_wanted} bytes",
            info.path
        ));
    }
    let tensor = if fortran {
        // Column-major: the data is the transpose's, read in reversed dims then permuted back.
        let reversed: Vec<usize> = layout.dims().iter().rev().copied().collect();
        let rank = reversed.len();
        Tensor::from_raw_buffer(&bytes, info.dtype, &reversed, &Device::Cpu)
            .and_then(|t| t.permute((0..rank).rev().collect::<Vec<_>>()))
            .and_then(|t| t.contiguous())
    } else {
        Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), &Device::Cpu)
    };
    tensor.map_err(|e| e.to_string())
}

fn not_a_state_dict(path: &Path, what: &str) -> Error {
    Error::data(
        path,
        format!(
            "{what}, not a state dict of tensors: only tensors are read from a pickle, no Python object is \
             rebuilt. Convert it once (needs `pip install torch safetensors`; this runs the pickle's code, so only \
             for a file you trust):\n  {}",
            conversion_command(path, true)
        ),
    )
}

/// What an unpickled object is, for messages.
fn describe(object: &Object) -> String {
    match object {
        Object::Int(_) | Object::Long(_) | Object::Float(_) => "a number".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Bool(_) => "a boolean".into(),
        Object::None => "None".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::List(_) => "a list".into(),
        Object::Dict(_) => "a nested dict".into(),
        Object::Class {
            module_name,
            class_name,
        } => format!("the class `{module_name}.{class_name}`"),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match callable.as_ref()
        {
            Object::Class {
                module_name,
                class_name,
            } => format!("a `{module_name}.{class_name}` object"),
            inner => describe(inner),
        },
        Object::PersistentLoad(_) => "a bare storage".into(),
        Object::Mark => "a pickle mark".into(),
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/backbones")
            .join(name)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Reads `variant` under `rename` and `reference` (a model.safetensors folder) as it is: the same names, shapes
    /// and bit-identical values.
    fn assert_same(variant: &str, reference: &str, rename: impl Fn(&str) -> Option<String>) {
        let ours = Checkpoint::open(&fixture(variant)).unwrap();
        let theirs = Checkpoint::open(&fixture(reference)).unwrap();
        assert_eq!(theirs.format, Format::Safetensors);
        let a = ours.read(&Device::Cpu, &rename).unwrap();
        let b = theirs.read(&Device::Cpu, |n| Some(n.to_string())).unwrap();
        let mut names_a: Vec<&String> = a.keys().collect();
        let mut names_b: Vec<&String> = b.keys().collect();
        names_a.sort();
        names_b.sort();
        assert_eq!(names_a, names_b, "{variant}");
        for (name, tensor) in &a {
            assert_eq!(tensor.dims(), b[name].dims(), "{variant}: {name}");
            assert!(
                values(tensor) == values(&b[name]),
                "{variant}: {name} differs"
            );
        }
        assert_eq!(
            ours.shapes(&rename).unwrap(),
            theirs.shapes(|n| Some(n.to_string())).unwrap(),
            "{variant}: header shapes"
        );
    }

    #[test]
    fn pickles_and_shards_read_to_the_tensors_of_their_safetensors() {
        let gpt2 = |n: &str| {
            (n != "lm_head.weight").then(|| n.strip_prefix("transformer.").unwrap_or(n).to_string())
        };
        assert_same("gpt2-tiny-pickle", "gpt2-tiny", gpt2);
        assert_same("gpt2-tiny-sharded", "gpt2-tiny", |n| Some(n.to_string()));
        assert_same("wav2vec2-tiny-pickle", "wav2vec2-tiny", |n| {
            Some(n.to_string())
        });
        assert_same("wav2vec2-tiny-sharded", "wav2vec2-tiny", |n| {
            Some(n.to_string())
        });
        // torchvision's .pth: an OrderedDict (with its `_metadata`) holding fc.* too; I64 counters included
        assert_same("resnet50-tiny-pth", "resnet50-tiny", |n| {
            (!n.starts_with("fc.")).then(|| n.to_string())
        });

        let pickle = Checkpoint::open(&fixture("gpt2-tiny-pickle")).unwrap();
        assert_eq!(
            (pickle.format, pickle.describe().as_str()),
            (Format::Pickle, "PyTorch zip pickle")
        );
        let sharded = Checkpoint::open(&fixture("wav2vec2-tiny-sharded")).unwrap();
        assert_eq!(sharded.describe(), "PyTorch zip pickle, 2 shards");
        assert_eq!(sharded.files().len(), 3, "the index and two shards");
        assert!(sharded.path.ends_with("pytorch_model.bin.index.json"));
        let pth = Checkpoint::open(&fixture("resnet50-tiny-pth")).unwrap();
        assert!(pth.path.ends_with("resnet50-tiny.pth"));
        // lm_head shares wte's storage in the pickle: both read, each its own tensor
        let all = pickle.read(&Device::Cpu, |n| Some(n.to_string())).unwrap();
        assert!(values(&all["lm_head.weight"]) == values(&all["transformer.wte.weight"]));
        assert_eq!(pickle.inventory().unwrap().len(), all.len());
    }

    #[test]
    fn the_preferred_format_wins_and_a_folder_without_weights_says_what_it_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(Checkpoint::find(dir).unwrap().is_none());
        let err = Checkpoint::open(dir).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors, model.safetensors.index.json, pytorch_model.bin"),
            "{err}"
        );

        let copy = |from: &str, to: &str| std::fs::copy(fixture(from), dir.join(to)).unwrap();
        copy(
            "resnet50-tiny-pth/resnet50-tiny.pth",
            "resnet50-0676ba61.pth",
        );
        assert!(Checkpoint::find(dir)
            .unwrap()
            .unwrap()
            .path
            .ends_with("resnet50-0676ba61.pth"));
        copy("resnet50-tiny-pth/resnet50-tiny.pth", "other.pt");
        let err = Checkpoint::find(dir).unwrap_err().to_string();
        assert!(err.contains("several") && err.contains("other.pt"), "{err}");
        copy(
            "wav2vec2-tiny-pickle/pytorch_model.bin",
            "pytorch_model.bin",
        );
        assert_eq!(
            Checkpoint::find(dir).unwrap().unwrap().format,
            Format::Pickle
        );
        copy("wav2vec2-tiny/model.safetensors", "model.safetensors");
        let found = Checkpoint::find(dir).unwrap().unwrap();
        assert_eq!(
            (found.format, found.path.clone()),
            (Format::Safetensors, dir.join("model.safetensors"))
        );

        let err = Checkpoint::file(&fixture("gpt2-tiny/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("not a weights file"),
            "{err}"
        );
    }

    #[test]
    fn legacy_and_non_tensor_pickles_are_refused_naming_the_file_and_the_conversion() {
        let read = |path: &Path| {
            Checkpoint::file(path)
                .and_then(|c| c.read(&Device::Cpu, |n| Some(n.to_string())))
                .unwrap_err()
                .to_string()
        };
        let legacy = fixture("bad-pickles/legacy.pth");
        let err = read(&legacy);
        assert!(
            err.contains("legacy.pth")
                && err.contains("legacy format")
                && err.contains(&format!(
                    "torch.load('{}', map_location='cpu')",
                    legacy.display()
                ))
                && err.contains("st.save_file(")
                && err.contains("bad-pickles/model.safetensors"),
            "{err}"
        );
        let err = read(&fixture("bad-pickles/not-tensors.bin"));
        assert!(
            err.contains("not-tensors.bin")
                && err.contains(
                    "entries that are not tensors: `epoch` (a number), `lr` (a list), not a state dict of tensors"
                )
                && err.contains("weights_only=False"),
            "{err}"
        );
        let err = read(&fixture("bad-pickles/module.pth"));
        assert!(
            err.contains("module.pth")
                && err.contains("torch.nn.modules.linear.Linear")
                && err.contains("state_dict()"),
            "{err}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let junk = tmp.path().join("pytorch_model.bin");
        std::fs::write(&junk, b"not a checkpoint").unwrap();
        let err = read(&junk);
        assert!(
            err.contains("not a PyTorch checkpoint") && err.contains("pytorch_model.bin"),
            "{err}"
        );
    }

    #[test]
    fn a_sharded_checkpoint_must_hold_what_its_index_says() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for entry in std::fs::read_dir(fixture("wav2vec2-tiny-sharded")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        let index = dir.join("pytorch_model.bin.index.json");
        let text = std::fs::read_to_string(&index).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let all = Checkpoint::open(dir).unwrap().inventory().unwrap();
        assert_eq!(all.len(), 58);

        // a tensor the index does not put where it is
        let map = doc["weight_map"].as_object_mut().unwrap();
        map.insert(
            "wav2vec2.masked_spec_embed".into(),
            "pytorch_model-00001-of-00002.bin".into(),
        );
        std::fs::write(&index, doc.to_string()).unwrap();
        let err = Checkpoint::open(dir)
            .unwrap()
            .inventory()
            .unwrap_err()
            .to_string();
        assert!(err.contains("wav2vec2.masked_spec_embed"), "{err}");

        // a tensor listed in no shard
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["weight_map"]["wav2vec2.extra"] = "pytorch_model-00002-of-00002.bin".into();
        std::fs::write(&index, doc.to_string()).unwrap();
        let err = Checkpoint::open(dir)
            .unwrap()
            .inventory()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`wav2vec2.extra` is missing from its shard"),
            "{err}"
        );

        // a shard that is not there, or not beside the index
        std::fs::remove_file(dir.join("pytorch_model-00002-of-00002.bin")).unwrap();
        let err = Checkpoint::open(dir).unwrap_err().to_string();
        assert!(
            err.contains("pytorch_model-00002-of-00002.bin") && err.contains("missing"),
            "{err}"
        );
        std::fs::write(&index, r#"{"weight_map": {"a": "../elsewhere.bin"}}"#).unwrap();
        let err = Checkpoint::open(dir).unwrap_err().to_string();
        assert!(err.contains("not a file beside the index"), "{err}");
    }

    #[test]
    fn shapes_are_compared_by_name() {
        let expected = BTreeMap::from([("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])]);
        let found = BTreeMap::from([("a".to_string(), vec![3, 2]), ("c".to_string(), vec![1])]);
        assert_eq!(
            compare_shapes(&expected, &found, "config.json"),
            [
                "tensor `b` missing from the checkpoint",
                "tensor `c` of the checkpoint is not part of this model (config.json)",
                "tensor `a` has shape [3, 2], config.json wants [2, 3]",
            ]
        );
        assert!(compare_shapes(&expected, &expected, "x").is_empty());
        assert_eq!(count_elements(&expected, |n| n != "b"), 6);
    }
}
