//! Arbitrary bytes decoded as the requests pulse checks before it touches a
//! model or the store (the first byte picks Embed, Ingest, Search or
//! Recluster), then through `pulse_proto::validate`, the code the service
//! runs: it must never panic, and what it accepts must hold what the
//! service relies on afterwards.
//!
//! `scripts/fuzz [seconds] validate` runs it (nightly, cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use pulse_proto::v1 as pb;
use pulse_proto::validate::{
    item_count, millis, query_vector, signal_rejection, time_range, timestamp, window,
};

const MAX_ITEMS: usize = 8;
const MAX_TEXT_BYTES: usize = 64;
const DIMENSION: usize = 4;
const NOW: i64 = 1_800_000_000_000;

fn check_count(count: usize, what: &str) {
    let accepted = item_count(count, MAX_ITEMS, what).is_ok();
    assert_eq!(accepted, (1..=MAX_ITEMS).contains(&count));
}

fn check_timestamp(ts: &prost_types::Timestamp) {
    if let Some(ms) = millis(ts) {
        assert_eq!(millis(&timestamp(ms)), Some(ms));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(request) = pb::EmbedRequest::decode(bytes) {
                check_count(request.inputs.len(), "inputs");
            }
        }
        1 => {
            if let Ok(request) = pb::IngestRequest::decode(bytes) {
                check_count(request.signals.len(), "signals");
                for signal in &request.signals {
                    if let Some(ts) = &signal.ts {
                        check_timestamp(ts);
                    }
                    if signal_rejection(signal, MAX_TEXT_BYTES).is_none() {
                        assert!(!signal.id.is_empty() && !signal.brand.is_empty());
                        assert!(!signal.text.trim().is_empty());
                        assert!(signal.text.len() <= MAX_TEXT_BYTES);
                        assert!(signal.ts.as_ref().is_none_or(|ts| millis(ts).is_some()));
                    }
                }
            }
        }
        2 => {
            if let Ok(request) = pb::SearchRequest::decode(bytes) {
                let filter = request.filter.unwrap_or_default();
                let range = time_range(
                    filter.ts_from.as_ref(),
                    filter.ts_to.as_ref(),
                    ["from", "to"],
                );
                if let Ok((Some(from), Some(to))) = range {
                    assert!(from <= to);
                }
                if let Some(pb::search_request::Query::Vector(vector)) = request.query
                    && query_vector(&vector.values, DIMENSION, "m").is_ok()
                {
                    assert_eq!(vector.values.len(), DIMENSION);
                    assert!(vector.values.iter().all(|v| v.is_finite()));
                }
            }
        }
        _ => {
            if let Ok(request) = pb::ReclusterRequest::decode(bytes) {
                for ts in request.from.iter().chain(&request.to) {
                    check_timestamp(ts);
                }
                if let Ok((from, to)) = window(&request, NOW) {
                    assert!(from <= to);
                    if request.last.is_some() {
                        assert_eq!(to, NOW);
                    }
                }
            }
        }
    }
});
