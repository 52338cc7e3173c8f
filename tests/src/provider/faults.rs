//! Which fault, if any, a request gets: per-row directives written in the
//! prompt, then the seeded random [`FaultPlan`].

use super::FaultPlan;

/// Something other than a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// The provider's real error body for this status.
    Status(u16),
    /// A 429 without rate-limit headers: load shedding, not the key's limit.
    Throttled,
    /// A 429 that means "out of money", which a client must not retry.
    Quota,
    /// Close the connection without any response.
    Reset,
    /// Never answer.
    Hang,
    /// Promise a longer body than is sent, then close the connection.
    Truncate,
    /// A 200 whose body is not JSON.
    Malformed,
}

/// Whether `#offschema=N` in `prompt` asks the `attempt`-th answer to a
/// structured-output request to miss its schema (attempts 1 to N).
pub(super) fn off_schema(prompt: &str, attempt: u32) -> bool {
    prompt
        .split_whitespace()
        .any(|word| word.strip_prefix("#offschema=").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| attempt <= n))
}

/// The fault a directive in `prompt` asks for on the `attempt`-th request
/// (1-based) carrying that prompt; the first directive that applies wins.
///
/// Directives are whitespace-separated words: `#status=NNN`, `#quota`,
/// `#fail=N:STATUS`, `#reset=N`, `#hang=N`, `#truncate=N`, `#malformed=N`.
/// Words that do not parse are ordinary prompt text.
pub(super) fn directive(prompt: &str, attempt: u32) -> Option<Fault> {
    prompt.split_whitespace().find_map(|word| {
        let word = word.strip_prefix('#')?;
        if word == "quota" {
            return Some(Fault::Quota);
        }
        let (name, arg) = word.split_once('=')?;
        let first = |n: &str| n.parse::<u32>().is_ok_and(|n| attempt <= n);
        match name {
            "status" => arg.parse().ok().map(Fault::Status),
            "fail" => {
                let (n, status) = arg.split_once(':')?;
                let status = status.parse().ok()?;
                first(n).then_some(Fault::Status(status))
            }
            "reset" => first(arg).then_some(Fault::Reset),
            "hang" => first(arg).then_some(Fault::Hang),
            "truncate" => first(arg).then_some(Fault::Truncate),
            "malformed" => first(arg).then_some(Fault::Malformed),
            _ => None,
        }
    })
}

impl FaultPlan {
    /// The random fault for the `attempt`-th request with this `key`.
    ///
    /// The draw is a pure function of (seed, key, attempt) rather than the
    /// next value of one shared generator: requests arrive in a different
    /// order on every concurrent run, and this way a given row still meets
    /// the same faults on the same attempts.
    pub(super) fn draw(&self, key: &str, attempt: u32) -> Option<Fault> {
        let rates = [
            (self.rate_429, Fault::Throttled),
            (self.rate_500, Fault::Status(500)),
            (self.rate_529, Fault::Status(529)),
            (self.rate_reset, Fault::Reset),
            (self.rate_hang, Fault::Hang),
            (self.rate_truncate, Fault::Truncate),
            (self.rate_malformed, Fault::Malformed),
        ];
        if rates.iter().all(|(rate, _)| *rate <= 0.0) {
            return None;
        }
        let bits = splitmix64(self.seed ^ splitmix64(fnv1a(key) ^ u64::from(attempt)));
        // The top 53 bits give a uniform f64 in [0, 1).
        let mut u = (bits >> 11) as f64 / (1u64 << 53) as f64;
        for (rate, fault) in rates {
            if u < rate {
                return Some(fault);
            }
            u -= rate.max(0.0);
        }
        None
    }
}

/// SplitMix64's output function: a good 64-bit mixer in five lines.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, a string hash that (unlike `std`'s) is fixed forever, so seeds
/// keep meaning the same faults across toolchains.
pub(super) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_apply_to_the_first_attempts_only() {
        assert_eq!(directive("a #fail=2:503 b", 1), Some(Fault::Status(503)));
        assert_eq!(directive("a #fail=2:503 b", 2), Some(Fault::Status(503)));
        assert_eq!(directive("a #fail=2:503 b", 3), None);
        assert_eq!(directive("#status=400", 9), Some(Fault::Status(400)));
        assert_eq!(directive("#quota", 9), Some(Fault::Quota));
        assert_eq!(directive("#reset=1 #hang=2", 1), Some(Fault::Reset));
        assert_eq!(directive("#reset=1 #hang=2", 2), Some(Fault::Hang));
        assert_eq!(directive("#truncate=1", 1), Some(Fault::Truncate));
        assert_eq!(directive("#malformed=1", 2), None);
        assert_eq!(directive("issue #12 and #fail=x:500", 1), None);
    }

    #[test]
    fn the_plan_is_deterministic_and_roughly_honours_its_rates() {
        let plan = FaultPlan { seed: 7, rate_429: 0.25, rate_reset: 0.25, ..FaultPlan::default() };
        let draws: Vec<_> = (0..2000).map(|i| plan.draw(&format!("row {i}"), 1)).collect();
        let again: Vec<_> = (0..2000).map(|i| plan.draw(&format!("row {i}"), 1)).collect();
        assert_eq!(draws, again);
        let count = |f| draws.iter().filter(|d| **d == Some(f)).count();
        assert!((400..600).contains(&count(Fault::Throttled)), "{}", count(Fault::Throttled));
        assert!((400..600).contains(&count(Fault::Reset)), "{}", count(Fault::Reset));
        assert_eq!(FaultPlan::default().draw("row", 1), None);
    }
}
