//! The model table: spec labels, the provider ids they map to, and what users
//! need to know when an id is retired.

use crate::exports::batchgen::plugin::batch_generator::ModelInfo;

/// Which API a model is reached through: the WIT enum itself, so the
/// table and what `list-models` reports cannot disagree.
pub use crate::exports::batchgen::plugin::batch_generator::Provider;

pub struct Model {
    pub label: &'static str,
    pub provider: Provider,
    /// The provider id sent when the config has no `model-id` override.
    pub model_id: &'static str,
    pub aliases: &'static [&'static str],
    /// Set when the provider retired `model_id`: the successor to pass as
    /// `model-id`, and when it was retired.
    pub retired: Option<Retirement>,
}

pub struct Retirement {
    pub on: &'static str,
    pub successor: &'static str,
}

/// The spec's labels. Anthropic retired both Claude 3.5 ids; the labels stay
/// because the spec names them, and a 404 for them says what to use instead.
pub static MODELS: &[Model] = &[
    Model { label: "Local", provider: Provider::Local, model_id: "", aliases: &["local"], retired: None },
    Model {
        label: "Claude 3.5 Haiku",
        provider: Provider::Anthropic,
        model_id: "claude-3-5-haiku-20241022",
        aliases: &["claude-3-5-haiku", "claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"],
        retired: Some(Retirement { on: "2026-02-19", successor: "claude-haiku-4-5-20251001" }),
    },
    Model {
        label: "Claude 3.5 Sonnet",
        provider: Provider::Anthropic,
        model_id: "claude-3-5-sonnet-20241022",
        aliases: &["claude-3-5-sonnet", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest"],
        retired: Some(Retirement { on: "2025-10-28", successor: "claude-sonnet-4-5-20250929" }),
    },
    Model {
        label: "OpenAI GPT 4o",
        provider: Provider::Openai,
        model_id: "gpt-4o",
        aliases: &["gpt-4o"],
        retired: None,
    },
    Model {
        label: "OpenAI GPT 4o Mini",
        provider: Provider::Openai,
        model_id: "gpt-4o-mini",
        aliases: &["gpt-4o-mini"],
        retired: None,
    },
];

impl Model {
    /// Finds a model by label or alias, ignoring case and punctuation, so
    /// `OpenAI GPT 4o Mini`, `openai-gpt-4o-mini` and `gpt-4o-mini` all match.
    pub fn find(name: &str) -> Option<&'static Model> {
        let wanted = slug(name);
        MODELS
            .iter()
            .find(|model| slug(model.label) == wanted || model.aliases.iter().any(|alias| slug(alias) == wanted))
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            label: self.label.to_string(),
            provider: self.provider,
            model_id: self.model_id.to_string(),
            aliases: std::iter::once(slug(self.label))
                .chain(self.aliases.iter().map(|alias| alias.to_string()))
                .collect(),
            note: self.retired.as_ref().map(|retired| {
                format!(
                    "{} was retired by the provider on {}; set model_id to {} (its successor)",
                    self.model_id, retired.on, retired.successor
                )
            }),
        }
    }

    /// The advice a user needs when the provider answers 404 for `model_id`.
    pub fn not_found_hint(&self, model_id: &str) -> String {
        match &self.retired {
            Some(retired) if model_id == self.model_id => format!(
                "model id {model_id:?} was not found: the provider retired it on {}. \
                 Pass --model-id {} (or \"model_id\" in the config) to use its successor",
                retired.on, retired.successor
            ),
            _ => format!(
                "model id {model_id:?} was not found: it may be retired or not available to \
                 this key. Pass --model-id (or \"model_id\" in the config) with a current id"
            ),
        }
    }
}

/// Lowercase, with every run of other characters turned into one `-`.
fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_case_and_slugs() {
        for name in ["OpenAI GPT 4o Mini", "openai gpt 4o mini", "gpt-4o-mini", "GPT_4o_Mini"] {
            assert_eq!(Model::find(name).unwrap().model_id, "gpt-4o-mini", "{name}");
        }
        assert_eq!(Model::find("gpt-4o").unwrap().model_id, "gpt-4o");
        assert_eq!(Model::find("claude 3.5 haiku").unwrap().provider, Provider::Anthropic);
        assert_eq!(Model::find("LOCAL").unwrap().provider, Provider::Local);
        assert!(Model::find("gpt-5").is_none());
        assert!(Model::find("").is_none());
    }
}
