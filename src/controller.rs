//! Runtime wiring: the kube-runtime Controller over CognitoUnauthCredentials and the
//! Secrets they own (metadata only, and only ours, by label), driving `reconcile`.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use tracing::{info, warn};

use crate::cognito::Cognito;
use crate::crd::CognitoUnauthCredential;
use crate::reconcile::{self, Context, MANAGER};
use crate::secret::MANAGED_SELECTOR;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Identifies this replica in events.
    pub instance: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            concurrency: 8,
            instance: None,
        }
    }
}

/// Runs until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run<C: Cognito>(
    client: kube::Client,
    cognito: C,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (cucs, secrets): (Api<CognitoUnauthCredential>, Api<Secret>) = match &settings.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let reporter = Reporter {
        controller: MANAGER.to_string(),
        instance: settings.instance.clone(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(client, cognito, recorder));
    info!(
        namespace = settings.namespace.as_deref().unwrap_or("<all>"),
        "controller starting"
    );
    Controller::new(cucs, watcher::Config::default().any_semantic())
        .owns(
            secrets,
            watcher::Config::default()
                .labels(MANAGED_SELECTOR)
                .any_semantic(),
        )
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                match e {
                    controller::Error::ReconcilerFailed(..) => {} // logged by error_policy
                    other => warn!(error = %other, "controller"),
                }
            }
        })
        .await;
    info!("controller stopped");
}
