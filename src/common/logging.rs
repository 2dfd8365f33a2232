//! What reaches the logs: the filter the user asks for (`LOG_LEVEL`, EnvFilter syntax),
//! with the AWS SDK and the HTTP stack under it held at `info` whatever it asks.
//!
//! At debug and trace those crates log what crosses the wire: the SDK's orchestrator logs
//! the deserialized output of GetCredentialsForIdentity (access key id and session token;
//! the SDK redacts only the secret key), the body of AssumeRoleWithWebIdentity (the OpenID
//! token) and the identity that signs STS GetCallerIdentity. A more specific directive of
//! the user's (`aws_smithy_runtime::client::orchestrator=trace`) would win over any cap
//! written into the same EnvFilter, so the cap is a second filter that an event must pass
//! as well. The controller's own targets keep every level.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt, ParseError, Targets};
use tracing_subscriber::layer::Filter;

/// Crates whose debug and trace events may carry request or response bodies, headers or
/// the signing identity.
pub const CAPPED: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_cognitoidentity",
    "aws_sdk_sts",
    "aws_sigv4",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_json",
    "aws_smithy_query",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_types",
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
];

/// The cap: the crates above at `info`, everything else at every level.
pub fn cap() -> Targets {
    CAPPED.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::INFO),
    )
}

/// The user's filter, and the cap (none with `unsafe_bodies`: the
/// `--unsafe-log-aws-bodies` flag).
pub fn filter<S>(
    user: &str,
    unsafe_bodies: bool,
) -> Result<impl Filter<S> + Send + Sync + 'static, ParseError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let cap = if unsafe_bodies {
        Targets::new().with_default(LevelFilter::TRACE)
    } else {
        cap()
    };
    Ok(EnvFilter::try_new(user)?.and(cap))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            crate::lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// What the events below leave in the log under `user`'s filter.
    fn logged(user: &str) -> String {
        logged_with(user, false)
    }

    fn logged_with(user: &str, unsafe_bodies: bool) -> String {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .with_filter(super::filter(user, unsafe_bodies).unwrap());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "output-trace");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator::endpoints", "identity-debug");
            tracing::debug!(target: "hyper_util::client::legacy", "hyper-debug");
            tracing::trace!(target: "h2::codec", "h2-trace");
            tracing::info!(target: "aws_smithy_runtime", "sdk-info");
            tracing::trace!(target: "cognito_unauth_controller::reconcile", "ours-trace");
            tracing::debug!(target: "kube_runtime::controller", "kube-debug");
        });
        let text = crate::lock(&buf.0).clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn the_sdk_and_http_stack_stay_at_info_whatever_the_filter_asks() {
        for user in [
            "trace",
            "aws_smithy_runtime=trace,hyper_util=trace,h2=trace,cognito_unauth_controller=trace,kube_runtime=debug",
            "info,aws_smithy_runtime::client::orchestrator=trace,aws_smithy_runtime::client::orchestrator::endpoints=trace,hyper_util::client::legacy=trace,h2::codec=trace,cognito_unauth_controller=trace,kube_runtime=debug",
        ] {
            let log = logged(user);
            for dropped in ["output-trace", "identity-debug", "hyper-debug", "h2-trace"] {
                assert!(!log.contains(dropped), "{user}: {dropped} logged:\n{log}");
            }
            for kept in ["sdk-info", "ours-trace", "kube-debug"] {
                assert!(log.contains(kept), "{user}: {kept} not logged:\n{log}");
            }
        }
        // And the user's own filter still applies below the cap.
        let log = logged("warn");
        assert!(
            !log.contains("sdk-info") && !log.contains("ours-trace"),
            "{log}"
        );
    }

    #[test]
    fn only_the_explicit_flag_lifts_the_cap() {
        let log = logged_with("trace", true);
        for kept in [
            "output-trace",
            "identity-debug",
            "hyper-debug",
            "ours-trace",
        ] {
            assert!(log.contains(kept), "{kept} not logged:\n{log}");
        }
        // Without the flag, the same filter keeps the cap.
        assert!(!logged_with("trace", false).contains("output-trace"));
    }

    #[test]
    fn a_bad_filter_is_refused() {
        assert!(
            super::filter::<tracing_subscriber::Registry>("cognito_unauth_controller=loud", false)
                .is_err()
        );
    }
}
