//! A kubelet-like `secret` volume: a local directory that follows one Secret the way the
//! kubelet's `AtomicWriter` (pkg/volume/util/atomic_writer.go) projects a Secret volume,
//! so tests can point real readers (the aws CLI with `AWS_SHARED_CREDENTIALS_FILE`, an SDK's
//! credentials file provider) at what a pod would see, without a kubelet.
//!
//! Layout after each update, as in a pod:
//!
//! ```text
//! dir/..2026_11_27_10_00_00.123456789/KEY   the files of one version (0644; the dir 0755)
//! dir/..data -> ..2026_11_27_10_00_00.123456789
//! dir/KEY -> ..data/KEY
//! ```
//!
//! An update writes a new timestamped directory, points `..data_tmp` at it, renames
//! `..data_tmp` over `..data` (one atomic step), adds the links of new keys, removes the
//! links of keys that are gone, and removes the old directory. A reader that opens
//! `dir/KEY` therefore always gets one complete version, and a file it has open keeps
//! the version it opened.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// A Secret's `data`: key to bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;

const DATA_DIR: &str = "..data";
const NEW_DATA_DIR: &str = "..data_tmp";
/// A `secret` volume's default mode (`defaultMode: 0644`).
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const MAX_FILE_NAME: usize = 255;

/// Writes `data` into `dir` as the kubelet does for a Secret volume (`dir` must exist).
/// Returns `Ok(false)` when `dir` already holds exactly `data`: like the kubelet, nothing
/// is rewritten then (the per-key links are still ensured).
pub fn project(dir: &Path, data: &SecretData) -> io::Result<bool> {
    for key in data.keys() {
        validate_key(key)?;
    }
    let old = match std::fs::read_link(dir.join(DATA_DIR)) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };

    let mut stale = BTreeSet::new();
    if let Some(old) = &old {
        let old_dir = dir.join(old);
        match std::fs::read_dir(&old_dir) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name().to_string_lossy().into_owned();
                    if !data.contains_key(&name) {
                        stale.insert(name);
                    }
                }
            }
            // `..data` points nowhere: nothing to compare with, write a new version.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if stale.is_empty() && same_content(&old_dir, data)? {
            link_keys(dir, data)?;
            return Ok(false);
        }
    }

    let ts_dir = new_timestamp_dir(dir)?;
    let written = write_files(&ts_dir, data).and_then(|()| {
        let ts_name = ts_dir
            .file_name()
            .ok_or_else(|| io::Error::other("timestamp directory without a name"))?;
        symlink(ts_name, dir.join(NEW_DATA_DIR))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&ts_dir);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(dir.join(NEW_DATA_DIR), dir.join(DATA_DIR)) {
        let _ = std::fs::remove_file(dir.join(NEW_DATA_DIR));
        let _ = std::fs::remove_dir_all(&ts_dir);
        return Err(e);
    }

    link_keys(dir, data)?;
    for key in &stale {
        ignore_missing(std::fs::remove_file(dir.join(key)))?;
    }
    if let Some(old) = old {
        ignore_missing(std::fs::remove_dir_all(dir.join(old)))?;
    }
    Ok(true)
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// What a reader of the volume sees: every visible key, read through its link.
pub fn read_projection(dir: &Path) -> io::Result<SecretData> {
    let mut out = SecretData::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") {
            let content = std::fs::read(dir.join(&name))?;
            out.insert(name, content);
        }
    }
    Ok(out)
}

/// The kubelet's `validatePath`, for the flat keys of a Secret (they never hold `/`).
fn validate_key(key: &str) -> io::Result<()> {
    let invalid = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid key {key:?}: {why}"),
        ))
    };
    if key.is_empty() {
        return invalid("must not be empty");
    }
    if key.contains('/') {
        return invalid("must not contain '/'");
    }
    if key == ".." || key == "." {
        return invalid("must not be '.' or '..'");
    }
    if key.starts_with("..") {
        return invalid("must not start with '..'");
    }
    if key.len() > MAX_FILE_NAME {
        return invalid("longer than 255 bytes");
    }
    Ok(())
}

fn same_content(old_dir: &Path, data: &SecretData) -> io::Result<bool> {
    for (key, want) in data {
        match std::fs::read(old_dir.join(key)) {
            Ok(have) if have == *want => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `os.MkdirTemp(dir, "..2006_01_02_15_04_05.")` then `chmod 0755`, as the kubelet does.
fn new_timestamp_dir(dir: &Path) -> io::Result<PathBuf> {
    let prefix = k8s_openapi::jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.")
        .to_string();
    for _ in 0..10_000 {
        let path = dir.join(format!("{prefix}{}", rand::random::<u32>()));
        match std::fs::create_dir(&path) {
            Ok(()) => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(DIR_MODE))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free timestamp directory name",
    ))
}

fn write_files(ts_dir: &Path, data: &SecretData) -> io::Result<()> {
    for (key, content) in data {
        let path = ts_dir.join(key);
        std::fs::write(&path, content)?;
        // Explicitly, as the kubelet does: the umask must not decide the mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Adds `KEY -> ..data/KEY` for every key that has no link yet.
fn link_keys(dir: &Path, data: &SecretData) -> io::Result<()> {
    for key in data.keys() {
        let visible = dir.join(key);
        match std::fs::read_link(&visible) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                symlink(Path::new(DATA_DIR).join(key), &visible)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why `SecretMirror::wait_for` gave up. Never carries the Secret's data.
#[derive(Debug)]
pub enum MirrorError {
    /// No version projected within the timeout satisfied the predicate.
    Timeout {
        waited: Duration,
        versions: usize,
        last_error: Option<String>,
    },
    /// The watch task ended (it only does when the mirror is dropped or panicked).
    Stopped { last_error: Option<String> },
}

impl fmt::Display for MirrorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout {
                waited,
                versions,
                last_error,
            } => write!(
                f,
                "no projected version matched within {waited:?} ({versions} projected, last error: {})",
                last_error.as_deref().unwrap_or("none")
            ),
            Self::Stopped { last_error } => write!(
                f,
                "the mirror stopped (last error: {})",
                last_error.as_deref().unwrap_or("none")
            ),
        }
    }
}

impl std::error::Error for MirrorError {}

/// Deliberately not `Debug`: it holds the Secret's data.
#[derive(Default)]
struct Projected {
    /// Every distinct version written to the directory, oldest first.
    versions: Vec<SecretData>,
    /// The last watch or write error, cleared by the next successful projection.
    last_error: Option<String>,
}

/// A directory that follows one Secret like a pod's `secret` volume. Dropping it stops
/// the watch (the directory stays, with the last version).
pub struct SecretMirror {
    dir: PathBuf,
    state: watch::Receiver<Projected>,
    task: tokio::task::JoinHandle<()>,
}

impl SecretMirror {
    /// Creates `dir` if needed and starts following Secret `namespace/name` into it: every
    /// version whose data differs from the last one projected is written as the kubelet
    /// would. A Secret that does not exist yet is picked up when it is created; a deleted
    /// one leaves the last version in place, as a kubelet does. Needs a tokio runtime.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = watch::channel(Projected::default());
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let task = tokio::spawn(follow(api, name.to_string(), dir.to_path_buf(), tx));
        Ok(Self {
            dir: dir.to_path_buf(),
            state: rx,
            task,
        })
    }

    /// The volume's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many distinct versions have been projected so far.
    pub fn versions(&self) -> usize {
        self.state.borrow().versions.len()
    }

    /// Waits until the latest projected version, or one projected after it, satisfies
    /// `pred`; returns that version. The files are on disk when this returns.
    pub async fn wait_for<F>(&self, pred: F, timeout: Duration) -> Result<SecretData, MirrorError>
    where
        F: Fn(&SecretData) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.state.clone();
        let mut next = rx.borrow().versions.len().saturating_sub(1);
        loop {
            let last_error = {
                let p = rx.borrow_and_update();
                if let Some(v) = p.versions.iter().skip(next).find(|v| pred(v)) {
                    return Ok(v.clone());
                }
                next = p.versions.len();
                p.last_error.clone()
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(MirrorError::Stopped { last_error }),
                Err(_) => {
                    return Err(MirrorError::Timeout {
                        waited: timeout,
                        versions: next,
                        last_error,
                    });
                }
            }
        }
    }
}

impl Drop for SecretMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(api: Api<Secret>, name: String, dir: PathBuf, tx: watch::Sender<Projected>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut secrets = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut last: Option<SecretData> = None;
    while let Some(item) = secrets.next().await {
        let secret = match item {
            Ok(s) => s,
            Err(e) => {
                tx.send_modify(|p| p.last_error = Some(format!("watch: {e}")));
                continue;
            }
        };
        let data: SecretData = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        if last.as_ref() == Some(&data) {
            continue;
        }
        let (d, v) = (dir.clone(), data.clone());
        let outcome = tokio::task::spawn_blocking(move || project(&d, &v))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        match outcome {
            Ok(_) => {
                tx.send_modify(|p| {
                    p.versions.push(data.clone());
                    p.last_error = None;
                });
                last = Some(data);
            }
            Err(e) => tx.send_modify(|p| p.last_error = Some(format!("projecting: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cuc-mirror-{name}-{}", crate::rand_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn entries(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn is_timestamp_dir(name: &str) -> bool {
        // ..2026_11_27_10_00_00.123456789
        let Some(rest) = name.strip_prefix("..") else {
            return false;
        };
        let Some((stamp, random)) = rest.split_once('.') else {
            return false;
        };
        let fields: Vec<&str> = stamp.split('_').collect();
        fields.len() == 6
            && fields[0].len() == 4
            && fields[1..].iter().all(|f| f.len() == 2)
            && fields.iter().all(|f| f.bytes().all(|b| b.is_ascii_digit()))
            && !random.is_empty()
            && random.bytes().all(|b| b.is_ascii_digit())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn projects_like_the_kubelet_across_updates() {
        let dir = scratch("updates");

        // First version: a timestamped dir, ..data pointing at it, one link per key.
        let v1 = data(&[("a", "one"), ("b", "two")]);
        assert!(project(&dir, &v1).unwrap());
        let ts1 = std::fs::read_link(dir.join("..data")).unwrap();
        let ts1 = ts1.to_str().unwrap().to_string();
        assert!(is_timestamp_dir(&ts1), "{ts1}");
        assert_eq!(
            entries(&dir),
            BTreeSet::from(["..data".into(), ts1.clone(), "a".into(), "b".into()])
        );
        for key in ["a", "b"] {
            assert_eq!(
                std::fs::read_link(dir.join(key)).unwrap(),
                Path::new("..data").join(key)
            );
            assert!(
                std::fs::symlink_metadata(dir.join(&ts1).join(key))
                    .unwrap()
                    .is_file()
            );
            assert_eq!(mode(&dir.join(&ts1).join(key)), 0o644);
        }
        assert_eq!(mode(&dir.join(&ts1)), 0o755);
        assert_eq!(read_projection(&dir).unwrap(), v1);

        // The same data again: nothing is rewritten.
        assert!(!project(&dir, &v1).unwrap());
        assert_eq!(
            std::fs::read_link(dir.join("..data")).unwrap(),
            Path::new(&ts1)
        );

        // A reader that opened `a` before the update keeps the version it opened.
        let mut open_a = std::fs::File::open(dir.join("a")).unwrap();

        // Second version: `a` changed, `b` removed, `c` added.
        let v2 = data(&[("a", "uno"), ("c", "tres")]);
        assert!(project(&dir, &v2).unwrap());
        let ts2 = std::fs::read_link(dir.join("..data")).unwrap();
        let ts2 = ts2.to_str().unwrap().to_string();
        assert_ne!(ts2, ts1);
        assert!(is_timestamp_dir(&ts2), "{ts2}");
        // No leftovers: the old version, `..data_tmp` and the link of `b` are gone.
        assert_eq!(
            entries(&dir),
            BTreeSet::from(["..data".into(), ts2.clone(), "a".into(), "c".into()])
        );
        assert_eq!(
            entries(&dir.join(&ts2)),
            BTreeSet::from(["a".into(), "c".into()])
        );
        assert_eq!(read_projection(&dir).unwrap(), v2);

        let mut old = String::new();
        open_a.read_to_string(&mut old).unwrap();
        assert_eq!(old, "one");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_secret_projects_to_an_empty_version() {
        let dir = scratch("empty");
        assert!(project(&dir, &data(&[("a", "one")])).unwrap());
        assert!(project(&dir, &SecretData::new()).unwrap());
        let ts = std::fs::read_link(dir.join("..data")).unwrap();
        let ts = ts.to_str().unwrap().to_string();
        assert_eq!(entries(&dir), BTreeSet::from(["..data".into(), ts.clone()]));
        assert!(entries(&dir.join(ts)).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_the_kubelet_refuses_are_refused_and_nothing_is_written() {
        let dir = scratch("invalid");
        for bad in ["", "..x", "..", "a/b"] {
            let err = project(&dir, &data(&[("ok", "1"), (bad, "2")])).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(entries(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
