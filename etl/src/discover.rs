//! Stage 1 of `extract` (and all of `scan`'s input): finds each split's annotation CSV and clip folder anywhere
//! under `--raw`, and lists what a clip folder holds.
//!
//! MELD.Raw reaches people in several shapes — the official tarball extracted (`ROOT/train_sent_emo.csv`,
//! `ROOT/train_splits/` …), the Kaggle copy (`MELD-RAW/MELD.Raw/{train,dev,test}/` with each CSV beside its
//! folder), or the inner tarballs extracted somewhere else — so the files are found by name, not by a fixed path.
//! A row's clip is looked up ONLY in its own split's folder: dialogue ids restart at 0 in every split, and the
//! reference's tree-wide lookup (docs/reference.md quirk Q1) silently gave rows another split's clip.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use meld_shared::Split;

use crate::meld::parse_clip_file_name;

/// Folders deeper than this under `--raw` are not searched (the Kaggle nesting is 4 deep).
const MAX_DEPTH: usize = 8;
/// The prefix of the unlabelled copies of test clips found in the real test folder.
pub const PREFIXED_VARIANT: &str = "final_videos_test";

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    #[error(
        "{root}: MELD.Raw layout not recognised; missing {missing}.\n  CSVs found: {found_csvs}\n  clip folders found: {found_dirs}"
    )]
    Unrecognised {
        root: PathBuf,
        missing: String,
        found_csvs: String,
        found_dirs: String,
    },
    #[error("{root}: {what} is ambiguous; candidates: {candidates}")]
    Ambiguous {
        root: PathBuf,
        what: String,
        candidates: String,
    },
}

/// Where one split's annotations and clips are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSource {
    pub split: Split,
    pub csv: PathBuf,
    pub clip_dir: PathBuf,
}

/// The recognised layout of a MELD.Raw tree.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub root: PathBuf,
    /// `plain` (everything in one folder), `kaggle` (`MELD-RAW/MELD.Raw/<split>/`) or `nested` (anything else).
    pub layout: &'static str,
    pub splits: Vec<SplitSource>,
}

impl Discovery {
    pub fn source(&self, split: Split) -> Option<&SplitSource> {
        self.splits.iter().find(|s| s.split == split)
    }
}

/// Finds the CSV and clip folder of each split in `wanted` under `root`.
pub fn discover(root: &Path, wanted: &[Split]) -> Result<Discovery, DiscoverError> {
    if !root.is_dir() {
        return Err(DiscoverError::NotAFolder(root.to_path_buf()));
    }
    let mut csvs: BTreeMap<Split, Vec<PathBuf>> = BTreeMap::new();
    let mut dirs: BTreeMap<Split, Vec<PathBuf>> = BTreeMap::new();
    walk(root, 0, &mut csvs, &mut dirs)?;

    let mut missing = Vec::new();
    let mut splits = Vec::new();
    for &split in wanted {
        let csv_candidates = csvs.get(&split).cloned().unwrap_or_default();
        let dir_candidates = dirs.get(&split).cloned().unwrap_or_default();
        if csv_candidates.is_empty() {
            missing.push(split.meld_csv().to_string());
        }
        if dir_candidates.is_empty() {
            missing.push(format!("{}/", split.meld_clip_dir()));
        }
        if csv_candidates.is_empty() || dir_candidates.is_empty() {
            continue;
        }
        let (csv, clip_dir) = pick(root, split, &csv_candidates, &dir_candidates)?;
        splits.push(SplitSource {
            split,
            csv,
            clip_dir,
        });
    }
    if !missing.is_empty() {
        let list = |m: &BTreeMap<Split, Vec<PathBuf>>| {
            let all: Vec<String> = m.values().flatten().map(|p| relative(root, p)).collect();
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join(", ")
            }
        };
        return Err(DiscoverError::Unrecognised {
            root: root.to_path_buf(),
            missing: missing.join(", "),
            found_csvs: list(&csvs),
            found_dirs: list(&dirs),
        });
    }
    let layout = layout_name(root, &splits);
    Ok(Discovery {
        root: root.to_path_buf(),
        layout,
        splits,
    })
}

fn walk(
    dir: &Path,
    depth: usize,
    csvs: &mut BTreeMap<Split, Vec<PathBuf>>,
    dirs: &mut BTreeMap<Split, Vec<PathBuf>>,
) -> Result<(), DiscoverError> {
    let entries = fs::read_dir(dir).map_err(|source| DiscoverError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DiscoverError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = path.is_dir();
        for split in Split::ALL {
            if !is_dir && name == split.meld_csv() {
                csvs.entry(split).or_default().push(path.clone());
            }
            if is_dir && name == split.meld_clip_dir() {
                dirs.entry(split).or_default().push(path.clone());
            }
        }
        // Clip folders hold thousands of files and nothing else of interest: don't descend into them.
        let is_clip_dir = Split::ALL.iter().any(|s| name == s.meld_clip_dir());
        if is_dir && !is_clip_dir && !name.starts_with('.') {
            subdirs.push(path);
        }
    }
    if depth < MAX_DEPTH {
        subdirs.sort();
        for sub in subdirs {
            walk(&sub, depth + 1, csvs, dirs)?;
        }
    }
    Ok(())
}

/// One CSV and one folder per split; with several copies, the pair that sits side by side wins.
fn pick(
    root: &Path,
    split: Split,
    csvs: &[PathBuf],
    dirs: &[PathBuf],
) -> Result<(PathBuf, PathBuf), DiscoverError> {
    if csvs.len() == 1 && dirs.len() == 1 {
        return Ok((csvs[0].clone(), dirs[0].clone()));
    }
    let pairs: Vec<(&PathBuf, &PathBuf)> = csvs
        .iter()
        .flat_map(|c| dirs.iter().map(move |d| (c, d)))
        .filter(|(c, d)| c.parent() == d.parent())
        .collect();
    if pairs.len() == 1 {
        return Ok((pairs[0].0.clone(), pairs[0].1.clone()));
    }
    let candidates: Vec<String> = csvs.iter().chain(dirs).map(|p| relative(root, p)).collect();
    Err(DiscoverError::Ambiguous {
        root: root.to_path_buf(),
        what: format!("the {split} split (several copies)"),
        candidates: candidates.join(", "),
    })
}

fn layout_name(root: &Path, splits: &[SplitSource]) -> &'static str {
    let all = |f: &dyn Fn(&SplitSource) -> bool| splits.iter().all(f);
    if all(&|s: &SplitSource| s.csv.parent() == Some(root) && s.clip_dir.parent() == Some(root)) {
        return "plain";
    }
    let kaggle = |s: &SplitSource| {
        let expected = root
            .join("MELD-RAW")
            .join("MELD.Raw")
            .join(s.split.meld_name());
        s.csv.parent() == Some(expected.as_path())
            && s.clip_dir.parent() == Some(expected.as_path())
    };
    if all(&kaggle) {
        return "kaggle";
    }
    "nested"
}

/// A path relative to `root` for messages (the path itself when it is not under `root`).
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A `.mp4` file of a clip folder.
#[derive(Debug, Clone)]
pub struct ClipFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// What a clip folder holds, sorted into labelled-clip names, prefixed variants and anything else.
#[derive(Debug, Default, Clone)]
pub struct ClipListing {
    /// `dia{D}_utt{U}.mp4`, by (dialogue, utterance).
    pub clips: BTreeMap<(u32, u32), ClipFile>,
    /// `final_videos_test…` copies: file name and the (dialogue, utterance) its name carries, if any.
    pub prefixed: Vec<(String, Option<(u32, u32)>)>,
    /// Other `.mp4` files whose name is not a clip name.
    pub unrecognised: Vec<String>,
}

/// Lists a clip folder (one `read_dir`, no decoding).
pub fn list_clips(dir: &Path) -> Result<ClipListing, DiscoverError> {
    let io = |source| DiscoverError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut listing = ClipListing::default();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".mp4") {
            continue; // partial downloads, `.DS_Store`, …
        }
        let path = entry.path();
        let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if let Some(key) = parse_clip_file_name(&name) {
            listing.clips.insert(key, ClipFile { path, bytes });
        } else if let Some(rest) = name.strip_prefix(PREFIXED_VARIANT) {
            listing
                .prefixed
                .push((name.clone(), parse_clip_file_name(rest)));
        } else {
            listing.unrecognised.push(name);
        }
    }
    listing.prefixed.sort();
    listing.unrecognised.sort();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn finds_plain_kaggle_and_reports_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        for s in Split::ALL {
            touch(&plain.join(s.meld_csv()));
            fs::create_dir_all(plain.join(s.meld_clip_dir())).unwrap();
        }
        let found = discover(&plain, &Split::ALL).unwrap();
        assert_eq!(found.layout, "plain");
        assert_eq!(found.splits.len(), 3);

        let kaggle = dir.path().join("kaggle");
        for s in Split::ALL {
            let base = kaggle.join("MELD-RAW/MELD.Raw").join(s.meld_name());
            touch(&base.join(s.meld_csv()));
            fs::create_dir_all(base.join(s.meld_clip_dir())).unwrap();
        }
        let found = discover(&kaggle, &Split::ALL).unwrap();
        assert_eq!(found.layout, "kaggle");
        assert!(found
            .source(Split::Dev)
            .unwrap()
            .clip_dir
            .ends_with("dev/dev_splits_complete"));

        fs::remove_dir(kaggle.join("MELD-RAW/MELD.Raw/test/output_repeated_splits_test")).unwrap();
        let err = discover(&kaggle, &Split::ALL).unwrap_err().to_string();
        assert!(
            err.contains("missing output_repeated_splits_test/"),
            "{err}"
        );
        assert!(
            err.contains("train_sent_emo.csv") && err.contains("dev_splits_complete"),
            "{err}"
        );
        // Only the splits asked for are required.
        assert!(discover(&kaggle, &[Split::Train, Split::Dev]).is_ok());
    }

    #[test]
    fn listing_sorts_clips_variants_and_junk() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "dia1_utt2.mp4",
            "final_videos_testdia1_utt2.mp4",
            "notes.mp4",
            "dia3_utt0.mp4.partial",
        ] {
            touch(&dir.path().join(name));
        }
        let listing = list_clips(dir.path()).unwrap();
        assert_eq!(
            listing.clips.keys().copied().collect::<Vec<_>>(),
            vec![(1, 2)]
        );
        assert_eq!(
            listing.prefixed,
            vec![("final_videos_testdia1_utt2.mp4".to_string(), Some((1, 2)))]
        );
        assert_eq!(listing.unrecognised, vec!["notes.mp4".to_string()]);
    }
}
