//! The user's documentation against the code it describes.

use batchgen::config::Job;
use batchgen::plugin::sandbox::Limits;
use clap::Args;

/// The README's tables of parameters and limits must show what the
/// flags declare: a default changed in one place is caught here.
#[test]
fn readme_tables_match_the_declared_defaults() {
    let readme = include_str!("../../../README.md");
    let check = |command: clap::Command, name: &str| {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let long = arg.get_long().unwrap_or(id);
            let key = format!("`{id}`");
            let flag = format!("`--{long}`");
            let Some(row) = readme.lines().find(|l| l.starts_with('|') && (l.contains(&key) || l.contains(&flag)))
            else {
                panic!("{name}: README has no table row for {key} / {flag}");
            };
            let shown = row.split('|').nth(2).unwrap_or_default().trim();
            let declared: Vec<String> =
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            let expected = match declared.first().map(String::as_str) {
                // A switch: off unless given.
                None if !arg.get_action().takes_values() => vec!["false"],
                None => vec!["none", "the label's id"],
                Some("") => vec!["required"],
                Some(value) => vec![value],
            };
            let same_number =
                |a: &str, b: &str| matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y);
            assert!(
                expected.iter().any(|e| *e == shown || same_number(e, shown)),
                "{name}: README shows {shown:?} for {id}, the flag declares {expected:?}"
            );
        }
    };
    check(Job::augment_args(clap::Command::new("job")), "parameters");
    check(Limits::augment_args(clap::Command::new("limits")), "limits");
}
