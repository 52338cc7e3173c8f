//! Builds the hostile test component (`tests/hostile`) and hands its path to
//! the tests as `HOSTILE_COMPONENT`.

#[path = "../host/build_component.rs"]
mod build_component;

use std::path::Path;

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for watched in ["hostile/src", "hostile/Cargo.toml", "hostile/Cargo.lock", "../wit", "../host/build_component.rs"] {
        println!("cargo:rerun-if-changed={}", here.join(watched).display());
    }
    let wasm = build_component::build(&here.join("hostile"), "hostile", "batchgen_hostile");
    println!("cargo:rustc-env=HOSTILE_COMPONENT={}", wasm.display());
}
