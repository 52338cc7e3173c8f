//! Datasets are untrusted files: surveying, reading and writing any bytes
//! as JSONL or CSV must end in rows or a named error, never a panic.
#![no_main]

use batchgen::dataset::{self, Reader, Writer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(if selector % 2 == 0 { "in.jsonl" } else { "in.csv" });
    let output = dir.path().join(if selector % 3 == 0 { "out.csv" } else { "out.jsonl" });
    std::fs::write(&input, bytes).unwrap();
    let Ok(survey) = dataset::survey(&input, "prompt", "answer") else { return };
    let Ok(mut reader) = Reader::open(&input, &survey, "prompt") else { return };
    let Ok(mut writer) = Writer::create(&output, &survey, "answer") else { return };
    while let Ok(Some(chunk)) = reader.next_chunk(2) {
        let outputs: Vec<Result<String, String>> = chunk.inputs.iter().map(|i| Ok(i.clone())).collect();
        if writer.write_chunk(chunk, &outputs).is_err() {
            return;
        }
    }
    let _ = writer.finish();
});
