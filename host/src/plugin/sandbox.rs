//! What a component may consume, and where its output goes.
//!
//! A component is untrusted code: it gets bounded memory, tables and
//! instances, a deadline per call (enforced by epoch interruption, so a
//! busy loop is stopped as surely as a guest blocked in `poll`), optional
//! fuel, and a capped log for its stdout and stderr.

use super::PluginError;
use super::host_memory::HostBudget;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// How often the epoch advances: the granularity of call deadlines and of
/// the component yielding to the host's other work.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Resource limits for each instance: the `batchgen run` flags that set
/// them, each defined (with its default) once, here.
///
/// The defaults are generous for the real component (it needs ~2 MiB for a
/// 256-row batch) and tight enough that a hostile one cannot hurt the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Linear memory per component instance, in MiB.
    #[arg(id = "max_memory", long = "max-memory", value_name = "MIB", default_value = "512", value_parser = mebibytes)]
    pub memory_bytes: usize,
    /// Elements per component table.
    #[arg(id = "max_table_elements", long = "max-table-elements", value_name = "N", default_value_t = 100_000)]
    pub table_elements: usize,
    /// Core instances per component.
    #[arg(id = "max_instances", long = "max-instances", value_name = "N", default_value_t = 32)]
    pub instances: usize,
    /// Deadline for one call into the component (`generate-batch` included), in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = positive_seconds)]
    pub call_timeout: Duration,
    /// Fuel per call (instructions, roughly); off by default, as metering costs speed.
    #[arg(long, value_name = "UNITS")]
    pub fuel: Option<u64>,
    /// Largest provider reply passed to the component, in MiB.
    #[arg(id = "max_reply_size", long = "max-reply-size", value_name = "MIB", default_value = "32", value_parser = mebibytes)]
    pub max_reply_bytes: usize,
    /// Host memory per instance for what the component holds through `wasi:http` (header fields, requests and
    /// bodies not yet sent, requests in flight and their buffered replies), in MiB.
    #[arg(id = "max_host_memory", long = "max-host-memory", value_name = "MIB", default_value = "256", value_parser = mebibytes)]
    pub host_memory_bytes: usize,
    /// Bytes of stdout and stderr logged per instance; the rest is dropped.
    #[arg(skip = 64usize << 10)]
    pub log_bytes: usize,
    /// Rows per call: a run sets it to its batch size. It caps the requests
    /// in flight and those of one `local-model` call.
    #[arg(skip = 128usize)]
    pub batch_size: usize,
}

impl Default for Limits {
    /// The flags' defaults, so that they are written only once.
    fn default() -> Limits {
        crate::defaults::from_clap()
    }
}

/// A size flag in MiB, as bytes.
fn mebibytes(text: &str) -> Result<usize, String> {
    let mib: usize = text.parse().map_err(|_| format!("{text:?} is not a whole number of MiB"))?;
    Ok(mib.saturating_mul(1 << 20))
}

/// A deadline flag: a positive number of seconds.
fn positive_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{text} is not a positive number of seconds"))
}

impl Limits {
    /// The store limiter that enforces these limits.
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.memory_bytes)
            .table_elements(self.table_elements)
            .instances(self.instances)
            .tables(self.instances.saturating_mul(4))
            .memories(self.instances)
            // A failed grow traps instead of returning -1, which most guest
            // allocators turn into an abort anyway: the error names the limit.
            .trap_on_grow_failure(true)
            .build()
    }

    /// How `--max-host-memory` is split for this batch size; an error
    /// names the smallest budget that would do.
    pub fn host_budget(&self) -> Result<HostBudget, PluginError> {
        HostBudget::new(self.host_memory_bytes, self.batch_size).map_err(|needed| PluginError::HostBudgetTooSmall {
            budget: self.host_memory_bytes >> 20,
            batch_size: self.batch_size,
            needed,
        })
    }

    /// Epoch ticks in one call deadline.
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine` on a thread of its own.
    pub fn start(engine: &Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("batchgen-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("the epoch thread starts");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A component's stdout or stderr: logged through `tracing` under the
/// target `batchgen::guest`, up to a byte budget shared by both streams;
/// beyond it output is dropped (and the component is not told, so a chatty
/// component keeps working).
#[derive(Clone)]
pub struct GuestLog {
    stream: &'static str,
    budget: Arc<AtomicUsize>,
    /// stderr only: its last lines, whatever the budget.
    tail: Option<StderrTail>,
}

impl GuestLog {
    /// A stdout and a stderr sharing `bytes` of budget.
    pub fn pair(bytes: usize) -> (GuestLog, GuestLog) {
        let budget = Arc::new(AtomicUsize::new(bytes));
        let stdout = GuestLog { stream: "stdout", budget: Arc::clone(&budget), tail: None };
        (stdout, GuestLog { stream: "stderr", budget, tail: Some(StderrTail::default()) })
    }

    /// The last lines written to this stream (empty for stdout).
    pub fn tail(&self) -> StderrTail {
        self.tail.clone().unwrap_or_default()
    }
}

/// Lines of stderr kept, and characters kept of each: enough for a panic's
/// location and message, bounded whatever the component writes.
const TAIL_LINES: usize = 4;
const TAIL_LINE_CHARS: usize = 500;

/// The last lines a component wrote to stderr, kept so that its panic
/// message can reach the user in the row's error, not only the log.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, text: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            lines.push_back(escape_controls(&line.chars().take(TAIL_LINE_CHARS).collect::<String>()));
            if lines.len() > TAIL_LINES {
                lines.pop_front();
            }
        }
    }

    /// The message of the last panic printed: Rust prints `thread '...'
    /// panicked at FILE:LINE:COL:` and the message on the next line.
    pub fn panic_message(&self) -> Option<String> {
        let lines = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = lines.iter().rposition(|line| line.contains("panicked at"))?;
        Some(lines.get(at + 1).unwrap_or(&lines[at]).clone())
    }
}

/// `text` with every control character (escape sequences, carriage
/// returns, the rest of C0 and C1) written as a Rust escape.
fn escape_controls(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    })
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let wanted = buf.len();
        if let Some(tail) = &self.tail {
            // Only the end can hold the last lines; a flood costs no more.
            let from = wanted.saturating_sub(TAIL_LINES * TAIL_LINE_CHARS * 4);
            tail.push(&String::from_utf8_lossy(&buf[from..]));
        }
        let (mut before, mut granted) = (0, 0);
        let _ = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            (before, granted) = (left, left.min(wanted));
            Some(left - granted)
        });
        if granted > 0 {
            // Each line on a log line of its own, marked as the component's,
            // its control characters escaped: a component cannot end a line
            // early and print one that looks like the host's.
            for line in String::from_utf8_lossy(&buf[..granted]).lines() {
                let line = escape_controls(line);
                match self.stream {
                    "stderr" => tracing::warn!(target: "batchgen::guest", "component stderr: {line}"),
                    _ => tracing::info!(target: "batchgen::guest", "component stdout: {line}"),
                }
            }
            // Said once: by the write that spends the last of the budget.
            if granted == before {
                tracing::warn!(target: "batchgen::guest", "component output reached the log cap; the rest is dropped");
            }
        }
        Poll::Ready(Ok(wanted))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn a_panic_message_is_found_in_the_tail_of_stderr() {
        let tail = super::StderrTail::default();
        assert_eq!(tail.panic_message(), None);
        tail.push("noise\nthread '<unnamed>' panicked at src/lib.rs:9:5:\nthe reason\u{1b}[0m\n");
        assert_eq!(tail.panic_message().as_deref(), Some("the reason\\u{1b}[0m"));
        tail.push(&"x\n".repeat(10_000));
        assert_eq!(tail.panic_message(), None, "only the last lines are kept");
    }

    #[test]
    fn control_characters_cannot_reach_the_log_raw() {
        let forged = "ok\r2026-01-01T00:00:00Z  WARN batchgen: forged\u{1b}[31m\u{9b}";
        let escaped = escape_controls(forged);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert!(escaped.contains("\\r2026") && escaped.contains("\\u{1b}[31m"), "{escaped}");
        assert_eq!(escape_controls("plain text, ünïcode"), "plain text, ünïcode");
    }
}
