//! Events (events.k8s.io/v1) about our resources, with repeats folded into a series
//! (`series.count`, `series.lastObservedTime`) the way client-go's recorder does it.
//!
//! kube's own `Recorder` does the same but keeps every event it published, whole, in a
//! map that is pruned only on the next publish: after a cold start of 3,000 resources
//! that map held 17.7 MiB of a 27 MiB heap (heaptrack, see docs/benchmarks.md). Here
//! each recent event costs its name, a count and a time, and the map is pruned by age.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Repeats within this window extend a series instead of creating a new event
/// (client-go and kube use six minutes too).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event about one object.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

/// What to do for an event, given the recent ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new event object.
    Create,
    /// Extend the series of an existing event object.
    Extend { name: String, count: i32 },
}

#[derive(Debug, Clone)]
struct Recent {
    name: String,
    count: i32,
    last: Timestamp,
}

/// The recent events, by a hash of what makes two events the same: the object, type,
/// reason, action and note. (client-go leaves the note out, and since a note cannot
/// change, a different failure would be counted under the first one's note; ours keep
/// times out of notes, so a repeat of the same failure folds.) Pure: the caller passes
/// the time.
#[derive(Debug, Default)]
pub struct Series {
    recent: HashMap<u64, Recent>,
    pruned: Option<Timestamp>,
}

impl Series {
    /// What to publish for the event with this key at `now`.
    pub fn step(&self, key: u64, now: Timestamp) -> Step {
        match self.recent.get(&key) {
            Some(r) if r.last + SERIES_WINDOW > now => Step::Extend {
                name: r.name.clone(),
                count: r.count.saturating_add(1),
            },
            _ => Step::Create,
        }
    }

    /// Remembers a published event; drops, at most once a minute, those older than the
    /// window (so the cost is amortised and the map shrinks back after a burst).
    pub fn record(&mut self, key: u64, name: String, count: i32, now: Timestamp) {
        self.recent.insert(
            key,
            Recent {
                name,
                count,
                last: now,
            },
        );
        if self
            .pruned
            .is_none_or(|p| p + SignedDuration::from_mins(1) <= now)
        {
            self.recent.retain(|_, r| r.last + SERIES_WINDOW > now);
            if self.recent.capacity() > 2 * self.recent.len() + 16 {
                self.recent.shrink_to_fit();
            }
            self.pruned = Some(now);
        }
    }

    /// How many events are remembered.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }
}

/// Publishes events as one controller instance.
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    hasher: RandomState,
    series: Mutex<Series>,
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: Option<&str>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or(controller).to_string(),
            hasher: RandomState::new(),
            series: Mutex::default(),
        }
    }

    fn key(&self, ev: &Event<'_>, regarding: &ObjectReference) -> u64 {
        self.hasher.hash_one((
            regarding.uid.as_deref(),
            regarding.namespace.as_deref(),
            regarding.name.as_deref(),
            ev.type_,
            ev.reason,
            ev.action,
            ev.note,
        ))
    }

    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        crate::lock(&self.series)
    }

    /// Publishes `ev` about `regarding` (which must be namespaced).
    pub async fn publish(
        &self,
        ev: &Event<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        let key = self.key(ev, regarding);
        let now = Timestamp::now();
        let step = self.series().step(key, now);
        if let Step::Extend { name, count } = step {
            let patch = json!({
                "series": { "count": count, "lastObservedTime": MicroTime(now) },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.series().record(key, name, count, now);
                    return Ok(());
                }
                // Gone (expired or deleted): start a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(ev, regarding, now);
        let created = api.create(&PostParams::default(), &event).await?;
        if let Some(name) = created.metadata.name {
            self.series().record(key, name, 1, now);
        }
        Ok(())
    }

    fn new_event(&self, ev: &Event<'_>, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let base = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(ev.type_.as_str().to_string()),
            reason: Some(ev.reason.to_string()),
            action: Some(ev.action.to_string()),
            note: Some(ev.note.to_string()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            series: None::<EventSeries>,
            ..K8sEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn a_repeat_within_the_window_extends_the_series() {
        let mut s = Series::default();
        assert_eq!(s.step(7, t(0)), Step::Create);
        s.record(7, "a.1".into(), 1, t(0));
        assert_eq!(
            s.step(7, t(60)),
            Step::Extend {
                name: "a.1".into(),
                count: 2
            }
        );
        s.record(7, "a.1".into(), 2, t(60));
        assert_eq!(
            s.step(7, t(120)),
            Step::Extend {
                name: "a.1".into(),
                count: 3
            }
        );
        // Another key is another event.
        assert_eq!(s.step(8, t(120)), Step::Create);
    }

    #[test]
    fn the_window_counts_from_the_last_occurrence() {
        let mut s = Series::default();
        s.record(7, "a.1".into(), 1, t(0));
        s.record(7, "a.1".into(), 2, t(300));
        // 6 min after the first but 5 after the last: still one series.
        assert!(matches!(s.step(7, t(600)), Step::Extend { count: 3, .. }));
        assert_eq!(s.step(7, t(300 + 360)), Step::Create);
    }

    #[test]
    fn old_entries_are_pruned_and_the_map_shrinks() {
        let mut s = Series::default();
        for k in 0..10_000u64 {
            s.record(k, format!("e.{k}"), 1, t(0));
        }
        assert_eq!(s.len(), 10_000);
        // Within the minute: no prune yet.
        s.record(1, "x".into(), 2, t(30));
        assert_eq!(s.len(), 10_000);
        // After the window, one record prunes the rest.
        s.record(20_000, "y".into(), 1, t(400));
        assert_eq!(s.len(), 1);
        assert!(
            s.recent.capacity() < 100,
            "capacity {}",
            s.recent.capacity()
        );
    }
}
