//! Parity of the trainable GPT-2 and wav2vec 2.0 with the PyTorch originals (fixtures in
//! `tests/fixtures/backbones/`, see its README): outputs and the gradients of a scalar loss w.r.t. the input and
//! every weight, loaded through the real loading code, norm-wise relative error ≤ 1e-4 in fp32; the GPT-2
//! tokenizer's ids against transformers' `GPT2Tokenizer`; training mode (every parameter trains, dropout is on);
//! the same checkpoints as PyTorch pickles and shards; the Hugging Face cache at any revision, offline; the printed
//! download command; `models check`; the loading errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use erc_train::data::tokenizer;
use erc_train::encoders::{check, gpt2, hub, wav2vec2};

mod common;
use common::{assert_parity, backbone_fixture, io, norm, rel_err};
use erc_train::selfcheck::parity;

fn fixtures() -> PathBuf {
    backbone_fixture("")
}

fn vars_of(map: &VarMap) -> BTreeMap<String, Var> {
    map.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// GPT-2

fn load_gpt2() -> gpt2::LoadedGpt2 {
    let tiny = fixtures().join("gpt2-tiny");
    // The tiny folder is a complete model folder (its tokenizer is a 512-token cut of the real vocabulary) ...
    let dir = hub::resolve(hub::Backbone::Gpt2, tiny.to_str().unwrap()).unwrap();
    // ... and without the tokenizer files, resolve says which files are missing and how to fetch them.
    let bare = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(file), bare.path().join(file)).unwrap();
    }
    let err = hub::resolve(hub::Backbone::Gpt2, bare.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lacks tokenizer.json")
            && err.contains("hf download gpt2 --include config.json"),
        "{err}"
    );
    gpt2::load(&dir, &Device::Cpu, 7).unwrap()
}

/// Outputs, every weight's gradient and the input embeddings' gradient against PyTorch, norm-wise ≤ 1e-4 (the
/// check `erc-train selfcheck` also runs on a GPU), the model loaded from the tiny folder through `hub::resolve`.
#[test]
fn gpt2_matches_pytorch_outputs_and_gradients() {
    let loaded = load_gpt2();
    assert_eq!(
        loaded.vars.data().lock().unwrap()["wte.weight"]
            .as_tensor()
            .dims(),
        [513, 64],
        "the embedding must have grown by the [PAD] row"
    );
    let rows = parity::gpt2(&fixtures(), &Device::Cpu).unwrap();
    assert!(rows.len() > 30, "{} tensors compared", rows.len());
    assert_parity("gpt2-tiny vs PyTorch", &rows);
}

#[test]
fn gpt2_training_mode_trains_every_weight_and_applies_dropout() {
    let io = io("gpt2-tiny");
    let loaded = load_gpt2();
    let vars = vars_of(&loaded.vars);
    let encoder = gpt2::Gpt2Encoder::new(loaded.model, true);
    let (ids, mask, r) = (&io["input_ids"], &io["attention_mask"], &io["R"]);
    encoder.model.set_seed(3);
    let train = encoder.forward(ids, mask, true).unwrap();
    let eval = encoder.forward(ids, mask, false).unwrap();
    let d = rel_err(&train, &eval);
    assert!(
        d > 1e-3,
        "dropout must change the training-mode output (rel diff {d:.2e})"
    );
    let again = encoder.forward(ids, mask, false).unwrap();
    assert_eq!(
        rel_err(&again, &eval),
        0.0,
        "eval mode must be deterministic"
    );

    let loss = (&train * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(norm(g) > 0.0, "zero gradient for {name} in training mode");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizer

fn tokenizer_dir() -> PathBuf {
    let dir = tokenizer::default_tokenizer_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    assert!(
        dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file(),
        "the real GPT-2 vocabulary is missing from {}: run scripts/fetch-gpt2-tokenizer.sh first",
        dir.display()
    );
    dir
}

#[test]
fn gpt2_tokenizer_matches_transformers_gpt2tokenizer() {
    let tok = tokenizer::Gpt2Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    assert_eq!(tok.pad_id(), 50257);
    let text = std::fs::read_to_string(fixtures().join("gpt2_token_ids.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let rows_of = |v: &serde_json::Value| -> Vec<Vec<u32>> {
        v.as_array().unwrap().iter().map(ids_of).collect()
    };

    let prompts = json["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 11);
    let texts: Vec<String> = prompts
        .iter()
        .map(|p| p["prompt"].as_str().unwrap().to_string())
        .collect();
    for (i, p) in prompts.iter().enumerate() {
        let ours = tok.encode(&texts[i]).unwrap();
        assert_eq!(ours, ids_of(&p["ids"]), "prompt {i} ({:?})", p["utterance"]);
        assert_eq!(
            tok.decode(&ours).unwrap(),
            texts[i],
            "prompt {i} must decode back to its text"
        );
    }
    assert!(
        tok.encode(&texts[10]).unwrap().len() > 1024,
        "the long prompt must exceed the limit"
    );

    for key in ["batch_padded", "batch_truncated"] {
        let batch = &json[key];
        let picked: Vec<&str> = batch["prompt_indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| texts[i.as_u64().unwrap() as usize].as_str())
            .collect();
        let ours = tok.encode_batch(&picked).unwrap();
        assert_eq!(
            ours.input_ids,
            rows_of(&batch["input_ids"]),
            "{key}: input_ids"
        );
        assert_eq!(
            ours.attention_mask,
            rows_of(&batch["attention_mask"]),
            "{key}: attention_mask"
        );
    }
}

#[test]
fn gpt2_tokenizer_from_tokenizer_json_gives_the_same_ids() {
    // A tokenizer.json as the HF hub's gpt2 repo has it, written by the tokenizers library from the vocab files.
    let dir = tokenizer_dir();
    let from_files = tokenizer::Gpt2Tokenizer::from_dir(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("tokenizer.json");
    let model = tokenizers::models::bpe::BPE::from_file(
        dir.join("vocab.json").to_str().unwrap(),
        dir.join("merges.txt").to_str().unwrap(),
    )
    .build()
    .unwrap();
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
    ))
    .with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    t.save(&json, false).unwrap();
    let from_json = tokenizer::Gpt2Tokenizer::from_dir(tmp.path()).unwrap();
    let texts = [
        "The speaker \"Joey\" said:\n###\nHow you doin\u{2019}?\n###",
        "Oh my God\u{0085} \u{0092}s",
    ];
    assert_eq!(
        from_json.encode_batch(&texts).unwrap(),
        from_files.encode_batch(&texts).unwrap()
    );
    assert_eq!(from_json.pad_id(), 50257);
}

// ---------------------------------------------------------------------------------------------------------------
// wav2vec 2.0

fn load_wav2vec2() -> wav2vec2::LoadedWav2Vec2 {
    let dir = hub::resolve(
        hub::Backbone::Wav2vec2,
        fixtures().join("wav2vec2-tiny").to_str().unwrap(),
    )
    .unwrap();
    wav2vec2::load(&dir, Some(-1), false, &Device::Cpu, 7).unwrap()
}

/// The feature encoder's output, every hidden state, the pooled output, the input's and every weight's
/// gradient against PyTorch, norm-wise ≤ 1e-4.
#[test]
fn wav2vec2_matches_pytorch_outputs_and_gradients() {
    assert_eq!(load_wav2vec2().encoder.out_features(), 64);
    let rows = parity::wav2vec2(&fixtures(), &Device::Cpu).unwrap();
    assert!(
        rows.iter().filter(|r| r.zero).count() == 2,
        "the two keys' biases are compared by norm"
    );
    assert!(rows.len() > 40, "{} tensors compared", rows.len());
    assert_parity("wav2vec2-tiny vs PyTorch", &rows);
}

#[test]
fn wav2vec2_training_mode_trains_every_weight_and_applies_dropout_and_masking() {
    let io = io("wav2vec2-tiny");
    let dir = fixtures().join("wav2vec2-tiny");
    // LayerDrop off so that every layer is sure to run; dropout and masking as configured.
    let mut cfg = wav2vec2::Config::from_file(&dir.join("config.json")).unwrap();
    cfg.layerdrop = 0.0;
    let loaded = load_wav2vec2();
    let vars = vars_of(&loaded.vars);
    let vb = candle_nn::VarBuilder::from_varmap(&loaded.vars, DType::F32, &Device::Cpu);
    let model = wav2vec2::Wav2Vec2Model::new(&cfg, vb.clone()).unwrap();
    let encoder = wav2vec2::Wav2Vec2Encoder::new(model, Some(16), true, vb.clone()).unwrap();
    encoder.model.set_seed(5);
    let x = &io["input_values"];
    let train = encoder.forward(x, true).unwrap();
    let eval = encoder.forward(x, false).unwrap();
    assert_eq!(train.dims(), [2, 16]);
    let d = rel_err(&train, &eval);
    assert!(
        d > 1e-3,
        "dropout/masking must change the training-mode output (rel diff {d:.2e})"
    );
    let loss = (&train
        * Tensor::ones((2, 16), DType::F32, &Device::Cpu)
            .unwrap()
            .cumsum(1)
            .unwrap())
    .unwrap()
    .sum_all()
    .unwrap();
    let grads = loss.backward().unwrap();
    let all = vars_of(&loaded.vars);
    assert!(
        all.contains_key("projection.weight"),
        "the projection is a new variable"
    );
    for (name, var) in all {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(norm(g) > 0.0, "zero gradient for {name} in training mode");
    }
    assert!(vars.contains_key("masked_spec_embed"));

    // LayerDrop 1: every layer skipped, in training only.
    let mut skip = cfg.clone();
    skip.layerdrop = 1.0;
    skip.hidden_dropout = 0.0;
    skip.attention_dropout = 0.0;
    skip.feat_proj_dropout = 0.0;
    skip.apply_spec_augment = false;
    let model = wav2vec2::Wav2Vec2Model::new(&skip, vb).unwrap();
    let out = model.forward(x, true).unwrap();
    assert_eq!(rel_err(&out.last_hidden_state, &out.hidden_states[0]), 0.0);
}

// ---------------------------------------------------------------------------------------------------------------
// Loading errors

#[test]
fn loading_errors_name_the_files_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    // Weights in a file that is no checkpoint: the loader names it and gives the conversion one-liner.
    let pickle_dir = tmp.path().join("w2v");
    std::fs::create_dir(&pickle_dir).unwrap();
    std::fs::copy(
        fixtures().join("wav2vec2-tiny/config.json"),
        pickle_dir.join("config.json"),
    )
    .unwrap();
    std::fs::write(pickle_dir.join("pytorch_model.bin"), b"not read").unwrap();
    let dir = hub::resolve(hub::Backbone::Wav2vec2, pickle_dir.to_str().unwrap()).unwrap();
    let err = wav2vec2::load(&dir, None, false, &Device::Cpu, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not a PyTorch checkpoint")
            && err.contains("safetensors.torch")
            && err.contains("save_file")
            && err.contains("w2v/pytorch_model.bin"),
        "{err}"
    );

    // Neither local nor cached, no network: what is needed and the command. The cache and the offline switch are
    // passed, not set in the environment (other tests of this binary run on other threads meanwhile).
    let env = hub::HubEnv::new(tmp.path().join("hf-home/hub"), true);
    let err = hub::resolve_in(&env, hub::Backbone::Gpt2, "gpt2")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "hf download gpt2 --include config.json --include \"model*.safetensors*\" --include \
             \"pytorch_model*.bin*\" --include tokenizer.json --include vocab.json --include merges.txt \
             --local-dir models/gpt2"
        ) && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let err = hub::resolve_in(&env, hub::Backbone::Wav2vec2, "facebook/wav2vec2-base")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hf download facebook/wav2vec2-base --include config.json"),
        "{err}"
    );

    // A path that does not exist: the command fetches the reference's model into it.
    let missing = tmp.path().join("models/wav2vec2-base");
    let err = hub::resolve(hub::Backbone::Wav2vec2, missing.to_str().unwrap())
        .unwrap_err()
        .to_string();
    let command = format!(
        "hf download facebook/wav2vec2-base --include config.json --include \"model*.safetensors*\" --include \
         \"pytorch_model*.bin*\" --local-dir {}",
        missing.display()
    );
    assert!(err.contains(&command), "{err}");

    // A checkpoint missing a weight names it.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(
        fixtures().join("gpt2-tiny/config.json"),
        broken.join("config.json"),
    )
    .unwrap();
    let mut tensors = candle_core::safetensors::load(
        fixtures().join("gpt2-tiny/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    tensors.remove("h.1.mlp.c_fc.bias");
    candle_core::safetensors::save(&tensors, broken.join("model.safetensors")).unwrap();
    let err = gpt2::load(&broken, &Device::Cpu, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("broken/model.safetensors") && err.contains("`h.1.mlp.c_fc.bias` missing"),
        "{err}"
    );
    // ... and a tensor of another shape than config.json says, before anything is built
    tensors.insert(
        "h.1.mlp.c_fc.bias".into(),
        Tensor::zeros(128, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, broken.join("model.safetensors")).unwrap();
    let err = gpt2::load(&broken, &Device::Cpu, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`h.1.mlp.c_fc.bias` has shape [128], config.json wants [256]"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The same checkpoints in the other formats they are served in

/// Every trainable variable of a loaded model, by name, as values.
fn values_of(map: &VarMap) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    vars_of(map)
        .into_iter()
        .map(|(name, var)| {
            let t = var.as_tensor();
            (
                name,
                (
                    t.dims().to_vec(),
                    t.flatten_all().unwrap().to_vec1().unwrap(),
                ),
            )
        })
        .collect()
}

/// `gpt2-tiny` as a zip `pytorch_model.bin` (with `transformer.` and a tied `lm_head`) and as safetensors shards:
/// each loads to exactly the variables of `model.safetensors` and passes the parity check.
#[test]
fn gpt2_from_a_pickle_or_shards_is_the_same_model() {
    let reference = values_of(&load_gpt2().vars);
    for variant in ["gpt2-tiny-pickle", "gpt2-tiny-sharded"] {
        let dir = hub::resolve(
            hub::Backbone::Gpt2,
            fixtures().join(variant).to_str().unwrap(),
        )
        .unwrap();
        let loaded = gpt2::load(&dir, &Device::Cpu, 7).unwrap();
        assert!(
            values_of(&loaded.vars) == reference,
            "{variant}: variables differ from gpt2-tiny's"
        );
        let rows = parity::gpt2_from(&fixtures(), &dir, &Device::Cpu).unwrap();
        assert!(
            rows.len() > 30,
            "{variant}: {} tensors compared",
            rows.len()
        );
        assert_parity(&format!("{variant} vs PyTorch"), &rows);
    }
}

/// `wav2vec2-tiny` as facebook/wav2vec2-base ships it (a zip `pytorch_model.bin`) and as pickle shards with a
/// `pytorch_model.bin.index.json`: the same variables, and parity.
#[test]
fn wav2vec2_from_a_pickle_or_shards_is_the_same_model() {
    let reference = values_of(&load_wav2vec2().vars);
    for variant in ["wav2vec2-tiny-pickle", "wav2vec2-tiny-sharded"] {
        let dir = fixtures().join(variant);
        let loaded = wav2vec2::load(&dir, Some(-1), false, &Device::Cpu, 7).unwrap();
        assert!(
            values_of(&loaded.vars) == reference,
            "{variant}: variables differ from wav2vec2-tiny's"
        );
        let rows = parity::wav2vec2_from(&fixtures(), &dir, &Device::Cpu).unwrap();
        assert!(
            rows.len() > 40,
            "{variant}: {} tensors compared",
            rows.len()
        );
        assert_parity(&format!("{variant} vs PyTorch"), &rows);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The Hugging Face cache, revisions, the download command

/// Puts `files` of the fixture folder `from` into a hub-cache snapshot as `hf-hub` and `huggingface_hub` lay
/// it out: `models--ORG--NAME/blobs/<file's sha>` with `snapshots/<commit>/<file>` a relative symlink to it.
fn cache_snapshot(hub_dir: &Path, repo: &str, commit: &str, from: &str, files: &[&str]) -> PathBuf {
    let root = hub_dir.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    for file in files {
        let bytes = std::fs::read(fixtures().join(from).join(file)).unwrap();
        let blob = format!("{commit}-{file}");
        std::fs::write(root.join("blobs").join(&blob), bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(file))
            .unwrap();
    }
    snapshot
}

fn write_ref(hub_dir: &Path, repo: &str, reference: &str, commit: &str) {
    let path = hub_dir
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("refs")
        .join(reference);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, commit).unwrap();
}

/// facebook/wav2vec2-base as the hub serves it — main has only `pytorch_model.bin`, `refs/pr/2` has
/// `model.safetensors` — found offline by branch, by pull-request ref and by commit hash, and loaded.
#[test]
fn a_hub_cache_is_found_offline_at_any_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hf-home/hub");
    let env = hub::HubEnv::new(hub_dir.clone(), true);
    let repo = "facebook/wav2vec2-base";
    let main = "0b5b8e868dd84f03fd87d01f9c4ff0f080fecfe8";
    let pr = "1b1a4c1f07e0d3b7a5d1a6b3f0c1e2d3a4b5c6d7";
    let pinned = "2c2a4c1f07e0d3b7a5d1a6b3f0c1e2d3a4b5c6d8";
    let on_main = cache_snapshot(
        &hub_dir,
        repo,
        main,
        "wav2vec2-tiny-pickle",
        &["config.json", "pytorch_model.bin"],
    );
    write_ref(&hub_dir, repo, "main", main);
    let on_pr = cache_snapshot(
        &hub_dir,
        repo,
        pr,
        "wav2vec2-tiny",
        &["config.json", "model.safetensors"],
    );
    // huggingface_hub writes a ref's commit without a newline; a hand-edited one may have one
    write_ref(&hub_dir, repo, "refs/pr/2", &format!("{pr}\n"));
    // a commit downloaded by its hash has no ref: its snapshot is named by it
    let at_commit = cache_snapshot(
        &hub_dir,
        repo,
        pinned,
        "wav2vec2-tiny-sharded",
        &[
            "config.json",
            "pytorch_model.bin.index.json",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model-00002-of-00002.bin",
        ],
    );

    let resolve = |spec: &str| hub::resolve_in(&env, hub::Backbone::Wav2vec2, spec);
    assert_eq!(resolve(repo).unwrap(), on_main);
    assert_eq!(resolve(&format!("{repo}@main")).unwrap(), on_main);
    assert_eq!(resolve(&format!("{repo}@refs/pr/2")).unwrap(), on_pr);
    assert_eq!(resolve(&format!("{repo}@{pinned}")).unwrap(), at_commit);
    let reference = values_of(&load_wav2vec2().vars);
    for dir in [&on_main, &on_pr, &at_commit] {
        let loaded = wav2vec2::load(dir, Some(-1), false, &Device::Cpu, 7).unwrap();
        assert!(values_of(&loaded.vars) == reference, "{}", dir.display());
    }

    // a revision that is not cached: the command fetches that revision
    let err = resolve(&format!("{repo}@v2")).unwrap_err().to_string();
    assert!(
        err.contains("hf download facebook/wav2vec2-base --revision v2 --include config.json")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // a snapshot holding only some of the files is not enough, and says what it lacks
    let partial = "3d3a4c1f07e0d3b7a5d1a6b3f0c1e2d3a4b5c6d9";
    cache_snapshot(&hub_dir, repo, partial, "wav2vec2-tiny", &["config.json"]);
    write_ref(&hub_dir, repo, "partial", partial);
    let err = resolve(&format!("{repo}@partial")).unwrap_err().to_string();
    assert!(
        err.contains(partial) && err.contains("lacks the weights"),
        "{err}"
    );
    // a revision cannot climb out of the cache
    let err = resolve(&format!("{repo}@../../x")).unwrap_err().to_string();
    assert!(err.contains("must be a branch"), "{err}");
}

/// The words of a printed shell command (double quotes group; no escapes needed for ours).
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut started) = (false, false);
    for c in command.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// `fnmatch` as huggingface_hub filters with it: `*` matches any run of characters (`/` included).
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|i| glob(rest, &name[head.len() + i..]))
        }
    }
}

/// What `hf download REPO --include P... --local-dir DIR` fetches from a repository holding `repo_files`: the
/// printed command must name no file (a named file that the repository lacks fails the whole download), only
/// `--include` patterns; returns the local dir and the files the patterns select.
fn simulate_download(command: &str, repo_files: &[&str]) -> (PathBuf, Vec<String>) {
    let words = shell_words(command);
    assert_eq!(&words[..2], ["hf", "download"], "{command}");
    let mut patterns = Vec::new();
    let mut local_dir = None;
    let mut rest = words[3..].iter();
    while let Some(word) = rest.next() {
        let value = rest
            .next()
            .unwrap_or_else(|| panic!("`{word}` without a value: {command}"));
        match word.as_str() {
            "--include" => patterns.push(value.clone()),
            "--local-dir" => local_dir = Some(PathBuf::from(value)),
            "--revision" => {}
            other => panic!("`{other}`: a file name or an unknown option in {command}"),
        }
    }
    let fetched = repo_files
        .iter()
        .filter(|f| patterns.iter().any(|p| glob(p, f)))
        .map(|f| f.to_string())
        .collect();
    (local_dir.expect("--local-dir"), fetched)
}

/// The printed command works whatever format the repository has: run (simulated, with huggingface_hub's
/// pattern matching) against a repository holding only `pytorch_model.bin` (facebook/wav2vec2-base's main),
/// only safetensors shards, or both formats, the folder it fills resolves and loads.
#[test]
fn the_printed_download_command_fits_whatever_the_repository_holds() {
    assert!(glob(
        "model*.safetensors*",
        "model-00001-of-00002.safetensors"
    ));
    assert!(glob("pytorch_model*.bin*", "pytorch_model.bin.index.json"));
    assert!(
        !glob("model*.safetensors*", "flax_model.msgpack")
            && !glob("config.json", "config.json.bak")
    );

    let tmp = tempfile::tempdir().unwrap();
    let env = hub::HubEnv::new(tmp.path().join("empty-cache"), true);
    let cases: [(hub::Backbone, &str, &str, &[&str]); 4] = [
        (
            hub::Backbone::Wav2vec2,
            "facebook/wav2vec2-base",
            "wav2vec2-tiny-pickle",
            &["config.json", "pytorch_model.bin"],
        ),
        (
            hub::Backbone::Wav2vec2,
            "facebook/wav2vec2-base@refs/pr/2",
            "wav2vec2-tiny-sharded",
            &[
                "config.json",
                "pytorch_model.bin.index.json",
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin",
            ],
        ),
        (
            hub::Backbone::Gpt2,
            "gpt2",
            "gpt2-tiny-sharded",
            &[
                "config.json",
                "vocab.json",
                "merges.txt",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ],
        ),
        (
            hub::Backbone::Gpt2,
            "gpt2",
            "gpt2-tiny-pickle",
            &[
                "config.json",
                "vocab.json",
                "merges.txt",
                "pytorch_model.bin",
            ],
        ),
    ];
    // files a repository also holds that no backbone needs
    let others = [
        "README.md",
        ".gitattributes",
        "preprocessor_config.json",
        "tf_model.h5",
        "flax_model.msgpack",
        "onnx/decoder_model.onnx",
    ];
    for (i, (backbone, spec, fixture, held)) in cases.into_iter().enumerate() {
        let err = hub::resolve_in(&env, backbone, spec)
            .unwrap_err()
            .to_string();
        let command = err
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("hf download"))
            .unwrap_or_else(|| panic!("no command in: {err}"));
        if let Some((_, rev)) = spec.split_once('@') {
            assert!(
                command.contains(&format!(" --revision {rev} ")),
                "{command}"
            );
        }
        let repo_files: Vec<&str> = held.iter().chain(others.iter()).copied().collect();
        let (local_dir, fetched) = simulate_download(command, &repo_files);
        let mut expected: Vec<String> = held.iter().map(|f| f.to_string()).collect();
        expected.sort();
        let mut got = fetched.clone();
        got.sort();
        assert_eq!(got, expected, "{command}");
        // the files land in --local-dir (here under the temp dir), which then resolves and loads
        let dir = tmp.path().join(format!("case{i}")).join(&local_dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in &fetched {
            std::fs::copy(fixtures().join(fixture).join(f), dir.join(f)).unwrap();
        }
        let found = hub::resolve_in(&env, backbone, dir.to_str().unwrap()).unwrap();
        match backbone {
            hub::Backbone::Gpt2 => drop(gpt2::load(&found, &Device::Cpu, 1).unwrap()),
            _ => drop(wav2vec2::load(&found, None, false, &Device::Cpu, 1).unwrap()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `models check`

/// The reference's hub id holding the wrong model is named before anything is loaded: a cached `gpt2` whose
/// snapshot is the tiny model has 0.1M parameters, not GPT-2 small's 124.4M. The same folder under its own
/// path is fine (only the count is reported).
#[test]
fn a_wrong_model_under_the_reference_id_is_an_error_naming_its_parameter_count() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let env = hub::HubEnv::new(hub_dir.clone(), true);
    let commit = "4e4a4c1f07e0d3b7a5d1a6b3f0c1e2d3a4b5c6da";
    cache_snapshot(
        &hub_dir,
        "gpt2",
        commit,
        "gpt2-tiny-pickle",
        &[
            "config.json",
            "vocab.json",
            "merges.txt",
            "pytorch_model.bin",
        ],
    );
    write_ref(&hub_dir, "gpt2", "main", commit);
    for spec in ["gpt2", &format!("gpt2@{commit}")] {
        let report = check::check(&env, hub::Backbone::Gpt2, spec, false).unwrap();
        let problem = report.problem().unwrap();
        assert!(
            problem.contains("0.1M parameters")
                && problem.contains("The reference's gpt2 has 124.4M"),
            "{problem}"
        );
    }
    let report = check::check(
        &env,
        hub::Backbone::Gpt2,
        fixtures().join("gpt2-tiny-pickle").to_str().unwrap(),
        true,
    )
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // the tiny model's count: 512×64 + 128×64 token and position rows, two blocks, the final LayerNorm
    assert_eq!(report.parameters, 32_768 + 8_192 + 2 * 49_984 + 128);
    assert_eq!((report.tensors, report.kept), (31, 28));
    assert_eq!(report.sha256.len(), 1);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        report.sha256[0].1,
        manifest["files"]["gpt2-tiny-pickle/pytorch_model.bin"]["sha256"]
            .as_str()
            .unwrap()
    );
    let table = report.render();
    assert!(
        table.contains("pytorch_model.bin (PyTorch zip pickle)")
            && table.contains("31 in the checkpoint, 28 kept by the encoder")
            && table.contains(
                "ok: every tensor's shape as config.json (2 layers, 64 wide, 512 tokens)"
            ),
        "{table}"
    );
}

/// A checkpoint that does not fit its config.json: every problem listed, none of them a panic.
#[test]
fn models_check_lists_every_tensor_that_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w2v");
    std::fs::create_dir(&dir).unwrap();
    let text = std::fs::read_to_string(fixtures().join("wav2vec2-tiny/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["num_hidden_layers"] = 3.into();
    config["intermediate_size"] = 48.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixtures().join("wav2vec2-tiny-pickle/pytorch_model.bin"),
        dir.join("pytorch_model.bin"),
    )
    .unwrap();
    let env = hub::HubEnv::new(tmp.path().join("hub"), true);
    let report = check::check(&env, hub::Backbone::Wav2vec2, dir.to_str().unwrap(), false).unwrap();
    assert!(!report.ok());
    let problems = report.problems.join("\n");
    assert!(
        problems.contains("tensor `encoder.layers.2.attention.k_proj.weight` missing")
            && problems.contains(
                "tensor `encoder.layers.0.feed_forward.intermediate_dense.weight` has shape [64, 32], \
                 config.json wants [48, 32]"
            ),
        "{problems}"
    );
    assert!(report
        .render()
        .contains("DOES NOT MATCH config.json (3 layers, 32 wide)"));
    let err = wav2vec2::load(&dir, None, false, &Device::Cpu, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("pytorch_model.bin")
            && err.contains("more: `erc-train models check` lists them"),
        "{err}"
    );
}

/// `erc-train models check`: a table per backbone, exit 0 when all fit, non-zero when one is missing.
#[test]
fn the_models_check_command_reports_and_fails_on_a_missing_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_erc-train"))
            .args(args)
            .current_dir(&repo)
            .env("HF_HOME", tmp.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let gpt2 = fixtures().join("gpt2-tiny-sharded");
    let output = run(&[
        "models",
        "check",
        "--config",
        "configs/t-um-gpt2.yml",
        "--text-model",
        gpt2.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("needed by t-um-gpt2.yml")
            && stdout.contains("model.safetensors.index.json (safetensors, 2 shards)")
            && stdout.matches("sha256").count() == 3
            && stdout.contains("ok: every tensor's shape"),
        "{stdout}"
    );
    // every config: the reference's wav2vec2 is not in the (empty) cache, offline
    let output = run(&[
        "models",
        "check",
        "--all-configs",
        "--text-model",
        gpt2.to_str().unwrap(),
        "--visual-model",
        "random",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("wav2vec2 `facebook/wav2vec2-base`")
            && stdout.contains("MISSING")
            && stdout.contains("hf download facebook/wav2vec2-base")
            && stdout.contains("a-um-wav2vec2.yml"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("1 of 2 backbone(s) missing"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_tokenizer_whose_pad_is_not_the_appended_row_is_refused() {
    let tiny = fixtures().join("gpt2-tiny");
    let cfg = gpt2::Config::from_file(&tiny.join("config.json")).unwrap();
    let own = tokenizer::Gpt2Tokenizer::from_dir(&tiny).unwrap();
    cfg.check_tokenizer(&own, &tiny).unwrap();
    // the real vocabulary puts [PAD] at 50257, past the tiny model's 512 + 1 rows
    let real = tokenizer::Gpt2Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    let err = cfg.check_tokenizer(&real, &tiny).unwrap_err().to_string();
    assert!(
        err.contains("gpt2-tiny") && err.contains("50257") && err.contains("expected [PAD] = 512"),
        "{err}"
    );
}
