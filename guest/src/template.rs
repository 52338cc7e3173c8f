//! Prompt templates: a row's prompt written from several of its columns
//! (`Translate {{ text }} into {{ language }}`), rendered with MiniJinja.
//!
//! Rendering lives here, not in the host, so that every host of the
//! component renders a template the same way. Values render as people
//! expect them in a prompt: strings as they are, numbers as numbers,
//! booleans as `true`/`false`, lists and objects as compact JSON, and a
//! null or missing value as nothing. Nothing is HTML-escaped.

use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// Work one row's render may do (MiniJinja's fuel: about one unit per
/// instruction): generous for any prompt, and a bound on a template that
/// would loop without end.
const FUEL: u64 = 1_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Spans for errors, so a syntax error can name its column.
    env.set_debug(true);
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_formatter(|out, _state, value| {
        let shown = match value.kind() {
            ValueKind::Undefined | ValueKind::None => return Ok(()),
            // JSON's spelling, not Python's `True`.
            ValueKind::Bool => value.is_true().to_string(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => serde_json::to_string(value)
                .map_err(|e| Error::new(ErrorKind::BadSerialization, format!("cannot render as JSON: {e}")))?,
            _ => value.to_string(),
        };
        out.write_str(&shown).map_err(Error::from)
    });
    env
}

/// `line L, column C: message`, from the error's span in `source`.
fn located(error: &Error, source: &str) -> String {
    let detail = error.detail().map_or_else(|| error.kind().to_string(), str::to_string);
    match (error.line(), error.range()) {
        (Some(line), Some(range)) => {
            let start = source[..range.start.min(source.len())].rfind('\n').map_or(0, |at| at + 1);
            let column = source[start..range.start.min(source.len())].chars().count() + 1;
            format!("line {line}, column {column}: {detail}")
        }
        (Some(line), None) => format!("line {line}: {detail}"),
        _ => detail,
    }
}

/// The columns `source` reads, sorted; or where and why it does not parse.
pub fn columns(source: &str) -> Result<Vec<String>, String> {
    let env = environment();
    let template = env.template_from_str(source).map_err(|error| located(&error, source))?;
    let mut columns: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    columns.sort();
    Ok(columns)
}

/// Renders `source` for each row, a JSON object of the row's columns.
pub fn render(source: &str, rows: &[String]) -> Vec<Result<String, String>> {
    let env = environment();
    let template = match env.template_from_str(source) {
        Ok(template) => template,
        Err(error) => {
            let message = format!("prompt_template: {}", located(&error, source));
            return rows.iter().map(|_| Err(message.clone())).collect();
        }
    };
    rows.iter()
        .map(|row| {
            let columns: Value =
                serde_json::from_str(row).map_err(|e| format!("the row's columns are not a JSON object: {e}"))?;
            if columns.kind() != ValueKind::Map {
                return Err("the row's columns are not a JSON object".to_string());
            }
            template.render(columns).map_err(|error| format!("prompt_template: {}", located(&error, source)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_people_expect_them() {
        let rows = [r#"{"s":"héllo","i":3,"f":2.5,"b":true,"n":null,"l":[1,"a"],"o":{"k":[true]}}"#.to_string()];
        let out = render("{{s}}|{{i}}|{{f}}|{{b}}|{{n}}|{{missing}}|{{l}}|{{o}}|<{{'&'}}>", &rows);
        assert_eq!(out, vec![Ok(r#"héllo|3|2.5|true|||[1,"a"]|{"k":[true]}|<&>"#.to_string())]);
    }

    #[test]
    fn columns_are_the_templates_free_variables() {
        let source = "{% for x in items %}{{ x }}{% endfor %} {{ question }} {% set y = 1 %}{{ y }}";
        assert_eq!(columns(source), Ok(vec!["items".to_string(), "question".to_string()]));
    }

    #[test]
    fn syntax_errors_name_their_line_and_column() {
        let error = columns("Hello\n  {{ name ").unwrap_err();
        assert!(error.starts_with("line 2, column"), "{error}");
        let error = columns("{% if x %}never closed").unwrap_err();
        assert!(error.starts_with("line 1"), "{error}");
    }

    #[test]
    fn a_template_that_loops_without_end_runs_out_of_fuel() {
        let out = render(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
            &["{}".to_string()],
        );
        assert!(out[0].as_ref().is_err_and(|e| e.contains("fuel")), "{out:?}");
    }
}
