//! When to warn that a certificate is about to expire.
//!
//! An expired node certificate cuts its node off from every peer, and an
//! expired CA cuts off the whole cluster, with nothing but handshake
//! failures in the logs to say why. So `flotilla status` looks at every
//! certificate in play (each node's, which the node reports, and the CLI's
//! own) and warns [`WARN_DAYS`] ahead. The decision is a pure function of
//! the expiry time and the time now, so it is tested without waiting.

use std::fmt;

/// How many days before expiry a certificate is flagged: time for an
/// operator who reads `status` weekly to notice and renew it.
pub const WARN_DAYS: i64 = 30;
/// Seconds in a day.
const DAY_SECS: i64 = 86_400;

/// Why a certificate needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// It is no longer valid: peers refuse it.
    Expired {
        /// Whole days since it expired (0 on the day it did).
        days_ago: i64,
    },
    /// It stops being valid within [`WARN_DAYS`].
    Soon {
        /// Whole days left (0 when less than a day is).
        days_left: i64,
    },
}

/// Whether a certificate valid until `not_after` warrants a warning at
/// `now` (both in seconds since the Unix epoch).
pub fn warning(not_after: i64, now: i64) -> Option<Expiry> {
    let left = not_after - now;
    if left <= 0 {
        Some(Expiry::Expired {
            days_ago: -left / DAY_SECS,
        })
    } else if left < WARN_DAYS * DAY_SECS {
        Some(Expiry::Soon {
            days_left: left / DAY_SECS,
        })
    } else {
        None
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Expired { days_ago: 0 } => write!(f, "expired today"),
            Expiry::Expired { days_ago } => write!(f, "expired {days_ago} day(s) ago"),
            Expiry::Soon { days_left: 0 } => write!(f, "expires within a day"),
            Expiry::Soon { days_left } => write!(f, "expires in {days_left} day(s)"),
        }
    }
}

/// A Unix time as a UTC date and time, for messages.
pub fn date(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map_or_else(|_| format!("{unix} s after 1970"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn warns_within_thirty_days_and_after_expiry_only() {
        let day = DAY_SECS;
        let cases = [
            (NOW + 365 * day, None),
            (NOW + 30 * day, None),
            (NOW + 30 * day - 1, Some(Expiry::Soon { days_left: 29 })),
            (NOW + 12 * day + 5, Some(Expiry::Soon { days_left: 12 })),
            (NOW + 60, Some(Expiry::Soon { days_left: 0 })),
            (NOW, Some(Expiry::Expired { days_ago: 0 })),
            (NOW - 3 * day - 1, Some(Expiry::Expired { days_ago: 3 })),
        ];
        for (not_after, expected) in cases {
            assert_eq!(
                warning(not_after, NOW),
                expected,
                "{}s from now",
                not_after - NOW
            );
        }
    }

    #[test]
    fn warnings_read_as_words() {
        assert_eq!(
            Expiry::Soon { days_left: 12 }.to_string(),
            "expires in 12 day(s)"
        );
        assert_eq!(Expiry::Expired { days_ago: 0 }.to_string(), "expired today");
        assert!(date(NOW).contains("2027"), "{}", date(NOW));
    }
}
