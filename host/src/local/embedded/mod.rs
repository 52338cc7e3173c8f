//! `Local` out of the box: a small llama-family model (SmolLM2-135M-Instruct
//! by default) run in-process on the CPU with candle.
//!
//! The import receives a whole batch, and it is decoded as one: prompts
//! are grouped by length, left-padded, and advanced together one token per
//! step, finished sequences leaving the batch as they end.

mod llama;
mod sampler;
mod tokenizer;

use crate::plugin::bindings::{LocalCompletion, LocalRequest, RowError};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use llama::{Cache, Llama};
use sampler::Sampler;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizer::ChatTokenizer;

/// Where `cargo xtask setup` puts the default model.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Sequences decoded together. Larger batches pad more and gain little on
/// two cores; the rows of a bigger batch go through in groups this size.
const DECODE_BATCH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("the local model file {path} does not exist: run `cargo xtask setup` to fetch the default model, or pass --local-model PATH (or --local-url URL for a model server)")]
    Missing { path: String },
    #[error("the local model file {path} could not be loaded: {message}")]
    Invalid { path: String, message: String },
}

pub struct EmbeddedModel {
    model: Mutex<Llama>,
    tokenizer: ChatTokenizer,
    device: Device,
    seed: u64,
    /// What identifies this model and seed in saved work.
    identity: String,
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
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(EmbeddedModel { model: Mutex::new(model), tokenizer, device, seed, identity: format!("embedded:{name}:seed={seed}") })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Generates for every request, one result each, in order. CPU-bound:
    /// call it off the async runtime.
    pub fn generate(&self, requests: &[LocalRequest]) -> Vec<Result<LocalCompletion, RowError>> {
        let mut results: Vec<Option<Result<LocalCompletion, RowError>>> = (0..requests.len()).map(|_| None).collect();
        let mut prepared = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            match self.tokenizer.encode_chat(request.system_prompt.as_deref(), &request.prompt) {
                Ok(ids) => prepared.push((index, ids)),
                Err(message) => results[index] = Some(Err(RowError::InvalidRequest(message))),
            }
        }
        // Similar lengths together: less padding per forward pass.
        prepared.sort_by_key(|(_, ids)| ids.len());
        let model = self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for group in prepared.chunks(DECODE_BATCH) {
            let outcome = self.decode(&model, requests, group);
            for (slot, (index, _)) in group.iter().enumerate() {
                results[*index] = Some(match &outcome {
                    Ok(completions) => completions[slot].clone(),
                    Err(error) => Err(RowError::Transport(format!("local model: {error}"))),
                });
            }
        }
        results.into_iter().map(|r| r.expect("every request is answered")).collect()
    }

    /// Decodes one group of prompts together.
    fn decode(
        &self,
        model: &Llama,
        requests: &[LocalRequest],
        group: &[(usize, Vec<u32>)],
    ) -> candle_core::Result<Vec<Result<LocalCompletion, RowError>>> {
        let longest = group.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
        let mut outcomes: Vec<Option<Result<LocalCompletion, RowError>>> = vec![None; group.len()];
        // Rows that cannot fit the context fail alone; the rest go on.
        let mut active: Vec<usize> = Vec::new();
        for (slot, (index, ids)) in group.iter().enumerate() {
            let wanted = ids.len() + requests[*index].max_tokens as usize;
            if wanted > model.context_length {
                outcomes[slot] = Some(Err(RowError::InvalidRequest(format!(
                    "the prompt ({} tokens) plus max_tokens exceeds the local model's context of {} tokens",
                    ids.len(),
                    model.context_length
                ))));
            } else {
                active.push(slot);
            }
        }
        if active.is_empty() {
            return Ok(outcomes.into_iter().map(Option::unwrap).collect());
        }
        let padding: Vec<usize> = active.iter().map(|&slot| longest - group[slot].1.len()).collect();
        let mut tokens = Vec::with_capacity(active.len() * longest);
        for (&slot, &pad) in active.iter().zip(&padding) {
            tokens.extend(std::iter::repeat_n(self.tokenizer.end, pad));
            tokens.extend_from_slice(&group[slot].1);
        }
        let mut samplers: Vec<Sampler> = active
            .iter()
            .map(|&slot| {
                let request = &requests[group[slot].0];
                // Seeded per row, so a row's text does not depend on its batch.
                Sampler::new(request.temperature, request.top_p, row_seed(self.seed, request))
            })
            .collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); active.len()];
        let mut cache = Cache::new(model.layer_count(), padding);
        let mut logits = model.forward(&Tensor::from_vec(tokens, (active.len(), longest), &self.device)?, &mut cache)?;
        loop {
            let rows = llama::rows(&logits)?;
            let mut next = Vec::with_capacity(active.len());
            let mut keep = Vec::with_capacity(active.len());
            for (position, row) in rows.iter().enumerate() {
                let slot = active[position];
                let token = samplers[position].next(row);
                let max_tokens = requests[group[slot].0].max_tokens as usize;
                let finish = if token == self.tokenizer.end {
                    Some("stop")
                } else {
                    generated[position].push(token);
                    (generated[position].len() >= max_tokens).then_some("length")
                };
                match finish {
                    Some(reason) => {
                        let text = self.tokenizer.decode(&generated[position]);
                        outcomes[slot] = Some(text.map_err(RowError::MalformedReply).map(|text| LocalCompletion {
                            text,
                            finish_reason: reason.to_string(),
                            input_tokens: group[slot].1.len() as u32,
                            output_tokens: generated[position].len() as u32,
                        }));
                    }
                    None => {
                        keep.push(position);
                        next.push(token);
                    }
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache.retain(&keep, &self.device)?;
                active = keep.iter().map(|&p| active[p]).collect();
                samplers = keep_only(samplers, &keep);
                generated = keep_only(generated, &keep);
            }
            logits = model.forward(&Tensor::from_vec(next, (active.len(), 1), &self.device)?, &mut cache)?;
        }
        Ok(outcomes.into_iter().map(|o| o.expect("every sequence finishes")).collect())
    }
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
            tracing::warn!("no cache directory: converting {} in memory would be lost; running it as is (slow)", path.display());
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
