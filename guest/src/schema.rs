//! Structured output: the JSON schema every output must match.
//!
//! The schema goes to the provider in its own form (OpenAI's strict
//! `response_format`, Anthropic's forced tool, the embedded model's
//! constrained decoding), and every output is validated here whatever the
//! provider promised: a reply that does not match is retried like a garbled
//! one, and after the last attempt the row's error is the validation message.

use jsonschema::Validator;
use serde_json::Value;

/// A checked schema and its validator.
pub struct Schema {
    /// The schema as the user wrote it.
    pub value: Value,
    /// Compact JSON, for the local model.
    pub text: String,
    validator: Validator,
}

impl Schema {
    /// Parses and compiles `text`, whose root must be an object schema:
    /// what each provider's form takes (a tool's input, OpenAI's strict
    /// root), and what `--expand-json` makes columns of.
    pub fn parse(text: &str) -> Result<Schema, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if value["type"] != "object" {
            return Err("the root must be an object schema (\"type\": \"object\"), as both providers require".into());
        }
        // Without resolvers (default features off): a `$ref` to anything
        // but the schema itself fails here, before any request.
        let validator = jsonschema::validator_for(&value).map_err(|e| format!("not a valid JSON schema: {e}"))?;
        Ok(Schema { text: value.to_string(), value, validator })
    }

    /// Whether `output` is JSON that matches; the first mismatch otherwise.
    pub fn check(&self, output: &str) -> Result<(), String> {
        let instance: Value = serde_json::from_str(output).map_err(|e| format!("the output is not JSON ({e})"))?;
        match self.validator.iter_errors(&instance).next() {
            None => Ok(()),
            Some(error) => {
                let at = error.instance_path().to_string();
                let at = if at.is_empty() { "the output".to_string() } else { format!("the output at {at}") };
                Err(format!("{at} does not match json_schema: {error}"))
            }
        }
    }
}

/// Keywords OpenAI's strict mode takes (its structured-outputs guide);
/// anything else is refused by the API with a 400 for the whole run.
const STRICT_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "definitions",
    "description",
    "title",
    "$schema",
    "$id",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
];

/// What OpenAI's strict mode would refuse in `schema`, each with its place
/// (a JSON pointer): every object must set `additionalProperties: false`
/// and list every property in `required`, and only [`STRICT_KEYWORDS`] are
/// known.
pub fn strict_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(schema, "", &mut problems);
    problems
}

fn walk(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(object) = schema.as_object() else { return };
    let place = if at.is_empty() { "the root".to_string() } else { at.to_string() };
    for key in object.keys() {
        if !STRICT_KEYWORDS.contains(&key.as_str()) {
            problems.push(format!("{place}: `{key}` is not supported in OpenAI's strict mode"));
        }
    }
    let is_object =
        object.get("type").is_some_and(|t| t == "object" || t.as_array().is_some_and(|a| a.contains(&"object".into())));
    if is_object {
        if object.get("additionalProperties") != Some(&Value::Bool(false)) {
            problems.push(format!("{place}: strict mode needs \"additionalProperties\": false"));
        }
        let required: Vec<&str> =
            object.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for name in properties.keys().filter(|name| !required.contains(&name.as_str())) {
                problems.push(format!(
                    "{place}: strict mode needs every property in \"required\" (`{name}` is not; make it nullable instead)"
                ));
            }
        }
    }
    let child = |key: &str| format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
    for container in ["properties", "$defs", "definitions"] {
        if let Some(map) = object.get(container).and_then(Value::as_object) {
            for (name, sub) in map {
                walk(sub, &format!("{}/{}", child(container), name.replace('~', "~0").replace('/', "~1")), problems);
            }
        }
    }
    if let Some(items) = object.get("items") {
        walk(items, &child("items"), problems);
    }
    if let Some(any) = object.get("anyOf").and_then(Value::as_array) {
        for (i, sub) in any.iter().enumerate() {
            walk(sub, &format!("{}/{i}", child("anyOf")), problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn label_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["good", "bad"]},
                "score": {"type": "integer", "minimum": 0, "maximum": 10},
                "reason": {"type": "string"}
            },
            "required": ["label", "score", "reason"],
            "additionalProperties": false
        })
    }

    #[test]
    fn outputs_are_checked_with_the_place_of_the_mismatch() {
        let schema = Schema::parse(&label_schema().to_string()).unwrap();
        assert_eq!(schema.check(r#"{"label":"good","score":3,"reason":"r"}"#), Ok(()));
        let error = schema.check(r#"{"label":"meh","score":3,"reason":"r"}"#).unwrap_err();
        assert!(error.starts_with("the output at /label does not match"), "{error}");
        assert!(schema.check(r#"{"label":"good""#).unwrap_err().contains("not JSON"));
        assert!(schema.check(r#"{"label":"good","score":3}"#).unwrap_err().contains("reason"));
    }

    #[test]
    fn the_root_must_be_an_object_schema() {
        assert!(Schema::parse(r#"{"type":"string"}"#).err().unwrap().contains("object"));
        assert!(Schema::parse("[1").err().unwrap().contains("not JSON"));
        assert!(Schema::parse(r#"{"type":"object","properties":{"a":{"type":"nope"}}}"#).is_err());
    }

    #[test]
    fn strict_mode_problems_name_their_place() {
        assert!(strict_problems(&label_schema()).is_empty());
        let loose = json!({
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 2}, "tags": {"type": "array", "items": {"type": "object", "properties": {"t": {"type": "string"}}}}},
            "required": ["name"]
        });
        let problems = strict_problems(&loose);
        assert!(
            problems.contains(&"the root: strict mode needs \"additionalProperties\": false".to_string()),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("the root: strict mode needs every property") && p.contains("`tags`"))
        );
        assert!(
            problems.contains(&"/properties/name: `minLength` is not supported in OpenAI's strict mode".to_string())
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("/properties/tags/items: strict mode needs \"additionalProperties\""))
        );
    }
}
