//! `Local` out of the box: a GGUF model (SmolLM2-135M-Instruct by default,
//! any architecture llama.cpp runs otherwise) run in-process on the CPU by
//! llama.cpp, through the `llama-cpp-2` bindings.
//!
//! llama.cpp was chosen over the candle engine batchgen had before, by
//! measurement on a 2-core AVX2 machine without VNNI (`../shared` notes and
//! docs/local-model.md): its CPU kernels for every SIMD level ran the same
//! model 1.5 to 2 times faster, it loads every common GGUF architecture, and
//! it has GPU backends and structured-output samplers the engine would
//! otherwise need.
//!
//! The import receives a whole batch, decoded with continuous batching: up
//! to [`DECODE_BATCH`] sequences advance together, and a finished one's
//! place goes to the next waiting prompt in the very next pass.

pub mod catalog;

use crate::bindings::{LocalCompletion, LocalRequest, RowError};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// Sequences decoded together; the other rows of a bigger batch wait for a
/// place.
pub const DECODE_BATCH: usize = 32;
/// Tokens one decoding pass takes at most: new prompts join a pass while
/// they fit.
const PASS_TOKENS: usize = 2048;
/// A shared prompt prefix shorter than this is decoded with each prompt.
const MIN_SHARED_PREFIX: usize = 4;

/// Why the embedded model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No file at the model's path.
    #[error(
        "the local model file {path} does not exist: run `batchgen fetch-model` to fetch the default model, \
         or pass --local-model PATH (or --local-url URL for a model server)"
    )]
    Missing {
        /// The path looked at.
        path: String,
    },
    /// No user cache to hold the default model.
    #[error(
        "no cache directory for the default local model: set BATCHGEN_CACHE_DIR or HOME, or pass --local-model PATH"
    )]
    NoCache,
    /// The file is not a model this engine runs.
    #[error("the local model file {path} could not be loaded: {message}")]
    Invalid {
        /// The model file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The environment switch that turns off llama.cpp's tiled K-quant matrix
/// product (ggml-cpu/tiled), which takes passes of 8 rows and more while
/// fewer go through the dot-product kernel: the two round differently, and
/// Gemma 3's Q4_K_M file wrote "admin" instead of "user" in a batch of 9
/// (tests/tests/all/local_model.rs). ggml reads it once, at its first
/// matrix product, and the build has no option for it.
const TILED_SWITCH: &str = "GGML_CPU_TILED_MM";

/// Sets what llama.cpp reads from the environment for batch-independent
/// texts, unless the user set it. Call it while the process has one thread
/// (first thing in `main`), where changing the environment is sound;
/// [`EmbeddedModel::load`] calls it too, for embedders that did not.
pub fn prepare_environment() {
    if std::env::var_os(TILED_SWITCH).is_none() {
        // SAFETY: called first thing in batchgen's `main`, before any other
        // thread exists. From `backend()` (an embedder that did not call it)
        // it runs once, before llama.cpp is first used; Rust's own
        // environment access is locked against it, and batchgen starts no C
        // code that reads the environment on other threads.
        unsafe { std::env::set_var(TILED_SWITCH, "0") };
    }
}

/// llama.cpp's process-wide state, started once: it may not be started
/// again while it lives, and it lives as long as the process.
fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            prepare_environment();
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            // llama.cpp logs every load and pass to stderr; batchgen's log is
            // its own.
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(Clone::clone)
}

self_cell::self_cell!(
    /// The model and the one context that decodes with it. The context
    /// outlives a call: making one allocates its KV cache and compute
    /// buffers and starts its threads, which costs a one-row call a good
    /// share of its time, so calls of the same shape reuse it.
    struct Engine {
        owner: LlamaModel,
        #[not_covariant]
        dependent: Workspace,
    }
);

/// The context the last call decoded in, if any. Its lock also makes the
/// calls take turns: one context decodes at a time, and contexts may not be
/// made in parallel.
type Workspace<'m> = Mutex<Option<Cached<'m>>>;

/// A context kept between calls, with the shape it was made for.
struct Cached<'m> {
    shape: Shape,
    context: LlamaContext<'m>,
    /// The prefix the last call shared among its sequences.
    prefix: Vec<LlamaToken>,
    /// How many of `prefix`'s tokens each sequence's cache holds.
    held: Vec<usize>,
    /// A call left sequences in its KV cache (it stopped or failed midway).
    dirty: bool,
}

/// What a call needs of a context: it is reused only for the same shape.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Sequences decoded together.
    slots: usize,
    /// KV cells of each sequence.
    per_sequence: usize,
    /// Tokens one pass takes at most.
    pass_tokens: usize,
}

/// A GGUF model run in-process on the CPU, decoding each batch of requests
/// together.
pub struct EmbeddedModel {
    engine: Engine,
    template: LlamaChatTemplate,
    /// The system prompt the model's template adds when a chat has none
    /// (SmolLM2's, Qwen's); llama.cpp applies templates by their shape and
    /// does not run the Jinja that would add it.
    default_system: Option<String>,
    /// Tokens the model was trained to attend to: a prompt plus its answer
    /// must fit.
    context_length: usize,
    threads: i32,
    /// Whether a sequence's cache may keep a prefix while the rest goes:
    /// not for recurrent models, whose state cannot be cut.
    prefix_sharing: bool,
    seed: u64,
    /// What identifies this model and seed in saved work.
    identity: String,
    /// See [`EmbeddedModel::max_prompt_bytes`].
    max_prompt_bytes: usize,
    /// What turns a JSON schema into a constraint on this model's tokens:
    /// made at the first request with a schema (it walks the vocabulary).
    guidance: OnceLock<Result<ParserFactory, String>>,
}

impl EmbeddedModel {
    /// Loads the GGUF at `path` (memory-mapped; llama.cpp runs every
    /// quantization as it is, so nothing is converted or cached).
    pub fn load(path: &Path, seed: u64) -> Result<EmbeddedModel, EmbeddedError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(EmbeddedError::Missing { path: shown });
        }
        let invalid = |message: String| EmbeddedError::Invalid { path: shown.clone(), message };
        let backend = backend().map_err(invalid)?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| invalid(format!("not a GGUF model llama.cpp can run: {e}")))?;
        // llama.cpp matches the model's template by its shape; a model
        // without one gets ChatML, what most small chat models use.
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|e| invalid(format!("no chat template: {e}")))?;
        let default_system = template.to_str().ok().and_then(default_system_prompt);
        let context_length = model.n_ctx_train() as usize;
        let longest_token = model.tokens(true).map(|(_, bytes)| bytes.len()).max().unwrap_or(1).max(1);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix_sharing = !model.is_recurrent() && !model.is_hybrid();
        let this = EmbeddedModel {
            guidance: OnceLock::new(),
            prefix_sharing,
            engine: Engine::new(model, |_| Mutex::new(None)),
            template,
            default_system,
            context_length,
            threads,
            seed,
            identity: format!("embedded:llama.cpp:{name}:seed={seed}"),
            max_prompt_bytes: context_length.saturating_mul(longest_token),
        };
        // One short answer: a model that cannot run fails here, not mid-batch.
        let probe = LocalRequest {
            model: None,
            system_prompt: None,
            prompt: "hi".into(),
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 1,
            json_schema: None,
        };
        if let Some(Err(error)) = this.generate(&[probe]).pop() {
            return Err(invalid(format!("the model does not run: {}", error.describe())));
        }
        Ok(this)
    }

    /// The engine, model file and seed: what saved work from it is keyed by.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The largest prompt (system prompt and input, in bytes) that could fit
    /// the model's context, as its context length times the longest token:
    /// anything larger is refused before it is tokenized.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_prompt_bytes
    }

    /// Generates for every request, one result each, in order. CPU-bound:
    /// call it off the async runtime.
    pub fn generate(&self, requests: &[LocalRequest]) -> Vec<Result<LocalCompletion, RowError>> {
        self.generate_until(requests, &|| false)
    }

    /// [`generate`](Self::generate), asking `stop` before every decoding
    /// pass: once it says so (the call that asked has ended), the rows not
    /// yet finished fail at once instead of decoding on for nobody.
    pub fn generate_until(
        &self,
        requests: &[LocalRequest],
        stop: &dyn Fn() -> bool,
    ) -> Vec<Result<LocalCompletion, RowError>> {
        let mut results: Vec<Option<Result<LocalCompletion, RowError>>> = (0..requests.len()).map(|_| None).collect();
        let mut prompts = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            match self.tokens(request) {
                Ok(ids) if ids.len() + request.max_tokens as usize > self.context_length => {
                    results[index] = Some(Err(RowError::InvalidRequest(format!(
                        "the prompt ({} tokens) plus max_tokens exceeds the local model's context of {} tokens",
                        ids.len(),
                        self.context_length
                    ))))
                }
                Ok(ids) => prompts.push(Prompt { index, ids, constraint: std::cell::Cell::new(None) }),
                Err(message) => results[index] = Some(Err(RowError::InvalidRequest(message))),
            }
        }
        // A schema becomes the first sampler of its row's chain: only tokens
        // that keep the output on the schema can be drawn.
        for prompt in &prompts {
            if let Some(schema) = &requests[prompt.index].json_schema {
                match self.constraint(schema) {
                    Ok(sampler) => prompt.constraint.set(Some(sampler)),
                    Err(message) => results[prompt.index] = Some(Err(RowError::InvalidRequest(message))),
                }
            }
        }
        prompts.retain(|prompt| results[prompt.index].is_none());
        if !prompts.is_empty() {
            let decoded = self.engine.with_dependent(|model, workspace| {
                let mut workspace = workspace.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                self.decode(model, &mut workspace, requests, &prompts, &mut results, stop)
            });
            if let Err(message) = decoded {
                for prompt in &prompts {
                    results[prompt.index].get_or_insert_with(|| Err(RowError::Transport(message.clone())));
                }
            }
        }
        let stopped = || Err(RowError::Timeout("the call ended before this row was decoded; decoding stopped".into()));
        results.into_iter().map(|r| r.unwrap_or_else(stopped)).collect()
    }

    /// A sampler that keeps a row's output on `schema` (JSON text).
    fn constraint(&self, schema: &str) -> Result<LlamaSampler, String> {
        let factory = self
            .guidance
            .get_or_init(|| {
                let env = LlamaSampler::llguidance_tok_env(self.engine.borrow_owner());
                ParserFactory::new_simple(&env).map_err(|e| format!("structured output is not available: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let mut schema: serde_json::Value =
            serde_json::from_str(schema).map_err(|e| format!("json_schema is not JSON: {e}"))?;
        // Compact JSON: with whitespace left free, small models were seen to
        // write newlines and spaces until max_tokens (shared/notes).
        if let Some(object) = schema.as_object_mut() {
            object.insert("x-guidance".into(), serde_json::json!({"whitespace_flexible": false}));
        }
        let parser = factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| format!("json_schema: the local model cannot follow it: {e}"))?;
        Ok(LlamaSampler::from(Matcher::new(Ok(parser))))
    }

    /// The request as the model's chat template lays it out, in tokens.
    fn tokens(&self, request: &LocalRequest) -> Result<Vec<LlamaToken>, String> {
        let message = |role: &str, text: &str| {
            LlamaChatMessage::new(role.into(), text.into()).map_err(|e| format!("the prompt cannot be passed: {e}"))
        };
        let mut chat = Vec::with_capacity(2);
        if let Some(system) = request.system_prompt.as_deref().or(self.default_system.as_deref()) {
            chat.push(message("system", system)?);
        }
        chat.push(message("user", &request.prompt)?);
        let model = self.engine.borrow_owner();
        let text = model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| format!("the chat template failed: {e}"))?;
        Ok(model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// Decodes `prompts` with continuous batching. Each row samples with a
    /// seed of its own, so its text does not depend on its batch.
    fn decode<'m>(
        &self,
        model: &'m LlamaModel,
        workspace: &mut Option<Cached<'m>>,
        requests: &[LocalRequest],
        prompts: &[Prompt],
        results: &mut [Option<Result<LocalCompletion, RowError>>],
        stop: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let slots = prompts.len().min(DECODE_BATCH);
        // Each sequence gets an equal share of the context: enough for the
        // longest prompt and answer of the batch.
        let longest = prompts.iter().map(|p| p.ids.len() + requests[p.index].max_tokens as usize).max().unwrap_or(1);
        let per_sequence = longest.next_multiple_of(256);
        let pass_tokens = PASS_TOKENS.max(prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0) + slots);
        let shape = Shape { slots, per_sequence, pass_tokens };
        if !workspace.as_ref().is_some_and(|cached| cached.shape == shape) {
            // The old context goes first: two would hold two KV caches.
            *workspace = None;
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new((per_sequence * slots) as u32))
                .with_n_batch(pass_tokens as u32)
                .with_n_ubatch(512)
                .with_n_seq_max(slots as u32)
                .with_n_threads(self.threads)
                .with_n_threads_batch(self.threads);
            let context = model.new_context(backend()?, params).map_err(|e| format!("local model: {e}"))?;
            *workspace = Some(Cached { shape, context, prefix: Vec::new(), held: vec![0; slots], dirty: false });
        }
        let cached = workspace.as_mut().expect("a context was just made or kept");
        let shared = if self.prefix_sharing { shared_prefix(prompts) } else { &[] };
        cached.share(shared)?;
        // Clean again only once every sequence has finished and left the cache.
        cached.dirty = true;
        let Cached { context, held, dirty, .. } = cached;
        let vocab = model.vocab();
        let mut batch = LlamaBatch::new(pass_tokens, slots as i32);
        // Free places, the lowest last: a waiting prompt takes the lowest.
        let mut free: Vec<i32> = (0..slots as i32).rev().collect();
        // Running sequences, in the order of their places.
        let mut running: Vec<Sequence> = Vec::with_capacity(slots);
        let mut waiting = prompts.iter().peekable();
        loop {
            // Waiting prompts join this pass while a place and room are left;
            // what their place holds of the shared prefix is not decoded again.
            let mut pass = running.iter().map(|s| s.feed.len()).sum::<usize>();
            while let (Some(prompt), Some(&seq)) = (waiting.peek(), free.last()) {
                let start = held[seq as usize];
                if pass + prompt.ids.len() - start > pass_tokens {
                    break;
                }
                pass += prompt.ids.len() - start;
                // Once this pass is decoded the place holds the whole prefix
                // (a failed pass leaves the cache dirty and cleared next call).
                held[seq as usize] = held[seq as usize].max(shared.len());
                let request = &requests[prompt.index];
                running.push(Sequence {
                    index: prompt.index,
                    seq,
                    position: start as i32,
                    feed: prompt.ids[start..].to_vec(),
                    logits: 0,
                    prompt_tokens: prompt.ids.len() as u32,
                    generated: Vec::new(),
                    sampler: sampler(request, row_seed(self.seed, request), prompt.constraint.take()),
                });
                free.pop();
                waiting.next();
            }
            // Rows left unanswered here are failed by `generate_until`.
            if running.is_empty() {
                *dirty = false;
                return Ok(());
            }
            if stop() {
                return Ok(());
            }
            // The pass lists its sequences by place: llama.cpp decodes
            // sequences with caches of their own in one go only while their
            // ids follow one another (`split_equal`, sequential), and
            // splits the pass wherever they do not.
            running.sort_unstable_by_key(|sequence| sequence.seq);
            batch.clear();
            for sequence in &mut running {
                let last = sequence.feed.len() - 1;
                for (offset, &token) in sequence.feed.iter().enumerate() {
                    let position = sequence.position + offset as i32;
                    batch.add(token, position, &[sequence.seq], offset == last).map_err(|e| e.to_string())?;
                }
                sequence.position += sequence.feed.len() as i32;
                sequence.logits = batch.n_tokens() - 1;
            }
            context.decode(&mut batch).map_err(|e| format!("local model: {e}"))?;
            let mut still = Vec::with_capacity(running.len());
            for mut sequence in running.drain(..) {
                let token = sequence.sampler.sample(context, sequence.logits);
                let request = &requests[sequence.index];
                let finish = if vocab.is_eog(token) {
                    Some("stop")
                } else {
                    sequence.generated.push(token);
                    (sequence.generated.len() >= request.max_tokens as usize).then_some("length")
                };
                match finish {
                    None => {
                        sequence.feed = vec![token];
                        still.push(sequence);
                    }
                    Some(reason) => {
                        // The place keeps the shared prefix for the next prompt.
                        let slot = sequence.seq as usize;
                        held[slot] = trim(context, sequence.seq, held[slot])?;
                        free.push(sequence.seq);
                        let text =
                            String::from_utf8_lossy(&vocab.detokenize(&sequence.generated, false, false)).into_owned();
                        results[sequence.index] = Some(Ok(LocalCompletion {
                            text,
                            finish_reason: reason.to_string(),
                            input_tokens: sequence.prompt_tokens,
                            output_tokens: sequence.generated.len() as u32,
                        }));
                    }
                }
            }
            running = still;
            free.sort_unstable_by(|a, b| b.cmp(a));
            // With no prompt left to fill the places that ended, the last
            // running sequences move down into them, so that the running ones
            // stay on consecutive places and every pass stays one
            // computation: a pass split at N gaps computes every weight N+1
            // times for the same tokens. A move copies the sequence's cache
            // whole (a few MB, no computation), so its text is unchanged.
            if waiting.peek().is_none() && self.prefix_sharing {
                while let (Some(&low), Some(high)) = (free.last(), running.last()) {
                    if low > high.seq {
                        break;
                    }
                    let from = high.seq;
                    context.copy_kv_cache_seq(from, low, None, None).map_err(|e| e.to_string())?;
                    // The new place holds the whole prompt, prefix included;
                    // the old one keeps the prefix, as a place that ended does.
                    held[low as usize] = shared.len();
                    held[from as usize] = trim(context, from, shared.len())?;
                    free.pop();
                    free.push(from);
                    free.sort_unstable_by(|a, b| b.cmp(a));
                    let mut moved = running.pop().expect("a running sequence");
                    moved.seq = low;
                    let at = running.partition_point(|sequence| sequence.seq < low);
                    running.insert(at, moved);
                }
            }
        }
    }
}

impl Cached<'_> {
    /// Puts `prefix` in every sequence's cache, decoding only what it does
    /// not already hold: the prefix of the last call is kept as far as the
    /// two agree (the template and system prompt, for rows of one job), and
    /// the rest is decoded once, in sequence 0, and copied to the others.
    fn share(&mut self, prefix: &[LlamaToken]) -> Result<(), String> {
        let agree = if self.dirty {
            // Sequences stopped midway are still in the cache.
            self.context.clear_kv_cache();
            0
        } else {
            self.prefix.iter().zip(prefix).take_while(|(a, b)| a == b).count()
        };
        for seq in 0..self.held.len() {
            let keep = self.held[seq].min(agree);
            self.held[seq] = if keep < self.held[seq] { trim(&mut self.context, seq as i32, keep)? } else { keep };
        }
        self.prefix = prefix.to_vec();
        // Decoding the prefix once and copying it pays only where two or
        // more places lack it; a lone place (a one-row call) decodes what it
        // lacks with its prompt, in the same pass, not in a pass of its own.
        if self.held.iter().filter(|&&held| held < prefix.len()).count() < 2 {
            return Ok(());
        }
        let start = self.held[0];
        if start < prefix.len() {
            let mut batch = LlamaBatch::new(prefix.len() - start, 1);
            for (position, &token) in prefix.iter().enumerate().skip(start) {
                batch.add(token, position as i32, &[0], false).map_err(|e| e.to_string())?;
            }
            self.context.decode(&mut batch).map_err(|e| format!("local model: {e}"))?;
            self.held[0] = prefix.len();
        }
        for seq in 1..self.held.len() {
            if self.held[seq] < prefix.len() {
                // With a KV cache per sequence this copies the whole of
                // sequence 0's, which holds the prefix and nothing else.
                self.context.copy_kv_cache_seq(0, seq as i32, None, None).map_err(|e| e.to_string())?;
                self.held[seq] = prefix.len();
            }
        }
        Ok(())
    }
}

/// Removes from sequence `seq`'s cache every position from `keep` on, and
/// returns how much it still holds: `keep`, or 0 where the model cannot
/// keep a part (its sliding-window layers have already dropped the start,
/// or a recurrent state cannot be cut), and the whole sequence goes.
fn trim(context: &mut LlamaContext<'_>, seq: i32, keep: usize) -> Result<usize, String> {
    let seq_id = seq as u32;
    if keep > 0
        && context.kv_cache_seq_pos_min(seq) <= 0
        && context.clear_kv_cache_seq(Some(seq_id), Some(keep as u32), None).map_err(|e| e.to_string())?
    {
        return Ok(keep);
    }
    context.clear_kv_cache_seq(Some(seq_id), None, None).map_err(|e| e.to_string())?;
    Ok(0)
}

/// The tokens every prompt starts with (the chat template's start, the
/// system prompt), leaving each prompt at least its last token to decode
/// for its first logits; empty when too short to be worth a pass of its own.
fn shared_prefix(prompts: &[Prompt]) -> &[LlamaToken] {
    let Some((first, rest)) = prompts.split_first() else { return &[] };
    let mut length = first.ids.len() - 1;
    for prompt in rest {
        length = length.min(prompt.ids.len() - 1);
        length = first.ids[..length].iter().zip(&prompt.ids).take_while(|(a, b)| a == b).count();
    }
    if length < MIN_SHARED_PREFIX { &[] } else { &first.ids[..length] }
}

/// A row's prompt, tokenized.
struct Prompt {
    /// The request's index in the batch.
    index: usize,
    ids: Vec<LlamaToken>,
    /// Its schema's sampler, taken when the prompt starts decoding.
    constraint: std::cell::Cell<Option<LlamaSampler>>,
}

/// A prompt being answered.
struct Sequence {
    index: usize,
    /// Its sequence id in the context: its place.
    seq: i32,
    /// Where the first token of `feed` goes.
    position: i32,
    /// What the next pass decodes for it: its prompt (after what its place
    /// holds of the shared prefix), then each sampled token.
    feed: Vec<LlamaToken>,
    /// Its logits' index in the pass just decoded.
    logits: i32,
    prompt_tokens: u32,
    generated: Vec<LlamaToken>,
    sampler: LlamaSampler,
}

/// The system message a ChatML template writes out itself, for chats that
/// bring none: the text of a literal `<|im_start|>system` line up to its
/// `<|im_end|>` (its newline written out, or escaped as in the template's
/// JSON form).
fn default_system_prompt(template: &str) -> Option<String> {
    const START: &str = "<|im_start|>system";
    let rest = &template[template.find(START)? + START.len()..];
    let rest = rest.strip_prefix('\n').or_else(|| rest.strip_prefix("\\n"))?;
    let text = &rest[..rest.find("<|im_end|>")?];
    // A placeholder (`{{ ... }}`) is the chat's own system message, not a default.
    (!text.contains("{{") && !text.contains("{%") && !text.trim().is_empty()).then(|| text.replace("\\n", "\n"))
}

/// Greedy at temperature 0, else top-p then temperature sampling, seeded;
/// after `constraint` (a schema's), which masks what may not come next.
/// Always a chain, even of one: llama.cpp lays out a token's candidates (the
/// whole vocabulary) in a buffer a chain keeps, and allocates and clears a
/// new one for every token of a lone sampler. (No timings: nobody reads them.)
fn sampler(request: &LocalRequest, seed: u64, constraint: Option<LlamaSampler>) -> LlamaSampler {
    let choose = if request.temperature <= 0.0 {
        vec![LlamaSampler::greedy()]
    } else {
        vec![
            LlamaSampler::top_p(request.top_p as f32, 1),
            LlamaSampler::temp(request.temperature as f32),
            LlamaSampler::dist(seed as u32),
        ]
    };
    LlamaSampler::chain(constraint.into_iter().chain(choose), true)
}

fn row_seed(seed: u64, request: &LocalRequest) -> u64 {
    let mut sha = Sha256::new();
    sha.update(seed.to_le_bytes());
    sha.update(request.system_prompt.as_deref().unwrap_or_default().as_bytes());
    sha.update([0]);
    sha.update(request.prompt.as_bytes());
    u64::from_le_bytes(sha.finalize()[..8].try_into().expect("a SHA-256 has 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::default_system_prompt;

    #[test]
    fn a_chatml_templates_own_system_prompt_is_found() {
        let smollm = r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(
            default_system_prompt(smollm).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let decoded = smollm.replace("\\n", "\n");
        assert_eq!(
            default_system_prompt(&decoded).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let plain = r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(default_system_prompt(plain), None);
    }
}
