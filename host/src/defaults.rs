//! Defaults declared once, in the clap attributes of the structs that hold
//! them ([`crate::config::Job`], [`crate::plugin::sandbox::Limits`]): their
//! `Default` impls ask clap, so that the flags' help, the config file and
//! library callers can never disagree.

/// `T` as clap builds it from an empty command line: every field at its
/// `default_value_t`.
pub(crate) fn from_clap<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = command.try_get_matches_from(std::iter::empty::<String>());
    matches
        .and_then(|matches| T::from_arg_matches(&matches))
        .unwrap_or_else(|error| panic!("every parameter has a default or is optional: {error}"))
}
