//! Writes a synthetic Parquet dataset for benchmarks:
//! `make-parquet ROWS PATH`: columns `id` (Int64), `topic` (Utf8) and
//! `prompt` (Utf8), written a row group at a time so memory stays flat.

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().and_then(|n| n.parse().ok()).expect("usage: make-parquet ROWS PATH");
    let path = args.next().expect("usage: make-parquet ROWS PATH");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
    ]));
    let file = std::fs::File::create(&path).expect("create the output");
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).expect("a parquet writer");
    const TOPICS: [&str; 4] = ["science", "history", "math", "language"];
    let mut start = 0;
    while start < rows {
        let end = (start + 65_536).min(rows);
        let ids: Vec<i64> = (start as i64..end as i64).collect();
        let topics: Vec<&str> = (start..end).map(|i| TOPICS[(i % 4) as usize]).collect();
        let prompts: Vec<String> = (start..end).map(|i| format!("Write one sentence about the number {i}.")).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(topics)),
                Arc::new(StringArray::from(prompts)),
            ],
        )
        .expect("columns match the schema");
        writer.write(&batch).expect("write a batch");
        start = end;
    }
    writer.close().expect("finish the file");
}
