//! The one field of an X.509 certificate that rustls-webpki does not hand
//! out: its validity period, read from the DER so an identity source can
//! refuse an SVID that has already expired (with the source's name) instead
//! of serving it until every peer refuses the handshake.
//!
//! A minimal, allocation-free DER walk over `Certificate ::= SEQUENCE {
//! tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
//! signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } ...}`;
//! anything else in the certificate is the verifier's business. The input
//! is whatever a peer or an identity source sent: every length is checked
//! against what remains, and a malformed certificate gives `None`.

/// Seconds since the Unix epoch at which `der` starts and stops being
/// valid (`notBefore`, `notAfter`), or `None` when it cannot be read.
pub fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (cert, _) = element(der, SEQUENCE)?;
    let (mut tbs, _) = element(cert, SEQUENCE)?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1; // version
    }
    tbs = element(tbs, INTEGER)?.1; // serialNumber
    tbs = element(tbs, SEQUENCE)?.1; // signature
    tbs = element(tbs, SEQUENCE)?.1; // issuer
    let (validity, _) = element(tbs, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The contents of the element tagged `tag` at the start of `input`, and
/// what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: up to 4 length bytes (a certificate is far smaller).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// A UTCTime or GeneralizedTime (`Z` form, as RFC 5280 requires) as Unix
/// seconds, and what follows it.
fn time(input: &[u8]) -> Option<(u64, &[u8])> {
    let tag = *input.first()?;
    let (text, rest) = element(input, tag)?;
    let (year, text) = match tag {
        UTC_TIME => {
            let (yy, text) = digits(text, 2)?;
            // RFC 5280: 50..99 is 19xx, 00..49 is 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text)
        }
        GENERALIZED_TIME => digits(text, 4)?,
        _ => return None,
    };
    let (month, text) = digits(text, 2)?;
    let (day, text) = digits(text, 2)?;
    let (hour, text) = digits(text, 2)?;
    let (minute, text) = digits(text, 2)?;
    let (second, text) = digits(text, 2)?;
    if text != b"Z" || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let seconds = days
        .checked_mul(86_400)?
        .checked_add(hour * 3600 + minute * 60 + second)?;
    Some((seconds, rest))
}

/// `count` ASCII digits as a number, and what follows them.
fn digits(input: &[u8], count: usize) -> Option<(u64, &[u8])> {
    if input.len() < count {
        return None;
    }
    let (head, rest) = input.split_at(count);
    let mut n = 0u64;
    for b in head {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some((n, rest))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (none before 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    // Shift the year to start in March so the leap day is the year's last.
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_as_the_calendar_does() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2024, 2, 29), Some(19_782));
        assert_eq!(days_from_civil(1969, 12, 31), None);
    }

    #[test]
    fn both_time_forms_are_read() {
        // UTCTime 2026-11-29 10:00:00Z, then GeneralizedTime 2051-01-02 03:04:05Z.
        let mut input = vec![UTC_TIME, 13];
        input.extend_from_slice(b"261129100000Z");
        input.extend_from_slice(&[GENERALIZED_TIME, 15]);
        input.extend_from_slice(b"20510102030405Z");
        let (first, rest) = time(&input).unwrap();
        assert_eq!(first, 1_795_946_400);
        let (second, rest) = time(rest).unwrap();
        assert_eq!(second, 2_556_241_445);
        assert!(rest.is_empty());
    }

    #[test]
    fn malformed_input_gives_none_without_panicking() {
        assert_eq!(validity(&[]), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(validity(&[0x30, 0x02, 0x30, 0x05]), None);
        let mut bad_time = vec![UTC_TIME, 13];
        bad_time.extend_from_slice(b"261329100000Z"); // month 13
        assert_eq!(time(&bad_time), None);
        // Every prefix of a real certificate is refused, never read past.
        let der = certificate(2_000_000_000, 2_100_000_000);
        for n in 0..der.len() {
            assert_eq!(validity(&der[..n]), None, "prefix of {n} bytes");
        }
    }

    #[test]
    fn a_real_certificate_gives_its_period() {
        let der = certificate(1_700_000_000, 4_102_444_800); // 2023 .. 2100 (GeneralizedTime)
        assert_eq!(validity(&der), Some((1_700_000_000, 4_102_444_800)));
    }

    fn certificate(not_before: i64, not_after: i64) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_from(not_before);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_from(not_after);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn time_from(seconds: i64) -> std::time::Duration {
        std::time::Duration::from_secs(seconds.unsigned_abs())
    }
}
