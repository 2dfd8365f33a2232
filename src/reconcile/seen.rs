//! What the watch of our Secrets saw: a [`Seen`] fingerprint per Secret, so a reconcile
//! knows a Secret that holds exactly what the status says without reading it (a
//! restart costs no Secret GETs), in a 40-byte map entry per Secret.
//!
//! The watch reads metadata only (`secret::seen` vouches for a Secret from its
//! annotations and managedFields): a Secret that anyone labels as ours costs at most its
//! metadata, never its data.
//!
//! The watch's initial list (and each relist after a gap) replaces what a scope knew:
//! until it is complete, that scope answers nothing, and the reconcile reads Secrets as
//! before. Our own writes are noted at once, so the read after a rotation is not needed
//! either.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::lock;
use crate::reconcile::secret::{self, Seen};

/// One Secret's entry: its fingerprint, and the list (epoch) of the watch it came from.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seen: Seen,
    epoch: u64,
}

/// One watch: its namespace (None: all), the epoch of its current list, and whether
/// that list is complete.
#[derive(Debug)]
struct Scope {
    namespace: Option<String>,
    epoch: u64,
    listed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by a hash of namespace and name: two Secrets whose keys collide only cost a
    /// read (the fingerprint names the owner, so one is never taken for the other).
    entries: HashMap<u64, Entry>,
    scopes: Vec<Scope>,
    next_epoch: u64,
}

impl Inner {
    /// The watch that covers `namespace`.
    fn scope(&self, namespace: &str) -> Option<&Scope> {
        self.scopes
            .iter()
            .find(|s| s.namespace.as_deref() == Some(namespace))
            .or_else(|| self.scopes.iter().find(|s| s.namespace.is_none()))
    }

    fn scope_mut(&mut self, namespace: Option<&str>) -> Option<&mut Scope> {
        self.scopes
            .iter_mut()
            .find(|s| s.namespace.as_deref() == namespace)
    }
}

/// The fingerprints of our Secrets, for every watched scope.
#[derive(Debug, Default)]
pub struct SeenSecrets {
    inner: Mutex<Inner>,
    listed: Notify,
}

fn key(namespace: &str, name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    namespace.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

impl SeenSecrets {
    /// The fingerprint of Secret `namespace/name`, if the watch saw it intact and the
    /// list of the watch that covers it is complete.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Seen> {
        let inner = lock(&self.inner);
        let e = inner.entries.get(&key(namespace, name))?;
        let scope = inner.scope(namespace)?;
        (scope.listed && scope.epoch == e.epoch).then_some(e.seen)
    }

    /// Records what a Secret now is, from its metadata (our own write, or the watch's news).
    pub fn note(&self, meta: &ObjectMeta) {
        let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
            return;
        };
        let k = key(ns, name);
        let mut inner = lock(&self.inner);
        let Some(epoch) = inner.scope(ns).map(|s| s.epoch) else {
            return;
        };
        match secret::seen(meta) {
            Some(seen) => {
                inner.entries.insert(k, Entry { seen, epoch });
            }
            None => {
                inner.entries.remove(&k);
            }
        }
    }

    /// Forgets Secret `namespace/name` (deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        lock(&self.inner).entries.remove(&key(namespace, name));
    }

    /// Follows one event of the watch of our Secrets in `namespace` (None: all).
    pub fn follow(
        &self,
        namespace: Option<&str>,
        event: &watcher::Event<PartialObjectMeta<Secret>>,
    ) {
        match event {
            watcher::Event::Init => {
                let mut inner = lock(&self.inner);
                inner.next_epoch += 1;
                let epoch = inner.next_epoch;
                match inner.scope_mut(namespace) {
                    Some(s) => {
                        s.epoch = epoch;
                        s.listed = false;
                    }
                    None => inner.scopes.push(Scope {
                        namespace: namespace.map(str::to_string),
                        epoch,
                        listed: false,
                    }),
                }
            }
            watcher::Event::InitApply(s) | watcher::Event::Apply(s) => self.note(&s.metadata),
            watcher::Event::Delete(s) => {
                if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                    self.forget(ns, name);
                }
            }
            watcher::Event::InitDone => {
                let mut inner = lock(&self.inner);
                let Some(scope) = inner.scope_mut(namespace) else {
                    return;
                };
                scope.listed = true;
                // What the list did not show is gone (deleted while the watch was down).
                // Entries of an earlier list of any watch go: a watch that is listing
                // again answers nothing until it is done, and notes its entries anew.
                let current: Vec<u64> = inner.scopes.iter().map(|s| s.epoch).collect();
                inner.entries.retain(|_, e| current.contains(&e.epoch));
                inner.entries.shrink_to_fit();
                drop(inner);
                self.listed.notify_waiters();
            }
        }
    }

    /// Whether the watch of `namespace` (None: all) has completed a list.
    pub fn listed(&self, namespace: Option<&str>) -> bool {
        lock(&self.inner)
            .scopes
            .iter()
            .any(|s| s.namespace.as_deref() == namespace && s.listed)
    }

    /// Waits until the watch of `namespace` has completed a list, at most `limit`; says
    /// whether it did.
    pub async fn wait_listed(&self, namespace: Option<&str>, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let notified = self.listed.notified();
                if self.listed(namespace) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    /// Forgets every watch and entry (leadership lost: the next term lists again).
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.entries = HashMap::new();
        inner.scopes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::secret::tests::{MOUNT, creds, owner, prov, touched, written};
    use crate::reconcile::secret::{Owner, Placement, render};
    use kube::core::PartialObjectMetaExt;

    /// An intact Secret of ours named `name`, as the API server answered our write.
    fn ours(name: &str) -> Secret {
        let owner = Owner {
            name: name.into(),
            ..owner()
        };
        let at = Placement {
            name,
            namespace: "ns",
            owner: &owner,
            template: None,
            mount_path: MOUNT,
        };
        written(render(&at, &creds(), &prov()))
    }

    /// What the metadata watch delivers of `s`.
    fn meta(s: &Secret) -> PartialObjectMeta<Secret> {
        s.metadata.clone().into_response_partial()
    }

    #[test]
    fn a_scope_answers_only_once_its_list_is_complete_and_a_relist_drops_the_gone() {
        let s = SeenSecrets::default();
        let (a, b) = (ours("a"), ours("b"));
        let ns = Some("ns");
        s.note(&a.metadata); // no watch covers it yet: nothing noted
        s.follow(ns, &watcher::Event::Init);
        s.follow(ns, &watcher::Event::InitApply(meta(&a)));
        s.follow(ns, &watcher::Event::InitApply(meta(&b)));
        assert_eq!(s.get("ns", "a"), None, "list not complete");
        s.follow(ns, &watcher::Event::InitDone);
        assert_eq!(s.get("ns", "a"), secret::seen(&a.metadata));
        assert!(s.get("ns", "b").is_some());
        assert_eq!(s.get("other", "a"), None, "not this watch's namespace");
        // Another watch's list leaves this one's entries alone.
        s.follow(Some("other"), &watcher::Event::Init);
        s.follow(Some("other"), &watcher::Event::InitDone);
        assert!(s.get("ns", "a").is_some());
        // A relist: silent while it runs; b was deleted during the gap.
        s.follow(ns, &watcher::Event::Init);
        assert_eq!(s.get("ns", "a"), None);
        s.follow(ns, &watcher::Event::InitApply(meta(&a)));
        s.follow(ns, &watcher::Event::InitDone);
        assert!(s.get("ns", "a").is_some());
        assert_eq!(s.get("ns", "b"), None, "not in the relist: gone");
        // A Secret whose data someone edited (managedFields say so) has no
        // fingerprint; deleted, none.
        let edited = touched(
            a.clone(),
            "kubectl-edit",
            serde_json::json!({"f:data": {"f:AWS_SESSION_TOKEN": {}}}),
        );
        s.follow(ns, &watcher::Event::Apply(meta(&edited)));
        assert_eq!(s.get("ns", "a"), None);
        s.note(&a.metadata); // our own write
        assert!(s.get("ns", "a").is_some());
        s.follow(ns, &watcher::Event::Delete(meta(&a)));
        assert_eq!(s.get("ns", "a"), None);
        s.clear();
        assert!(!s.listed(ns));
    }

    /// What docs/dev/memory-profile.md says a Secret costs in the map: its key and entry.
    #[test]
    fn an_entry_is_40_bytes() {
        assert_eq!(std::mem::size_of::<(u64, Entry)>(), 40);
    }

    #[tokio::test]
    async fn waiting_for_the_list_ends_when_it_completes_or_at_the_limit() {
        let s = std::sync::Arc::new(SeenSecrets::default());
        assert!(!s.wait_listed(None, Duration::from_millis(20)).await);
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.wait_listed(None, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        s.follow(None, &watcher::Event::Init);
        s.follow(None, &watcher::Event::InitDone);
        assert!(waiter.await.unwrap());
    }
}
