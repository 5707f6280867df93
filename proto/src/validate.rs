//! The checks a request passes that need nothing but the request: sizes,
//! required fields, timestamps and time windows. They live beside the
//! messages so that the service and the request fuzzer (`fuzz/`) run the
//! same code; checks that need the server's state (models, the store)
//! stay in the service.

use crate::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;

/// Unix milliseconds of a timestamp; `None` when its nanoseconds are out of
/// range or the value overflows.
pub fn millis(ts: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(ts.nanos) / 1_000_000)
}

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A request carries between one and `max` items (`what`: "inputs",
/// "signals"); `max` is `--max-inputs`.
pub fn item_count(count: usize, max: usize, what: &str) -> Result<(), Status> {
    if count == 0 {
        return Err(Status::invalid_argument(format!(
            "the request has no {what}"
        )));
    }
    if count > max {
        return Err(Status::invalid_argument(format!(
            "the request has {count} {what}; the limit is {max} per request (--max-inputs)"
        )));
    }
    Ok(())
}

/// Why `signal` cannot be stored, if it cannot; one signal's rejection does
/// not fail its request.
pub fn signal_rejection(signal: &pb::Signal, max_text_bytes: usize) -> Option<String> {
    if signal.id.is_empty() {
        return Some("missing id".into());
    }
    if signal.brand.is_empty() {
        return Some("missing brand".into());
    }
    if signal.text.trim().is_empty() {
        return Some("empty text".into());
    }
    if signal.text.len() > max_text_bytes {
        return Some(format!(
            "text is {} bytes; the limit is {max_text_bytes} (--max-text-bytes)",
            signal.text.len(),
        ));
    }
    if signal.ts.as_ref().is_some_and(|ts| millis(ts).is_none()) {
        return Some("invalid timestamp".into());
    }
    None
}

fn bound(ts: Option<&Timestamp>, name: &str) -> Result<Option<i64>, Status> {
    ts.map(|t| {
        millis(t)
            .ok_or_else(|| Status::invalid_argument(format!("`{name}` is not a valid timestamp")))
    })
    .transpose()
}

/// An optional time range (`names`: the request's two field names), in
/// Unix milliseconds; refused when a bound is no timestamp or the range is
/// reversed.
pub fn time_range(
    from: Option<&Timestamp>,
    to: Option<&Timestamp>,
    [from_name, to_name]: [&str; 2],
) -> Result<(Option<i64>, Option<i64>), Status> {
    let from = bound(from, from_name)?;
    let to = bound(to, to_name)?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(Status::invalid_argument(format!(
            "`{from_name}` is after `{to_name}`"
        )));
    }
    Ok((from, to))
}

/// The window a re-cluster request names, as inclusive Unix milliseconds:
/// `from` (to `to`, or now) or the `last` duration before now.
pub fn window(request: &pb::ReclusterRequest, now: i64) -> Result<(i64, i64), Status> {
    let from = bound(request.from.as_ref(), "from")?;
    let to = bound(request.to.as_ref(), "to")?;
    match (&request.last, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Status::invalid_argument(
            "give either `last` or `from`/`to`, not both",
        )),
        (Some(last), None, None) => {
            let span = last
                .seconds
                .checked_mul(1000)
                .and_then(|ms| ms.checked_add(i64::from(last.nanos) / 1_000_000))
                .filter(|&ms| ms > 0)
                .ok_or_else(|| Status::invalid_argument("`last` must be a positive duration"))?;
            Ok((now.saturating_sub(span), now))
        }
        (None, Some(from), to) => {
            let to = to.unwrap_or(now);
            if from > to {
                return Err(Status::invalid_argument("`from` is after `to`"));
            }
            Ok((from, to))
        }
        (None, None, _) => Err(Status::invalid_argument(
            "give a window: `from` (and optionally `to`), or `last`",
        )),
    }
}

/// A query vector has the model's dimension and only finite values.
pub fn query_vector(values: &[f32], dimension: usize, model: &str) -> Result<(), Status> {
    if values.len() != dimension {
        return Err(Status::invalid_argument(format!(
            "the query vector has {} values; model `{model}` makes {dimension}",
            values.len(),
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Status::invalid_argument(
            "the query vector holds NaN or infinity",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn timestamps_round_trip_through_milliseconds() {
        for ms in [
            0,
            1_700_000_000_123,
            -1_500,
            i64::MIN / 1000,
            i64::MAX / 1000,
        ] {
            assert_eq!(millis(&timestamp(ms)), Some(ms));
        }
        let bad_nanos = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(millis(&bad_nanos), None);
        let overflowing = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(millis(&overflowing), None);
    }

    #[test]
    fn item_counts_between_one_and_the_limit() {
        assert!(item_count(1, 4, "inputs").is_ok());
        assert!(item_count(4, 4, "inputs").is_ok());
        let none = item_count(0, 4, "signals").unwrap_err();
        assert_eq!(none.message(), "the request has no signals");
        let many = item_count(5, 4, "inputs").unwrap_err();
        assert_eq!(many.code(), Code::InvalidArgument);
        assert!(
            many.message().contains("the limit is 4"),
            "{}",
            many.message()
        );
    }

    #[test]
    fn signals_are_rejected_for_the_first_thing_missing() {
        let good = pb::Signal {
            id: "1".into(),
            brand: "b".into(),
            text: "hello".into(),
            ..Default::default()
        };
        assert_eq!(signal_rejection(&good, 5), None);
        let with = |change: fn(&mut pb::Signal)| {
            let mut signal = good.clone();
            change(&mut signal);
            signal_rejection(&signal, 5)
        };
        assert_eq!(with(|s| s.id.clear()).as_deref(), Some("missing id"));
        assert_eq!(with(|s| s.brand.clear()).as_deref(), Some("missing brand"));
        assert_eq!(
            with(|s| s.text = " \n".into()).as_deref(),
            Some("empty text")
        );
        assert!(
            with(|s| s.text = "hello!".into())
                .unwrap()
                .contains("6 bytes")
        );
        let bad_ts = with(|s| {
            s.ts = Some(Timestamp {
                seconds: 0,
                nanos: 2_000_000_000,
            })
        });
        assert_eq!(bad_ts.as_deref(), Some("invalid timestamp"));
    }

    #[test]
    fn a_reversed_time_range_is_refused() {
        let names = ["ts_from", "ts_to"];
        let (early, late) = (timestamp(1_000), timestamp(2_000));
        assert_eq!(
            time_range(Some(&early), Some(&late), names).unwrap(),
            (Some(1_000), Some(2_000))
        );
        assert_eq!(time_range(None, None, names).unwrap(), (None, None));
        let reversed = time_range(Some(&late), Some(&early), names).unwrap_err();
        assert_eq!(reversed.message(), "`ts_from` is after `ts_to`");
        let bad = Timestamp {
            seconds: 0,
            nanos: -5,
        };
        let invalid = time_range(None, Some(&bad), names).unwrap_err();
        assert_eq!(invalid.message(), "`ts_to` is not a valid timestamp");
    }

    fn request(
        from: Option<i64>,
        to: Option<i64>,
        last_seconds: Option<i64>,
    ) -> pb::ReclusterRequest {
        pb::ReclusterRequest {
            from: from.map(timestamp),
            to: to.map(timestamp),
            last: last_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn windows_are_from_to_or_the_last_duration() {
        let now = 1_000_000;
        assert_eq!(
            window(&request(Some(5), Some(9), None), now).unwrap(),
            (5, 9)
        );
        assert_eq!(
            window(&request(Some(5), None, None), now).unwrap(),
            (5, now)
        );
        assert_eq!(
            window(&request(None, None, Some(60)), now).unwrap(),
            (now - 60_000, now)
        );
        for bad in [
            request(Some(9), Some(5), None),
            request(None, None, None),
            request(None, Some(5), None),
            request(Some(1), None, Some(60)),
            request(None, None, Some(0)),
            request(None, None, Some(-5)),
            request(None, None, Some(i64::MAX)),
        ] {
            let status = window(&bad, now).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn query_vectors_match_the_model_and_are_finite() {
        assert!(query_vector(&[0.5, 1.0], 2, "m").is_ok());
        let short = query_vector(&[0.5], 2, "m").unwrap_err();
        assert_eq!(
            short.message(),
            "the query vector has 1 values; model `m` makes 2"
        );
        assert!(query_vector(&[0.5, f32::NAN], 2, "m").is_err());
        assert!(query_vector(&[f32::INFINITY, 0.0], 2, "m").is_err());
    }
}
