//! Saved work: every generated row, durable as soon as its batch finishes,
//! so a crash, a kill or a lost connection costs nothing that was paid for.
//!
//! The journal is an append-only file next to the output
//! (`<output>.batchgen-journal`). Each record is a successful generation
//! keyed by what determined it ([`WorkKey`]: provider, model id, system
//! prompt, input text, temperature, top_p, max tokens), not by row number,
//! so renaming the output column, adding rows or reordering the input all
//! reuse it, and changing a parameter regenerates only the rows it affects.
//! Failed rows are never recorded: the next run retries them.
//!
//! File format: the magic line `batchgen-journal v1\n`, then records of
//! `u32 LE payload length | u32 LE CRC-32 of payload | payload`, where the
//! payload is the 32-byte key followed by the generation as JSON. A record
//! is appended whole and the file synced per batch; a record cut off by a
//! crash or damaged on disk fails its length or checksum, and the journal
//! is truncated there, keeping every record before it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"batchgen-journal v1\n";
const HEADER_LEN: u64 = 8;
const KEY_LEN: usize = 32;
/// No single generation comes near this; a larger length is damage.
const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// An error opening, reading or appending to a journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Opening, reading, writing or syncing the journal file failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file, as shown in messages.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Another process holds the journal's lock: another batchgen run is
    /// writing the same output.
    #[error("journal {path} is in use by another batchgen run writing the same output")]
    Locked {
        /// The journal file, as shown in messages.
        path: String,
    },
    /// The file at the journal's path has content that is not a journal (it
    /// does not start with the magic line).
    #[error("{path} is not a batchgen journal; move it away or pass --fresh")]
    NotAJournal {
        /// The file, as shown in messages.
        path: String,
    },
}

/// What determines a row's output. Two rows with equal keys would get the
/// same request, so one saved generation serves both.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WorkKey([u8; KEY_LEN]);

impl WorkKey {
    /// The key as 64 lowercase hex digits, for files that name rows.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The key [`WorkKey::to_hex`] wrote; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<WorkKey> {
        if text.len() != KEY_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(WorkKey(key))
    }
}

/// The parameters that, with the input, determine a generation.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkParams {
    /// `openai`, `anthropic`, `local`.
    pub provider: String,
    /// The id requested; for a local backend also what identifies it.
    pub model_id: String,
    /// The system prompt, if one is sent.
    pub system_prompt: Option<String>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling threshold.
    pub top_p: f64,
    /// Upper bound on generated tokens per row.
    pub max_tokens: u32,
    /// The SHA-256 of the component, for a component given with
    /// `--component`: what an untrusted plugin saved is never reused by a run
    /// with another component. `None` for the embedded component, whose
    /// saved work carries over between runs and batchgen versions.
    pub component: Option<[u8; 32]>,
    /// The JSON schema outputs must match (`json_schema`), as compact JSON:
    /// a structured output is not a free one. `None` keeps the keys of work
    /// saved without a schema what they always were.
    pub schema: Option<String>,
}

impl WorkParams {
    /// The key of the generation for `input` under these parameters.
    pub fn key(&self, input: &str) -> WorkKey {
        let mut sha = Sha256::new();
        // Length-prefixed fields: no two different tuples encode the same.
        let mut field = |bytes: &[u8]| {
            sha.update((bytes.len() as u64).to_le_bytes());
            sha.update(bytes);
        };
        field(self.provider.as_bytes());
        field(self.model_id.as_bytes());
        match &self.system_prompt {
            Some(system) => field(&[&[1u8][..], system.as_bytes()].concat()),
            None => field(&[0u8]),
        }
        field(&self.temperature.to_bits().to_le_bytes());
        field(&self.top_p.to_bits().to_le_bytes());
        field(&self.max_tokens.to_le_bytes());
        field(input.as_bytes());
        // Last and only when set, so the embedded component's keys stay
        // what they always were.
        if let Some(digest) = &self.component {
            field(digest);
        }
        if let Some(schema) = &self.schema {
            field(b"json_schema");
            field(schema.as_bytes());
        }
        WorkKey(sha.finalize().into())
    }
}

/// A saved generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The generated text.
    pub text: String,
    /// Why generation stopped, as the provider said it (`stop`, `length`, ...).
    pub finish_reason: String,
    /// Prompt tokens, as the provider counted them.
    pub input_tokens: u32,
    /// Generated tokens, as the provider counted them.
    pub output_tokens: u32,
    /// Requests made for the row, the successful one included.
    pub attempts: u32,
}

/// What opening the journal found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records kept.
    pub records: usize,
    /// Bytes cut from the end: a torn last write or damage.
    pub truncated_bytes: u64,
}

/// An open journal: the work earlier runs saved, and where this run appends
/// its own. The file stays locked against other runs while this is alive.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Where the record for each key starts, by the key's first 8 bytes.
    /// Only work saved by earlier runs is indexed (16 bytes a row): this
    /// run's rows are written out as they finish and never looked up, so
    /// memory does not grow with the dataset. A prefix collision is caught
    /// by comparing the full key stored in the record.
    index: HashMap<u64, u64>,
    end: u64,
    recovery: Recovery,
}

impl Journal {
    /// The journal that goes with `output`.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".batchgen-journal");
        output.with_file_name(name)
    }

    /// Opens (or creates) the journal at `path` for this process alone.
    /// `fresh` discards what it holds.
    pub fn open(path: &Path, fresh: bool) -> Result<Journal, JournalError> {
        let shown = path.display().to_string();
        let io = |source| JournalError::Io { path: shown.clone(), source };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        file.try_lock().map_err(|error| match error {
            std::fs::TryLockError::WouldBlock => JournalError::Locked { path: shown.clone() },
            std::fs::TryLockError::Error(source) => io(source),
        })?;
        let mut journal =
            Journal { path: path.to_path_buf(), file, index: HashMap::new(), end: 0, recovery: Recovery::default() };
        let length = journal.file.metadata().map_err(io)?.len();
        if fresh || length == 0 {
            journal.file.set_len(0).map_err(io)?;
            journal.file.write_all(MAGIC).map_err(io)?;
            journal.file.sync_all().map_err(io)?;
            journal.end = MAGIC.len() as u64;
            return Ok(journal);
        }
        journal.scan(length)?;
        Ok(journal)
    }

    /// Reads every record, indexing the good ones and cutting the file at
    /// the first bad one.
    fn scan(&mut self, length: u64) -> Result<(), JournalError> {
        let shown = self.path.display().to_string();
        let io = |source| JournalError::Io { path: shown.clone(), source };
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 20, &self.file);
        let mut magic = vec![0u8; MAGIC.len()];
        let read = read_full(&mut reader, &mut magic).map_err(io)?;
        if magic[..read] != *MAGIC {
            // A crash while creating the file leaves a prefix of the magic.
            if read < MAGIC.len() && MAGIC.starts_with(&magic[..read]) {
                drop(reader);
                return self.reset_to_empty();
            }
            return Err(JournalError::NotAJournal { path: shown });
        }
        let mut offset = MAGIC.len() as u64;
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; HEADER_LEN as usize];
            match read_full(&mut reader, &mut header).map_err(io)? {
                0 => break,
                n if n < header.len() => break,
                _ => {}
            }
            let len = u32::from_le_bytes(header[..4].try_into().unwrap());
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
            if len < KEY_LEN as u32 || len > MAX_PAYLOAD {
                break;
            }
            payload.resize(len as usize, 0);
            if read_full(&mut reader, &mut payload).map_err(io)? < payload.len() || crc32fast::hash(&payload) != crc {
                break;
            }
            self.index.insert(prefix(&payload[..KEY_LEN]), offset);
            self.recovery.records += 1;
            offset += HEADER_LEN + u64::from(len);
        }
        drop(reader);
        if offset < length {
            tracing::warn!(
                "journal {}: dropped {} damaged or incomplete bytes at the end (a torn write); {} saved rows kept",
                self.path.display(),
                length - offset,
                self.recovery.records
            );
            self.recovery.truncated_bytes = length - offset;
            self.file.set_len(offset).map_err(io)?;
            self.file.sync_all().map_err(io)?;
        }
        self.end = offset;
        Ok(())
    }

    fn reset_to_empty(&mut self) -> Result<(), JournalError> {
        let shown = self.path.display().to_string();
        let io = |source| JournalError::Io { path: shown.clone(), source };
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(MAGIC).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.end = MAGIC.len() as u64;
        Ok(())
    }

    /// What opening the journal found: records kept and bytes cut.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Rows saved by earlier runs (keys that differ only in their first
    /// 8 bytes count once).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if no earlier run saved any rows.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The generation an earlier run saved for `key`, read from the file.
    pub fn get(&self, key: &WorkKey) -> Result<Option<Saved>, JournalError> {
        let Some(&offset) = self.index.get(&prefix(&key.0)) else { return Ok(None) };
        let io = |source| JournalError::Io { path: self.path.display().to_string(), source };
        let mut header = [0u8; HEADER_LEN as usize];
        read_at(&self.file, &mut header, offset).map_err(io)?;
        let len = u32::from_le_bytes(header[..4].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        read_at(&self.file, &mut payload, offset + HEADER_LEN).map_err(io)?;
        if payload[..KEY_LEN] != key.0 {
            return Ok(None);
        }
        // The checksum held when the record was indexed.
        Ok(serde_json::from_slice(&payload[KEY_LEN..]).ok())
    }

    /// Appends `entries` and syncs them to disk before returning.
    pub fn append(&mut self, entries: &[(WorkKey, Saved)]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buffer = Vec::new();
        for (key, saved) in entries {
            let mut payload = key.0.to_vec();
            serde_json::to_writer(&mut payload, saved).expect("a generation serialises");
            buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buffer.extend_from_slice(&payload);
        }
        let shown = self.path.display().to_string();
        let io = |source| JournalError::Io { path: shown.clone(), source };
        self.file.seek(SeekFrom::Start(self.end)).map_err(io)?;
        self.file.write_all(&buffer).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.end += buffer.len() as u64;
        Ok(())
    }
}

fn prefix(key: &[u8]) -> u64 {
    u64::from_le_bytes(key[..8].try_into().unwrap())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = std::os::windows::fs::FileExt::seek_read(file, &mut buf[filled..], offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> WorkParams {
        WorkParams {
            provider: "openai".into(),
            model_id: "gpt-4o-mini".into(),
            system_prompt: None,
            temperature: 0.01,
            top_p: 1.0,
            max_tokens: 1024,
            component: None,
            schema: None,
        }
    }

    fn saved(text: &str) -> Saved {
        Saved { text: text.into(), finish_reason: "stop".into(), input_tokens: 3, output_tokens: 2, attempts: 1 }
    }

    #[test]
    fn keys_change_with_every_parameter_and_only_then() {
        let base = params();
        let key = base.key("hello");
        assert_eq!(key, params().key("hello"));
        assert_ne!(key, base.key("hello!"));
        let variants = [
            WorkParams { provider: "anthropic".into(), ..params() },
            WorkParams { model_id: "gpt-4o".into(), ..params() },
            WorkParams { system_prompt: Some(String::new()), ..params() },
            WorkParams { temperature: 0.02, ..params() },
            WorkParams { top_p: 0.9, ..params() },
            WorkParams { max_tokens: 1023, ..params() },
            WorkParams { component: Some([7; 32]), ..params() },
            WorkParams { schema: Some("{}".into()), ..params() },
        ];
        for variant in variants {
            assert_ne!(variant.key("hello"), key, "{variant:?}");
        }
        // Field boundaries matter: ("ab", "c") differs from ("a", "bc").
        let a = WorkParams { provider: "ab".into(), model_id: "c".into(), ..params() };
        let b = WorkParams { provider: "a".into(), model_id: "bc".into(), ..params() };
        assert_ne!(a.key("x"), b.key("x"));
    }

    #[test]
    fn saved_work_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl.batchgen-journal");
        let keys: Vec<WorkKey> = (0..3).map(|i| params().key(&format!("row {i}"))).collect();
        {
            let mut journal = Journal::open(&path, false).unwrap();
            journal.append(&[(keys[0], saved("a")), (keys[1], saved("b"))]).unwrap();
            journal.append(&[(keys[2], saved("c"))]).unwrap();
        }
        let journal = Journal::open(&path, false).unwrap();
        assert_eq!(journal.len(), 3);
        assert_eq!(journal.get(&keys[1]).unwrap(), Some(saved("b")));
        assert_eq!(journal.get(&params().key("absent")).unwrap(), None);
        assert_eq!(journal.recovery(), Recovery { records: 3, truncated_bytes: 0 });
        drop(journal);
        let fresh = Journal::open(&path, true).unwrap();
        assert!(fresh.is_empty());
    }

    #[test]
    fn a_torn_last_write_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let keys: Vec<WorkKey> = (0..3).map(|i| params().key(&format!("row {i}"))).collect();
        {
            let mut journal = Journal::open(&path, false).unwrap();
            for (i, key) in keys.iter().enumerate() {
                journal.append(&[(*key, saved(&format!("text {i}")))]).unwrap();
            }
        }
        let full = std::fs::metadata(&path).unwrap().len();
        // Every cut inside the last record keeps exactly the first two.
        let last_record = 8 + 32 + serde_json::to_vec(&saved("text 2")).unwrap().len() as u64;
        for cut in 1..last_record {
            let copy = dir.path().join(format!("cut-{cut}"));
            std::fs::copy(&path, &copy).unwrap();
            OpenOptions::new().write(true).open(&copy).unwrap().set_len(full - cut).unwrap();
            let mut journal = Journal::open(&copy, false).unwrap();
            assert_eq!(journal.len(), 2, "cut {cut}");
            assert_eq!(journal.get(&keys[1]).unwrap(), Some(saved("text 1")));
            assert_eq!(journal.recovery().truncated_bytes, last_record - cut);
            // Appending after recovery produces a journal that reads back
            // whole (appended records are found by the next run).
            journal.append(&[(keys[2], saved("again"))]).unwrap();
            assert_eq!(journal.get(&keys[2]).unwrap(), None);
            drop(journal);
            let reopened = Journal::open(&copy, false).unwrap();
            assert_eq!(reopened.len(), 3);
            assert_eq!(reopened.get(&keys[2]).unwrap(), Some(saved("again")));
            assert_eq!(reopened.recovery().truncated_bytes, 0);
        }
    }

    #[test]
    fn a_damaged_record_keeps_the_ones_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let keys: Vec<WorkKey> = (0..3).map(|i| params().key(&format!("row {i}"))).collect();
        {
            let mut journal = Journal::open(&path, false).unwrap();
            journal.append(&keys.iter().map(|k| (*k, saved("x"))).collect::<Vec<_>>()).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let record = 8 + 32 + serde_json::to_vec(&saved("x")).unwrap().len();
        // Flip a byte in the second record's text.
        bytes[MAGIC.len() + record + 8 + 32 + 3] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let journal = Journal::open(&path, false).unwrap();
        assert_eq!(journal.len(), 1);
        assert!(journal.get(&keys[0]).unwrap().is_some());
        assert!(journal.get(&keys[1]).unwrap().is_none());
        assert_eq!(journal.recovery().truncated_bytes, 2 * record as u64);
    }

    #[test]
    fn foreign_files_and_second_writers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, "{\"not\": \"a journal\"}\n").unwrap();
        assert!(matches!(Journal::open(&path, false), Err(JournalError::NotAJournal { .. })));
        let journal = Journal::open(&path, true).unwrap();
        assert!(matches!(Journal::open(&path, false), Err(JournalError::Locked { .. })));
        drop(journal);
        // A crash while creating it leaves a prefix of the magic line.
        std::fs::write(&path, &MAGIC[..5]).unwrap();
        assert!(Journal::open(&path, false).unwrap().is_empty());
    }
}
