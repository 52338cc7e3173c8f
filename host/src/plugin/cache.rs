//! Compiled components on disk, so a run starts in milliseconds instead of
//! compiling the component with cranelift every time.
//!
//! An entry is keyed on the component's bytes and on the engine's
//! compatibility hash (wasmtime version, target, and every engine setting
//! that changes code), so a stale or foreign entry is never loaded.
//!
//! Loading an entry runs native code from it: the cache directory must be
//! writable only by the user running batchgen. It is created mode 0700.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components live: `BATCHGEN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/batchgen`, else `~/.cache/batchgen`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("BATCHGEN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("batchgen"))
}

/// Feeds `Hash` output into SHA-256, which unlike `DefaultHasher` is stable
/// across Rust releases.
struct Sha(Sha256);

impl Hasher for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
}

fn key(engine: &Engine, wasm: &[u8]) -> String {
    let mut sha = Sha(Sha256::new());
    sha.write(wasm);
    engine.precompile_compatibility_hash().hash(&mut sha);
    let digest = sha.0.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads `wasm` compiled for `engine`, from `dir` when an entry exists,
/// else compiling it and saving the result. Cache trouble only costs time:
/// it is logged and the component is compiled in memory.
pub fn load(engine: &Engine, wasm: &[u8], dir: Option<&Path>) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, wasm);
    };
    let path = dir.join(format!("{}.cwasm", key(engine, wasm)));
    if path.exists() {
        // SAFETY: entries are written only by `save` below from
        // `Component::serialize` output for an engine with this exact
        // compatibility hash, in a directory only this user can write.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(error) => tracing::warn!("ignoring unreadable cache entry {}: {error:#}", path.display()),
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(error) = save(&component, dir, &path) {
        tracing::warn!("could not cache the compiled component in {}: {error:#}", dir.display());
    }
    Ok(component)
}

fn save(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    let bytes = component.serialize()?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.as_file().sync_all()?;
    file.persist(path)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
