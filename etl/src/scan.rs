//! `meld-etl scan`: what a MELD.Raw tree holds, without decoding or writing anything — the layout recognised,
//! rows and clips per split, rows whose clip is missing or empty, unlabelled clips, prefixed variants, duplicate
//! rows. The same discovery and inventory as `extract`, so what `scan` reports is what `extract` will meet.

use std::path::PathBuf;

use anyhow::Result;
use meld_shared::Split;

use crate::discover::{discover, list_clips, relative};
use crate::extract::{inventory_failures, Failure};
use crate::raw_csv::read_meld_csv;

#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// MELD.Raw tree.
    #[arg(long)]
    pub raw: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "train,dev,test")]
    pub splits: Vec<Split>,
}

/// One split's inventory.
#[derive(Debug, Clone)]
pub struct SplitScan {
    pub split: Split,
    pub csv: String,
    pub clip_dir: String,
    pub rows: usize,
    pub clips: usize,
    /// (dialogue, utterance) of rows without a clip file.
    pub missing: Vec<(u32, u32)>,
    /// Rows whose clip file is empty.
    pub empty: Vec<(u32, u32)>,
    /// Unlabelled clips, prefixed variants, duplicates, stray files.
    pub findings: Vec<Failure>,
}

#[derive(Debug, Clone)]
pub struct ScanReport {
    pub layout: String,
    pub splits: Vec<SplitScan>,
}

pub fn scan(args: &ScanArgs) -> Result<ScanReport> {
    let mut wanted = args.splits.clone();
    wanted.sort();
    wanted.dedup();
    let discovery = discover(&args.raw, &wanted)?;
    let mut splits = Vec::new();
    for source in &discovery.splits {
        let rows = read_meld_csv(&source.csv, true)?;
        let listing = list_clips(&source.clip_dir)?;
        let mut findings = Vec::new();
        inventory_failures(source.split, &rows, &listing, &mut findings);
        let mut missing = Vec::new();
        let mut empty = Vec::new();
        for r in &rows {
            let key = (r.meld.dialogue_id, r.meld.utterance_id);
            match listing.clips.get(&key) {
                None => missing.push(key),
                Some(c) if c.bytes == 0 => empty.push(key),
                Some(_) => {}
            }
        }
        missing.dedup();
        empty.dedup();
        splits.push(SplitScan {
            split: source.split,
            csv: relative(&discovery.root, &source.csv),
            clip_dir: relative(&discovery.root, &source.clip_dir),
            rows: rows.len(),
            clips: listing.clips.len(),
            missing,
            empty,
            findings,
        });
    }
    Ok(ScanReport {
        layout: discovery.layout.to_string(),
        splits,
    })
}

/// Scans and prints the report.
pub fn run(args: &ScanArgs) -> Result<ScanReport> {
    let report = scan(args)?;
    println!("layout: {} ({})", report.layout, args.raw.display());
    for s in &report.splits {
        println!(
            "  {:<5} csv {}  clips {}",
            s.split.meld_name(),
            s.csv,
            s.clip_dir
        );
    }
    println!(
        "{:<6} {:>7} {:>7} {:>8} {:>6} {:>11} {:>9} {:>10}",
        "split", "rows", "clips", "missing", "empty", "unlabelled", "prefixed", "duplicates"
    );
    let count = |s: &crate::scan::SplitScan, reason: &str| {
        s.findings.iter().filter(|f| f.reason == reason).count()
    };
    for s in &report.splits {
        println!(
            "{:<6} {:>7} {:>7} {:>8} {:>6} {:>11} {:>9} {:>10}",
            s.split.meld_name(),
            s.rows,
            s.clips,
            s.missing.len(),
            s.empty.len(),
            count(s, "unlabelled"),
            count(s, "prefixed"),
            count(s, "duplicate")
        );
    }
    const SHOWN: usize = 10;
    for s in &report.splits {
        let name = |(d, u): &(u32, u32)| format!("dia{d}_utt{u}");
        for (what, keys) in [("missing clip", &s.missing), ("empty clip", &s.empty)] {
            for k in keys.iter().take(SHOWN) {
                println!("  {:<5} {what:<12} {}", s.split.meld_name(), name(k));
            }
            if keys.len() > SHOWN {
                println!(
                    "  {:<5} {what:<12} … and {} more",
                    s.split.meld_name(),
                    keys.len() - SHOWN
                );
            }
        }
        for f in s.findings.iter().take(3 * SHOWN) {
            println!("  {:<5} {:<12} {}", s.split.meld_name(), f.reason, f.detail);
        }
        if s.findings.len() > 3 * SHOWN {
            println!(
                "  {:<5} … and {} more findings",
                s.split.meld_name(),
                s.findings.len() - 3 * SHOWN
            );
        }
    }
    Ok(report)
}
