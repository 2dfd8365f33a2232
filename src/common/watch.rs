//! What every watch (controller and webhook) shares: its backoff, and the field selector
//! that leaves other releases' namespaces out.
//!
//! kube-runtime's `default_backoff()` resets on any `Ok` item, and its watcher yields
//! `Ok(Event::Init)` before every list it retries: a list that keeps failing (forbidden,
//! an API server that refuses) is retried every 0.8–1.6 s for ever, never backing off.
//! [`Backoff`] keeps client-go's reflector rule instead: 0.8 s doubling to 30 s (plus up to
//! as much again of jitter), started over only after two minutes without an error.

use std::time::Duration;

use kube::runtime::watcher::DefaultBackoff;

/// A watch's backoff that a successful item does not reset; see the module docs.
#[derive(Default)]
pub struct Backoff(DefaultBackoff);

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // The inner backoff starts over by itself after two minutes without a call.
        self.0.next()
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    /// Ignored: an `Ok(Init)` between two failed lists is not a recovery.
    fn reset(&mut self) {}
}

/// The field selector that leaves `namespaces` out of a cluster-wide watch (`None`: none).
pub fn excluding(namespaces: &[String]) -> Option<String> {
    let parts: Vec<String> = namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| format!("metadata.namespace!={n}"))
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;

    /// The n-th delay (from 0) without jitter: 0.8 s doubling, at most 30 s.
    fn floor(n: u32) -> Duration {
        (Duration::from_millis(800) * 2u32.pow(n.min(6))).min(Duration::from_secs(30))
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_that_keeps_failing_is_retried_ever_later_though_init_events_come_between() {
        // What kube's watcher yields when every list is refused: Init, then the error.
        let items = futures::stream::iter(
            std::iter::repeat_with(|| [Ok(0u8), Err(())])
                .take(9)
                .flatten(),
        );
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        let mut s = std::pin::pin!(items.backoff(Backoff::default()));
        while let Some(item) = s.next().await {
            if item.is_err() {
                at.push(start.elapsed());
            }
        }
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 8);
        for (n, gap) in gaps.iter().enumerate() {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            assert!(
                *gap >= floor(n) && *gap < floor(n) * 2,
                "retry {n} came after {gap:?}, not within [{:?}, {:?})",
                floor(n),
                floor(n) * 2
            );
        }
        // kube's own default, for contrast: reset by each Init, it never grows.
        let items = futures::stream::iter(
            std::iter::repeat_with(|| [Ok(0u8), Err(())])
                .take(9)
                .flatten(),
        );
        let start = tokio::time::Instant::now();
        let mut s = std::pin::pin!(items.default_backoff());
        while s.next().await.is_some() {}
        assert!(
            start.elapsed() < Duration::from_millis(1600) * 8,
            "kube's default_backoff grew after all: drop this module's workaround"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn it_starts_over_after_two_quiet_minutes() {
        let mut b = Backoff::default();
        for _ in 0..6 {
            b.next();
        }
        tokio::time::advance(Duration::from_secs(121)).await;
        let first = b.next().unwrap_or_default();
        assert!(first < Duration::from_millis(1600), "{first:?}");
    }

    #[test]
    fn excluded_namespaces_become_one_field_selector() {
        assert_eq!(excluding(&[]), None);
        assert_eq!(excluding(&[String::new()]), None);
        assert_eq!(
            excluding(&["team-a".into(), "team-b".into()]).as_deref(),
            Some("metadata.namespace!=team-a,metadata.namespace!=team-b")
        );
    }
}
