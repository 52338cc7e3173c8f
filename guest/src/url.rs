//! Just enough URL handling to turn a configured base URL into the parts a
//! `wasi:http` request takes. A full URL crate would add more to the
//! component than all of its own logic.

/// A base URL split into the pieces of an outgoing request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub https: bool,
    /// `host` or `host:port`, as written.
    pub authority: String,
    /// The path prefix without a trailing `/`, possibly empty.
    pub path: String,
}

impl BaseUrl {
    pub fn parse(text: &str) -> Result<BaseUrl, String> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not an absolute URL (expected http:// or https://)"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => return Err(format!("{text:?} has scheme {other:?}; only http and https are supported")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || authority.chars().any(char::is_whitespace) {
            return Err(format!("{text:?} has no valid host"));
        }
        if path.contains(['?', '#']) {
            return Err(format!("{text:?} must not carry a query or fragment"));
        }
        Ok(BaseUrl { https, authority: authority.to_string(), path: path.trim_end_matches('/').to_string() })
    }

    /// The path and query for `suffix` (which starts with `/`) under this base.
    pub fn join(&self, suffix: &str) -> String {
        format!("{}{}", self.path, suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_bases() {
        let url = BaseUrl::parse("https://api.openai.com/v1/").unwrap();
        assert!(url.https);
        assert_eq!(url.authority, "api.openai.com");
        assert_eq!(url.join("/chat/completions"), "/v1/chat/completions");
        let url = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (url.https, url.authority.as_str(), url.join("/v1/messages").as_str()),
            (false, "127.0.0.1:8080", "/v1/messages")
        );
    }

    #[test]
    fn rejects_what_cannot_be_requested() {
        for bad in ["api.openai.com", "ftp://x", "https://", "https://user@host/", "https://h/v1?x=1"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
