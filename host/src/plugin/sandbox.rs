//! What a component may consume, and where its output goes.
//!
//! A component is untrusted code: it gets bounded memory, tables and
//! instances, a deadline per call (enforced by epoch interruption, so a
//! busy loop is stopped as surely as a guest blocked in `poll`), optional
//! fuel, and a capped log for its stdout and stderr.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Bytes of stdout and stderr logged per instance; the rest is dropped.
    #[arg(skip = 64usize << 10)]
    pub log_bytes: usize,
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
}

impl GuestLog {
    /// A stdout and a stderr sharing `bytes` of budget.
    pub fn pair(bytes: usize) -> (GuestLog, GuestLog) {
        let budget = Arc::new(AtomicUsize::new(bytes));
        (GuestLog { stream: "stdout", budget: Arc::clone(&budget) }, GuestLog { stream: "stderr", budget })
    }
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
        let (mut before, mut granted) = (0, 0);
        let _ = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            (before, granted) = (left, left.min(wanted));
            Some(left - granted)
        });
        if granted > 0 {
            let text = String::from_utf8_lossy(&buf[..granted]);
            match self.stream {
                "stderr" => tracing::warn!(target: "batchgen::guest", "{}", text.trim_end()),
                _ => tracing::info!(target: "batchgen::guest", "{}", text.trim_end()),
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
