//! Rate awareness shared by every request of a run: how many requests may
//! be in flight, and when the next may start.
//!
//! Retries are the component's business; pacing is the host's, because one
//! key's limits are shared by every batch and every instance of a run. The
//! `send_request` hook asks [`Pacer::admit`] before each request and
//! reports each response's status and headers to [`Pacer::observe`]:
//!
//! # What each signal means
//!
//! The policy reads what the providers send and slows down only for what
//! slowing down can fix: our own key's limits, and load we cause. Random
//! faults are the component's to retry, at full speed.
//!
//! | signal | meaning | what the pacer does |
//! |---|---|---|
//! | a `remaining` header at 0 (`x-ratelimit-remaining-*`, `anthropic-ratelimit-*-remaining`), any status | the key's limit is spent | nothing starts until that limit's reset (at most 2 minutes) |
//! | 429 with such a header | we went over our limit | halve the concurrency limit |
//! | 429 without one, 503, 529 | the provider shedding load: ours, or noise | count it; halve only when such answers are more than half of the recent ones |
//! | 500 and other errors, resets, timeouts, malformed replies | noise | nothing (the component retries with backoff) |
//! | 2xx | room | add one slot per round trip of successes |
//!
//! - Adaptive concurrency (AIMD): the limit starts at the batch size. As in
//!   TCP, only a request admitted after the last cut can cut again, so one
//!   burst of 429s is one cut, and each round trip at most one more. A rate
//!   limit becomes a steady rate instead of a retry storm.
//! - Load shedding without a limit's headers is treated as TCP treats
//!   random loss on a lossy link (and as BBR does): a loss rate that does
//!   not grow with our load is not congestion. The share of such answers
//!   among recent ones is an exponentially weighted average over about the
//!   last [`SHED_WINDOW`] answers; it must pass [`SHED_THRESHOLD`] before a
//!   cut, and a cut starts the count afresh. Providers routinely shed 10 to
//!   20% of requests during an incident; halving a run for each of those
//!   would cut a 128-wide run to one request at a time (measured: 43 s for
//!   what takes 15 s without cuts), while an overload that our load causes
//!   answers most requests with 429 or 529 and is cut within a round trip.
//! - Optional ceilings: `--max-rpm` spaces request starts evenly; `--max-tpm`
//!   keeps a token bucket charged with each request's prompt estimate plus
//!   its `max_tokens`, as the providers' own limiters count.
//! - Waiting requests are admitted first come, first served, so the earliest
//!   batch, which the output waits on, is served first.

use http::HeaderMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Never wait longer than this on a reset header: a clock skew or a daily
/// quota would otherwise stall the run silently.
const MAX_HEADER_PAUSE: Duration = Duration::from_secs(120);
/// Answers the load-shedding average spans, roughly.
const SHED_WINDOW: f64 = 32.0;
/// The share of load-shedding answers (429 without a spent limit, 503, 529)
/// above which they count as ours.
const SHED_THRESHOLD: f64 = 0.5;

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
    /// Answers that said the provider was shedding load or that our limit
    /// was passed (429, 503, 529).
    pub throttled: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// The concurrency limit summed over admissions: divided by
    /// `admitted`, the concurrency the run settled at.
    pub limit_sum: f64,
}

impl PaceStats {
    /// The mean concurrency limit requests were admitted under.
    pub fn mean_limit(&self) -> f64 {
        if self.admitted == 0 { 0.0 } else { self.limit_sum / self.admitted as f64 }
    }
}

/// What an answer says about the rate we send at (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A success: there is room.
    Room,
    /// A 429 whose headers say our limit is spent.
    OverLimit,
    /// A 429 without such headers, a 503 or a 529: load shedding, ours or
    /// not.
    Shed,
    /// Anything else: not about the rate.
    Noise,
}

impl Signal {
    /// The signal of an answer with `status`, whose headers say a limit is
    /// spent when `limit_spent`.
    pub fn of(status: u16, limit_spent: bool) -> Signal {
        match status {
            200..=299 => Signal::Room,
            429 if limit_spent => Signal::OverLimit,
            429 | 503 | 529 => Signal::Shed,
            _ => Signal::Noise,
        }
    }
}

/// Decides when each request of a run may start. Shared (in an `Arc`) by
/// every request of the run.
pub struct Pacer {
    settings: PaceSettings,
    state: Mutex<State>,
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
    /// The recent share of load-shedding answers (an exponentially
    /// weighted average over about [`SHED_WINDOW`] answers).
    shed: f64,
    /// Requests waiting to start, first come first served; each is woken
    /// alone when it reaches the front and may go.
    queue: VecDeque<Arc<Notify>>,
    stats: PaceStats,
}

impl State {
    /// Wakes the first waiting request, to see whether it may start.
    fn wake_front(&self) {
        if let Some(front) = self.queue.front() {
            front.notify_one();
        }
    }
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
        let mut state = self.pacer.lock();
        state.in_flight -= 1;
        state.wake_front();
    }
}

/// A request's place in the queue; leaving it (admitted, or given up when
/// its call ended) lets the next one move up.
struct Place<'a> {
    pacer: &'a Pacer,
    me: Arc<Notify>,
    /// Still in the queue (not yet admitted).
    queued: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut state = self.pacer.lock();
        let was_front = state.queue.front().is_some_and(|front| Arc::ptr_eq(front, &self.me));
        state.queue.retain(|waiter| !Arc::ptr_eq(waiter, &self.me));
        if was_front {
            state.wake_front();
        }
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
                shed: 0.0,
                queue: VecDeque::new(),
                stats: PaceStats { lowest_limit: max, ..PaceStats::default() },
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `admit` needs a token estimate (only with a TPM ceiling).
    pub fn counts_tokens(&self) -> bool {
        self.settings.max_tokens_per_minute.is_some()
    }

    /// The counters so far.
    pub fn stats(&self) -> PaceStats {
        self.lock().stats
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    /// Waits until a request estimated at `tokens` may start: its turn in
    /// the queue, a free slot, and whatever pause or ceiling applies.
    pub async fn admit(self: &Arc<Self>, tokens: u32) -> Permit {
        let mut place = Place { pacer: self, me: Arc::new(Notify::new()), queued: true };
        {
            let mut state = self.lock();
            state.queue.push_back(Arc::clone(&place.me));
            if state.queue.len() == 1 {
                state.wake_front();
            }
        }
        loop {
            let woken = place.me.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let wait_until = {
                let mut state = self.lock();
                let at_front = state.queue.front().is_some_and(|front| Arc::ptr_eq(front, &place.me));
                if at_front {
                    match self.try_take(&mut state, f64::from(tokens), Instant::now()) {
                        Ok(()) => {
                            state.queue.pop_front();
                            // The next may fit too: it checks for itself.
                            state.wake_front();
                            place.queued = false;
                            return Permit { pacer: Arc::clone(self), admitted_at: Instant::now() };
                        }
                        Err(until) => until,
                    }
                } else {
                    None
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => woken.await,
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
        state.stats.admitted += 1;
        state.stats.limit_sum += state.limit.floor();
        Ok(())
    }

    /// Learns from the answer to a request admitted at `admitted_at`: its
    /// status and headers say what it means for the rate (see the module's
    /// table), and a spent limit pauses every request.
    pub fn observe(&self, status: u16, headers: &HeaderMap, admitted_at: Instant) {
        let now = Instant::now();
        let spent = exhausted_until_reset(headers);
        let signal = Signal::of(status, spent.is_some());
        let mut state = self.lock();
        let max = self.settings.max_concurrency as f64;
        match signal {
            Signal::OverLimit => {
                state.stats.throttled += 1;
                cut(&mut state, now, admitted_at, status);
            }
            Signal::Shed => {
                state.stats.throttled += 1;
                state.shed += (1.0 - state.shed) / SHED_WINDOW;
                if state.shed > SHED_THRESHOLD && cut(&mut state, now, admitted_at, status) {
                    state.shed = 0.0;
                }
            }
            Signal::Room => {
                state.shed -= state.shed / SHED_WINDOW;
                state.limit = (state.limit + 1.0 / state.limit).min(max);
            }
            Signal::Noise => state.shed -= state.shed / SHED_WINDOW,
        }
        if let Some(pause) = spent {
            let until = now + pause.min(MAX_HEADER_PAUSE);
            if state.paused_until.is_none_or(|current| current < until) {
                state.paused_until = Some(until);
                state.stats.header_pauses += 1;
                tracing::debug!("rate limit exhausted: pausing for {pause:?}");
            }
        }
        if signal == Signal::Room {
            state.wake_front();
        }
    }
}

/// Halves the limit, unless the request was admitted before the last cut
/// (one cut per round trip); says whether it cut.
fn cut(state: &mut State, now: Instant, admitted_at: Instant, status: u16) -> bool {
    if state.last_cut.is_some_and(|cut| admitted_at <= cut) {
        return false;
    }
    state.limit = (state.limit / 2.0).max(1.0);
    state.last_cut = Some(now);
    state.stats.cuts += 1;
    state.stats.lowest_limit = state.stats.lowest_limit.min(state.limit as usize);
    tracing::debug!("slowing down ({status}): concurrency limit now {}", state.limit as usize);
    true
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

    /// The headers of a 429 for a spent request limit.
    fn spent() -> HeaderMap {
        headers(&[("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1ms")])
    }

    #[tokio::test(start_paused = true)]
    async fn aimd_halves_once_per_round_trip_and_grows_back_slowly() {
        let pacer = Pacer::new(PaceSettings { max_concurrency: 64, ..PaceSettings::default() });
        let none = HeaderMap::new();
        let burst = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        for _ in 0..10 {
            pacer.observe(429, &spent(), burst);
        }
        assert_eq!(pacer.limit(), 32, "a burst of 429s is one cut");
        tokio::time::advance(Duration::from_millis(5)).await;
        pacer.observe(429, &spent(), Instant::now());
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
        assert_eq!(pacer.stats().throttled, 11);
    }

    #[test]
    fn signals_are_read_from_status_and_headers() {
        assert_eq!(Signal::of(200, true), Signal::Room, "a success that spends the limit still succeeded");
        assert_eq!(Signal::of(429, true), Signal::OverLimit);
        assert_eq!(Signal::of(429, false), Signal::Shed);
        assert_eq!(Signal::of(529, false), Signal::Shed);
        assert_eq!(Signal::of(503, true), Signal::Shed);
        assert_eq!(Signal::of(500, false), Signal::Noise);
        assert_eq!(Signal::of(400, false), Signal::Noise);
    }

    /// Feeds `answers` answers, each a load-shedding 529 with probability
    /// `rate` (a fixed pseudo-random sequence), one round trip apart every
    /// `per_trip` answers; returns the pacer.
    async fn shed_at(rate: f64, answers: u32, per_trip: u32) -> Arc<Pacer> {
        let pacer = Pacer::new(PaceSettings { max_concurrency: 128, ..PaceSettings::default() });
        let none = HeaderMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..answers {
            if i % per_trip == 0 {
                tokio::time::advance(Duration::from_millis(20)).await;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let draw = (x >> 11) as f64 / (1u64 << 53) as f64;
            let status = if draw < rate { 529 } else { 200 };
            pacer.observe(status, &none, Instant::now());
        }
        pacer
    }

    #[tokio::test(start_paused = true)]
    async fn random_load_shedding_is_noise_and_sustained_shedding_is_ours() {
        // 18% of answers shed at random, as in a provider incident: no cut.
        let noisy = shed_at(0.18, 5000, 128).await;
        assert_eq!((noisy.stats().cuts, noisy.limit()), (0, 128));
        // Most answers shed: cut within a round trip, and again while it lasts.
        let overloaded = shed_at(0.9, 1000, 128).await;
        assert!(overloaded.stats().cuts >= 3, "{:?}", overloaded.stats());
        assert!(overloaded.limit() <= 16, "{}", overloaded.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_start_in_arrival_order() {
        let pacer = Pacer::new(PaceSettings { max_concurrency: 1, ..PaceSettings::default() });
        let first = pacer.admit(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (pacer, order) = (Arc::clone(&pacer), Arc::clone(&order));
            waiting.push(tokio::spawn(async move {
                let permit = pacer.admit(0).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(permit);
            }));
            // Each queues before the next is spawned.
            tokio::task::yield_now().await;
        }
        // One gives up its place: the ones behind it move up.
        waiting.remove(2).abort();
        drop(first);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 3, 4]);
        assert_eq!(pacer.lock().queue.len(), 0);
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
