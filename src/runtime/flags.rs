//! How the binary reads its numeric flags, and what it says when one is wrong.
//!
//! The chart passes every setting as an environment variable. Helm reads each number in
//! `values.yaml` as a float, and Go prints a float of a million or more in exponent form:
//! until issue 24 the default `webhook.certificate.caLifetimeSeconds: 31536000` reached
//! the webhook as `3.1536e+07`, which an integer flag refused, and the default install
//! crash-looped. The chart now renders integers in digits; the binary also reads a whole
//! number written in exponent or decimal form (what any Helm template may produce), and
//! refuses anything else with a message naming the environment variable and the chart key
//! that set it. Pure: no I/O, unit-tested below.

/// Each environment variable the chart sets from a value, with that value's key. A refusal
/// of the variable's value names the key, so the fix is in the values the user wrote.
pub const CHART_KEYS: &[(&str, &str)] = &[
    ("WATCH_NAMESPACES", "watchNamespaces"),
    ("EXCLUDE_NAMESPACES", "excludeNamespaces"),
    (
        "METRICS_ADDRESS",
        "metrics.port (webhook.metricsPort for the webhook)",
    ),
    ("LOG_FORMAT", "logFormat"),
    ("LOG_LEVEL", "logLevel"),
    ("LEADER_ELECT", "leaderElection.enabled"),
    (
        "LEADER_ELECTION_LEASE_DURATION_SECONDS",
        "leaderElection.leaseDurationSeconds",
    ),
    (
        "LEADER_ELECTION_RENEW_GRACE_SECONDS",
        "leaderElection.renewGraceSeconds",
    ),
    (
        "COGNITO_CONNECT_TIMEOUT_SECONDS",
        "cognito.connectTimeoutSeconds",
    ),
    ("COGNITO_TIMEOUT_SECONDS", "cognito.timeoutSeconds"),
    ("COGNITO_GET_ID_RATE", "cognito.getIdRatePerSecond"),
    (
        "COGNITO_GET_CREDENTIALS_RATE",
        "cognito.getCredentialsForIdentityRatePerSecond",
    ),
    (
        "COGNITO_GET_OPEN_ID_TOKEN_RATE",
        "cognito.getOpenIdTokenRatePerSecond",
    ),
    (
        "STS_ASSUME_ROLE_RATE",
        "sts.assumeRoleWithWebIdentityRatePerSecond",
    ),
    ("CONCURRENCY", "concurrency"),
    (
        "FORCE_ROTATE_MIN_INTERVAL_SECONDS",
        "forceRotateMinIntervalSeconds",
    ),
    ("WEBHOOK_ADDRESS", "webhook.securePort"),
    ("WEBHOOK_EXTERNAL_CERTIFICATE", "webhook.certificate.source"),
    (
        "WEBHOOK_CA_LIFETIME_SECONDS",
        "webhook.certificate.caLifetimeSeconds",
    ),
    (
        "WEBHOOK_CERT_LIFETIME_SECONDS",
        "webhook.certificate.certLifetimeSeconds",
    ),
    ("WEBHOOK_SIDECAR_IMAGE", "image"),
    ("WEBHOOK_SIDECAR_IMAGE_PULL_POLICY", "image.pullPolicy"),
];

/// The chart key behind an environment variable, if the chart sets it from a value.
pub fn chart_key(env: &str) -> Option<&'static str> {
    CHART_KEYS.iter().find(|(e, _)| *e == env).map(|(_, k)| *k)
}

/// A whole number: digits, or a float notation of a whole number (`3.1536e+07`,
/// `31536000.0`) as Helm may print one. Fractions, out-of-range values and text are
/// refused with the reason.
pub fn whole<T: TryFrom<i128>>(s: &str) -> Result<T, String> {
    let s = s.trim();
    let n: i128 = match s.parse::<i128>() {
        Ok(n) => n,
        Err(_) => {
            let f: f64 = s
                .parse()
                .map_err(|_| format!("'{s}' is not a number: write a whole number in digits"))?;
            // Exact below 2^53, where every whole number this binary reads lies.
            if !f.is_finite() || f.fract() != 0.0 || f.abs() > 9_007_199_254_740_992.0 {
                return Err(format!(
                    "'{s}' is not a whole number: write a whole number in digits"
                ));
            }
            f as i128
        }
    };
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

/// [`whole`] for a `u64` flag (clap's `value_parser` takes a plain function).
pub fn whole_u64(s: &str) -> Result<u64, String> {
    whole(s)
}

/// [`whole`] for an `i64` flag.
pub fn whole_i64(s: &str) -> Result<i64, String> {
    whole(s)
}

/// [`whole`] for a `u16` flag.
pub fn whole_u16(s: &str) -> Result<u16, String> {
    whole(s)
}

/// What to add to a refusal of `flag`'s value, given the environment variable that
/// flag reads (`env`) and whether it was set there: where the value came from.
pub fn origin(env: Option<&str>, from_env: bool) -> Option<String> {
    let env = env.filter(|_| from_env)?;
    Some(match chart_key(env) {
        Some(key) => format!(
            "the value came from the environment variable {env}, which the chart sets from `{key}`: fix that value"
        ),
        None => format!("the value came from the environment variable {env}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_in_any_notation_helm_prints() {
        let cases: &[(&str, Result<i64, ()>)] = &[
            ("31536000", Ok(31_536_000)),
            ("3.1536e+07", Ok(31_536_000)),
            ("2.592e+06", Ok(2_592_000)),
            ("15", Ok(15)),
            ("15.0", Ok(15)),
            (" 8 ", Ok(8)),
            ("1e3", Ok(1000)),
            ("-5", Ok(-5)),
            ("1.5", Err(())),
            ("3.15360001e+07", Err(())),
            ("ten", Err(())),
            ("", Err(())),
            ("NaN", Err(())),
            ("inf", Err(())),
            ("1e300", Err(())),
        ];
        for (input, want) in cases {
            let got = whole::<i64>(input).map_err(|_| ());
            assert_eq!(&got, want, "{input:?}");
        }
    }

    #[test]
    fn ranges_are_the_flag_type() {
        assert_eq!(whole_u16("65535"), Ok(65535));
        assert_eq!(whole_u16("6.5536e+04"), Err("65536 is out of range".into()));
        assert_eq!(whole_u64("-1"), Err("-1 is out of range".into()));
        assert!(
            whole_u64("0.5")
                .unwrap_err()
                .contains("'0.5' is not a whole number")
        );
    }

    #[test]
    fn a_refusal_names_the_variable_and_the_chart_key() {
        assert_eq!(
            origin(Some("WEBHOOK_CA_LIFETIME_SECONDS"), true).as_deref(),
            Some(
                "the value came from the environment variable WEBHOOK_CA_LIFETIME_SECONDS, which the chart sets from `webhook.certificate.caLifetimeSeconds`: fix that value"
            )
        );
        assert_eq!(
            origin(Some("POD_NAMESPACE"), true).as_deref(),
            Some("the value came from the environment variable POD_NAMESPACE")
        );
        assert_eq!(
            origin(Some("CONCURRENCY"), false),
            None,
            "a flag on the command line"
        );
        assert_eq!(origin(None, true), None);
    }
}
