//! A llama-architecture transformer over quantized GGUF weights that
//! decodes a whole batch of sequences per forward pass.
//!
//! Sequences of different lengths are left-padded to a common length; a
//! padding mask keeps every sequence from attending to its padding, and
//! rotary embeddings (relative by construction) make the shifted start
//! positions harmless. Each step feeds one token per sequence, so the
//! weights are read once per step for the whole batch instead of once per
//! sequence: that is where batching wins on a CPU.

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use std::io::{Read, Seek};

/// Positions covered by the rotary tables; SmolLM2 is trained to 8192.
const MAX_POSITIONS: usize = 8192;

/// Rows (sequences × positions) from which a dense f32 matmul beats the
/// quantized kernel: candle's Q8_0 kernel does the same work per row, so a
/// batch gains nothing through it, while a dense GEMM reuses each weight
/// across all rows from cache.
const DENSE_FROM_ROWS: usize = 4;

/// A projection kept twice: quantized for single-sequence decoding (memory
/// bound: fewer bytes win) and dense, transposed for GEMM, for batches.
struct Weight {
    quantized: QMatMul,
    dense: Tensor,
}

impl Weight {
    fn new(tensor: candle_core::quantized::QTensor, device: &Device) -> Result<Weight> {
        let dense = tensor.dequantize(device)?.t()?.contiguous()?;
        Ok(Weight { quantized: QMatMul::from_qtensor(tensor)?, dense })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / width;
        if rows < DENSE_FROM_ROWS {
            return self.quantized.forward(x);
        }
        // One GEMM over all rows: a batched matmul would run one per sequence.
        let mut shape = x.dims().to_vec();
        *shape.last_mut().unwrap() = self.dense.dim(1)?;
        x.reshape((rows, width))?.matmul(&self.dense)?.reshape(shape)
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Tensor,
    gate: Weight,
    up: Weight,
    down: Weight,
}

pub struct Llama {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Weight,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    eps: f32,
    pub context_length: usize,
}

/// Keys and values of every layer for a batch being decoded.
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Padding positions at the start of each sequence.
    padding: Vec<usize>,
    /// Positions filled so far.
    pub len: usize,
}

impl Cache {
    pub fn new(layers: usize, padding: Vec<usize>) -> Cache {
        Cache { kv: vec![None; layers], padding, len: 0 }
    }

    /// Keeps only the sequences at `keep` (finished ones leave the batch).
    pub fn retain(&mut self, keep: &[usize], device: &Device) -> Result<()> {
        let index = Tensor::new(keep.iter().map(|&i| i as u32).collect::<Vec<_>>(), device)?;
        for entry in self.kv.iter_mut().flatten() {
            *entry = (entry.0.index_select(&index, 0)?, entry.1.index_select(&index, 0)?);
        }
        self.padding = keep.iter().map(|&i| self.padding[i]).collect();
        Ok(())
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
        let head_dim = embedding_length / n_head;
        let mut tensor = |name: &str| content.tensor(reader, name, device);

        let token_embd = tensor("token_embd.weight")?;
        // The lookup table is kept in f16 (half the memory of f32); the
        // output projection reuses the quantized table when the model ties
        // them, as SmolLM2 does.
        let embeddings = token_embd.dequantize_f16(device)?;
        let output = match tensor("output.weight") {
            Ok(output) => Weight::new(output, device)?,
            Err(_) => Weight::new(token_embd, device)?,
        };
        let mut layers = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let mut weight = |part: &str| tensor(&format!("blk.{i}.{part}.weight"));
            layers.push(Layer {
                attn_norm: weight("attn_norm")?.dequantize(device)?,
                wq: Weight::new(weight("attn_q")?, device)?,
                wk: Weight::new(weight("attn_k")?, device)?,
                wv: Weight::new(weight("attn_v")?, device)?,
                wo: Weight::new(weight("attn_output")?, device)?,
                ffn_norm: weight("ffn_norm")?.dequantize(device)?,
                gate: Weight::new(weight("ffn_gate")?, device)?,
                up: Weight::new(weight("ffn_up")?, device)?,
                down: Weight::new(weight("ffn_down")?, device)?,
            });
        }
        let norm = tensor("output_norm.weight")?.dequantize(device)?;

        let inverse: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0 / freq_base.powf(i as f32 / head_dim as f32)).collect();
        let inverse = Tensor::new(inverse.as_slice(), device)?.reshape((1, head_dim / 2))?;
        let positions = Tensor::arange(0u32, MAX_POSITIONS as u32, device)?.to_dtype(DType::F32)?.reshape((MAX_POSITIONS, 1))?;
        let angles = positions.matmul(&inverse)?;
        Ok(Llama {
            embeddings,
            layers,
            norm,
            output,
            cos: angles.cos()?,
            sin: angles.sin()?,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            context_length,
        })
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Runs `tokens` (batch × new positions) after what `cache` holds and
    /// returns the logits of each sequence's last position (batch × vocab).
    pub fn forward(&self, tokens: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let (batch, steps) = tokens.dims2()?;
        let start = cache.len;
        if start + steps > self.context_length {
            candle_core::bail!("the sequence would exceed the model's context of {} tokens", self.context_length);
        }
        let device = tokens.device();
        let mask = self.mask(batch, steps, start, &cache.padding, device)?;
        let cos = self.cos.narrow(0, start, steps)?;
        let sin = self.sin.narrow(0, start, steps)?;
        let mut x = self.embeddings.index_select(&tokens.flatten_all()?, 0)?.to_dtype(DType::F32)?.reshape((batch, steps, ()))?;
        for (layer, kv) in self.layers.iter().zip(cache.kv.iter_mut()) {
            let attention_in = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            x = (self.attention(layer, &attention_in, &mask, &cos, &sin, kv)? + x)?;
            let mlp_in = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&mlp_in)?)? * layer.up.forward(&mlp_in)?)?;
            x = (layer.down.forward(&gated)? + x)?;
        }
        cache.len += steps;
        let last = candle_nn::ops::rms_norm(&x.i((.., steps - 1, ..))?.contiguous()?, &self.norm, self.eps)?;
        self.output.forward(&last)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (batch, steps, width) = x.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((batch, steps, n, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = heads(layer.wq.forward(x)?, self.n_head)?;
        let k = heads(layer.wk.forward(x)?, self.n_kv_head)?;
        let v = heads(layer.wv.forward(x)?, self.n_kv_head)?;
        let q = candle_nn::rotary_emb::rope_i(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cos, sin)?;
        let (k, v) = match kv.take() {
            Some((past_k, past_v)) => (Tensor::cat(&[&past_k, &k], 2)?, Tensor::cat(&[&past_v, &v], 2)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        // Grouped-query attention without copying keys and values per query
        // head: the query heads sharing a key/value head are stacked along
        // the position axis, so one matmul per key/value head covers them.
        let group = self.n_head / self.n_kv_head;
        let q = q.reshape((batch, self.n_kv_head, group * steps, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let weights = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let out = weights
            .matmul(&v)?
            .reshape((batch, self.n_head, steps, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, steps, width))?;
        layer.wo.forward(&out)
    }

    /// 0 where query `i` of sequence `b` may see key `j`, −∞ elsewhere: the
    /// future (causal) and the sequence's own left padding.
    ///
    /// Rows follow the stacked query layout of `attention`: row `r * steps
    /// + i` is query position `i` of the `r`-th head in a group.
    fn mask(&self, batch: usize, steps: usize, start: usize, padding: &[usize], device: &Device) -> Result<Tensor> {
        let keys = start + steps;
        let rows = (self.n_head / self.n_kv_head) * steps;
        let mut values = vec![0f32; batch * rows * keys];
        for (b, &pad) in padding.iter().enumerate() {
            for row in 0..rows {
                let position = start + row % steps;
                for j in 0..keys {
                    // A padding position sees only itself: a row with every
                    // key masked would softmax to NaN, and NaN spreads
                    // through the next layer's keys to the real tokens.
                    let hidden = j > position || (j < pad && j != position);
                    if hidden {
                        values[(b * rows + row) * keys + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Tensor::from_vec(values, (batch, 1, rows, keys), device)
    }
}

/// Logits as plain vectors, one per sequence.
pub fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    logits.to_dtype(DType::F32)?.to_vec2::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    #[test]
    fn dense_and_quantized_projections_agree() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (1536, 576), &device).unwrap();
        let weight = Weight::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap(), &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 38, 576), &device).unwrap();
        let dense = weight.forward(&x).unwrap();
        let quantized = weight.quantized.forward(&x).unwrap();
        let exact = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&dense, &exact) < 2.0, "dense {}", diff(&dense, &exact));
        assert!(diff(&quantized, &exact) < 2.0, "quantized {}", diff(&quantized, &exact));
    }

    /// The default model's own weights, when `cargo xtask setup` has
    /// fetched them: both projection paths give the same results.
    #[test]
    fn dense_and_quantized_agree_on_real_weights() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            return;
        }
        let device = Device::Cpu;
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "token_embd.weight"] {
            let q = content.tensor(&mut file, name, &device).unwrap();
            let q = if q.dtype() == GgmlDType::Q4_1 { QTensor::quantize(&q.dequantize(&device).unwrap(), GgmlDType::Q8_0).unwrap() } else { q };
            let shape = q.shape().clone();
            let weight = Weight::new(q, &device).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 5, shape.dims()[1]), &device).unwrap();
            let dense = weight.forward(&x).unwrap();
            let quantized = weight.quantized.forward(&x).unwrap();
            let d = (dense - quantized).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1.0, "{name}: {d}");
        }
    }
}
