//! The `batchgen` command line: a thin layer over `batchgen::run`.

use anyhow::Context;
use batchgen::config::{ApiKeys, Job, JobFile, ProviderEndpoints};
use batchgen::plugin::cache;
use batchgen::plugin::sandbox::Limits;
use batchgen::run::{self, RunOptions};
use batchgen::progress::Progress;
use batchgen::run::Summary;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// The embedded model allocates a fresh buffer for every tensor operation,
/// megabytes per decoding step; glibc's allocator maps and unmaps such
/// buffers each time, and the page faults cost 10–20% of local generation
/// (measured by `cargo xtask bench-local`). mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "batchgen", version, about = "Generate an LLM output column for every row of a dataset, in batches")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the output column for every row of INPUT into OUTPUT.
    // A repeated flag takes its last value, so wrappers can append overrides.
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// List the generation models, their provider ids and providers.
    Models(ComponentArgs),
    /// Write the embedded component (WASI 0.2, world batchgen:plugin/batch-plugin) to FILE,
    /// for other component hosts and runtimes.
    Component {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ComponentArgs {
    /// Load this component instead of the embedded one.
    #[arg(long, value_name = "PATH")]
    component: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Dataset to read: .jsonl, .csv or .parquet. Never modified.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Dataset to write, in the format of its extension. Written to a
    /// temporary file and renamed into place when complete.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// JSON object with the spec's keys (generation_model, system_prompt,
    /// input_column, output_column, batch_size, temperature, top_p,
    /// max_tokens); flags override it.
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Local, Claude 3.5 Haiku, Claude 3.5 Sonnet, OpenAI GPT 4o, OpenAI GPT 4o Mini (any case, or slugs like gpt-4o-mini).
    #[arg(long, value_name = "NAME")]
    generation_model: Option<String>,
    #[arg(long, value_name = "TEXT")]
    system_prompt: Option<String>,
    /// Column holding each row's input.
    #[arg(long, value_name = "COL")]
    input_column: Option<String>,
    /// Column to write; failures go to COL_error.
    #[arg(long, value_name = "COL")]
    output_column: Option<String>,
    /// Rows per batch, and requests in flight at once [default: 128].
    #[arg(long, value_name = "N")]
    batch_size: Option<u32>,
    /// 0.0 to 2.0 (Claude: to 1.0) [default: 0.01].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// 0.0 to 1.0 [default: 1.0].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    top_p: Option<f64>,
    /// 1 to 4096 [default: 1024].
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// Provider model id to request instead of the label's (e.g. a retired model's successor).
    #[arg(long, value_name = "ID")]
    model_id: Option<String>,
    /// Attempts per row, retries included [default: 5].
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Per-request deadline in seconds [default: 600].
    #[arg(long, value_name = "SECONDS")]
    request_timeout: Option<f64>,
    /// Ceiling on requests started per minute, for users who know their tier.
    #[arg(long, value_name = "N")]
    max_rpm: Option<u32>,
    /// Ceiling on tokens per minute (prompt estimate plus max_tokens per request).
    #[arg(long, value_name = "N")]
    max_tpm: Option<u32>,
    /// OpenAI-compatible server (vLLM, llama.cpp, Ollama) for `Local`, e.g. http://localhost:8000/v1.
    #[arg(long, value_name = "URL", env = "BATCHGEN_LOCAL_URL")]
    local_url: Option<String>,
    /// GGUF model (llama family) for `Local` when no --local-url is given
    /// [default: models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched by `cargo xtask setup`].
    #[arg(long, value_name = "PATH", env = "BATCHGEN_LOCAL_MODEL")]
    local_model: Option<PathBuf>,
    /// Seed of the embedded model's sampling: the same seed gives the same outputs [default: 0].
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    seed: u64,
    #[arg(long, env = "OPENAI_BASE_URL", default_value = batchgen::config::DEFAULT_OPENAI_BASE_URL, hide_default_value = true, value_name = "URL")]
    /// Base URL of the OpenAI API [env: OPENAI_BASE_URL; default: https://api.openai.com/v1].
    openai_base_url: String,
    /// Base URL of the Anthropic API [env: ANTHROPIC_BASE_URL; default: https://api.anthropic.com].
    #[arg(long, env = "ANTHROPIC_BASE_URL", default_value = batchgen::config::DEFAULT_ANTHROPIC_BASE_URL, hide_default_value = true, value_name = "URL")]
    anthropic_base_url: String,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Check everything, print the first request that would be sent (key
    /// redacted) and the number of rows, and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Skip the check of key and model id (one request to the provider's
    /// model list) made before a run.
    #[arg(long)]
    no_preflight: bool,
    /// No progress output (errors and the final summary still print).
    #[arg(long, short)]
    quiet: bool,
    /// Also write the summary, usage and estimated cost as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Ignore and discard the work saved for OUTPUT by earlier runs
    /// (its `.batchgen-journal` file) and generate every row again.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    component: ComponentArgs,
}

/// Limits on the component (defaults suit the embedded one).
#[derive(Args)]
struct SandboxArgs {
    /// Linear memory per component instance, in MiB [default: 512].
    #[arg(long, value_name = "MIB")]
    max_memory: Option<usize>,
    /// Elements per component table [default: 100000].
    #[arg(long, value_name = "N")]
    max_table_elements: Option<usize>,
    /// Core instances per component [default: 32].
    #[arg(long, value_name = "N")]
    max_instances: Option<usize>,
    /// Deadline for one call into the component, in seconds [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    call_timeout: Option<f64>,
    /// Fuel per call (instructions, roughly); off by default, as metering costs speed.
    #[arg(long, value_name = "UNITS")]
    fuel: Option<u64>,
    /// Largest provider reply passed to the component, in MiB [default: 32].
    #[arg(long, value_name = "MIB")]
    max_reply_size: Option<usize>,
}

impl SandboxArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        let defaults = Limits::default();
        let call_timeout = match self.call_timeout {
            Some(seconds) => std::time::Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow::anyhow!("--call-timeout: {seconds} is not a positive number of seconds"))?,
            None => defaults.call_timeout,
        };
        Ok(Limits {
            memory_bytes: self.max_memory.map_or(defaults.memory_bytes, |mib| mib.saturating_mul(1 << 20)),
            table_elements: self.max_table_elements.unwrap_or(defaults.table_elements),
            instances: self.max_instances.unwrap_or(defaults.instances),
            call_timeout,
            fuel: self.fuel,
            max_reply_bytes: self.max_reply_size.map_or(defaults.max_reply_bytes, |mib| mib.saturating_mul(1 << 20)),
            log_bytes: defaults.log_bytes,
        })
    }
}

impl RunArgs {
    fn options(self) -> anyhow::Result<RunOptions> {
        let file = match &self.config {
            Some(path) => JobFile::read(path)?,
            None => JobFile::default(),
        };
        let flags = JobFile {
            generation_model: self.generation_model,
            system_prompt: self.system_prompt,
            input_column: self.input_column,
            output_column: self.output_column,
            batch_size: self.batch_size,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            model_id: self.model_id,
            max_attempts: self.max_attempts,
            request_timeout: self.request_timeout,
            max_rpm: self.max_rpm,
            max_tpm: self.max_tpm,
        };
        let job = Job::from_file(file.merge(flags))?;
        Ok(RunOptions {
            input: self.input,
            output: self.output,
            job,
            endpoints: ProviderEndpoints {
                openai_base_url: self.openai_base_url,
                anthropic_base_url: self.anthropic_base_url,
            },
            keys: ApiKeys::from_env(),
            local_url: self.local_url,
            local_model: self.local_model,
            seed: self.seed,
            component: self.component.component,
            cache_dir: cache::default_dir(),
            fresh: self.fresh,
            limits: self.sandbox.limits()?,
            preflight: !self.no_preflight,
        })
    }
}

/// Exit status: 0 all rows generated, 1 a run finished with failed rows,
/// 2 nothing was generated (bad input, config or environment).
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BATCHGEN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("batchgen: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let (quiet, report, dry) = (args.quiet, args.report.clone(), args.dry_run);
            let options = args.options()?;
            if dry {
                print_dry_run(&run::dry_run(&options).await?);
                return Ok(ExitCode::SUCCESS);
            }
            let progress = ProgressLine::new(quiet);
            let summary = run::run_with_progress(&options, &progress).await?;
            eprintln!("batchgen: wrote {}: {summary}", options.output.display());
            eprintln!("{}", usage_table(&summary));
            if let Some(path) = report {
                let mut value = serde_json::to_value(&summary)?;
                value["estimated_cost_usd"] = summary.estimated_cost().into();
                value["prices_as_of"] = batchgen::cost::PRICES_AS_OF.into();
                value["retries"] = summary.retries().into();
                std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")
                    .with_context(|| format!("writing the report {}", path.display()))?;
            }
            Ok(if summary.failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Component { out } => {
            std::fs::write(&out, batchgen::plugin::EMBEDDED_COMPONENT).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("batchgen: wrote {} ({} bytes)", out.display(), batchgen::plugin::EMBEDDED_COMPONENT.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(args) => {
            let plugin = run::load_plugin(args.component.as_deref(), cache::default_dir().as_deref(), Limits::default())
                .context("loading the component")?;
            println!("{:<20} {:<10} {:<28} note", "label", "provider", "model id");
            for model in run::list_models(&plugin).await? {
                println!("{:<20} {:<10} {:<28} {}", model.label, model.provider, model.model_id, model.note.unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Usage and estimated cost, as a small table for the end of a run.
fn usage_table(summary: &Summary) -> String {
    let cost = match summary.estimated_cost() {
        Some(usd) => format!("${usd:.4}"),
        None => "unknown (no price for this model id)".to_string(),
    };
    format!(
        "{:<20} {:<28} {:>12} {:>12}  {}\n{:<20} {:<28} {:>12} {:>12}  {} (list prices as of {})",
        "model", "model id", "tokens in", "tokens out", "estimated cost",
        summary.model, summary.model_id, summary.input_tokens, summary.output_tokens, cost,
        batchgen::cost::PRICES_AS_OF
    )
}

/// Progress on stderr: a bar on a terminal, a plain line every few seconds
/// otherwise (logs, CI), nothing with `--quiet`.
struct ProgressLine {
    bar: Option<ProgressBar>,
    plain: bool,
    every: Duration,
    last_line: Mutex<Option<Instant>>,
}

/// How often the plain (non-terminal) progress line is printed, unless
/// `BATCHGEN_PROGRESS_EVERY` (seconds) says otherwise.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl ProgressLine {
    fn new(quiet: bool) -> ProgressLine {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} rows  ETA {eta}  {msg}")
                    .expect("a valid template"),
            );
            bar
        });
        let every = std::env::var("BATCHGEN_PROGRESS_EVERY")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(PLAIN_EVERY);
        ProgressLine { bar, plain: !quiet && !terminal, every, last_line: Mutex::new(None) }
    }
}

impl Progress for ProgressLine {
    fn started(&self, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(rows);
        }
    }

    fn advanced(&self, so_far: &Summary) {
        let rate = so_far.rows as f64 / so_far.elapsed.as_secs_f64().max(1e-9);
        let note = format!("{rate:.1} rows/s, {} failed, {} retries, {} reused", so_far.failed, so_far.retries(), so_far.reused);
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

    fn finished(&self, _: &Summary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_dry_run(dry: &run::DryRun) {
    println!("dry run: {} rows would be generated with {} ({}{}); nothing was sent", dry.rows, dry.model.label, dry.model.provider,
        if dry.model.model_id.is_empty() { String::new() } else { format!(", {}", dry.model.model_id) });
    match &dry.request {
        None => println!("rows go to the local model; no HTTP request is made"),
        Some(request) => {
            println!("first request:\n{} {}", request.method, request.url);
            for (name, value) in &request.headers {
                println!("{name}: {value}");
            }
            if let Some(name) = &dry.credential_header {
                println!("{name}: <redacted: added by the host>");
            }
            let body: serde_json::Value = serde_json::from_str(&request.body).unwrap_or_else(|_| request.body.clone().into());
            println!("\n{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        }
    }
}
