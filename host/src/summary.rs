//! What a run did: the counts the progress line shows while it goes, the
//! closing line and usage table, and the `--report` JSON.
//!
//! Its own module because both the run loop (which fills it) and progress
//! reporters (which read it) need it, and neither should import the other.

use crate::bindings::Generation;
use std::time::Duration;

/// What a run did. Serialises as the `--report` JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The generation model's label.
    pub model: String,
    /// The model's provider: `openai`, `anthropic` or `local`.
    pub provider: String,
    /// The model id requested; for `Local`, what identifies the backend.
    pub model_id: String,
    /// Rows in the input.
    pub total_rows: u64,
    /// Rows written so far, failed and reused ones included.
    pub rows: u64,
    /// Rows written with an error instead of an output.
    pub failed: u64,
    /// Prompt tokens of the rows generated this run, as counted by the
    /// provider.
    pub input_tokens: u64,
    /// Generated tokens of the rows generated this run.
    pub output_tokens: u64,
    /// Rows taken from work saved by an earlier run: no request sent.
    pub reused: u64,
    /// Requests made for successful rows, retries included.
    pub attempts: u64,
    /// Times a 429 or an overload cut the concurrency limit.
    pub rate_limit_cuts: u64,
    /// The lowest concurrency limit of the run.
    pub lowest_concurrency: usize,
    /// The mean concurrency limit requests were admitted under: what the
    /// run settled at.
    pub mean_concurrency: f64,
    /// Answers that were 429, 503 or 529, retried or not.
    pub throttled: u64,
    /// Requests the component made to destinations the run does not allow.
    pub denied_requests: u64,
    /// Whether the rows went through the provider's batch API, whose
    /// tokens cost half the list price.
    pub batch_api: bool,
    /// Wall-clock time since the run started; seconds in the JSON.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Summary {
    /// Counts a row generated this run: its tokens and requests, or its
    /// failure.
    pub fn count(&mut self, result: &Result<Generation, String>) {
        match result {
            Ok(generation) => {
                self.input_tokens += u64::from(generation.input_tokens);
                self.output_tokens += u64::from(generation.output_tokens);
                self.attempts += u64::from(generation.attempts);
            }
            Err(_) => self.failed += 1,
        }
    }

    /// Requests beyond the first for rows generated this run.
    pub fn retries(&self) -> u64 {
        self.attempts.saturating_sub(self.rows - self.failed - self.reused)
    }

    /// Estimated USD for this run's tokens (see [`crate::cost`]).
    pub fn estimated_cost(&self) -> Option<f64> {
        let list = crate::cost::estimate(&self.provider, &self.model_id, self.input_tokens, self.output_tokens);
        // Both providers' batch APIs charge half the synchronous price.
        if self.batch_api { list.map(|usd| usd / 2.0) } else { list }
    }

    /// The `--report` document: the summary, plus the estimated cost, the
    /// date of the prices behind it, and the retries.
    pub fn report(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["estimated_cost_usd"] = self.estimated_cost().into();
        value["prices_as_of"] = crate::cost::PRICES_AS_OF.into();
        value["retries"] = self.retries().into();
        value
    }

    /// Usage and estimated cost, as a small table for the end of a run.
    pub fn usage_table(&self) -> String {
        let cost = match self.estimated_cost() {
            Some(usd) => format!("${usd:.4}"),
            None => "unknown (no price for this model id)".to_string(),
        };
        format!(
            "{:<20} {:<28} {:>12} {:>12}  {}\n{:<20} {:<28} {:>12} {:>12}  {} (list prices as of {})",
            "model",
            "model id",
            "tokens in",
            "tokens out",
            "estimated cost",
            self.model,
            self.model_id,
            self.input_tokens,
            self.output_tokens,
            cost,
            crate::cost::PRICES_AS_OF
        )
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} rows, {} failed, {} reused from saved work, tokens in {} / out {}, {} requests, {} rate-limit cuts (lowest concurrency {}), {:.2} s ({:.1} rows/s)",
            self.rows,
            self.failed,
            self.reused,
            self.input_tokens,
            self.output_tokens,
            self.attempts,
            self.rate_limit_cuts,
            self.lowest_concurrency,
            seconds,
            if seconds > 0.0 { self.rows as f64 / seconds } else { 0.0 }
        )
    }
}
