//! Choosing the next token: greedy at temperature 0, else temperature and
//! nucleus (top-p) sampling from a seeded generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    pub fn new(temperature: f64, top_p: f64, seed: u64) -> Sampler {
        Sampler { temperature, top_p, rng: StdRng::seed_from_u64(seed) }
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Tokens below a 1e-12 share of the top token's weight cannot matter
        // (all of them together hold under 1e-7 of the mass), so only the
        // others are weighed: a comparison per token instead of an exp.
        let floor = max + ((1e-12f64).ln() * self.temperature) as f32;
        let mut candidates: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l >= floor)
            .map(|(i, &l)| (i as u32, (f64::from(l - max) / self.temperature).exp()))
            .collect();
        if self.top_p < 1.0 {
            let total: f64 = candidates.iter().map(|(_, p)| p).sum();
            let cut = nucleus(&mut candidates, self.top_p * total);
            candidates.truncate(cut);
        }
        let total: f64 = candidates.iter().map(|(_, p)| p).sum();
        let mut target = self.rng.random::<f64>() * total;
        for &(token, p) in &candidates {
            if target < p {
                return token;
            }
            target -= p;
        }
        candidates.last().map_or(0, |(t, _)| *t)
    }
}

/// Orders the heaviest candidates first and returns how many of them it
/// takes to reach `mass`. The nucleus is usually a few dozen tokens out of
/// thousands of candidates, so only a growing head is sorted: select the
/// `k` heaviest, sort them, and look again with 4·k if they fall short.
fn nucleus(candidates: &mut [(u32, f64)], mass: f64) -> usize {
    let heavier = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut k = 64;
    loop {
        let head = k.min(candidates.len());
        if head < candidates.len() {
            candidates.select_nth_unstable_by(head - 1, heavier);
        }
        candidates[..head].sort_unstable_by(heavier);
        let mut kept = 0.0;
        for (i, (_, p)) in candidates[..head].iter().enumerate() {
            kept += p;
            if kept >= mass {
                return i + 1;
            }
        }
        if head == candidates.len() {
            return head.max(1);
        }
        k *= 4;
    }
}

/// The next token of every sequence, `rows[i]` being the logits for
/// `samplers[i]`. Rows are spread over candle's worker threads: sampling a
/// vocabulary of 49k for 16 sequences is otherwise serial time on every
/// step.
pub fn sample_all<'a>(samplers: impl IntoIterator<Item = &'a mut Sampler>, rows: &[Vec<f32>]) -> Vec<u32> {
    let mut draws: Vec<(&mut Sampler, &[f32], u32)> =
        samplers.into_iter().zip(rows).map(|(sampler, row)| (sampler, row.as_slice(), 0)).collect();
    super::parallel::for_each(&mut draws, || (), |(), (sampler, row, token)| *token = sampler.next(row));
    draws.into_iter().map(|(_, _, token)| token).collect()
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best }).0
        as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest() {
        assert_eq!(Sampler::new(0.0, 1.0, 1).next(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds almost all the mass: a small top_p always picks it.
        let logits = [10.0, 0.0, 0.0, 0.0];
        let mut sampler = Sampler::new(1.0, 0.5, 7);
        assert!((0..200).all(|_| sampler.next(&logits) == 0));
    }

    /// The nucleus is the smallest heaviest-first set reaching the mass,
    /// also when it is larger than the first sorted head.
    #[test]
    fn nucleus_takes_the_heaviest_until_the_mass() {
        let mut candidates: Vec<(u32, f64)> = (0..1000).map(|i| (i, 1.0 + (i % 10) as f64)).collect();
        // 100 tokens each of weights 1 to 10: the tens hold 1000 of the 5500.
        assert_eq!(nucleus(&mut candidates.clone(), 1000.0), 100);
        // 2000 takes the tens, the nines (900) and 13 eights (104).
        let cut = nucleus(&mut candidates, 2000.0);
        assert_eq!(cut, 213);
        assert!(candidates[..cut].windows(2).all(|pair| pair[0].1 >= pair[1].1));
        assert!(candidates[cut..].iter().all(|c| c.1 <= 8.0));
    }

    #[test]
    fn the_same_seed_samples_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut sampler = Sampler::new(0.9, 0.95, seed);
            (0..30).map(|_| sampler.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
