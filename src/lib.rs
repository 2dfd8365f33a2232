//! cognito-unauth-controller: keeps Amazon Cognito guest (unauthenticated) credentials
//! fresh in Kubernetes Secrets, and injects them into the pods that ask.
//!
//! The tree is layered. Each folder may use the folders listed before it and never one
//! after it; its `mod.rs` opens with what it owns and what it may use
//! (docs/dev/architecture.md has the data's path through them):
//!
//! 1. [`crd`]: the API types, their limits, and the conditions' vocabulary (types,
//!    reasons and their classes) that status, metrics and the webhook all speak.
//! 2. [`common`]: what both processes stand on: the watches' backoff, bounded maps, logs,
//!    metrics, events, the admin HTTP server.
//! 3. [`aws`]: Cognito and STS behind a trait, paced under the quotas, metered.
//! 4. [`reconcile`]: one resource's reconcile: the pure decisions (plan, schedule, the
//!    Secret's rendering, conditions) and the steps that carry them out.
//! 5. [`webhook`]: the injection webhook: admission from watch caches, its certificate and
//!    configuration, and the pod it makes of an annotated one (pure).
//! 6. [`runtime`]: the controller process's wiring: watches, the kube-runtime controller,
//!    leader election, flags.
//! 7. [`sidecar`]: the `serve-credentials` sidecar that the webhook adds to pods whose
//!    image has no shell.

pub mod crd;

pub mod common;

pub mod aws;

pub mod reconcile;

pub mod webhook;

pub mod runtime;

pub mod sidecar;

/// Locks a mutex. A panic elsewhere while holding it leaves plain data (maps, counters)
/// that is still usable, so a poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Reads an RwLock; a poisoned one is read as it is (see [`lock`]).
pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Writes an RwLock; a poisoned one is written as it is (see [`lock`]).
pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The folders in their order (src/lib.rs, docs/dev/architecture.md): each may name
    /// only those before it.
    const LAYERS: [&str; 7] = [
        "crd",
        "common",
        "aws",
        "reconcile",
        "webhook",
        "runtime",
        "sidecar",
    ];

    /// Every `crate::NAME` in `code`.
    fn named(code: &str) -> Vec<&str> {
        code.match_indices("crate::")
            .map(|(i, m)| {
                let rest = &code[i + m.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src/") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn the_layers_point_one_way() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut arrows = Vec::new();
        let mut seen = 0;
        for file in all {
            let rel = file.strip_prefix(&src).expect("under src/");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|t| t.trim_end_matches(".rs"))
                .unwrap_or_default();
            let Some(level) = LAYERS.iter().position(|l| *l == top) else {
                continue;
            };
            seen += 1;
            let code = std::fs::read_to_string(&file).expect("read");
            // Production code only: a test may build its inputs with anything.
            let code = code
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            // Code, not what the docs say of other folders.
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for dep in named(&code) {
                if let Some(d) = LAYERS.iter().position(|l| *l == dep)
                    && d > level
                {
                    arrows.push(format!("{} -> {dep}", rel.display()));
                }
            }
        }
        assert!(seen > 20, "only {seen} files found under src/");
        assert!(arrows.is_empty(), "arrows back up the layers: {arrows:#?}");
        // The check sees an arrow when there is one.
        assert_eq!(
            named("use crate::runtime::lease;\ncrate::lock(x)"),
            ["runtime", "lock"]
        );
    }
}
