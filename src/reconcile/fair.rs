//! Fair turns between namespaces: at most `slots` reconciles run at once, and when more
//! wait, the next free slot goes to the namespace after the last one served, round-robin.
//!
//! Why: one controller serves every namespace. kube-runtime hands out its workers in the
//! order work came due, so one namespace's 1,000 new resources (each waiting its turn
//! under the GetId quota inside a worker) held every worker, and another namespace's due
//! rotations waited behind all of them. Here kube-runtime runs every due reconcile at once
//! (a waiting one is a small future that holds nothing yet) and this gate decides who
//! goes: a namespace with work waiting gets a slot within one turn of the ring, however
//! much another has queued. Reconciles that hold a slot are the only ones that reserve a
//! turn under the Cognito quotas (`quota::Paced`), so the pacer's queue is at most
//! `slots` long, and that bounds how long a namespace's call can wait behind another's.
//!
//! `Ring` is the pure bookkeeping (unit-tested); `Gate` adds the waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Who waits and whose turn is next. Generic over the waiter so it is tested with plain
/// values.
#[derive(Debug)]
pub struct Ring<W> {
    /// Shutting down: nobody is let in any more, and those waiting are sent away.
    closed: bool,
    free: usize,
    /// Namespaces with waiters, in the order they get their next turn.
    order: VecDeque<String>,
    waiting: HashMap<String, VecDeque<W>>,
}

impl<W> Ring<W> {
    pub fn new(slots: usize) -> Self {
        Self {
            closed: false,
            free: slots.max(1),
            order: VecDeque::new(),
            waiting: HashMap::new(),
        }
    }

    /// A reconcile in `namespace` asks for a slot: true when it may go now (a slot is free
    /// and nobody waits); otherwise `waiter` is queued (and dropped at once when closed).
    pub fn arrive(&mut self, namespace: &str, waiter: W) -> bool {
        if self.closed {
            return false;
        }
        if self.free > 0 && self.order.is_empty() {
            self.free -= 1;
            return true;
        }
        let queue = self.waiting.entry(namespace.to_string()).or_default();
        if queue.is_empty() {
            self.order.push_back(namespace.to_string());
        }
        queue.push_back(waiter);
        false
    }

    /// A slot was given back: the waiter it goes to (the first of the namespace whose turn
    /// it is; that namespace goes to the back of the ring), or None when nobody waits (the
    /// slot is free again).
    pub fn release(&mut self) -> Option<(String, W)> {
        if self.closed {
            return None;
        }
        let Some(namespace) = self.order.pop_front() else {
            self.free += 1;
            return None;
        };
        let queue = self.waiting.get_mut(&namespace)?;
        let waiter = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&namespace);
        } else {
            self.order.push_back(namespace.clone());
        }
        Some((namespace, waiter))
    }

    /// Reconciles waiting, over all namespaces.
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Lets nobody in any more; returns those waiting, to be sent away.
    pub fn close(&mut self) -> Vec<W> {
        self.closed = true;
        self.order.clear();
        self.waiting.drain().flat_map(|(_, q)| q).collect()
    }
}

/// The gate: `enter` waits for a slot; the `Pass` it returns gives the slot back when
/// dropped (also when the reconcile is cancelled). Closed at shutdown: a graceful stop
/// waits for the reconciles in flight, and those still waiting here leave at once.
#[derive(Clone)]
pub struct Gate {
    ring: Arc<Mutex<Ring<oneshot::Sender<Pass>>>>,
}

/// A held slot.
pub struct Pass {
    ring: Option<Arc<Mutex<Ring<oneshot::Sender<Pass>>>>>,
}

impl Gate {
    pub fn new(slots: usize) -> Self {
        Self {
            ring: Arc::new(Mutex::new(Ring::new(slots))),
        }
    }

    /// A slot for a reconcile in `namespace`; None once the gate is closed.
    pub async fn enter(&self, namespace: &str) -> Option<Pass> {
        let (tx, rx) = oneshot::channel();
        let now = crate::lock(&self.ring).arrive(namespace, tx);
        if now {
            return Some(self.pass());
        }
        // Err: the sender was dropped without a pass (closed).
        rx.await.ok()
    }

    /// Shutting down: nobody gets a slot any more; those waiting get None now.
    pub fn close(&self) {
        let sent_away = crate::lock(&self.ring).close();
        drop(sent_away);
    }

    /// Reconciles waiting for a slot.
    pub fn waiting(&self) -> usize {
        crate::lock(&self.ring).waiting()
    }

    fn pass(&self) -> Pass {
        Pass {
            ring: Some(self.ring.clone()),
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let Some(ring) = self.ring.take() else {
            return;
        };
        // Hand the slot on. A waiter cancelled meanwhile cannot take it (send fails):
        // the pass comes back unsent, is disarmed, and the next waiter is tried.
        loop {
            let next = crate::lock(&ring).release();
            let Some((_, tx)) = next else {
                return;
            };
            match tx.send(Pass {
                ring: Some(ring.clone()),
            }) {
                Ok(()) => return,
                Err(mut unsent) => unsent.ring = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_slots_are_taken_at_once_then_waiters_queue() {
        let mut r = Ring::new(2);
        assert!(r.arrive("a", 1));
        assert!(r.arrive("a", 2));
        assert!(!r.arrive("a", 3));
        assert_eq!(r.waiting(), 1);
        assert_eq!(r.release(), Some(("a".into(), 3)));
        assert_eq!(r.release(), None);
        assert_eq!(r.release(), None);
        // Two slots free again.
        assert!(r.arrive("b", 4));
        assert!(r.arrive("b", 5));
        assert!(!r.arrive("b", 6));
    }

    #[test]
    fn a_namespace_with_a_thousand_waiting_gets_every_other_slot_not_all() {
        let mut r = Ring::new(8);
        for i in 0..8 {
            assert!(r.arrive("a", i));
        }
        for i in 8..1000 {
            assert!(!r.arrive("a", i));
        }
        // b's ten arrive behind a's thousand.
        for i in 0..10 {
            assert!(!r.arrive("b", 10_000 + i));
        }
        // Slots come back one by one: a and b alternate while both wait.
        let served: Vec<String> = (0..20)
            .filter_map(|_| r.release())
            .map(|(ns, _)| ns)
            .collect();
        assert_eq!(served, ["a", "b"].repeat(10));
        // b is done; a goes on alone, in arrival order.
        assert_eq!(r.release(), Some(("a".into(), 18)));
    }

    #[test]
    fn a_namespace_arriving_waits_at_most_one_turn_of_the_ring() {
        let mut r = Ring::new(1);
        assert!(r.arrive("a", 0));
        for ns in ["a", "b", "c", "a", "a", "b"] {
            assert!(!r.arrive(ns, 1));
        }
        assert!(!r.arrive("d", 2));
        let served: Vec<String> = std::iter::from_fn(|| r.release())
            .map(|(ns, _)| ns)
            .collect();
        // d arrived last and is served fourth, after one turn of a, b and c.
        assert_eq!(served, ["a", "b", "c", "d", "a", "b", "a"]);
    }

    #[tokio::test]
    async fn the_gate_hands_the_slot_on_when_a_pass_drops() {
        let gate = Gate::new(1);
        let first = gate.enter("a").await;
        let g = gate.clone();
        let second = tokio::spawn(async move {
            let _pass = g.enter("b").await;
        });
        // A cancelled waiter does not keep the slot.
        let g = gate.clone();
        let cancelled = tokio::spawn(async move {
            let _pass = g.enter("c").await;
        });
        while gate.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("b got the slot")
            .expect("b ran");
        // b's pass dropped: the slot is free.
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), gate.enter("d"))
            .await
            .expect("the slot came back");
        assert!(again.is_some());
        // Closed: whoever waits leaves with nothing, and nobody new gets in.
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.enter("e").await.is_none() });
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gate.close();
        assert!(
            waiting.await.expect("e ran"),
            "a waiter is sent away at close"
        );
        assert!(gate.enter("f").await.is_none());
        drop(again);
    }

    #[test]
    fn a_closed_ring_lets_nobody_in_and_hands_nothing_on() {
        let mut r = Ring::new(1);
        assert!(r.arrive("a", 1));
        assert!(!r.arrive("b", 2));
        assert_eq!(r.close(), vec![2]);
        assert!(!r.arrive("c", 3));
        assert_eq!(r.release(), None);
        assert_eq!(r.waiting(), 0);
    }
}
