//! The model's own tokenizer, rebuilt from the GGUF metadata (the file
//! carries vocabulary and merges but no `tokenizer.json`), and its ChatML
//! prompt format.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// SmolLM2's chat template supplies this system prompt when none is given.
const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

pub struct ChatTokenizer {
    inner: Tokenizer,
    /// The token that ends an answer (`<|im_end|>`).
    pub end: u32,
    /// The most bytes one token stands for. A byte-level BPE vocabulary
    /// writes each byte as one character, so it is the longest entry's
    /// length in characters; a text of `n` bytes is at least `n / longest`
    /// tokens, which bounds a prompt's size before it is tokenized.
    pub longest_token_bytes: usize,
}

fn strings<'a>(content: &'a Content, key: &str) -> Result<Vec<&'a str>, String> {
    let values = content
        .metadata
        .get(key)
        .ok_or_else(|| format!("GGUF metadata has no {key}"))?
        .to_vec()
        .map_err(|e| format!("{key}: {e}"))?;
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(format!("{key} holds a non-string")),
        })
        .collect()
}

impl ChatTokenizer {
    pub fn from_gguf(content: &Content) -> Result<ChatTokenizer, String> {
        let model =
            content.metadata.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if model != "gpt2" {
            return Err(format!("tokenizer {model:?} is not supported (only byte-level BPE, \"gpt2\")"));
        }
        let tokens = strings(content, "tokenizer.ggml.tokens")?;
        let longest_token_bytes = tokens.iter().map(|t| t.chars().count()).max().unwrap_or(1).max(1);
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges: Vec<(String, String)> = strings(content, "tokenizer.ggml.merges")?
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| format!("tokenizer: {e}"))?;
        let mut inner = Tokenizer::new(bpe);
        // SmolLM's pre-tokenizer: every digit alone, then GPT-2 byte level.
        let pre = Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
        inner.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .filter(|t| t.starts_with("<|") && t.ends_with("|>"))
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        // The number of tokens added: nothing to check, as none were there.
        let _ = inner.add_special_tokens(specials);
        let end = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
            .or_else(|| inner.token_to_id("<|im_end|>"))
            .ok_or("the model names no end token")?;
        Ok(ChatTokenizer { inner, end, longest_token_bytes })
    }

    /// The ChatML prompt for one row, as token ids.
    pub fn encode_chat(&self, system: Option<&str>, prompt: &str) -> Result<Vec<u32>, String> {
        let system = system.unwrap_or(DEFAULT_SYSTEM);
        let text = format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        );
        let encoding = self.inner.encode(text, false).map_err(|e| format!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, true).map_err(|e| format!("detokenizing: {e}"))
    }
}
