//! The model's linear projections, kept in the layout candle multiplies
//! fastest on this CPU.
//!
//! candle 0.11.1 has an int8 kernel for Q8_0 weights on x86 CPUs with VNNI
//! (`vpdpbusd`): it repacks the weights into 16-column tiles once and then
//! reads each tile once for up to 16 activation rows, so a batch of
//! sequences costs barely more weight traffic than one. The kernel takes
//! only widths that are a multiple of 256, and SmolLM2's width is 576, so
//! such weights are padded here with zero blocks to the next multiple (768)
//! and the activations with zero columns to match: the products of the
//! padding are exactly zero, and the kernel's speed more than repays the
//! wasted third.
//!
//! Without VNNI, candle's portable Q8_0 kernel does the same work for every
//! row, so a batch gains less through it (1.40× for 16 sequences, measured
//! with `MISTRALRS_FORCE_AVX2=1`). A dequantized f32 copy for a dense GEMM
//! was tried there and dropped: four times the model's size in memory (7 GB
//! for a 1.7B model) for a similar gain.

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{D, Device, Module, Result, Tensor};
use std::borrow::Cow;

/// The width granularity of candle's repacked x86 kernels (`QK_K`).
const KERNEL_WIDTH: usize = 256;

pub struct Projection {
    matmuls: Vec<QMatMul>,
    /// Zero columns appended to each activation row (0: none).
    padding: usize,
}

impl Projection {
    /// One projection computing `parts` side by side: the output holds each
    /// part's columns in turn. Parts of the same format are fused into one
    /// matrix, so the input is quantized and the threads woken once.
    pub fn new(parts: Vec<QTensor>, device: &Device) -> Result<Projection> {
        let dtype = parts[0].dtype();
        let width = parts[0].shape().dims2()?.1;
        for part in &parts {
            let (_, part_width) = part.shape().dims2()?;
            if part_width != width {
                candle_core::bail!("projections of different input widths ({width} and {part_width}) cannot be fused");
            }
        }
        if parts.iter().any(|part| part.dtype() != dtype) {
            // Mixed formats (as some quantization mixes use) stay separate.
            let matmuls = parts.into_iter().map(QMatMul::from_qtensor).collect::<Result<_>>()?;
            return Ok(Projection { matmuls, padding: 0 });
        }
        let rows: usize = parts.iter().map(|part| part.shape().dims()[0]).sum();
        let padded = width.next_multiple_of(KERNEL_WIDTH);
        let padding = if dtype == GgmlDType::Q8_0 && has_int8_kernel() { padded - width } else { 0 };
        let fused = if parts.len() == 1 && padding == 0 {
            parts.into_iter().next().expect("one part")
        } else {
            let row_bytes = width / dtype.block_size() * dtype.type_size();
            // A zero Q8_0 block (scale 0, quants 0) contributes exactly nothing.
            let padded_row_bytes = (width + padding) / dtype.block_size() * dtype.type_size();
            let mut bytes = vec![0u8; rows * padded_row_bytes];
            let mut out = bytes.chunks_exact_mut(padded_row_bytes);
            for part in &parts {
                for row in part.data()?.chunks_exact(row_bytes) {
                    out.next().expect("sized for every row")[..row_bytes].copy_from_slice(row);
                }
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype)?;
            QTensor::new(storage, (rows, width + padding))?
        };
        Ok(Projection { matmuls: vec![QMatMul::from_qtensor(fused)?], padding })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded;
        let x = if self.padding == 0 {
            x
        } else {
            padded = x.pad_with_zeros(D::Minus1, 0, self.padding)?;
            &padded
        };
        match self.matmuls.as_slice() {
            [matmul] => matmul.forward(x),
            parts => Tensor::cat(&parts.iter().map(|part| part.forward(x)).collect::<Result<Vec<_>>>()?, D::Minus1),
        }
    }
}

/// Whether candle takes its repacked int8 path for Q8_0 weights: the same
/// test candle applies (AVX-512 VNNI, or AVX-VNNI), so padding is never
/// paid for without the kernel that repays it.
fn has_int8_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let forced_off = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
        let avx512 =
            std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni");
        let avx = std::arch::is_x86_feature_detected!("avxvnni") && std::arch::is_x86_feature_detected!("avx2");
        !forced_off && (avx512 || avx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Padded or not, fused or not, one row or a batch, the product is the matrix product
    /// (within int8 rounding), and every row of a batch equals that row alone.
    #[test]
    fn projections_match_the_exact_product() {
        let device = Device::Cpu;
        for (parts, k) in [(vec![1536], 576), (vec![576], 1536), (vec![576, 192, 192], 576)] {
            let parts: Vec<Tensor> =
                parts.iter().map(|&n| Tensor::randn(0f32, 1.0, (n, k), &device).unwrap()).collect();
            let quantized = parts.iter().map(|w| QTensor::quantize(w, GgmlDType::Q8_0).unwrap()).collect();
            let projection = Projection::new(quantized, &device).unwrap();
            let w = Tensor::cat(&parts, 0).unwrap();
            let n = w.dim(0).unwrap();
            let x = Tensor::randn(0f32, 1.0, (16, 1, k), &device).unwrap();
            let exact = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            let batch = projection.forward(&x).unwrap();
            assert_eq!(batch.dims(), &[16, 1, n]);
            // Products of k unit normals have a spread of √k ≈ 24–39.
            let error = max_difference(&batch, &exact);
            assert!(error < 2.5, "({n}, {k}): batch differs from the exact product by {error}");
            for row in [0, 7, 15] {
                let alone = projection.forward(&x.narrow(0, row, 1).unwrap()).unwrap();
                let error = max_difference(&alone, &batch.narrow(0, row, 1).unwrap());
                assert!(error < 1e-3, "({n}, {k}) row {row}: alone differs from in a batch by {error}");
            }
        }
    }
}
