//! A request to stop, from SIGINT or SIGTERM (Ctrl-C; Slurm's preemption and the `--signal` it sends before a
//! time limit): training stops at the next step boundary, leaving the last complete epoch's checkpoint as it is
//! and no file half written, so that a rerun (or a requeued Slurm task) resumes from it. A second signal stops
//! the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (the binary does, once); a failure to install is only logged: the process then dies on
/// the signal as it would without one.
pub fn install() {
    let result = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nsecond stop signal: stopping now (the last complete epoch's checkpoint is kept)"
            );
            std::process::exit(130);
        }
        eprintln!(
            "\nstop signal: stopping after the current step (the last complete epoch's checkpoint is kept; rerun \
             to resume; a second signal stops at once)"
        );
    });
    if let Err(e) = result {
        tracing::debug!("stop-signal handler not installed: {e}");
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
