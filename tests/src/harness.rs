//! Running the real `batchgen` binary in tests: where it is, and a clean
//! environment so nothing of the developer's machine leaks into a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The binary under test: `BATCHGEN_BIN`, else the debug build that
/// `cargo xtask test` makes before running the suite.
pub fn batchgen_bin() -> PathBuf {
    let path =
        std::env::var_os("BATCHGEN_BIN").map(PathBuf::from).unwrap_or_else(|| target_dir().join("debug/batchgen"));
    assert!(
        path.exists(),
        "{} does not exist: run the suite with `cargo xtask test` (or `cargo build -p batchgen` first)",
        path.display()
    );
    path
}

/// Shared by every test so the component is compiled once per build.
pub fn cache_dir() -> PathBuf {
    target_dir().join("test-component-cache")
}

/// `batchgen` with an empty environment but for the cache and `PATH`.
pub fn batchgen() -> Command {
    let mut command = Command::new(batchgen_bin());
    command.env_clear().env("BATCHGEN_CACHE_DIR", cache_dir());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

/// The result of running `batchgen`, with its streams as text.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Ran {
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

pub fn run(command: &mut Command) -> Ran {
    command.output().expect("batchgen starts").into()
}

/// Runs `command` and returns, with its result, the peak resident set size
/// the process reached (its high-water mark, from `wait4`), in bytes.
pub fn run_measuring_memory(command: &mut Command) -> (Ran, u64) {
    use std::io::Read;
    use std::process::Stdio;
    #[expect(clippy::zombie_processes, reason = "reaped by wait4 below, which also reports its peak memory")]
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("batchgen starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value, and `wait4` is given
    // pointers to live locals and the pid of our own unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let ran = Ran { code, stdout: stdout.join().expect("stdout"), stderr: stderr.join().expect("stderr") };
    // Linux reports `ru_maxrss` in KiB.
    (ran, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}
