//! Is each pretrained backbone a config needs where the config says, and is it the architecture the model expects?
//! The answer of `erc-train models check`, of `table4`'s preflight and of [`crate::model::Backbones::resolve`],
//! without training and without reading tensor data: for each backbone, where it would be loaded from, the
//! checkpoint's format, how many tensors it has and the encoder keeps, their parameters, optionally the sha256 of
//! its files, and every kept tensor's shape against the architecture — the checkpoint's own `config.json` for GPT-2
//! and wav2vec2, ResNet-50's layout at the widths of its first convolutions for torchvision weights.
//!
//! The reference's own hub ids must also have the reference's parameter count
//! ([`hub::check_reference_parameters`]), so a wrong repository or snapshot is named before anything is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{AudioEncoder, Config, TextEncoder};
use crate::encoders::hub::{self, Backbone, HubEnv};
use crate::encoders::weights::{self, Checkpoint};
use crate::encoders::{gpt2, resnet, roberta, wav2vec2};
use crate::error::Result;

/// The pretrained backbones `config` loads, each with where from (`visual_model: random` loads none).
pub fn needed(config: &Config) -> Vec<(Backbone, String)> {
    let mut needed = Vec::new();
    match config.modules_text_encoder {
        TextEncoder::Gpt2 => needed.push((Backbone::Gpt2, config.text_model().to_string())),
        TextEncoder::Roberta => needed.push((Backbone::Roberta, config.text_model().to_string())),
        TextEncoder::Glove | TextEncoder::None => {}
    }
    if config.modules_audio_encoder == AudioEncoder::Wav2vec2 {
        needed.push((Backbone::Wav2vec2, config.audio_model().to_string()));
    }
    if config.uses_resnet() {
        if let Some(spec) = config.visual_model() {
            needed.push((Backbone::Resnet50, spec.to_string()));
        }
    }
    needed
}

/// What [`check`] found for one backbone.
#[derive(Debug, Clone)]
pub struct Report {
    pub backbone: Backbone,
    pub spec: String,
    /// The model folder, or ResNet-50's weights file.
    pub location: PathBuf,
    pub checkpoint: Checkpoint,
    /// Tensors in the checkpoint.
    pub tensors: usize,
    /// Tensors the encoder keeps (heads, mask buffers and counters dropped).
    pub kept: usize,
    /// Elements of the kept tensors that are parameters (ResNet's running statistics are buffers).
    pub parameters: u64,
    /// What the shapes were checked against.
    pub architecture: String,
    /// Missing, left-over and mis-shaped tensors, and a parameter count that is not the reference's; empty when the
    /// checkpoint fits.
    pub problems: Vec<String>,
    /// sha256 of every file of the checkpoint, when asked for.
    pub sha256: Vec<(PathBuf, String)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first problem (and how many more), on one line.
    pub fn problem(&self) -> Option<String> {
        let first = self.problems.first()?;
        Some(match self.problems.len() {
            1 => format!("{} `{}`: {first}", self.backbone, self.spec),
            n => format!(
                "{} `{}`: {first} (and {} more: `erc-train models check` lists them)",
                self.backbone,
                self.spec,
                n - 1
            ),
        })
    }

    /// A short table: where from, format, tensors, parameters, sha256, architecture.
    pub fn render(&self) -> String {
        let mut out = format!("{} `{}`\n", self.backbone, self.spec);
        let mut row = |key: &str, value: String| out += &format!("  {key:<13} {value}\n");
        row("from", self.location.display().to_string());
        row(
            "weights",
            format!(
                "{} ({})",
                file_name(&self.checkpoint.path),
                self.checkpoint.describe()
            ),
        );
        row(
            "tensors",
            format!(
                "{} in the checkpoint, {} kept by the encoder",
                self.tensors, self.kept
            ),
        );
        let reference = self.backbone.reference_parameters();
        row(
            "parameters",
            format!(
                "{} ({}); the reference's {} has {}",
                hub::millions(self.parameters),
                self.parameters,
                self.backbone.default_repo(),
                hub::millions(reference)
            ),
        );
        for (file, digest) in &self.sha256 {
            row("sha256", format!("{digest}  {}", file_name(file)));
        }
        if self.problems.is_empty() {
            row(
                "architecture",
                format!("ok: every tensor's shape as {}", self.architecture),
            );
        } else {
            const SHOWN: usize = 8;
            row(
                "architecture",
                format!("DOES NOT MATCH {}:", self.architecture),
            );
            for problem in self.problems.iter().take(SHOWN) {
                out += &format!("    {problem}\n");
            }
            if self.problems.len() > SHOWN {
                out += &format!("    ... and {} more\n", self.problems.len() - SHOWN);
            }
        }
        out
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Finds `backbone` as `spec` names it ([`hub::resolve_in`], downloading only where that would) and checks its
/// checkpoint's headers against the architecture; `sha256` also hashes its files (seconds for a real checkpoint).
/// An error when the backbone cannot be found or its checkpoint cannot be read; a [`Report`] with problems when it
/// can but does not fit.
pub fn check(env: &HubEnv, backbone: Backbone, spec: &str, sha256: bool) -> Result<Report> {
    let location = hub::resolve_in(env, backbone, spec)?;
    let checkpoint = Checkpoint::open(&location)?;
    let tensors = checkpoint.inventory()?.len();
    let mut problems = Vec::new();
    let (kept, architecture) = match backbone {
        Backbone::Gpt2 => {
            let cfg = gpt2::Config::from_file(&location.join("config.json"))?;
            let kept = checkpoint.shapes(gpt2::checkpoint_name)?;
            let architecture = "config.json";
            problems.extend(weights::compare_shapes(
                &gpt2::expected_shapes(&cfg)?,
                &kept,
                architecture,
            ));
            let described = format!(
                "{architecture} ({} layers, {} wide, {} tokens)",
                cfg.n_layer, cfg.n_embd, cfg.vocab_size
            );
            (kept, described)
        }
        Backbone::Roberta => {
            let cfg = roberta::Config::from_file(&location.join("config.json"))?;
            let kept = checkpoint.shapes(roberta::renamer(&checkpoint)?)?;
            let architecture = "config.json";
            problems.extend(weights::compare_shapes(
                &roberta::expected_shapes(&cfg)?,
                &kept,
                architecture,
            ));
            let described = format!(
                "{architecture} ({} layers, {} wide, {} tokens)",
                cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
            );
            (kept, described)
        }
        Backbone::Wav2vec2 => {
            let cfg = wav2vec2::Config::from_file(&location.join("config.json"))?;
            let kept = checkpoint.shapes(wav2vec2::renamer(&checkpoint, &cfg)?)?;
            let architecture = "config.json";
            problems.extend(weights::compare_shapes(
                &wav2vec2::expected_shapes(&cfg)?,
                &kept,
                architecture,
            ));
            let described = format!(
                "{architecture} ({} layers, {} wide)",
                cfg.num_hidden_layers, cfg.hidden_size
            );
            (kept, described)
        }
        Backbone::Resnet50 => {
            let kept = checkpoint.shapes(resnet::checkpoint_name)?;
            let described = match resnet::Config::from_shapes(&kept) {
                Ok(cfg) => {
                    let architecture = "a torchvision ResNet-50";
                    problems.extend(weights::compare_shapes(&cfg.shapes(), &kept, architecture));
                    let blocks = resnet::Config::resnet50().blocks;
                    if cfg.blocks != blocks {
                        problems.push(format!(
                            "blocks per stage {:?}: not a ResNet-50 ({blocks:?})",
                            cfg.blocks
                        ));
                    }
                    format!(
                        "{architecture} (stem {}, widths {:?})",
                        cfg.stem_width, cfg.widths
                    )
                }
                Err(message) => {
                    problems.push(message);
                    "a torchvision ResNet-50".to_string()
                }
            };
            (kept, described)
        }
    };
    let parameters = weights::count_elements(&kept, |n| backbone.is_parameter(n));
    if let Err(e) = hub::check_reference_parameters(backbone, spec, parameters) {
        problems.push(e.to_string());
    }
    let sha256 = if sha256 {
        checkpoint.digests()?
    } else {
        Vec::new()
    };
    Ok(Report {
        backbone,
        spec: spec.to_string(),
        location,
        tensors,
        kept: kept.len(),
        parameters,
        architecture,
        problems,
        sha256,
        checkpoint,
    })
}

/// [`check`] once per (backbone, spec): the table's 30 rows name the same few backbones, which are found and
/// read once. Errors are kept as their messages.
#[derive(Default)]
pub struct Cache {
    reports: BTreeMap<(Backbone, String), std::result::Result<Report, String>>,
}

impl Cache {
    pub fn check(
        &mut self,
        env: &HubEnv,
        backbone: Backbone,
        spec: &str,
    ) -> &std::result::Result<Report, String> {
        self.reports
            .entry((backbone, spec.to_string()))
            .or_insert_with(|| check(env, backbone, spec, false).map_err(|e| e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts checked for the reference's hub ids are those of the architectures built here at the real
    /// sizes, under the names their loaders keep (GPT-2 small without `lm_head`, wav2vec2-base without the
    /// pre-training heads, torchvision's ResNet-50 without `fc` and without its running statistics).
    /// RoBERTa-base and RoBERTa-large at their real sizes, under the names the loader keeps (no pooler, no LM
    /// head): the reference count and the guess for a large checkpoint.
    #[test]
    fn roberta_counts_are_the_real_architectures() {
        let config = |hidden: usize, layers: usize| -> roberta::Config {
            serde_json::from_value(serde_json::json!({
                "vocab_size": 50265, "hidden_size": hidden, "num_hidden_layers": layers,
                "num_attention_heads": hidden / 64, "intermediate_size": 4 * hidden,
                "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1
            }))
            .unwrap()
        };
        let count = |cfg: &roberta::Config| {
            weights::count_elements(&roberta::expected_shapes(cfg).unwrap(), |n| {
                Backbone::Roberta.is_parameter(n)
            })
        };
        assert_eq!(
            count(&config(768, 12)),
            Backbone::Roberta.reference_parameters()
        );
        assert_eq!(count(&config(768, 6)), 81_527_808, "distilroberta-base");
        let large = count(&config(1024, 24));
        assert_eq!(large, 354_310_144);
        let err = hub::check_reference_parameters(Backbone::Roberta, "roberta-base", large)
            .unwrap_err()
            .to_string();
        assert!(err.contains("roberta-large?"), "{err}");
        assert!(hub::check_reference_parameters(Backbone::Roberta, "roberta-large", large).is_ok());
    }

    #[test]
    fn the_reference_counts_are_the_real_architectures() {
        let count = |backbone: Backbone, shapes: &BTreeMap<String, Vec<usize>>| {
            weights::count_elements(shapes, |n| backbone.is_parameter(n))
        };
        let gpt2 = gpt2::expected_shapes(&gpt2::Config::gpt2_small()).unwrap();
        assert_eq!(count(Backbone::Gpt2, &gpt2), 124_439_808);
        assert_eq!(hub::millions(124_439_808), "124.4M");
        let w2v = wav2vec2::expected_shapes(&wav2vec2::Config::base()).unwrap();
        assert_eq!(count(Backbone::Wav2vec2, &w2v), 94_371_712);
        assert!(
            w2v.contains_key("masked_spec_embed"),
            "wav2vec2-base masks in training"
        );
        assert_eq!(hub::millions(94_371_712), "94.4M");
        let resnet = resnet::Config::resnet50().shapes();
        assert_eq!(count(Backbone::Resnet50, &resnet), 23_508_032);
        assert_eq!(hub::millions(23_508_032), "23.5M");
        // (RoBERTa: `roberta_counts_are_the_real_architectures`)
        for (backbone, shapes) in [
            (Backbone::Gpt2, &gpt2),
            (Backbone::Wav2vec2, &w2v),
            (Backbone::Resnet50, &resnet),
        ] {
            assert_eq!(count(backbone, shapes), backbone.reference_parameters());
            assert!(hub::check_reference_parameters(
                backbone,
                backbone.default_repo(),
                count(backbone, shapes)
            )
            .is_ok());
        }
        // GPT-2 medium's architecture has the count the guess names
        let medium = gpt2::Config {
            n_embd: 1024,
            n_layer: 24,
            n_head: 16,
            ..gpt2::Config::gpt2_small()
        };
        let medium = count(Backbone::Gpt2, &gpt2::expected_shapes(&medium).unwrap());
        let err = hub::check_reference_parameters(Backbone::Gpt2, "gpt2@refs/pr/1", medium)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GPT-2 `gpt2@refs/pr/1` has 354.8M parameters (354823168): gpt2-medium? The reference's gpt2 has 124.4M"),
            "{err}"
        );
        // only the reference's own id is held to the reference's count
        assert!(hub::check_reference_parameters(Backbone::Gpt2, "gpt2-medium", medium).is_ok());
        assert!(hub::check_reference_parameters(Backbone::Gpt2, "gpt2-large", medium).is_ok());
        // the hub's new name for the reference's gpt2 is the reference too
        assert!(
            hub::check_reference_parameters(Backbone::Gpt2, "openai-community/gpt2", medium)
                .is_err()
        );
        let err =
            hub::check_reference_parameters(Backbone::Resnet50, "timm/resnet50.tv_in1k", 1_000)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("0.0M parameters (1000). The reference's"),
            "{err}"
        );
    }

    #[test]
    fn a_config_needs_the_backbones_of_its_encoders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let load = |f: &str| Config::load(&root.join(f)).unwrap().config;
        assert_eq!(needed(&load("t-um-glove.yml")), []);
        assert_eq!(
            needed(&load("t-um-gpt2.yml")),
            [(Backbone::Gpt2, "gpt2".to_string())]
        );
        let mut config = load("v-um-resnet50.yml");
        assert_eq!(
            needed(&config),
            [(Backbone::Resnet50, "timm/resnet50.tv_in1k".to_string())]
        );
        config.visual_model = Some(crate::config::RANDOM_WEIGHTS.into());
        assert_eq!(needed(&config), []);
    }
}
