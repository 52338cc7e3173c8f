//! `Local` out of the box: a small llama-family model (SmolLM2-135M-Instruct
//! by default) run in-process on the CPU with candle.
//!
//! The import receives a whole batch, and it is decoded as one: the
//! prompts' shared prefix once, then the rest of every prompt in one pass,
//! then one token per sequence per pass, finished sequences leaving the
//! batch as they end (see `llama` and `attention`).

mod attention;
pub mod default_model;
mod llama;
mod parallel;
mod projection;
mod sampler;
mod tokenizer;

use crate::bindings::{LocalCompletion, LocalRequest, RowError};
use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use llama::Llama;
use sampler::Sampler;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizer::ChatTokenizer;

/// Sequences decoded together; the other rows of a bigger batch wait for a
/// place. Measured on two cores (`cargo xtask bench-local`):
/// 16 give 3.2× the tokens/s of one sequence, 32 give 3.5×, 64 fall back
/// to 3.0× (the activations and caches outgrow the CPU caches).
pub const DECODE_BATCH: usize = 32;

/// Why the embedded model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No file at the model's path.
    #[error(
        "the local model file {path} does not exist: run `batchgen fetch-model` to fetch the default model, \
         or pass --local-model PATH (or --local-url URL for a model server)"
    )]
    Missing {
        /// The path looked at.
        path: String,
    },
    /// No user cache to hold the default model.
    #[error(
        "no cache directory for the default local model: set BATCHGEN_CACHE_DIR or HOME, or pass --local-model PATH"
    )]
    NoCache,
    /// The file is not a model this engine runs.
    #[error("the local model file {path} could not be loaded: {message}")]
    Invalid {
        /// The model file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A llama-family GGUF model run in-process on the CPU, decoding each batch
/// of requests together.
pub struct EmbeddedModel {
    model: Mutex<Llama>,
    tokenizer: ChatTokenizer,
    seed: u64,
    /// What identifies this model and seed in saved work.
    identity: String,
    /// See [`EmbeddedModel::max_prompt_bytes`]; kept apart from the model so
    /// that checking a request never waits on a batch being decoded.
    max_prompt_bytes: usize,
}

impl EmbeddedModel {
    /// Loads the GGUF at `path`. Weights in a format without fast CPU
    /// kernels (Q4_1) are converted to Q8_0 once and the converted file is
    /// kept in `cache_dir`.
    pub fn load(path: &Path, cache_dir: Option<&Path>, seed: u64) -> Result<EmbeddedModel, EmbeddedError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(EmbeddedError::Missing { path: shown });
        }
        let invalid = |message: String| EmbeddedError::Invalid { path: shown.clone(), message };
        let runnable = runnable_copy(path, cache_dir).map_err(|e| invalid(e.to_string()))?;
        let mut file = std::fs::File::open(&runnable).map_err(|e| invalid(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| invalid(format!("not a GGUF model: {e}")))?;
        let device = Device::Cpu;
        let tokenizer = ChatTokenizer::from_gguf(&content).map_err(invalid)?;
        let model = Llama::from_gguf(&content, &mut file, &device).map_err(|e| invalid(e.to_string()))?;
        // One token through the whole model: candle repacks each weight for
        // its int8 kernel on first use, so this moves that one-time cost to
        // load time, and a model that cannot run fails here, not mid-batch.
        model
            .forward(&[&[tokenizer.end]], &mut model.cache(1))
            .map_err(|e| invalid(format!("the model does not run: {e}")))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let max_prompt_bytes = model.context_length.saturating_mul(tokenizer.longest_token_bytes);
        Ok(EmbeddedModel {
            model: Mutex::new(model),
            tokenizer,
            seed,
            identity: format!("embedded:{name}:seed={seed}"),
            max_prompt_bytes,
        })
    }

    /// The model's file name and seed (`embedded:<file>:seed=<seed>`): what
    /// saved work from it is keyed by.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The largest prompt (system prompt and input, in bytes) that could fit
    /// the model's context: anything larger is refused before it is
    /// tokenized, so an oversized prompt costs nothing.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_prompt_bytes
    }

    /// Generates for every request, one result each, in order. CPU-bound:
    /// call it off the async runtime.
    pub fn generate(&self, requests: &[LocalRequest]) -> Vec<Result<LocalCompletion, RowError>> {
        self.generate_until(requests, &|| false)
    }

    /// [`generate`](Self::generate), asking `stop` before every decoding
    /// pass: once it says so (the call that asked has ended), the rows not
    /// yet finished fail at once instead of decoding on for nobody.
    pub fn generate_until(
        &self,
        requests: &[LocalRequest],
        stop: &dyn Fn() -> bool,
    ) -> Vec<Result<LocalCompletion, RowError>> {
        let mut results: Vec<Option<Result<LocalCompletion, RowError>>> = (0..requests.len()).map(|_| None).collect();
        let model = self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut prepared = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            match self.tokenizer.encode_chat(request.system_prompt.as_deref(), &request.prompt) {
                Ok(ids) if ids.len() + request.max_tokens as usize > model.context_length => {
                    results[index] = Some(Err(RowError::InvalidRequest(format!(
                        "the prompt ({} tokens) plus max_tokens exceeds the local model's context of {} tokens",
                        ids.len(),
                        model.context_length
                    ))))
                }
                Ok(ids) => prepared.push((index, ids)),
                Err(message) => results[index] = Some(Err(RowError::InvalidRequest(message))),
            }
        }
        self.decode(&model, requests, &prepared, &mut results, stop);
        let stopped = || Err(RowError::Timeout("the call ended before this row was decoded; decoding stopped".into()));
        results.into_iter().map(|r| r.unwrap_or_else(stopped)).collect()
    }

    /// Decodes `prompts` with continuous batching: up to `DECODE_BATCH`
    /// sequences advance together, one token each per pass, and the place
    /// of a finished one goes to the next waiting prompt in the very next
    /// pass, so a long answer never leaves the batch running half empty.
    /// The prompts' common prefix (the chat template and system prompt, in
    /// a job) is computed once and copied to each sequence.
    fn decode(
        &self,
        model: &Llama,
        requests: &[LocalRequest],
        prompts: &[(usize, Vec<u32>)],
        results: &mut [Option<Result<LocalCompletion, RowError>>],
        stop: &dyn Fn() -> bool,
    ) {
        let Some((_, first)) = prompts.first() else { return };
        let failed = |error: &candle_core::Error| Err(RowError::Transport(format!("local model: {error}")));
        // At least the last token of each prompt stays in its own pass,
        // which yields the logits of its first answer token.
        let shortest = prompts.iter().map(|(_, ids)| ids.len()).min().unwrap_or(0);
        let shared = prompts.iter().fold(shortest.saturating_sub(1), |shared, (_, ids)| {
            shared.min(ids.iter().zip(first).take_while(|(a, b)| a == b).count())
        });
        let mut prefix = model.cache(1);
        if shared > 0
            && let Err(error) = model.prefill(&[&first[..shared]], &mut prefix)
        {
            for (index, _) in prompts {
                results[*index] = Some(failed(&error));
            }
            return;
        }
        let mut waiting = prompts.iter();
        let mut running: Vec<Sequence> = Vec::with_capacity(DECODE_BATCH);
        let mut cache = model.cache(0);
        loop {
            while running.len() < DECODE_BATCH
                && let Some((index, ids)) = waiting.next()
            {
                let request = &requests[*index];
                cache.push_copy(&prefix);
                running.push(Sequence {
                    index: *index,
                    input: ids[shared..].to_vec(),
                    prompt_tokens: ids.len() as u32,
                    generated: Vec::new(),
                    // Seeded per row, so a row's text does not depend on its batch.
                    sampler: Sampler::new(request.temperature, request.top_p, row_seed(self.seed, request)),
                });
            }
            // Rows left unanswered here are failed by `generate`.
            if running.is_empty() || stop() {
                return;
            }
            let inputs: Vec<&[u32]> = running.iter().map(|sequence| sequence.input.as_slice()).collect();
            let rows = match model.forward(&inputs, &mut cache).and_then(|logits| llama::rows(&logits)) {
                Ok(rows) => rows,
                Err(error) => {
                    // The pass failed for the sequences in it; waiting ones still get theirs.
                    for sequence in running.drain(..) {
                        results[sequence.index] = Some(failed(&error));
                    }
                    cache = model.cache(0);
                    continue;
                }
            };
            let tokens = sampler::sample_all(running.iter_mut().map(|sequence| &mut sequence.sampler), &rows);
            let mut keep = Vec::with_capacity(running.len());
            for (position, (sequence, &token)) in running.iter_mut().zip(&tokens).enumerate() {
                let finish = if token == self.tokenizer.end {
                    Some("stop")
                } else {
                    sequence.generated.push(token);
                    (sequence.generated.len() >= requests[sequence.index].max_tokens as usize).then_some("length")
                };
                let Some(reason) = finish else {
                    sequence.input = vec![token];
                    keep.push(position);
                    continue;
                };
                let text = self.tokenizer.decode(&sequence.generated).map_err(RowError::MalformedReply);
                results[sequence.index] = Some(text.map(|text| LocalCompletion {
                    text,
                    finish_reason: reason.to_string(),
                    input_tokens: sequence.prompt_tokens,
                    output_tokens: sequence.generated.len() as u32,
                }));
            }
            if keep.len() < running.len() {
                cache.retain(&keep);
                running = keep_only(running, &keep);
            }
        }
    }
}

/// A prompt being answered.
struct Sequence {
    /// The request's index in the batch.
    index: usize,
    /// Tokens for the next pass: what is left of the prompt, then the last
    /// token drawn.
    input: Vec<u32>,
    prompt_tokens: u32,
    generated: Vec<u32>,
    sampler: Sampler,
}

fn keep_only<T>(items: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.iter().map(|&i| items[i].take().expect("kept once")).collect()
}

fn row_seed(seed: u64, request: &LocalRequest) -> u64 {
    let mut sha = Sha256::new();
    sha.update(seed.to_le_bytes());
    sha.update(request.system_prompt.as_deref().unwrap_or_default().as_bytes());
    sha.update([0]);
    sha.update(request.prompt.as_bytes());
    u64::from_le_bytes(sha.finalize()[..8].try_into().unwrap())
}

/// `path` itself when candle runs its weights fast, else a copy with Q4_1
/// tensors converted to Q8_0, made once into `cache_dir`.
fn runnable_copy(path: &Path, cache_dir: Option<&Path>) -> candle_core::Result<PathBuf> {
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let slow = content.tensor_infos.values().any(|info| info.ggml_dtype == GgmlDType::Q4_1);
    let Some(dir) = cache_dir.filter(|_| slow) else {
        if slow {
            tracing::warn!(
                "no cache directory: converting {} in memory would be lost; running it as is (slow)",
                path.display()
            );
        }
        return Ok(path.to_path_buf());
    };
    let metadata = std::fs::metadata(path)?;
    let mut key = Sha256::new();
    key.update(path.canonicalize()?.to_string_lossy().as_bytes());
    key.update(metadata.len().to_le_bytes());
    if let Ok(modified) = metadata.modified() {
        key.update(format!("{modified:?}").as_bytes());
    }
    let key: String = key.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let converted = dir.join("models").join(format!("{stem}.{key}.q8_0.gguf"));
    if converted.is_file() {
        return Ok(converted);
    }
    tracing::info!("converting {} to Q8_0 once (cached at {})", path.display(), converted.display());
    let device = Device::Cpu;
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(&mut file, name, &device)?;
        let tensor = if tensor.dtype() == GgmlDType::Q4_1 {
            QTensor::quantize(&tensor.dequantize(&device)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.clone(), tensor));
    }
    std::fs::create_dir_all(converted.parent().unwrap())?;
    let mut temporary = tempfile::NamedTempFile::new_in(converted.parent().unwrap())?;
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(temporary.as_file_mut(), &metadata, &tensors)?;
    temporary.as_file().sync_all()?;
    temporary.persist(&converted).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(converted)
}
