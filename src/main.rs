//! cognito-unauth-controller: the binary. Flags, logging, clients; the rest is the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use cognito_unauth_controller::aws::cognito::{SdkCognito, Timeouts, load_sdk_config};
use cognito_unauth_controller::aws::quota::Quotas;
use cognito_unauth_controller::common::http::{self as admin, Health};
use cognito_unauth_controller::common::metrics::Metrics;
use cognito_unauth_controller::runtime::controller::{self, LeaderElection, Settings};
use cognito_unauth_controller::runtime::flags;
use cognito_unauth_controller::sidecar;
use cognito_unauth_controller::webhook::certs::Lifetimes;
use cognito_unauth_controller::webhook::inject::SidecarImage;
use cognito_unauth_controller::webhook::{self, CertSlot, Configurator};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::prelude::*;

/// Keeps Amazon Cognito guest (unauthenticated) credentials fresh in Kubernetes Secrets.
///
/// Every flag also reads the environment variable named in its help. The Cognito and
/// STS endpoints are the AWS SDK's standard ones (AWS_ENDPOINT_URL_COGNITO_IDENTITY and
/// AWS_ENDPOINT_URL_STS override them); no AWS credentials are used.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespaces to watch, comma-separated (default: all namespaces).
    #[arg(long = "namespaces", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// When watching all namespaces: namespaces to leave alone, comma-separated (those of
    /// teams with a release of their own).
    #[arg(
        long = "exclude-namespaces",
        env = "EXCLUDE_NAMESPACES",
        value_delimiter = ','
    )]
    exclude_namespaces: Vec<String>,
    /// Address of the HTTP server for /livez, /readyz and /metrics.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "127.0.0.1:8080")]
    metrics_address: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (tracing EnvFilter syntax), e.g. info or cognito_unauth_controller=debug.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// UNSAFE: let the AWS SDK and the HTTP stack log at the level LOG_LEVEL asks, request
    /// and response bodies included: access key ids, session tokens and OpenID tokens
    /// reach the logs. For debugging against a test pool only; a flag, never an
    /// environment variable, so no chart value or inherited setting turns it on.
    #[arg(long, global = true)]
    unsafe_log_aws_bodies: bool,
    /// Only the holder of a coordination.k8s.io Lease reconciles (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_NAME",
        default_value = "cognito-unauth-controller"
    )]
    leader_election_lease_name: String,
    /// Namespace of the leader-election Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Seconds after which a Lease that is not renewed can be taken over.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_DURATION_SECONDS",
        default_value_t = 15
    , value_parser = flags::whole_u64)]
    leader_election_lease_duration_seconds: u64,
    /// Seconds before expiry at which the leader renews its Lease.
    #[arg(long, env = "LEADER_ELECTION_RENEW_GRACE_SECONDS", default_value_t = 5, value_parser = flags::whole_u64)]
    leader_election_renew_grace_seconds: u64,
    /// Connect timeout for Cognito calls, in seconds.
    #[arg(long, env = "COGNITO_CONNECT_TIMEOUT_SECONDS", default_value_t = 3, value_parser = flags::whole_u64)]
    cognito_connect_timeout_seconds: u64,
    /// Whole-call timeout for Cognito calls, in seconds.
    #[arg(long, env = "COGNITO_TIMEOUT_SECONDS", default_value_t = 10, value_parser = flags::whole_u64)]
    cognito_timeout_seconds: u64,
    /// GetId calls per second allowed per region (AWS's default quota is 25/s per account).
    #[arg(long, env = "COGNITO_GET_ID_RATE", default_value_t = 25.0)]
    cognito_get_id_rate: f64,
    /// GetCredentialsForIdentity calls per second allowed per region (AWS default: 200/s).
    #[arg(long, env = "COGNITO_GET_CREDENTIALS_RATE", default_value_t = 200.0)]
    cognito_get_credentials_rate: f64,
    /// GetOpenIdToken calls (flow Basic) per second allowed per region (AWS default: 200/s).
    #[arg(long, env = "COGNITO_GET_OPEN_ID_TOKEN_RATE", default_value_t = 200.0)]
    cognito_get_open_id_token_rate: f64,
    /// STS AssumeRoleWithWebIdentity calls (flow Basic) per second allowed per region. STS's
    /// quota is per account and shared with every other STS caller in it: take a share.
    #[arg(long, env = "STS_ASSUME_ROLE_RATE", default_value_t = 100.0)]
    sts_assume_role_rate: f64,
    /// Reconciles running at once, per watched namespace (in all of them when all are
    /// watched), handed out round-robin between namespaces.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8, value_parser = flags::whole_u16)]
    concurrency: u16,
    /// The least time, in seconds, between two forced rotations of one resource: a
    /// force-rotate value changed again sooner waits, and the status says until when.
    #[arg(long, env = "FORCE_ROTATE_MIN_INTERVAL_SECONDS", default_value_t = 60, value_parser = flags::whole_u64)]
    force_rotate_min_interval_seconds: u64,
    /// Parse the flags and environment, check them as a start would, print what was
    /// read and exit: 0 when this configuration would start (nothing is contacted).
    /// `make test` runs it on every container the chart renders.
    #[arg(long, global = true, hide = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The injection webhook: a mutating admission webhook that adds a resource's Secret,
    /// mounts and AWS variables to pods annotated `cognito.kubecred.io/inject: NAME` (or
    /// running as a ServiceAccount annotated `cognito.kubecred.io/credential: NAME`).
    /// It serves HTTPS with a certificate it makes and renews itself (or cert-manager's),
    /// and /livez, /readyz, /metrics on --metrics-address.
    Webhook(WebhookArgs),
    /// The sidecar the webhook adds in `container-credentials` mode: serves a mounted
    /// credential_process file to the AWS SDKs' container credentials provider.
    ServeCredentials(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Address of the HTTPS server the API server calls.
    #[arg(long, env = "WEBHOOK_ADDRESS", default_value = "0.0.0.0:9443")]
    address: SocketAddr,
    /// The namespace the webhook runs in.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The Service in front of the webhook (the certificate names it).
    #[arg(long, env = "WEBHOOK_SERVICE")]
    service: String,
    /// The Secret that holds the serving certificate.
    #[arg(long, env = "WEBHOOK_TLS_SECRET")]
    tls_secret: String,
    /// The MutatingWebhookConfiguration whose webhooks' caBundle it keeps (the chart owns
    /// every other field of it).
    #[arg(long, env = "WEBHOOK_CONFIGURATION")]
    configuration: String,
    /// The certificate is made by someone else (cert-manager): only load it from the Secret.
    #[arg(long, env = "WEBHOOK_EXTERNAL_CERTIFICATE", default_value_t = false)]
    external_certificate: bool,
    /// Lifetime of the webhook's own CA, in seconds; renewed at two thirds.
    #[arg(long, env = "WEBHOOK_CA_LIFETIME_SECONDS", default_value_t = 365 * 24 * 3600, value_parser = flags::whole_i64)]
    ca_lifetime_seconds: i64,
    /// Lifetime of the serving certificate, in seconds; renewed at two thirds.
    #[arg(long, env = "WEBHOOK_CERT_LIFETIME_SECONDS", default_value_t = 30 * 24 * 3600, value_parser = flags::whole_i64)]
    cert_lifetime_seconds: i64,
    /// Image of the `container-credentials` sidecar (the controller's own image).
    #[arg(long, env = "WEBHOOK_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// Pull policy of that sidecar.
    #[arg(
        long,
        env = "WEBHOOK_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    sidecar_image_pull_policy: String,
    /// After SIGTERM: seconds the webhook stays unready but still answers, while the
    /// endpoints drop it (a rolling update or a drain refuses no admission).
    #[arg(long, env = "WEBHOOK_DRAIN_SECONDS", default_value_t = 5, value_parser = flags::whole_u64)]
    drain_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The mounted credential_process file.
    #[arg(long, required_unless_present = "probe")]
    file: Option<std::path::PathBuf>,
    /// Where to serve (the pod's loopback).
    #[arg(long, default_value = "127.0.0.1:9911")]
    address: SocketAddr,
    /// Exit 0 if a server answers at --address, 1 if not (the sidecar's startup probe).
    #[arg(long)]
    probe: bool,
    /// Write a random token here first, and answer only requests whose Authorization
    /// header is that token (the SDKs read it from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::try_parse().unwrap_or_else(|e| refuse(e));
    // The SDK and the HTTP stack stay at info whatever LOG_LEVEL asks: at debug and trace
    // they log what crosses the wire, credentials and tokens included (logging.rs).
    let filter = cognito_unauth_controller::common::logging::filter(
        &args.log_level,
        args.unsafe_log_aws_bodies,
    )?;
    if args.check_config {
        check_config(&args);
        return Ok(());
    }
    let layer = tracing_subscriber::fmt::layer();
    if args.log_format == "json" {
        tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init();
    }
    if args.unsafe_log_aws_bodies {
        warn!(
            "--unsafe-log-aws-bodies: the AWS SDK logs at the level LOG_LEVEL asks; credentials and tokens may reach these logs"
        );
    }

    if args.namespaces.iter().any(|n| !n.is_empty())
        && args.exclude_namespaces.iter().any(|n| !n.is_empty())
    {
        anyhow::bail!(
            "WATCH_NAMESPACES (watchNamespaces) and EXCLUDE_NAMESPACES (excludeNamespaces) are both set: exclusions apply only when all namespaces are watched; set one"
        );
    }
    match args.command.take() {
        Some(Command::ServeCredentials(s)) => return serve_credentials(s).await,
        Some(Command::Webhook(w)) => {
            return run_webhook(
                args.metrics_address,
                &args.namespaces,
                &args.exclude_namespaces,
                w,
            )
            .await;
        }
        None => {}
    }
    let client = kube_client().await?;
    let sdk = load_sdk_config(
        Timeouts {
            connect: Duration::from_secs(args.cognito_connect_timeout_seconds),
            operation: Duration::from_secs(args.cognito_timeout_seconds),
        },
        None,
    )
    .await;
    let (metrics, health) = serve_admin(args.metrics_address).await?;

    let settings = controller_settings(args);
    let telemetry = controller::Telemetry { metrics, health };
    controller::run(
        client,
        SdkCognito::new(sdk),
        settings,
        telemetry,
        shutdown_signal(),
    )
    .await;
    info!("exiting");
    Ok(())
}

/// The controller's settings from its flags (and the pod's name and namespace).
fn controller_settings(args: Args) -> Settings {
    let pod = std::env::var("POD_NAME").ok();
    let leader_election = args.leader_elect.then(|| LeaderElection {
        lease_name: args.leader_election_lease_name.clone(),
        lease_namespace: args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_string()),
        identity: pod
            .clone()
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id())),
        lease_duration: Duration::from_secs(args.leader_election_lease_duration_seconds),
        renew_grace: Duration::from_secs(args.leader_election_renew_grace_seconds),
    });
    Settings {
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        exclude_namespaces: args.exclude_namespaces,
        concurrency: args.concurrency,
        instance: pod,
        leader_election,
        quotas: Quotas {
            get_id_per_second: args.cognito_get_id_rate,
            get_credentials_per_second: args.cognito_get_credentials_rate,
            get_open_id_token_per_second: args.cognito_get_open_id_token_rate,
            assume_role_per_second: args.sts_assume_role_rate,
        },
        force_rotate_interval: Duration::from_secs(args.force_rotate_min_interval_seconds),
    }
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    // Identifies our requests in the API server's audit log and metrics.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!(
            "cognito-unauth-controller/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    Ok(kube::Client::try_from(config)?)
}

/// The metrics and health of this process, served on `address` (/livez, /readyz, /metrics).
async fn serve_admin(address: SocketAddr) -> anyhow::Result<(Arc<Metrics>, Arc<Health>)> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (bound, server) = admin::bind(address, metrics.clone(), health.clone()).await?;
    info!(address = %bound, "serving /livez, /readyz and /metrics");
    tokio::spawn(async move {
        if let Err(e) = server.await {
            error!(error = %e, "HTTP server failed");
        }
    });
    Ok((metrics, health))
}

async fn serve_credentials(s: ServeArgs) -> anyhow::Result<()> {
    if s.probe {
        if sidecar::probe(s.address).await {
            return Ok(());
        }
        std::process::exit(1);
    }
    let file = s
        .file
        .ok_or_else(|| anyhow::anyhow!("--file is required"))?;
    tokio::select! {
        r = sidecar::serve(file, s.address, s.token_file) => r?,
        () = shutdown_signal() => {}
    }
    Ok(())
}

/// The injection webhook; with `namespaces` (the chart's watchNamespaces) it reads and
/// injects only there.
async fn run_webhook(
    metrics_address: SocketAddr,
    namespaces: &[String],
    exclude_namespaces: &[String],
    w: WebhookArgs,
) -> anyhow::Result<()> {
    let client = kube_client().await?;
    let (metrics, health) = serve_admin(metrics_address).await?;
    let settings = webhook::Settings {
        address: w.address,
        namespace: w.namespace,
        service: w.service,
        tls_secret: w.tls_secret,
        configuration: w.configuration,
        manage_certificate: !w.external_certificate,
        lifetimes: Lifetimes {
            ca_seconds: w.ca_lifetime_seconds,
            leaf_seconds: w.cert_lifetime_seconds,
        },
        sidecar: SidecarImage {
            image: w.sidecar_image,
            pull_policy: w.sidecar_image_pull_policy,
        },
    };
    // SIGTERM: the configurator stops and the replica turns unready at once; it answers
    // admissions for drain_seconds more (the endpoints drop it meanwhile), then stops.
    let configuring = CancellationToken::new();
    let draining = configuring.clone();
    let serving = CancellationToken::new();
    tokio::spawn({
        let (configuring, serving, health, metrics) = (
            configuring.clone(),
            serving.clone(),
            health.clone(),
            metrics.clone(),
        );
        let drain = std::time::Duration::from_secs(w.drain_seconds);
        async move {
            shutdown_signal().await;
            configuring.cancel();
            health.set_ready(false);
            metrics.webhook_ready(false);
            info!(
                seconds = drain.as_secs(),
                "draining: unready, still answering admissions"
            );
            tokio::time::sleep(drain).await;
            serving.cancel();
        }
    });
    let slot = Arc::new(CertSlot::default());
    let namespaces: Vec<String> = namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    let caches = webhook::Caches::start(&client, &namespaces, exclude_namespaces, &serving);
    let configurator = Configurator::new(
        client.clone(),
        settings.clone(),
        slot.clone(),
        metrics.clone(),
    );
    tokio::spawn(webhook::configure(
        configurator,
        caches.clone(),
        health,
        configuring,
    ));
    let with = webhook::Serving {
        client,
        caches,
        metrics,
        draining,
        shutdown: serving,
    };
    webhook::serve(&settings, slot, with).await?;
    info!("exiting");
    Ok(())
}

/// Exits with clap's message, plus where a refused value came from: the environment
/// variable and the chart key that set it (issue 24: a value rendered by the chart that
/// the binary refused named neither).
fn refuse(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue};
    let hint = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => {
            let long = arg.split_whitespace().next().unwrap_or_default();
            let env = env_of(&Args::command(), long.trim_start_matches("--"));
            let on_command_line =
                std::env::args().any(|a| a == long || a.starts_with(&format!("{long}=")));
            flags::origin(env.as_deref(), !on_command_line)
        }
        _ => None,
    };
    let _ = e.print();
    if let Some(hint) = hint {
        eprintln!("\n{hint}");
    }
    std::process::exit(e.exit_code());
}

/// The environment variable a flag reads, in the command or any subcommand.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|c| env_of(c, long)))
}

/// `--check-config`: what a start would read, after the checks a start makes before it
/// contacts anything (clap's parsing and the log filter; the webhook's lifetimes).
fn check_config(args: &Args) {
    match &args.command {
        Some(Command::Webhook(w)) => println!(
            "configuration ok: webhook on {}, metrics on {}, CA lifetime {} s, certificate lifetime {} s",
            w.address, args.metrics_address, w.ca_lifetime_seconds, w.cert_lifetime_seconds
        ),
        Some(Command::ServeCredentials(s)) => {
            println!("configuration ok: serve-credentials on {}", s.address)
        }
        None => println!(
            "configuration ok: controller, metrics on {}, lease {} s, concurrency {}",
            args.metrics_address, args.leader_election_lease_duration_seconds, args.concurrency
        ),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "controller".to_string())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
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
    info!("shutdown requested");
}
