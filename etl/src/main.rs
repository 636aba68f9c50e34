//! The `meld-etl` command line: argument parsing only; the work is in the library.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meld-etl",
    version,
    about = "MELD.Raw → training dataset (CSV + 5-frame JPEG mosaics + WAVs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Extract the dataset: per-split CSVs, 5-frame JPEG mosaics and WAVs, failures.csv, manifest.json.
    Extract(meld_etl::extract::ExtractArgs),
    /// Cut a long video's utterances (SRT, or CSV start,end,text[,speaker]) into a dataset like extract's:
    /// test.csv (unlabelled), mosaics and WAVs, failures.csv — for `erc-train predict --video`.
    Segment(meld_etl::segment::SegmentArgs),
    /// Report what a MELD.Raw tree holds (layout, rows, clips, missing/unlabelled/prefixed) without writing.
    Scan(meld_etl::scan::ScanArgs),
    /// Check a written dataset: every referenced file exists and decodes with the expected format.
    Verify(meld_etl::verify::VerifyArgs),
    /// Write a MELD.Raw-shaped tree of synthetic clips with a learnable signal per modality.
    Synth(meld_etl::synth::SynthArgs),
    /// Run a RetinaFace ONNX model on one image: write its face-only image and print the boxes.
    Faces(meld_etl::faces::check::FacesArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Extract(args) => {
            let summary = meld_etl::extract::run(&args)?;
            if !summary.complete {
                std::process::exit(130);
            }
            Ok(())
        }
        Command::Segment(args) => meld_etl::segment::run(&args).map(|_| ()),
        Command::Scan(args) => meld_etl::scan::run(&args).map(|_| ()),
        Command::Verify(args) => {
            let report = meld_etl::verify::run(&args)?;
            if report.problems > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Synth(args) => meld_etl::synth::run(&args).map(|_| ()),
        Command::Faces(args) => meld_etl::faces::check::run(&args).map(|_| ()),
    }
}
