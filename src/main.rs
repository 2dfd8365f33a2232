//! cognito-unauth-controller: the binary. Flags, logging, clients; the rest is the library.

use clap::Parser;
use cognito_unauth_controller::cognito::{SdkCognito, Timeouts, load_sdk_config};
use cognito_unauth_controller::controller::{self, Settings};

/// Keeps Amazon Cognito guest (unauthenticated) credentials fresh in Kubernetes Secrets.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Reconciles running at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (tracing EnvFilter syntax), e.g. info or cognito_unauth_controller=debug.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Connect timeout for Cognito calls, in seconds.
    #[arg(long, env = "COGNITO_CONNECT_TIMEOUT_SECONDS", default_value_t = 3)]
    cognito_connect_timeout_seconds: u64,
    /// Whole-call timeout for Cognito calls, in seconds.
    #[arg(long, env = "COGNITO_TIMEOUT_SECONDS", default_value_t = 10)]
    cognito_timeout_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)?;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }

    let client = kube::Client::try_default().await?;
    let sdk = load_sdk_config(
        Timeouts {
            connect: std::time::Duration::from_secs(args.cognito_connect_timeout_seconds),
            operation: std::time::Duration::from_secs(args.cognito_timeout_seconds),
        },
        None,
    )
    .await;
    let settings = Settings {
        namespace: args.namespace,
        concurrency: args.concurrency,
        instance: std::env::var("POD_NAME").ok(),
    };
    controller::run(client, SdkCognito::new(sdk), settings, shutdown_signal()).await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
