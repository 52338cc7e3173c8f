//! Builds the guest component for `wasm32-wasip2` so that the `batchgen`
//! binary embeds it: `cargo build --release` alone yields a working tool.
//!
//! The guest is built by a nested cargo in its own target directory, so it
//! neither waits on this build's lock nor inherits the host's flags.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let guest = root.join("guest");
    for watched in ["guest/src", "guest/Cargo.toml", "guest/Cargo.lock", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=BATCHGEN_GUEST_WASM");

    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("batchgen_guest.wasm");
    // A prebuilt component (e.g. from a packaging step) skips the nested build.
    if let Some(prebuilt) = env::var_os("BATCHGEN_GUEST_WASM") {
        copy(Path::new(&prebuilt), &out);
        return;
    }

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&guest)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    // Flags meant for the host build must not leak into the wasm build.
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"] {
        command.env_remove(var);
    }
    let status = command.status().unwrap_or_else(|e| panic!("could not run cargo for the guest: {e}"));
    if !status.success() {
        panic!(
            "building the guest component failed ({status}). Is the target installed? \
             Run `rustup target add wasm32-wasip2` (the README's set-up does)."
        );
    }
    copy(&target_dir.join("wasm32-wasip2/release/batchgen_guest.wasm"), &out);
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
