//! The operator's allowlist: which origins a component's requests may
//! reach, and the credential each one carries.
//!
//! This is the whole grant-or-deny decision, apart from the HTTP client so
//! that it can be read and tested on its own. A request is granted only
//! when its scheme, host and port are exactly those of a configured
//! endpoint; whatever credential headers the component set are removed and
//! the endpoint's own key is added. The component never names a host it
//! may reach and never holds a key.

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Header names a guest may never set: credentials are the host's to add.
pub const CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "x-api-key"];

/// Scheme, host and port: what the allowlist compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `https` rather than `http`.
    pub https: bool,
    /// The host, lowercased.
    pub host: String,
    /// The port, the scheme's default when the URL gives none.
    pub port: u16,
}

impl Origin {
    /// The origin of an endpoint URL from the operator's settings.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("{url:?} has scheme {other:?}; only http and https are supported")),
        };
        let host = parsed.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
        Ok(Origin {
            https,
            host: host.to_ascii_lowercase(),
            port: parsed.port_or_known_default().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    fn of_uri(uri: &http::Uri) -> Option<Origin> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Origin {
            https,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

/// A destination the operator allows, with the credential header that goes
/// with it.
#[derive(Clone)]
pub struct Destination {
    /// Where requests may go.
    pub origin: Origin,
    /// The header the host adds to each, with the provider's key.
    pub credential: Option<(HeaderName, HeaderValue)>,
}

impl Destination {
    /// OpenAI-style `Authorization: Bearer KEY`.
    pub fn bearer(origin: Origin, key: Option<&str>) -> Result<Destination, String> {
        let credential = key.map(|key| credential(AUTHORIZATION, &format!("Bearer {key}"))).transpose()?;
        Ok(Destination { origin, credential })
    }

    /// Anthropic-style `x-api-key: KEY`.
    pub fn api_key(origin: Origin, key: Option<&str>) -> Result<Destination, String> {
        let credential = key.map(|key| credential(HeaderName::from_static("x-api-key"), key)).transpose()?;
        Ok(Destination { origin, credential })
    }
}

fn credential(name: HeaderName, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| format!("the API key for {name} contains characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Why a request was not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The URI has no http(s) scheme or no host.
    InvalidUri,
    /// The origin is not a configured endpoint.
    NotAllowed(Origin),
}

/// The destinations of one run.
#[derive(Clone, Default)]
pub struct Allowlist {
    destinations: Arc<[Destination]>,
}

impl Allowlist {
    /// Grants exactly `destinations`; empty denies everything.
    pub fn new(destinations: Vec<Destination>) -> Allowlist {
        Allowlist { destinations: destinations.into() }
    }

    /// Grants or denies `request`. A granted request leaves with its
    /// destination's credential and no other.
    pub fn authorize<B>(&self, request: &mut http::Request<B>) -> Result<(), Denied> {
        let origin = Origin::of_uri(request.uri()).ok_or(Denied::InvalidUri)?;
        let destination = self.destinations.iter().find(|d| d.origin == origin).ok_or(Denied::NotAllowed(origin))?;
        let headers = request.headers_mut();
        // The forbidden-header filter already keeps these out; removing them
        // again makes the guarantee independent of that filter.
        for name in CREDENTIAL_HEADERS {
            headers.remove(name);
        }
        if let Some((name, value)) = &destination.credential {
            headers.insert(name.clone(), value.clone());
        }
        Ok(())
    }
}

/// Destinations whose denials are counted one by one; the rest share one
/// count, so a component knocking on endless hosts cannot grow the tally.
const TRACKED_DESTINATIONS: usize = 16;

/// Denied requests, counted per destination: a component that knocks on
/// the same closed door a million times costs one log line, not a million.
#[derive(Clone, Default)]
pub struct Denials(Arc<Mutex<BTreeMap<String, u64>>>);

impl Denials {
    /// Counts a denial of `origin`; `true` when it is the first for that
    /// destination, which the caller reports at once.
    pub fn count(&self, origin: &Origin) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut key = origin.to_string();
        if counts.len() >= TRACKED_DESTINATIONS && !counts.contains_key(&key) {
            key = "other destinations".to_string();
        }
        let count = counts.entry(key).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Every destination denied so far, with its count.
    pub fn tally(&self) -> Vec<(String, u64)> {
        let counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.iter().map(|(destination, count)| (destination.clone(), *count)).collect()
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", if self.https { "https" } else { "http" }, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Origin::parse("https://API.openai.com/v1").unwrap();
        assert_eq!(a, Origin::parse("https://api.openai.com:443/other").unwrap());
        assert_ne!(a, Origin::parse("http://api.openai.com/v1").unwrap());
        assert_ne!(a, Origin::parse("https://api.openai.com:8443/v1").unwrap());
        assert!(Origin::parse("ftp://x").is_err());
        assert_eq!(
            Origin::of_uri(&"http://127.0.0.1:9000/v1/messages".parse().unwrap()),
            Some(Origin::parse("http://127.0.0.1:9000").unwrap())
        );
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::post(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn openai() -> Allowlist {
        let origin = Origin::parse("https://api.openai.com/v1").unwrap();
        Allowlist::new(vec![Destination::bearer(origin, Some("sk-host")).unwrap()])
    }

    #[test]
    fn a_configured_origin_is_granted_with_its_key_and_no_other() {
        let mut granted = request(
            "https://API.OpenAI.com:443/v1/chat/completions",
            &[("authorization", "Bearer stolen"), ("x-api-key", "stolen")],
        );
        openai().authorize(&mut granted).unwrap();
        assert_eq!(granted.headers()["authorization"], "Bearer sk-host");
        assert!(granted.headers()["authorization"].is_sensitive());
        assert!(!granted.headers().contains_key("x-api-key"));
    }

    #[test]
    fn every_other_origin_is_denied() {
        for uri in [
            "http://api.openai.com/v1/chat/completions",
            "https://api.openai.com:8443/v1/chat/completions",
            "https://api.openai.com.evil.example/v1",
            "https://evil.example/v1",
            "https://127.0.0.1/v1",
        ] {
            let denied = openai().authorize(&mut request(uri, &[]));
            assert!(matches!(denied, Err(Denied::NotAllowed(_))), "{uri}: {denied:?}");
        }
        assert_eq!(openai().authorize(&mut request("/v1/chat/completions", &[])), Err(Denied::InvalidUri));
        assert!(Allowlist::default().authorize(&mut request("https://api.openai.com/v1", &[])).is_err());
    }

    #[test]
    fn denials_are_counted_per_destination_within_a_bound() {
        let denials = Denials::default();
        let origin = |port: u16| Origin { https: false, host: "evil.example".into(), port };
        assert!(denials.count(&origin(1)));
        assert!(!denials.count(&origin(1)));
        for port in 2..100 {
            denials.count(&origin(port));
        }
        let tally = denials.tally();
        assert_eq!(tally.len(), TRACKED_DESTINATIONS + 1, "{tally:?}");
        assert!(tally.contains(&("http://evil.example:1".to_string(), 2)));
        assert!(tally.contains(&("other destinations".to_string(), 100 - 1 - TRACKED_DESTINATIONS as u64)));
    }

    #[test]
    fn a_destination_without_a_key_strips_the_guests_credentials() {
        let origin = Origin::parse("http://127.0.0.1:8000").unwrap();
        let local = Allowlist::new(vec![Destination::api_key(origin, None).unwrap()]);
        let mut granted = request("http://127.0.0.1:8000/v1/chat/completions", &[("x-api-key", "stolen")]);
        local.authorize(&mut granted).unwrap();
        assert!(granted.headers().is_empty());
    }
}
