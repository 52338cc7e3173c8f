//! The batch scheduler: keeps up to `batch-size` requests in flight, waits on
//! all of them with one `wasi:io/poll` call, and retries what is worth
//! retrying with exponential backoff and full jitter (or the wait the
//! provider asked for).

use crate::batchgen::plugin::types::{Generation, RowError};
use crate::config::{Plan, Remote};
use crate::http::{InFlight, Step, transport_verdict};
use crate::providers::{self, Verdict};
use crate::servers;
use std::collections::VecDeque;
use wasip2::clocks::monotonic_clock;
use wasip2::io::poll;

/// First retry waits up to this long, doubling per attempt...
const BACKOFF_BASE_NS: u64 = 500_000_000;
/// ...up to this cap, as the official SDKs do.
const BACKOFF_CAP_NS: u64 = 8_000_000_000;
/// A host applies the request timeout once it actually sends (after any
/// rate-limit queueing); the component's own deadline is a backstop for
/// hosts that apply none, so it allows for queueing.
fn backstop_ns(timeout_ns: u64) -> u64 {
    timeout_ns.saturating_mul(2).saturating_add(1_000_000_000)
}

struct Flight {
    row: usize,
    deadline: u64,
    request: InFlight,
}

pub fn generate(plan: &Plan, remote: &Remote, inputs: &[String]) -> Vec<Result<Generation, RowError>> {
    let models = servers::models(plan, remote);
    // Rows spread over the servers (one for a provider), and each retry goes
    // to the next: a server that is down costs a row an attempt, not the row.
    let request = |row: usize, attempt: u32| {
        let server = (row + attempt.saturating_sub(1) as usize) % remote.servers.len();
        providers::build_request(plan, remote.kind, &remote.servers[server], &models[server], &inputs[row])
    };
    let mut results: Vec<Option<Result<Generation, RowError>>> = (0..inputs.len()).map(|_| None).collect();
    let mut attempts = vec![0u32; inputs.len()];
    let mut ready: VecDeque<usize> = (0..inputs.len()).collect();
    // Rows waiting out a backoff: (when they may go again, row).
    let mut backing_off: Vec<(u64, usize)> = Vec::new();
    let mut flights: Vec<Flight> = Vec::with_capacity(plan.concurrency.min(inputs.len()));

    let mut settle = |row: usize, verdict: Verdict, attempts: &[u32], backing_off: &mut Vec<(u64, usize)>| {
        let result = match verdict {
            Verdict::Done(result) => result,
            Verdict::Retry { error, .. } if attempts[row] >= plan.max_attempts => Err(error),
            Verdict::Retry { after_ns, .. } => {
                let wait = after_ns.unwrap_or_else(|| backoff_ns(attempts[row]));
                backing_off.push((monotonic_clock::now().saturating_add(wait), row));
                return;
            }
        };
        results[row] = Some(result.map(|completion| Generation {
            text: completion.text,
            finish_reason: completion.finish_reason,
            input_tokens: completion.input_tokens,
            output_tokens: completion.output_tokens,
            attempts: attempts[row],
        }));
    };

    loop {
        let now = monotonic_clock::now();
        backing_off.retain(|&(at, row)| {
            if at <= now {
                // Retries go first: their rows have waited longest.
                ready.push_front(row);
            }
            at > now
        });
        while flights.len() < plan.concurrency {
            let Some(row) = ready.pop_front() else { break };
            attempts[row] += 1;
            match InFlight::start(&request(row, attempts[row])) {
                Ok(request) => flights.push(Flight {
                    row,
                    deadline: now.saturating_add(backstop_ns(plan.request_timeout_ns)),
                    request,
                }),
                Err(failure) => settle(row, transport_verdict(failure), &attempts, &mut backing_off),
            }
        }
        if flights.is_empty() && backing_off.is_empty() && ready.is_empty() {
            break;
        }
        if flights.is_empty() && !ready.is_empty() {
            continue;
        }

        let wake_at = flights
            .iter()
            .map(|f| f.deadline)
            .chain(backing_off.iter().map(|&(at, _)| at))
            .min()
            .expect("something is pending");
        let timer = monotonic_clock::subscribe_duration(wake_at.saturating_sub(now));
        let mut pollables: Vec<&wasip2::io::poll::Pollable> = flights.iter().map(|f| f.request.pollable()).collect();
        pollables.push(&timer);
        let mut woken = vec![false; flights.len()];
        for index in poll::poll(&pollables) {
            if let Some(flag) = woken.get_mut(index as usize) {
                *flag = true;
            }
        }
        drop(pollables);
        drop(timer);

        let now = monotonic_clock::now();
        for (flight, woken) in std::mem::take(&mut flights).into_iter().zip(woken) {
            let Flight { row, deadline, request } = flight;
            let step = if woken { request.advance() } else { Step::Pending(request) };
            match step {
                Step::Pending(request) if now >= deadline => {
                    drop(request);
                    let error = RowError::Timeout(format!(
                        "no complete reply within {} ms",
                        backstop_ns(plan.request_timeout_ns) / 1_000_000
                    ));
                    settle(row, Verdict::Retry { error, after_ns: None }, &attempts, &mut backing_off);
                }
                Step::Pending(request) => flights.push(Flight { row, deadline, request }),
                Step::Done(Ok(reply)) => {
                    settle(row, providers::interpret(plan, remote.kind, &reply), &attempts, &mut backing_off)
                }
                Step::Done(Err(failure)) => settle(row, transport_verdict(failure), &attempts, &mut backing_off),
            }
        }
    }

    results.into_iter().map(|result| result.expect("every row is settled before the loop ends")).collect()
}

/// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].
fn backoff_ns(attempt: u32) -> u64 {
    let ceiling = BACKOFF_BASE_NS.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)).min(BACKOFF_CAP_NS);
    wasip2::random::random::get_random_u64() % (ceiling + 1)
}
