//! What a component can make the host hold, and the bound on it.
//!
//! Linear memory is capped by the store limiter, but `wasi:http` keeps its
//! state on the host: header fields, requests being built, bodies written
//! but not yet sent, requests in flight and the replies they buffer. Every
//! one of those lives in the store's resource table or is a request in
//! flight, so the host bounds them by two counts, each with a worst case
//! per item that the settings below enforce:
//!
//! - **table entries**, at most [`ENTRY_BYTES`] each: a `fields` is capped
//!   by wasmtime's field size limit, a body not yet sent by its chunk size
//!   (two chunks queued at most), a request by its headers and the URL
//!   parts this module caps (wasmtime-wasi-http 48 caps neither the method
//!   nor the authority);
//! - **requests in flight**, at most [`IN_FLIGHT_BYTES`] each: the pooled
//!   client's read buffer and HTTP/2 stream window, and the frame wasmtime
//!   holds for the component.
//!
//! `--max-host-memory` is split between them: the in-flight cap is the
//! batch size (the real component keeps one request per row), and the
//! table gets the rest. A budget too small for the batch size is refused
//! before the run starts, naming both settings.

use crate::outbound::{BODY_CHUNK_BYTES, IN_FLIGHT_WINDOW};
use crate::plugin::State;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{HostOutgoingRequest, Method};
use wasmtime_wasi_http::p2::types::HostOutgoingRequest as OutgoingRequest;

/// wasmtime's own accounting of one mutable `fields` resource (names,
/// values and map overhead): a provider request's headers need about 1 KiB.
pub const FIELDS_BYTES: usize = 8 << 10;
/// Longest method, path-with-query or authority a request may be given.
pub const URL_PART_BYTES: usize = 4 << 10;
/// The most one table entry can hold on the host: a request with its
/// headers and three URL parts, with room for the entry's own overhead.
pub const ENTRY_BYTES: usize = FIELDS_BYTES + 3 * URL_PART_BYTES + (4 << 10);
const _: () = assert!(2 * BODY_CHUNK_BYTES < ENTRY_BYTES, "a body not yet sent fits an entry");
/// The most one request in flight holds on the host: the client's read
/// buffer (HTTP/1) or stream window (HTTP/2), the frame wasmtime holds for
/// the component, and the request's head.
pub const IN_FLIGHT_BYTES: usize = 2 * IN_FLIGHT_WINDOW + (16 << 10);
/// Table entries one request in flight needs: the real component uses four
/// (the response future and its pollable, then the response, its body,
/// stream and pollable); two more leave room for other components.
pub const ENTRIES_PER_REQUEST: usize = 6;
/// Entries WASI itself takes: stdio streams, clocks, pollables of the moment.
pub const BASE_ENTRIES: usize = 64;

/// The two counts `--max-host-memory` sets for a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBudget {
    /// Requests in flight at once.
    pub in_flight: usize,
    /// Resource table entries.
    pub entries: usize,
}

impl HostBudget {
    /// The split of `bytes` for a run of `batch_size` rows per call, or the
    /// smallest budget that would do, in MiB.
    pub fn new(bytes: usize, batch_size: usize) -> Result<HostBudget, usize> {
        let in_flight = batch_size.max(1);
        let needed_entries = in_flight.saturating_mul(ENTRIES_PER_REQUEST).saturating_add(BASE_ENTRIES);
        let needed =
            in_flight.saturating_mul(IN_FLIGHT_BYTES).saturating_add(needed_entries.saturating_mul(ENTRY_BYTES));
        if bytes < needed {
            return Err(needed.div_ceil(1 << 20));
        }
        let entries = (bytes - in_flight * IN_FLIGHT_BYTES) / ENTRY_BYTES;
        Ok(HostBudget { in_flight, entries })
    }
}

/// Replaces the `outgoing-request` setters that take a string wasmtime does
/// not bound, so that a request cannot hold more than [`URL_PART_BYTES`] of
/// each; within the bound the original implementation runs.
pub fn cap_url_parts(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    type Request = Resource<OutgoingRequest>;
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    types.func_wrap("[method]outgoing-request.set-method", |mut store, (request, method): (Request, Method)| {
        if matches!(&method, Method::Other(other) if other.len() > URL_PART_BYTES) {
            return Ok((Err(()),));
        }
        Ok((store.data_mut().http().set_method(request, method)?,))
    })?;
    types.func_wrap(
        "[method]outgoing-request.set-path-with-query",
        |mut store, (request, path): (Request, Option<String>)| {
            if path.as_ref().is_some_and(|path| path.len() > URL_PART_BYTES) {
                return Ok((Err(()),));
            }
            Ok((store.data_mut().http().set_path_with_query(request, path)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store, (request, authority): (Request, Option<String>)| {
            if authority.as_ref().is_some_and(|authority| authority.len() > URL_PART_BYTES) {
                return Ok((Err(()),));
            }
            Ok((store.data_mut().http().set_authority(request, authority)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_covers_the_batch_or_names_what_would() {
        let budget = HostBudget::new(256 << 20, 128).unwrap();
        assert_eq!(budget.in_flight, 128);
        assert!(budget.in_flight * IN_FLIGHT_BYTES + budget.entries * ENTRY_BYTES <= 256 << 20);
        assert!(budget.entries >= 128 * ENTRIES_PER_REQUEST + BASE_ENTRIES);
        let needed = HostBudget::new(1 << 20, 128).unwrap_err();
        assert!(HostBudget::new(needed << 20, 128).is_ok());
        assert!(HostBudget::new((needed - 1) << 20, 128).is_err());
    }
}
