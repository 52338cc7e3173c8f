//! Builds a component crate for `wasm32-wasip2` from a build script. Shared
//! by `host/build.rs` (the real component) and `tests/build.rs` (the hostile
//! test component) through `#[path]`.
//!
//! A nested cargo builds the crate in its own target directory, so it
//! neither waits on the outer build's lock nor inherits the host's flags.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the crate at `crate_dir` in release mode and returns the path of
/// `<artifact>.wasm`. `target_name` names its directory under `target/`.
pub fn build(crate_dir: &Path, target_name: &str, artifact: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join(target_name);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(crate_dir)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let status = command.status().unwrap_or_else(|e| panic!("could not run cargo for {}: {e}", crate_dir.display()));
    if !status.success() {
        panic!(
            "building the component in {} failed ({status}). Is the target installed? \
             Run `rustup target add wasm32-wasip2` (the README's set-up does).",
            crate_dir.display()
        );
    }
    target_dir.join("wasm32-wasip2/release").join(format!("{artifact}.wasm"))
}
