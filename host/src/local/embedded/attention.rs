//! Grouped-query attention over a growing key/value cache, written for
//! decoding: a handful of new positions per sequence against a cache that
//! grows by one position per step.
//!
//! Through general tensor operations every step would copy the whole cache
//! to append one position, build a mask, and run dozens of tiny matrix
//! products; here each sequence's keys and values live in their own growing
//! buffers and one pass per (sequence, key/value head) computes the scores,
//! the softmax and the weighted sum.
//!
//! Sequences are ragged: each has its own length and its own positions,
//! and a pass may add a different number of rows to each (a prompt's
//! tokens, or one token while decoding). There is no padding and no mask,
//! and a sequence's rows go through exactly the same arithmetic alone or in
//! any batch.

/// Rows of one sequence per work item: small enough that one long prompt
/// spreads over every thread, large enough to keep scheduling cheap.
const ROWS_PER_ITEM: usize = 32;

/// The attention shape of a model.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub query: usize,
    pub key_value: usize,
    pub dim: usize,
}

impl Heads {
    /// Query heads sharing one key/value head.
    fn group(&self) -> usize {
        self.query / self.key_value
    }

    /// Width of one position's fused query, key and value projection.
    pub fn qkv_width(&self) -> usize {
        (self.query + 2 * self.key_value) * self.dim
    }
}

/// Rotary embedding tables: `cos[p * dim / 2 + i]` for position `p`.
pub struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rotary {
    pub fn new(dim: usize, base: f32, positions: usize) -> Rotary {
        let half = dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for i in 0..half {
                let angle = p as f32 / base.powf((2 * i) as f32 / dim as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rotary { cos, sin, half }
    }

    /// Rotates consecutive pairs of `x` (llama's GGUF layout) to `position`.
    fn apply(&self, x: &mut [f32], position: usize) {
        let cos = &self.cos[position * self.half..][..self.half];
        let sin = &self.sin[position * self.half..][..self.half];
        for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// One layer's keys and values: a buffer per (sequence, key/value head),
/// `dim` floats per position.
pub struct LayerCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl LayerCache {
    pub fn new(sequences: usize, heads: &Heads) -> LayerCache {
        LayerCache {
            keys: vec![Vec::new(); sequences * heads.key_value],
            values: vec![Vec::new(); sequences * heads.key_value],
        }
    }

    /// Adds a sequence that starts as `from`'s first sequence (a prompt
    /// prefix sequences share, computed once).
    pub fn push_copy(&mut self, from: &LayerCache, heads: &Heads) {
        self.keys.extend_from_slice(&from.keys[..heads.key_value]);
        self.values.extend_from_slice(&from.values[..heads.key_value]);
    }

    /// Keeps the sequences at `keep`, in that order.
    pub fn retain(&mut self, keep: &[usize], heads: &Heads) {
        let pick = |buffers: &mut Vec<Vec<f32>>| {
            let mut old: Vec<Option<Vec<f32>>> = std::mem::take(buffers).into_iter().map(Some).collect();
            *buffers = keep
                .iter()
                .flat_map(|&b| (0..heads.key_value).map(move |h| b * heads.key_value + h))
                .map(|i| old[i].take().expect("each sequence kept once"))
                .collect();
        };
        pick(&mut self.keys);
        pick(&mut self.values);
    }
}

/// The rows of one pass: sequence `b` has `lengths[b]` positions cached
/// and adds `counts[b]` rows; rows are laid out sequence after sequence.
pub struct Rows<'a> {
    pub lengths: &'a [usize],
    pub counts: &'a [usize],
}

/// Appends the new keys and values in `qkv` (rows × qkv width, as the
/// fused projection returns them) to `cache`, then returns the attention
/// output, rows × (query heads × dim).
pub fn attend(qkv: &mut [f32], cache: &mut LayerCache, rows: &Rows, heads: &Heads, rotary: &Rotary) -> Vec<f32> {
    let Heads { query, key_value, dim } = *heads;
    let width = heads.qkv_width();
    let firsts: Vec<usize> =
        rows.counts.iter().scan(0, |next, &count| Some(std::mem::replace(next, *next + count))).collect();
    let total: usize = rows.counts.iter().sum();
    debug_assert_eq!(qkv.len(), total * width);
    // Rotate the new queries and keys to their positions, and append keys
    // and values.
    for (b, (&length, &first)) in rows.lengths.iter().zip(&firsts).enumerate() {
        for i in 0..rows.counts[b] {
            let row = &mut qkv[(first + i) * width..][..width];
            for head in row[..(query + key_value) * dim].chunks_exact_mut(dim) {
                rotary.apply(head, length + i);
            }
            let (keys, values) = row[query * dim..].split_at(key_value * dim);
            for h in 0..key_value {
                cache.keys[b * key_value + h].extend_from_slice(&keys[h * dim..][..dim]);
                cache.values[b * key_value + h].extend_from_slice(&values[h * dim..][..dim]);
            }
        }
    }

    // Work items of up to `ROWS_PER_ITEM` rows of one (sequence, key/value
    // head), each with its own output block laid out [row][query head in
    // group][dim]: a long prompt of one sequence still spreads over every
    // thread.
    let group = heads.group();
    let mut items: Vec<(usize, usize, std::ops::Range<usize>, Vec<f32>)> = (0..rows.counts.len())
        .flat_map(|b| (0..key_value).map(move |h| (b, h)))
        .flat_map(|(b, h)| {
            (0..rows.counts[b]).step_by(ROWS_PER_ITEM).map(move |i| (b, h, i..(i + ROWS_PER_ITEM).min(rows.counts[b])))
        })
        .map(|(b, h, range)| (b, h, range.clone(), vec![0f32; range.len() * group * dim]))
        .collect();
    let qkv: &[f32] = qkv;
    let cache: &LayerCache = cache;
    let scale = 1.0 / (dim as f32).sqrt();
    super::parallel::for_each(&mut items, Vec::new, |scores, (b, h, range, out)| {
        let (keys, values) = (&cache.keys[*b * key_value + *h], &cache.values[*b * key_value + *h]);
        for (i, out) in range.clone().zip(out.chunks_exact_mut(group * dim)) {
            // A row sees its sequence up to and including itself.
            let seen = (rows.lengths[*b] + i + 1) * dim;
            let queries = &qkv[(firsts[*b] + i) * width + *h * group * dim..][..group * dim];
            heads_over_keys(queries, &keys[..seen], &values[..seen], dim, scale, scores, out);
        }
    });

    // Back to rows × (query heads × dim).
    let mut result = vec![0f32; total * query * dim];
    for (b, h, range, block) in items {
        for (i, from) in range.zip(block.chunks_exact(group * dim)) {
            result[((firsts[b] + i) * query + h * group) * dim..][..group * dim].copy_from_slice(from);
        }
    }
    result
}

/// The query heads of one group (`queries`, `dim` each) against the keys
/// and values they share, adding each head's output into `out`. Compiled
/// twice: for AVX2 with FMA when the CPU has them (chosen at run time, as
/// the portable build targets plain x86-64), and portable. Both give the
/// same results: lanes are summed in the same fixed order, and products
/// are never fused into FMAs without explicit instructions to do so.
fn heads_over_keys(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { heads_over_keys_avx2(queries, keys, values, dim, scale, scores, out) };
    }
    heads_over_keys_portable(queries, keys, values, dim, scale, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn heads_over_keys_avx2(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    heads_over_keys_portable(queries, keys, values, dim, scale, scores, out)
}

#[inline(always)]
fn heads_over_keys_portable(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    // Each key and value is read once for all the heads of the group.
    // Plain loops rather than iterator adapters: these must inline into the
    // AVX2 copy, and a generic adapter's `fold` may not.
    let positions = keys.len() / dim;
    scores.clear();
    scores.resize(queries.len() / dim * positions, 0.0);
    for (j, k) in keys.chunks_exact(dim).enumerate() {
        for (g, q) in queries.chunks_exact(dim).enumerate() {
            scores[g * positions + j] = dot(q, k) * scale;
        }
    }
    for head in scores.chunks_exact_mut(positions) {
        softmax(head);
    }
    for (j, v) in values.chunks_exact(dim).enumerate() {
        for (g, out) in out.chunks_exact_mut(dim).enumerate() {
            let weight = scores[g * positions + j];
            for (o, &x) in out.iter_mut().zip(v) {
                *o += weight * x;
            }
        }
    }
}

/// A dot product in independent lanes, so that it vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut sum = 0.0;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        sum += x * y;
    }
    for (x, y) in a_chunks.zip(b_chunks) {
        let (x, y): (&[f32; 8], &[f32; 8]) = (x.try_into().expect("8 wide"), y.try_into().expect("8 wide"));
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    for lane in lanes {
        sum += lane;
    }
    sum
}

#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for &s in scores.iter() {
        max = max.max(s);
    }
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    for s in scores.iter_mut() {
        *s /= total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADS: Heads = Heads { query: 4, key_value: 2, dim: 8 };

    /// Attention computed the plain way: every query head against its
    /// key/value head over positions `0..=position` of one sequence.
    fn reference(sequence: &[Vec<f32>], rotary: &Rotary) -> Vec<Vec<f32>> {
        let Heads { query, key_value, dim } = HEADS;
        let rotated: Vec<Vec<f32>> = sequence
            .iter()
            .enumerate()
            .map(|(p, row)| {
                let mut row = row.clone();
                for head in row[..(query + key_value) * dim].chunks_exact_mut(dim) {
                    rotary.apply(head, p);
                }
                row
            })
            .collect();
        rotated
            .iter()
            .enumerate()
            .map(|(p, row)| {
                let mut out = vec![0f32; query * dim];
                for qh in 0..query {
                    let kv = qh / (query / key_value);
                    let q = &row[qh * dim..][..dim];
                    let scores: Vec<f32> = (0..=p)
                        .map(|j| {
                            let k = &rotated[j][(query + kv) * dim..][..dim];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (dim as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = weights.iter().sum();
                    for (j, w) in weights.iter().enumerate() {
                        let v = &rotated[j][(query + key_value + kv) * dim..][..dim];
                        for (o, x) in out[qh * dim..][..dim].iter_mut().zip(v) {
                            *o += w / total * x;
                        }
                    }
                }
                out
            })
            .collect()
    }

    fn random_rows(count: usize, seed: u32) -> Vec<Vec<f32>> {
        // A small deterministic generator: the test needs varied numbers, not randomness.
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..count)
            .map(|_| {
                (0..HEADS.qkv_width())
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        (state % 2000) as f32 / 1000.0 - 1.0
                    })
                    .collect()
            })
            .collect()
    }

    /// Two sequences fed ragged passes (prompts of different lengths, then
    /// one row each, then uneven rows again) after copies of a shared prefix:
    /// every row matches the plain computation on its sequence alone.
    #[test]
    fn ragged_passes_match_each_sequence_alone() {
        let rotary = Rotary::new(HEADS.dim, 10_000.0, 64);
        let prefix = random_rows(2, 3);
        let sequences: Vec<Vec<Vec<f32>>> = [random_rows(5, 1), random_rows(4, 2)]
            .into_iter()
            .map(|rest| prefix.iter().cloned().chain(rest).collect())
            .collect();
        let expected: Vec<Vec<Vec<f32>>> = sequences.iter().map(|s| reference(s, &rotary)).collect();
        let mut shared = LayerCache::new(1, &HEADS);
        let mut qkv: Vec<f32> = prefix.concat();
        attend(&mut qkv, &mut shared, &Rows { lengths: &[0], counts: &[2] }, &HEADS, &rotary);
        let mut cache = LayerCache::new(0, &HEADS);
        cache.push_copy(&shared, &HEADS);
        cache.push_copy(&shared, &HEADS);
        let mut lengths = vec![2, 2];
        for counts in [[2, 1], [1, 1], [2, 1]] {
            let mut qkv: Vec<f32> = Vec::new();
            for (sequence, (&length, &count)) in sequences.iter().zip(lengths.iter().zip(&counts)) {
                qkv.extend(sequence[length..length + count].concat());
            }
            let out = attend(&mut qkv, &mut cache, &Rows { lengths: &lengths, counts: &counts }, &HEADS, &rotary);
            let width = HEADS.query * HEADS.dim;
            let mut row = 0;
            for (b, &count) in counts.iter().enumerate() {
                for (position, want) in expected[b].iter().enumerate().skip(lengths[b]).take(count) {
                    let got = &out[row * width..][..width];
                    let difference = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(difference < 1e-5, "sequence {b} position {position}: off by {difference}");
                    row += 1;
                }
                lengths[b] += count;
            }
        }
    }

    /// A prompt longer than one work item (split over several) next to a
    /// short one matches the plain computation row for row.
    #[test]
    fn long_prompts_split_over_work_items_match() {
        let rotary = Rotary::new(HEADS.dim, 10_000.0, 128);
        let sequences = [random_rows(2 * ROWS_PER_ITEM + 5, 4), random_rows(3, 5)];
        let mut cache = LayerCache::new(2, &HEADS);
        let counts = [sequences[0].len(), sequences[1].len()];
        let mut qkv: Vec<f32> = sequences.iter().flat_map(|s| s.concat()).collect();
        let out = attend(&mut qkv, &mut cache, &Rows { lengths: &[0, 0], counts: &counts }, &HEADS, &rotary);
        let width = HEADS.query * HEADS.dim;
        let expected: Vec<Vec<f32>> = sequences.iter().flat_map(|s| reference(s, &rotary)).collect();
        for (row, expected) in expected.iter().enumerate() {
            let difference =
                out[row * width..][..width].iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(difference < 1e-5, "row {row}: off by {difference}");
        }
    }

    #[test]
    fn retain_keeps_the_chosen_sequences_in_order() {
        let mut cache = LayerCache {
            keys: (0..6).map(|i| vec![i as f32]).collect(),
            values: (0..6).map(|i| vec![10.0 + i as f32]).collect(),
        };
        cache.retain(&[2, 0], &Heads { query: 2, key_value: 2, dim: 1 });
        assert_eq!(cache.keys, vec![vec![4.0], vec![5.0], vec![0.0], vec![1.0]]);
        assert_eq!(cache.values, vec![vec![14.0], vec![15.0], vec![10.0], vec![11.0]]);
    }
}
