//! Builds the guest component for `wasm32-wasip2` so that the `batchgen`
//! binary embeds it: `cargo build --release` alone yields a working tool.

#[path = "build_component.rs"]
mod build_component;

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for watched in ["guest/src", "guest/Cargo.toml", "guest/Cargo.lock", "wit", "host/build_component.rs"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=BATCHGEN_GUEST_WASM");

    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("batchgen_guest.wasm");
    // A prebuilt component (e.g. from a packaging step) skips the nested build.
    let built = match env::var_os("BATCHGEN_GUEST_WASM") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => build_component::build(&root.join("guest"), "guest", "batchgen_guest"),
    };
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), out.display()));
}
