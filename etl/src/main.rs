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
    /// Write a MELD.Raw-shaped tree of synthetic clips with a learnable signal per modality.
    Synth(meld_etl::synth::SynthArgs),
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
        Command::Synth(args) => meld_etl::synth::run(&args).map(|_| ()),
    }
}
