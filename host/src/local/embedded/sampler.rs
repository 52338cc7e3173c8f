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
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        // Tokens below a 1e-12 share of the top token's weight cannot matter
        // (all of them together hold under 1e-7 of the mass); dropping them
        // first keeps the top-p sort to a few hundred candidates, not the
        // whole vocabulary, on every step of every sequence.
        let floor = (1e-12f64).ln() * self.temperature;
        let mut probabilities: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l as f64 - max >= floor)
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / self.temperature).exp()))
            .collect();
        let total: f64 = probabilities.iter().map(|(_, p)| p).sum();
        if self.top_p < 1.0 {
            probabilities.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let mut kept = 0.0;
            let mut cut = probabilities.len();
            for (i, (_, p)) in probabilities.iter().enumerate() {
                kept += p / total;
                if kept >= self.top_p {
                    cut = i + 1;
                    break;
                }
            }
            probabilities.truncate(cut.max(1));
        }
        let total: f64 = probabilities.iter().map(|(_, p)| p).sum();
        let mut target = self.rng.random::<f64>() * total;
        for &(token, p) in &probabilities {
            if target < p {
                return token;
            }
            target -= p;
        }
        probabilities.last().map_or(0, |(t, _)| *t)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best }).0 as u32
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
