//! `scripts/system-deps.sh`, the one list of system packages, and the check `make test`/`make demo` run first:
//! with FFmpeg's development files hidden the build stops before any compilation with one message naming the
//! missing packages and the command that installs them; with everything present the check is silent and cheap.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// `make test` where pkg-config finds none of FFmpeg's `.pc` files (and installing is ruled out): it stops at the
/// check, non-zero, naming each missing package — cargo (here `false`, which would fail differently) never runs.
#[test]
fn a_missing_ffmpeg_stops_make_test_before_any_compilation() {
    let start = Instant::now();
    let out = Command::new("make")
        .args(["-s", "CARGO=false", "test"])
        .current_dir(repo())
        .env("PKG_CONFIG_LIBDIR", "/nonexistent")
        .env("PKG_CONFIG_PATH", "")
        .env("SYSTEM_DEPS_INSTALL", "never")
        .output()
        .expect("running make");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "make test went on: {stderr}");
    for package in [
        "libavcodec-dev",
        "libavformat-dev",
        "libavutil-dev",
        "libswscale-dev",
        "libswresample-dev",
    ] {
        assert!(stderr.contains(package), "{package} not named:\n{stderr}");
    }
    assert!(
        stderr.contains("sudo apt-get install -y libavcodec-dev"),
        "no install command:\n{stderr}"
    );
    assert!(
        stderr.contains("system-deps: missing") && !stderr.contains("Compiling"),
        "the stop is not the check's:\n{stderr}"
    );
    assert!(took < Duration::from_secs(20), "the check took {took:?}");
}

/// Everything present (CI installs it through this same script): silent, status 0, well under a second of CPU.
#[test]
fn with_everything_present_the_check_is_silent_and_cheap() {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "bash", "scripts/system-deps.sh", "--check"])
        .current_dir(repo())
        .output()
        .expect("running /usr/bin/time (Debian's `time` package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the check failed here:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // /usr/bin/time's line is the only output
    let times: Vec<f64> = stderr
        .split_whitespace()
        .map(|t| t.parse().expect("user and system seconds"))
        .collect();
    assert_eq!(times.len(), 2, "{stderr}");
    assert!(
        times[0] + times[1] < 1.0,
        "the check used {times:?} s of CPU"
    );
}

/// `.ci/run` installs through the script, and no other file carries a second list of the FFmpeg packages.
#[test]
fn the_package_list_lives_in_one_place() {
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.contains("scripts/system-deps.sh --install"),
        ".ci/run does not install through the script"
    );
    for file in [".ci/run", "README.md", "Makefile"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(
            !text.contains("libswresample-dev"),
            "{file} keeps its own copy of the package list"
        );
    }
}

/// What `--install` asks apt for resolves on this machine. CI's machines carry NodeSource's `nodejs`, which
/// conflicts with Debian's `npm`: asking for both failed CI's whole install ("held broken packages") before a
/// line of ours was built. apt's simulation (`-s`) resolves the same request without installing anything.
#[test]
fn the_install_plan_resolves_with_apt() {
    if Command::new("apt-get").arg("--version").output().is_err() {
        eprintln!("no apt-get here: the plan is Debian's and cannot be resolved on this system");
        return;
    }
    let plan = Command::new("bash")
        .args(["scripts/system-deps.sh", "--plan"])
        .current_dir(repo())
        .output()
        .expect("running scripts/system-deps.sh --plan");
    assert!(plan.status.success());
    let packages: Vec<String> = String::from_utf8_lossy(&plan.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(
        packages.iter().any(|p| p == "libavcodec-dev"),
        "{packages:?}"
    );
    let npm_on_path = Command::new("npm").arg("--version").output().is_ok();
    assert_eq!(
        packages.iter().any(|p| p == "npm"),
        !npm_on_path,
        "npm is asked for only where no npm is on PATH: {packages:?}"
    );
    let simulated = Command::new("apt-get")
        .args(["install", "-s", "-y", "--no-install-recommends"])
        .args(&packages)
        .output()
        .expect("running apt-get install -s");
    assert!(
        simulated.status.success(),
        "apt cannot resolve {packages:?}:\n{}{}",
        String::from_utf8_lossy(&simulated.stdout),
        String::from_utf8_lossy(&simulated.stderr)
    );
}
