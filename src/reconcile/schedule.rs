//! When to rotate and when to retry: pure functions of time, lifetime and attempt count.
//!
//! Jitter here is deterministic (a hash of the resource's uid and the attempt), so the
//! same inputs give the same schedule: status stays stable between reconciles (no
//! writes when nothing changed), a restarted controller keeps the schedule, and many
//! resources still spread out instead of acting in step.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// First retry delay after a transient failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest delay between retries; terminal errors retry at about this pace.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// A Go duration (`time.ParseDuration`) that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a Go duration such as 20m, 1h30m or 90s")]
pub struct DurationError(pub String);

/// Parses a non-negative Go duration string: `300ms`, `1.5h`, `2h45m`, `0`, as Go's
/// `time.ParseDuration` does (and so CEL's `duration()`, which the CRD validates with).
/// Not `kube::core::Duration`: it accepts `""` and overflowing values that Go and CEL
/// refuse (see the test `kube_duration_disagrees_with_go`).
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per_unit;
    }
    // Go caps durations at about 290 years; anything near that is a mistake here.
    if !total.is_finite() || total > 1e18 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A number in [0, 1) derived from `seed` and `salt` (FNV-1a, then a 53-bit fraction).
pub fn unit_fraction(seed: &str, salt: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain(salt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser: spreads nearby seeds apart.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// When credentials issued at `issued` and expiring at `expiration` should be rotated.
///
/// `renew_before` before expiration when that is shorter than the lifetime; otherwise
/// once two thirds of the lifetime have passed. Then moved earlier by a jitter of up to
/// 5% of the lifetime (at most 60 s), fixed per `seed`, so resources created together
/// do not rotate in step. Never before `issued`, never after `expiration`.
pub fn renewal_time(
    issued: Timestamp,
    expiration: Timestamp,
    renew_before: Duration,
    seed: &str,
) -> Timestamp {
    let lifetime = expiration.duration_since(issued);
    if lifetime <= SignedDuration::ZERO {
        return expiration.min(issued);
    }
    let renew_before = SignedDuration::try_from(renew_before).unwrap_or(SignedDuration::MAX);
    let base = if renew_before < lifetime {
        expiration - renew_before
    } else {
        issued + lifetime * 2 / 3
    };
    let spread = (lifetime / 20).min(SignedDuration::from_secs(60));
    let jitter = spread.mul_f64(unit_fraction(seed, 0));
    (base - jitter).clamp(issued, expiration)
}

/// The delay before retry number `attempt` (1 = the first retry) after a transient
/// failure: exponential from 5 s, capped at 5 minutes, with "equal jitter" (between
/// half and all of the step), fixed per `seed` and attempt.
pub fn backoff(attempt: u32, seed: &str) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    let step = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    step.div_f64(2.0)
        + step
            .div_f64(2.0)
            .mul_f64(unit_fraction(seed, u64::from(attempt)))
}

/// The delay before retrying after a terminal error (pool not found, guest access off,
/// invalid configuration): the backoff cap, less up to 20% jitter.
pub fn terminal_retry(attempt: u32, seed: &str) -> Duration {
    BACKOFF_CAP.mul_f64(0.8 + 0.2 * unit_fraction(seed, u64::from(attempt)))
}

/// When attempt number `failed + 1` is due after `failed` failures, the last at `last`;
/// `None` when nothing failed.
pub fn retry_due(failed: u32, last: Timestamp, terminal: bool, seed: &str) -> Option<Timestamp> {
    if failed == 0 {
        return None;
    }
    let delay = if terminal {
        terminal_retry(failed, seed)
    } else {
        backoff(failed, seed)
    };
    Some(last + delay)
}

/// RFC 3339 in whole seconds (rounded down, never later than the truth), UTC, `Z`: the
/// one format of times in the Secret, in messages and in events.
pub fn rfc3339(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Full precision (nanoseconds), UTC, `Z`: for the issue time, which tells rotations
/// apart and is read back exactly.
pub fn rfc3339_precise(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string()
}

/// `to - from` as a std `Duration`, zero when `to` is not after `from`.
pub fn until(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("20m", 1200.0),
            ("1h30m", 5400.0),
            ("90s", 90.0),
            ("1.5h", 5400.0),
            ("300ms", 0.3),
            ("0", 0.0),
            ("2h45m30.5s", 9930.5),
            ("1µs", 1e-6),
        ];
        for (s, secs) in cases {
            let d = parse_go_duration(s).unwrap();
            assert!((d.as_secs_f64() - secs).abs() < 1e-9, "{s}: {d:?}");
        }
        for bad in [
            "",
            "m",
            "20",
            "20x",
            "-5m",
            "1h 2m",
            ".m",
            "1e3s",
            "9999999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    /// Why this module keeps its own parser: Go's `time.ParseDuration` (CEL's
    /// `duration()`) refuses these, kube's parser takes them.
    #[test]
    fn kube_duration_disagrees_with_go() {
        for s in ["", "9999999999999h"] {
            assert!(
                s.parse::<kube::core::Duration>().is_ok(),
                "{s:?}: kube now refuses it; use kube's parser"
            );
            assert!(parse_go_duration(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn renews_renew_before_ahead_of_a_one_hour_expiry() {
        let issued = ts(1_000_000);
        let exp = issued + SignedDuration::from_hours(1);
        let r = renewal_time(issued, exp, Duration::from_secs(20 * 60), "uid-a");
        // 40 minutes in, less at most 60 s of jitter.
        let base = issued + SignedDuration::from_mins(40);
        assert!(
            r <= base && r >= base - SignedDuration::from_secs(60),
            "{r}"
        );
    }

    #[test]
    fn renews_at_two_thirds_when_renew_before_is_not_shorter_than_the_lifetime() {
        let issued = ts(1_000_000);
        let exp = issued + SignedDuration::from_secs(90);
        let r = renewal_time(issued, exp, Duration::from_secs(20 * 60), "uid-b");
        let base = issued + SignedDuration::from_secs(60);
        // Jitter is at most 5% of 90 s.
        assert!(
            r <= base && r >= base - SignedDuration::from_millis(4500),
            "{r}"
        );
        // Equal lifetime and renewBefore also falls back to two thirds.
        let r = renewal_time(issued, exp, Duration::from_secs(90), "uid-b");
        assert!(r <= base && r > issued);
    }

    #[test]
    fn renewal_is_stable_per_seed_and_spread_across_seeds() {
        let issued = ts(1_000_000);
        let exp = issued + SignedDuration::from_hours(1);
        let rb = Duration::from_secs(1200);
        assert_eq!(
            renewal_time(issued, exp, rb, "x"),
            renewal_time(issued, exp, rb, "x")
        );
        let distinct: std::collections::BTreeSet<_> = (0..100)
            .map(|i| renewal_time(issued, exp, rb, &format!("uid-{i}")))
            .collect();
        assert!(
            distinct.len() > 90,
            "only {} distinct renewal times",
            distinct.len()
        );
    }

    #[test]
    fn expired_or_inverted_lifetimes_renew_now() {
        let t = ts(1_000_000);
        assert_eq!(renewal_time(t, t, Duration::from_secs(60), "s"), t);
        assert_eq!(
            renewal_time(
                t,
                t - SignedDuration::from_secs(5),
                Duration::from_secs(60),
                "s"
            ),
            t - SignedDuration::from_secs(5)
        );
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_caps_at_five_minutes() {
        // Worked out by hand: (attempt, full step in seconds); the wait is between half
        // the step and the step.
        let steps = [
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (8, 300),
            (30, 300),
        ];
        for (attempt, secs) in steps {
            let step = Duration::from_secs(secs);
            let d = backoff(attempt, "uid");
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs step {step:?}"
            );
            assert!(d <= BACKOFF_CAP);
        }
        assert!(backoff(30, "uid") >= BACKOFF_CAP / 2);
        // Different resources retry at different moments.
        let distinct: std::collections::BTreeSet<_> = (0..50)
            .map(|i| backoff(6, &format!("u{i}")).as_millis())
            .collect();
        assert!(distinct.len() > 40);
    }

    #[test]
    fn terminal_retries_are_slow() {
        for a in 1..20 {
            let d = terminal_retry(a, "u");
            assert!(d >= BACKOFF_CAP.mul_f64(0.8) && d <= BACKOFF_CAP);
        }
    }

    #[test]
    fn until_is_never_negative() {
        assert_eq!(until(ts(10), ts(5)), Duration::ZERO);
        assert_eq!(until(ts(5), ts(10)), Duration::from_secs(5));
    }
}
