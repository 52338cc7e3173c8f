//! `cargo xtask <task>`: the project's entry points, so that a fresh machine
//! needs one command for each. Plain std: this builds in seconds.
//!
//! - `setup`: the wasm32-wasip2 target (and, later, model files).
//! - `test`: set-up, then the whole suite (host, integration, guest units).
//! - `example`: set-up, then the main job on the bundled example dataset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "setup" => setup(),
        "test" => setup().and_then(|()| test()),
        "example" => setup().and_then(|()| example()),
        _ => Err("usage: cargo xtask setup|test|example".to_string()),
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

/// Everything a fresh machine needs beyond a Rust toolchain.
fn setup() -> Result<(), String> {
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
    // The integration tests drive the real binary: build it first, in the
    // same profile the tests use.
    run(cargo().args(["build", "--locked", "--package", "batchgen"]))?;
    run(cargo().args(["test", "--locked", "--workspace"]))?;
    run(cargo().args(["test", "--locked", "--manifest-path", "guest/Cargo.toml"]))
}

/// Runs the main job on `examples/questions.jsonl`.
fn example() -> Result<(), String> {
    run(cargo().args(["build", "--locked", "--release", "--package", "batchgen", "--package", "batchgen-tests", "--bin", "batchgen", "--bin", "provider-server"]))?;
    let release = root().join("target/release");
    // No provider is reachable from a fresh machine without keys, so the
    // example runs against the bundled stand-in server, which answers in
    // the OpenAI wire format with an echo of each prompt.
    let mut server = StandIn::start(&release.join("provider-server"))?;
    let output = root().join("target/example-answers.jsonl");
    let result = run(Command::new(release.join("batchgen"))
        .args(["run", "--input", "examples/questions.jsonl", "--output"])
        .arg(&output)
        .args(["--config", "examples/job.json"])
        .current_dir(root())
        .env("OPENAI_BASE_URL", &server.openai_base_url)
        .env("OPENAI_API_KEY", "stand-in-key"));
    server.stop();
    result?;
    let text = std::fs::read_to_string(&output).map_err(|e| e.to_string())?;
    println!("{text}");
    eprintln!("xtask: wrote {} (answers from the stand-in server)", output.display());
    Ok(())
}

struct StandIn {
    child: Child,
    openai_base_url: String,
}

impl StandIn {
    fn start(binary: &Path) -> Result<StandIn, String> {
        let mut child = Command::new(binary)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let openai_base_url = lines
            .find_map(|line| line.ok()?.strip_prefix("OPENAI_BASE_URL=").map(str::to_string))
            .ok_or("the stand-in server printed no URL")?;
        Ok(StandIn { child, openai_base_url })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
