//! A llama-architecture transformer over quantized GGUF weights that
//! decodes a whole batch of sequences per forward pass.
//!
//! A pass takes any number of new tokens for each sequence (its prompt,
//! or one token while decoding) and stacks them all as the rows of one
//! matrix: every projection is one int8 matrix product over the whole
//! batch, reading each weight once per pass instead of once per sequence,
//! which is where batching wins on a CPU. Only attention looks at which
//! sequence a row belongs to (see `attention`); no row is padding.

use super::attention::{self, Heads, LayerCache, Rotary, Rows};
use super::projection::Projection;
use candle_core::quantized::gguf_file;
use candle_core::{D, DType, Device, Result, Tensor};
use std::io::{Read, Seek};

/// Positions covered by the rotary tables; SmolLM2 is trained to 8192.
const MAX_POSITIONS: usize = 8192;

struct Layer {
    attn_norm: Tensor,
    /// Queries, keys and values in one product (one pass over the input).
    qkv: Projection,
    output: Projection,
    ffn_norm: Tensor,
    /// The gate and up projections in one product: gate first, then up.
    gate_up: Projection,
    down: Projection,
}

pub struct Llama {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Projection,
    rotary: Rotary,
    heads: Heads,
    eps: f32,
    pub context_length: usize,
}

/// Keys and values of every layer for sequences being decoded, each
/// sequence with its own length.
pub struct Cache {
    layers: Vec<LayerCache>,
    heads: Heads,
    /// Positions cached for each sequence.
    lengths: Vec<usize>,
}

impl Cache {
    /// Adds a sequence that starts as `from`'s first sequence: a prompt
    /// prefix that sequences share is computed once.
    pub fn push_copy(&mut self, from: &Cache) {
        for (layer, from_layer) in self.layers.iter_mut().zip(&from.layers) {
            layer.push_copy(from_layer, &self.heads);
        }
        self.lengths.push(from.lengths[0]);
    }

    /// Keeps only the sequences at `keep` (finished ones leave the batch).
    pub fn retain(&mut self, keep: &[usize]) {
        for layer in &mut self.layers {
            layer.retain(keep, &self.heads);
        }
        self.lengths = keep.iter().map(|&i| self.lengths[i]).collect();
    }
}

fn metadata<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no {key}")))
}

impl Llama {
    pub fn from_gguf<R: Read + Seek>(content: &gguf_file::Content, reader: &mut R, device: &Device) -> Result<Llama> {
        let architecture = metadata(content, "general.architecture")?.to_string()?;
        if architecture != "llama" {
            candle_core::bail!("the model's architecture is {architecture:?}; only llama models are supported");
        }
        let n_head = metadata(content, "llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = metadata(content, "llama.attention.head_count_kv")?.to_u32()? as usize;
        let block_count = metadata(content, "llama.block_count")?.to_u32()? as usize;
        let embedding_length = metadata(content, "llama.embedding_length")?.to_u32()? as usize;
        let eps = metadata(content, "llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let freq_base = content.metadata.get("llama.rope.freq_base").and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0);
        let context_length = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_POSITIONS, |n| (n as usize).min(MAX_POSITIONS));
        let heads = Heads { query: n_head, key_value: n_kv_head, dim: embedding_length / n_head };
        if n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
            || !embedding_length.is_multiple_of(n_head)
            || !heads.dim.is_multiple_of(2)
        {
            candle_core::bail!(
                "unsupported attention shape: {n_head} heads, {n_kv_head} key/value heads, width {embedding_length}"
            );
        }
        let mut tensor = |name: &str| content.tensor(reader, name, device);

        let token_embd = tensor("token_embd.weight")?;
        // The lookup table is kept in f16 (half the memory of f32); the
        // output projection reuses the quantized table when the model ties
        // them, as SmolLM2 does.
        let embeddings = token_embd.dequantize_f16(device)?;
        let output = match tensor("output.weight") {
            Ok(output) => Projection::new(vec![output], device)?,
            Err(_) => Projection::new(vec![token_embd], device)?,
        };
        let mut layers = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let mut weight = |part: &str| tensor(&format!("blk.{i}.{part}.weight"));
            layers.push(Layer {
                attn_norm: weight("attn_norm")?.dequantize(device)?,
                qkv: Projection::new(vec![weight("attn_q")?, weight("attn_k")?, weight("attn_v")?], device)?,
                output: Projection::new(vec![weight("attn_output")?], device)?,
                ffn_norm: weight("ffn_norm")?.dequantize(device)?,
                gate_up: Projection::new(vec![weight("ffn_gate")?, weight("ffn_up")?], device)?,
                down: Projection::new(vec![weight("ffn_down")?], device)?,
            });
        }
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        Ok(Llama {
            embeddings,
            layers,
            norm,
            output,
            rotary: Rotary::new(heads.dim, freq_base, context_length),
            heads,
            eps,
            context_length,
        })
    }

    /// An empty cache for `sequences` sequences.
    pub fn cache(&self, sequences: usize) -> Cache {
        Cache {
            layers: (0..self.layers.len()).map(|_| LayerCache::new(sequences, &self.heads)).collect(),
            heads: self.heads,
            lengths: vec![0; sequences],
        }
    }

    /// Runs `tokens[b]` after what `cache` holds for sequence `b`, every
    /// sequence in one pass, and returns the logits of each sequence's last
    /// new position (sequences × vocabulary).
    pub fn forward(&self, tokens: &[&[u32]], cache: &mut Cache) -> Result<Tensor> {
        let hidden = self.hidden(tokens, cache)?;
        let ends: Vec<u32> = tokens
            .iter()
            .scan(0, |end, t| {
                *end += t.len() as u32;
                Some(*end - 1)
            })
            .collect();
        let last = hidden.index_select(&Tensor::new(ends.as_slice(), hidden.device())?, 0)?;
        self.output.forward(&candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?)
    }

    /// Like `forward` for positions whose logits are not needed (a shared
    /// prompt prefix): it fills the cache and skips the vocabulary product.
    pub fn prefill(&self, tokens: &[&[u32]], cache: &mut Cache) -> Result<()> {
        self.hidden(tokens, cache).map(drop)
    }

    /// The last layer's output for every new position (rows × width).
    fn hidden(&self, tokens: &[&[u32]], cache: &mut Cache) -> Result<Tensor> {
        let counts: Vec<usize> = tokens.iter().map(|t| t.len()).collect();
        if counts.len() != cache.lengths.len() || counts.contains(&0) {
            candle_core::bail!("every sequence of the cache needs at least one new token");
        }
        if cache.lengths.iter().zip(&counts).any(|(length, count)| length + count > self.context_length) {
            candle_core::bail!("the sequence would exceed the model's context of {} tokens", self.context_length);
        }
        let device = self.embeddings.device();
        let (rows, width) = (counts.iter().sum::<usize>(), self.heads.query * self.heads.dim);
        let ids = Tensor::new(tokens.concat().as_slice(), device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        let at = Rows { lengths: &cache.lengths, counts: &counts };
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let attention_in = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            let mut qkv = layer.qkv.forward(&attention_in)?.flatten_all()?.to_vec1::<f32>()?;
            let attended = attention::attend(&mut qkv, kv, &at, &self.heads, &self.rotary);
            x = (layer.output.forward(&Tensor::from_vec(attended, (rows, width), device)?)? + x)?;
            let mlp_in = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let gate_up = layer.gate_up.forward(&mlp_in)?;
            let hidden = gate_up.dim(D::Minus1)? / 2;
            let gated = (candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, hidden)?)?
                * gate_up.narrow(D::Minus1, hidden, hidden)?)?;
            x = (layer.down.forward(&gated)? + x)?;
        }
        for (length, count) in cache.lengths.iter_mut().zip(&counts) {
            *length += count;
        }
        Ok(x)
    }
}

/// Logits as plain vectors, one per sequence.
pub fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    logits.to_dtype(DType::F32)?.to_vec2::<f32>()
}
