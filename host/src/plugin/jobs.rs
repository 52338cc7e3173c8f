//! Calls into the component's `batch-jobs` export: provider batch jobs,
//! one short call at a time. Files pass through `wasi:io` streams the host
//! opens on its own files, so the component never holds one whole.

use super::{PluginError, Session, within};
use crate::bindings::{Config, Failure, JobLimits, JobRow, JobStatus, JobTag, RowOutcome};
use std::path::Path;
use wasmtime_wasi::p2::pipe::{AsyncReadStream, AsyncWriteStream};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

/// Bytes the host buffers for a download before the component must wait.
const DOWNLOAD_BUFFER: usize = 1 << 20;

impl Session {
    /// What one job may hold, for the config's provider.
    pub async fn job_limits(&mut self, config: &Config) -> Result<Result<JobLimits, String>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_limits(&mut self.store, config)).await
    }

    /// One request line per row; a component that answers with another
    /// number of lines is an error, never a misaligned job.
    pub async fn request_lines(
        &mut self,
        config: &Config,
        rows: &[JobRow],
    ) -> Result<Result<Vec<String>, String>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        let lines = within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_request_lines(&mut self.store, config, rows),
        )
        .await?;
        if let Ok(lines) = &lines
            && lines.len() != rows.len()
        {
            return Err(PluginError::WrongCount { expected: rows.len(), returned: lines.len() });
        }
        Ok(lines)
    }

    /// Creates a job from the request lines in `file`.
    pub async fn submit_job(
        &mut self,
        config: &Config,
        tag: &JobTag,
        file: &Path,
    ) -> Result<Result<JobStatus, Failure>, PluginError> {
        self.refuel()?;
        let unreadable = |e: std::io::Error| PluginError::Trap(format!("reading the job file {}: {e}", file.display()));
        let file = tokio::fs::File::open(file).await.map_err(unreadable)?;
        let length = file.metadata().await.map_err(unreadable)?.len();
        let stream: DynInputStream = Box::new(AsyncReadStream::new(file));
        let stream = self.store.data_mut().table.push(stream).map_err(|e| PluginError::Trap(e.to_string()))?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_submit(&mut self.store, config, tag, stream, length),
        )
        .await
    }

    /// The job `tag` describes, if the provider has one.
    pub async fn find_job(
        &mut self,
        config: &Config,
        tag: &JobTag,
    ) -> Result<Result<Option<JobStatus>, Failure>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_find(&mut self.store, config, tag)).await
    }

    /// The job's state now; with `cancel`, after asking the provider to stop it.
    pub async fn job_status(
        &mut self,
        config: &Config,
        id: &str,
        cancel: bool,
    ) -> Result<Result<JobStatus, Failure>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        let call = async {
            if cancel {
                exports.call_cancel(&mut self.store, config, id).await
            } else {
                exports.call_status(&mut self.store, config, id).await
            }
        };
        within(&self.limits, &self.stderr_tail, &self.scope, call).await
    }

    /// Streams one of a job's result files into `to` (created or truncated).
    pub async fn download(
        &mut self,
        config: &Config,
        file: &str,
        to: &Path,
    ) -> Result<Result<u64, Failure>, PluginError> {
        self.refuel()?;
        let sink = tokio::fs::File::create(to)
            .await
            .map_err(|e| PluginError::Trap(format!("creating {}: {e}", to.display())))?;
        let stream: DynOutputStream = Box::new(AsyncWriteStream::new(DOWNLOAD_BUFFER, sink));
        let stream = self.store.data_mut().table.push(stream).map_err(|e| PluginError::Trap(e.to_string()))?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_download(&mut self.store, config, file, stream),
        )
        .await
    }

    /// One outcome per result line, in line order (checked).
    pub async fn read_results(
        &mut self,
        config: &Config,
        lines: &[String],
    ) -> Result<Vec<Result<RowOutcome, String>>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_jobs();
        let outcomes = within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_read_results(&mut self.store, config, lines),
        )
        .await?;
        if outcomes.len() != lines.len() {
            return Err(PluginError::WrongCount { expected: lines.len(), returned: outcomes.len() });
        }
        Ok(outcomes)
    }
}
