//! Rate awareness shared by every request of a run: how many requests may
//! be in flight, and when the next may start.
//!
//! Retries are the component's business; pacing is the host's, because one
//! key's limits are shared by every batch and every instance of a run. The
//! `send_request` hook asks [`Pacer::admit`] before each request and
//! reports each response's status and headers to [`Pacer::observe`]:
//!
//! - Adaptive concurrency (AIMD): the limit starts at the batch size, halves
//!   on a 429 or an overload, and grows back by one request per window of
//!   successes. As in TCP, only a request admitted after the last cut can
//!   cut again, so one burst of 429s is one cut, and each round trip at most
//!   one more.
//!   A rate limit becomes a steady rate instead of a retry storm.
//! - The providers' rate-limit headers: when a `remaining` count reaches 0,
//!   nothing starts until its reset (OpenAI `x-ratelimit-*`, Anthropic
//!   `anthropic-ratelimit-*`).
//! - Optional ceilings: `--max-rpm` spaces request starts evenly; `--max-tpm`
//!   keeps a token bucket charged with each request's prompt estimate plus
//!   its `max_tokens`, as the providers' own limiters count.

use http::HeaderMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Never wait longer than this on a reset header: a clock skew or a daily
/// quota would otherwise stall the run silently.
const MAX_HEADER_PAUSE: Duration = Duration::from_secs(120);

/// The limits a [`Pacer`] enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PaceSettings {
    /// Requests in flight at most; the AIMD limit starts here.
    pub max_concurrency: usize,
    /// `--max-rpm`: request starts are spaced evenly to stay under it.
    pub max_requests_per_minute: Option<u32>,
    /// `--max-tpm`: each request is charged its prompt estimate plus its
    /// `max_tokens`.
    pub max_tokens_per_minute: Option<u32>,
}

/// Counters for the run's report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PaceStats {
    /// Times the concurrency limit was cut.
    pub cuts: u64,
    /// Times a rate-limit header paused all requests.
    pub header_pauses: u64,
    /// The lowest concurrency limit of the run.
    pub lowest_limit: usize,
}

/// Decides when each request of a run may start. Shared (in an `Arc`) by
/// every request of the run.
pub struct Pacer {
    settings: PaceSettings,
    state: Mutex<State>,
    released: Notify,
}

struct State {
    limit: f64,
    in_flight: usize,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
    /// Earliest start of the next request under `max_requests_per_minute`.
    next_start: Option<Instant>,
    /// Tokens available under `max_tokens_per_minute`, and when counted.
    tokens: f64,
    tokens_at: Instant,
    stats: PaceStats,
}

/// A slot of the concurrency limit, released on drop.
pub struct Permit {
    pacer: Arc<Pacer>,
    admitted_at: Instant,
}

impl Permit {
    /// When the request was admitted; pass it to [`Pacer::observe`].
    pub fn admitted_at(&self) -> Instant {
        self.admitted_at
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pacer.state.lock().unwrap().in_flight -= 1;
        self.pacer.released.notify_waiters();
    }
}

impl Pacer {
    /// A pacer that starts at `settings.max_concurrency` requests in flight
    /// (at least 1).
    pub fn new(settings: PaceSettings) -> Arc<Pacer> {
        let max = settings.max_concurrency.max(1);
        Arc::new(Pacer {
            settings: PaceSettings { max_concurrency: max, ..settings },
            state: Mutex::new(State {
                limit: max as f64,
                in_flight: 0,
                paused_until: None,
                last_cut: None,
                next_start: None,
                tokens: settings.max_tokens_per_minute.map_or(0.0, f64::from),
                tokens_at: Instant::now(),
                stats: PaceStats { lowest_limit: max, ..PaceStats::default() },
            }),
            released: Notify::new(),
        })
    }

    /// Whether `admit` needs a token estimate (only with a TPM ceiling).
    pub fn counts_tokens(&self) -> bool {
        self.settings.max_tokens_per_minute.is_some()
    }

    /// The counters so far.
    pub fn stats(&self) -> PaceStats {
        self.state.lock().unwrap().stats
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap().limit as usize
    }

    /// Waits until a request estimated at `tokens` may start.
    pub async fn admit(self: &Arc<Self>, tokens: u32) -> Permit {
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let wait_until = {
                let mut state = self.state.lock().unwrap();
                match self.try_take(&mut state, f64::from(tokens), Instant::now()) {
                    Ok(()) => return Permit { pacer: Arc::clone(self), admitted_at: Instant::now() },
                    Err(until) => until,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = released => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => released.await,
            }
        }
    }

    /// Takes a slot, or says until when (`None`: until a release) to wait.
    fn try_take(&self, state: &mut State, tokens: f64, now: Instant) -> Result<(), Option<Instant>> {
        if let Some(until) = state.paused_until {
            if until > now {
                return Err(Some(until));
            }
            state.paused_until = None;
        }
        if state.in_flight >= (state.limit as usize).max(1) {
            return Err(None);
        }
        if let Some(next) = state.next_start.filter(|next| *next > now) {
            return Err(Some(next));
        }
        if let Some(tpm) = self.settings.max_tokens_per_minute {
            let capacity = f64::from(tpm);
            let refill = now.duration_since(state.tokens_at).as_secs_f64() * capacity / 60.0;
            state.tokens = (state.tokens + refill).min(capacity);
            state.tokens_at = now;
            // A request larger than the whole bucket waits for a full one.
            let needed = tokens.min(capacity);
            if state.tokens < needed {
                let wait = (needed - state.tokens) * 60.0 / capacity;
                return Err(Some(now + Duration::from_secs_f64(wait)));
            }
            state.tokens -= needed;
        }
        if let Some(rpm) = self.settings.max_requests_per_minute {
            let interval = Duration::from_secs_f64(60.0 / f64::from(rpm.max(1)));
            state.next_start = Some(state.next_start.map_or(now, |next| next.max(now)) + interval);
        }
        state.in_flight += 1;
        Ok(())
    }

    /// Learns from the response to a request admitted at `admitted_at`: its
    /// status drives AIMD, its headers may pause every request.
    pub fn observe(&self, status: u16, headers: &HeaderMap, admitted_at: Instant) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let max = self.settings.max_concurrency as f64;
        match status {
            429 | 503 | 529 if state.last_cut.is_none_or(|cut| admitted_at > cut) => {
                state.limit = (state.limit / 2.0).max(1.0);
                state.last_cut = Some(now);
                state.stats.cuts += 1;
                state.stats.lowest_limit = state.stats.lowest_limit.min(state.limit as usize);
                tracing::debug!("rate limited ({status}): concurrency limit now {}", state.limit as usize);
            }
            200..=299 => state.limit = (state.limit + 1.0 / state.limit).min(max),
            _ => {}
        }
        if let Some(pause) = exhausted_until_reset(headers) {
            let until = now + pause.min(MAX_HEADER_PAUSE);
            if state.paused_until.is_none_or(|current| current < until) {
                state.paused_until = Some(until);
                state.stats.header_pauses += 1;
                tracing::debug!("rate limit exhausted: pausing for {pause:?}");
            }
        }
        drop(state);
        if (200..300).contains(&status) {
            self.released.notify_waiters();
        }
    }
}

/// The longest reset among the limits whose `remaining` is 0.
fn exhausted_until_reset(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let exhausted = |name: &str| text(name).and_then(|v| v.parse::<f64>().ok()) == Some(0.0);
    let mut pause: Option<Duration> = None;
    let mut consider = |wait: Option<Duration>| {
        if let Some(wait) = wait {
            pause = Some(pause.map_or(wait, |p| p.max(wait)));
        }
    };
    for kind in ["requests", "tokens"] {
        if exhausted(&format!("x-ratelimit-remaining-{kind}")) {
            consider(text(&format!("x-ratelimit-reset-{kind}")).and_then(parse_openai_duration));
        }
    }
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        if exhausted(&format!("anthropic-ratelimit-{kind}-remaining")) {
            consider(text(&format!("anthropic-ratelimit-{kind}-reset")).and_then(until_rfc3339));
        }
    }
    pause
}

/// OpenAI's reset durations: `12ms`, `1s`, `8.64s`, `6m0s`, `1h2m3.5s`.
fn parse_openai_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (scale, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Anthropic's resets are RFC 3339 instants; the wait is until then.
fn until_rfc3339(text: &str) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn openai_durations() {
        assert_eq!(parse_openai_duration("12ms"), Some(Duration::from_millis(12)));
        assert_eq!(parse_openai_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_openai_duration("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
        assert_eq!(parse_openai_duration("8.64s"), Some(Duration::from_secs_f64(8.64)));
        assert_eq!(parse_openai_duration(""), None);
        assert_eq!(parse_openai_duration("5 parsecs"), None);
    }

    #[test]
    fn pauses_only_when_remaining_is_zero() {
        assert_eq!(
            exhausted_until_reset(&headers(&[
                ("x-ratelimit-remaining-requests", "3"),
                ("x-ratelimit-reset-requests", "1s")
            ])),
            None
        );
        assert_eq!(
            exhausted_until_reset(&headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "250ms"),
            ])),
            Some(Duration::from_secs(1))
        );
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
        let wait = exhausted_until_reset(&headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", &reset),
        ]))
        .unwrap();
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn aimd_halves_once_per_round_trip_and_grows_back_slowly() {
        let pacer = Pacer::new(PaceSettings { max_concurrency: 64, ..PaceSettings::default() });
        let none = HeaderMap::new();
        let burst = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        for _ in 0..10 {
            pacer.observe(429, &none, burst);
        }
        assert_eq!(pacer.limit(), 32, "a burst of 429s is one cut");
        tokio::time::advance(Duration::from_millis(5)).await;
        pacer.observe(429, &none, Instant::now());
        assert_eq!(pacer.limit(), 16, "a request admitted after the cut cuts again");
        // Additive increase: about one more slot per window of successes.
        for _ in 0..15 {
            pacer.observe(200, &none, Instant::now());
        }
        assert_eq!(pacer.limit(), 16);
        for _ in 0..20 {
            pacer.observe(200, &none, Instant::now());
        }
        assert!(pacer.limit() >= 17 && pacer.limit() <= 18, "{}", pacer.limit());
        assert_eq!(pacer.stats().cuts, 2);
        assert_eq!(pacer.stats().lowest_limit, 16);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_limit_holds_requests_until_a_release() {
        let pacer = Pacer::new(PaceSettings { max_concurrency: 2, ..PaceSettings::default() });
        let a = pacer.admit(0).await;
        let _b = pacer.admit(0).await;
        let third = tokio::spawn({
            let pacer = Arc::clone(&pacer);
            async move { pacer.admit(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        let _c = third.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn rpm_ceiling_spaces_starts_evenly() {
        let pacer = Pacer::new(PaceSettings {
            max_concurrency: 100,
            max_requests_per_minute: Some(600),
            ..PaceSettings::default()
        });
        let start = Instant::now();
        for _ in 0..5 {
            drop(pacer.admit(0).await);
        }
        // Starts at 0, 100, 200, 300 and 400 ms (the clock is tokio's paused one).
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_ceiling_waits_for_the_bucket_to_refill() {
        let pacer = Pacer::new(PaceSettings {
            max_concurrency: 100,
            max_tokens_per_minute: Some(6000),
            ..PaceSettings::default()
        });
        let start = Instant::now();
        drop(pacer.admit(6000).await); // the full bucket
        drop(pacer.admit(600).await); // 600 tokens refill in 6 s
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(6) && waited < Duration::from_millis(6100), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_headers_pause_every_request_until_reset() {
        let pacer = Pacer::new(PaceSettings { max_concurrency: 8, ..PaceSettings::default() });
        let start = Instant::now();
        pacer.observe(
            200,
            &headers(&[("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "2s")]),
            start,
        );
        drop(pacer.admit(0).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(pacer.stats().header_pauses, 1);
    }
}
