//! Durations as people write them in config files: `250ms`, `2s`, `1m`, `1h30m`.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// A number had no unit after it (`"250"`).
    #[error("`{0}` has no unit; write it with one of ns, us, ms, s, m, h (e.g. `250ms`)")]
    MissingUnit(String),
    /// A unit that is not one of ns, us, ms, s, m, h.
    #[error("`{unit}` in `{input}` is not a duration unit; use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// Something other than digits where a number was expected.
    #[error("`{0}` is not a duration such as `250ms`, `2s` or `1m30s`")]
    Malformed(String),
    /// The value does not fit in a `Duration`, or is longer than
    /// [`MAX_DURATION`].
    #[error("`{0}` is too large: durations are at most 365 days")]
    Overflow(String),
}

/// The longest duration a config may hold: 365 days. Longer values are
/// refused in files and clamped when a control plane sends them (as Envoy
/// and gRPC clamp protobuf durations), so that deadline arithmetic
/// (`now + timeout`) can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a human-written duration: one or more `<number><unit>` terms, where
/// the number may have a fractional part (`1.5s`) and the unit is one of
/// `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. `0` alone is accepted as zero.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::Malformed(input.to_owned()));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        total = total
            .checked_add(scale(num, nanos_per_unit, input)?)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        rest = next;
    }
    if total > MAX_DURATION.as_nanos() {
        return Err(DurationError::Overflow(input.to_owned()));
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_owned()))?;
    // The remainder is below 1e9, so it always fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// `num` (digits with an optional fraction) times `unit` nanoseconds, exactly.
fn scale(num: &str, unit: u128, input: &str) -> Result<u128, DurationError> {
    let malformed = || DurationError::Malformed(input.to_owned());
    let overflow = || DurationError::Overflow(input.to_owned());
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(malformed());
    }
    let int_val: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| overflow())?
    };
    let mut nanos = int_val.checked_mul(unit).ok_or_else(overflow)?;
    let mut div = 1u128;
    for d in frac.bytes() {
        div = div.checked_mul(10).ok_or_else(overflow)?;
        let digit = u128::from(d - b'0');
        nanos = nanos.checked_add(digit * unit / div).ok_or_else(overflow)?;
    }
    Ok(nanos)
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest
/// units that represent it exactly (`1m30s`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let units: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (size, name) in units {
        if nanos >= size {
            let n = nanos / size;
            nanos %= size;
            let _ = write!(out, "{n}{name}");
        }
    }
    out
}

/// `serialize_with` helpers so the model writes durations as humans read them.
pub(crate) mod serde_human {
    use super::format_duration;
    use serde::Serializer;
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub(crate) mod option {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&format_duration(*d)),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25s", Duration::from_millis(250)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0", Duration::ZERO),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_bad_forms_with_a_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("250"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("2 sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("2days"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("1..2s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for ms in [
            0u64, 1, 250, 1000, 1500, 60_000, 90_000, 3_600_000, 5_400_250,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}ms");
        }
        assert_eq!(format_duration(Duration::from_millis(90_000)), "1m30s");
    }
}
