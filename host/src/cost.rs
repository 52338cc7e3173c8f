//! Estimated cost of a run's tokens, from list prices.
//!
//! Providers change prices; these are their published per-million-token
//! list prices for standard (non-batch, uncached) requests as of
//! [`PRICES_AS_OF`]. The estimate is a guide, not a bill.

/// When the prices below were taken.
pub const PRICES_AS_OF: &str = "2025-10";

/// USD per million input and output tokens, by model id prefix (the
/// longest matching prefix wins, so dated snapshots match their family).
const PRICES: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-haiku-4-5", 1.00, 5.00),
    ("claude-sonnet-4-5", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
];

/// Estimated USD for the tokens of a run; `Some(0.0)` for the local model,
/// `None` for a model id the table does not know.
pub fn estimate(provider: &str, model_id: &str, input_tokens: u64, output_tokens: u64) -> Option<f64> {
    if provider == "local" {
        return Some(0.0);
    }
    let (_, input, output) = PRICES
        .iter()
        .filter(|(prefix, _, _)| model_id.starts_with(prefix))
        .max_by_key(|(prefix, _, _)| prefix.len())?;
    Some((input_tokens as f64 * input + output_tokens as f64 * output) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_prices_a_model() {
        assert_eq!(estimate("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000), Some(0.75));
        assert_eq!(estimate("openai", "gpt-4o", 2_000_000, 0), Some(5.0));
        assert_eq!(estimate("local", "anything", 5, 5), Some(0.0));
        assert_eq!(estimate("openai", "o9-preview", 5, 5), None);
    }
}
