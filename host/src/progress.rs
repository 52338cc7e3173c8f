//! What a run reports while it goes: for progress bars, logs and embedders.

use crate::summary::Summary;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives a run's progress. Calls come from the task driving the run,
/// after each batch is written, so implementations should be quick.
pub trait Progress: Send + Sync {
    /// The input holds `rows` rows (known after the validation pass).
    fn started(&self, _rows: u64) {}
    /// Another batch was written; `so_far` counts everything up to it.
    fn advanced(&self, _so_far: &Summary) {}
    /// A line about a provider batch job (`--batch-api`): submitted, its
    /// state and counts at each poll, failed.
    fn job(&self, _line: &str) {}
    /// The output is complete.
    fn finished(&self, _summary: &Summary) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// Progress on stderr: a bar on a terminal, a plain line every few seconds
/// otherwise (logs, CI), nothing with `--quiet`.
pub struct StderrProgress {
    bar: Option<ProgressBar>,
    plain: bool,
    every: Duration,
    last_line: Mutex<Option<Instant>>,
}

/// How often the plain (non-terminal) progress line is printed, unless
/// `BATCHGEN_PROGRESS_EVERY` (seconds) says otherwise.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl StderrProgress {
    /// A bar when stderr is a terminal, plain lines when it is not, nothing
    /// when `quiet`.
    pub fn new(quiet: bool) -> StderrProgress {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} rows  ETA {eta}  {msg}").expect("a valid template"),
            );
            bar
        });
        let every = std::env::var("BATCHGEN_PROGRESS_EVERY")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(PLAIN_EVERY);
        StderrProgress { bar, plain: !quiet && !terminal, every, last_line: Mutex::new(None) }
    }
}

impl Progress for StderrProgress {
    fn started(&self, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(rows);
        }
    }

    fn advanced(&self, so_far: &Summary) {
        let rate = so_far.rows as f64 / so_far.elapsed.as_secs_f64().max(1e-9);
        let note = format!(
            "{rate:.1} rows/s, {} failed, {} retries, {} reused",
            so_far.failed,
            so_far.retries(),
            so_far.reused
        );
        if let Some(bar) = &self.bar {
            bar.set_position(so_far.rows);
            bar.set_message(note);
        } else if self.plain {
            let mut last = self.last_line.lock().unwrap();
            let due = last.is_none_or(|at| at.elapsed() >= self.every);
            if due {
                *last = Some(Instant::now());
                let left = so_far.total_rows.saturating_sub(so_far.rows) as f64 / rate.max(1e-9);
                eprintln!(
                    "batchgen: {}/{} rows ({:.0}%), ETA {left:.0} s, {note}",
                    so_far.rows,
                    so_far.total_rows,
                    100.0 * so_far.rows as f64 / so_far.total_rows.max(1) as f64
                );
            }
        }
    }

    fn job(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("batchgen: {line}")),
            None if self.plain => eprintln!("batchgen: {line}"),
            None => {}
        }
    }

    fn finished(&self, _: &Summary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
