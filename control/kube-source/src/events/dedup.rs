//! Which reports become new Events, which bump an existing one, which are suppressed (pure).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use traffic_translate::snapshot::ObjectRef;

use super::EventType;

/// What makes two reports "the same Event".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub object: ObjectRef,
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// What the worker should do with one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// First time (or forgotten): create a new Event.
    Create,
    /// Seen before and the window has passed: bump the existing Event `name` to `count`.
    Update { name: String, count: i32 },
    /// Seen within the window: do nothing.
    Suppress,
}

#[derive(Debug, Clone)]
struct Seen {
    /// The Event's object name once created.
    name: Option<String>,
    count: i32,
    last_emitted: Instant,
}

/// Pure deduplication state: the same (object, type, reason, message) is written at most once per
/// `window`; after `forget_after` (Kubernetes' own Event TTL is 1 h) it starts a new Event.
/// Holds at most `capacity` keys, dropping the oldest first.
#[derive(Debug)]
pub struct Deduper {
    window: Duration,
    forget_after: Duration,
    capacity: usize,
    seen: HashMap<EventKey, Seen>,
}

impl Deduper {
    pub fn new(window: Duration, forget_after: Duration, capacity: usize) -> Self {
        Deduper {
            window,
            forget_after,
            capacity: capacity.max(1),
            seen: HashMap::new(),
        }
    }

    /// Decide what to do with a report at `now`, and record it.
    pub fn decide(&mut self, key: &EventKey, now: Instant) -> Action {
        if let Some(seen) = self.seen.get_mut(key) {
            let age = now.saturating_duration_since(seen.last_emitted);
            if age < self.window {
                return Action::Suppress;
            }
            if age < self.forget_after {
                if let Some(name) = &seen.name {
                    seen.count = seen.count.saturating_add(1);
                    seen.last_emitted = now;
                    return Action::Update {
                        name: name.clone(),
                        count: seen.count,
                    };
                }
            }
        }
        self.make_room(now);
        self.seen.insert(
            key.clone(),
            Seen {
                name: None,
                count: 1,
                last_emitted: now,
            },
        );
        Action::Create
    }

    /// The Event for `key` was created under `name`.
    pub fn created(&mut self, key: &EventKey, name: String) {
        if let Some(seen) = self.seen.get_mut(key) {
            seen.name = Some(name);
            seen.count = 1;
        }
    }

    /// The Event for `key` is gone (deleted or expired on the server): the next report creates
    /// a new one.
    pub fn forget(&mut self, key: &EventKey) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        let forget_after = self.forget_after;
        self.seen
            .retain(|_, s| now.saturating_duration_since(s.last_emitted) < forget_after);
        while self.seen.len() >= self.capacity {
            let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, s)| s.last_emitted)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.seen.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::key;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_same_event_is_written_once_per_window_then_its_count_is_bumped() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        let k = key("label traffic.request.timeout=\"abc\" ignored");
        assert_eq!(d.decide(&k, t0), Action::Create);
        d.created(&k, "reviews.1".into());
        for i in 1..10 {
            assert_eq!(d.decide(&k, t0 + Duration::from_secs(i)), Action::Suppress);
        }
        assert_eq!(
            d.decide(&k, t0 + 5 * MIN),
            Action::Update {
                name: "reviews.1".into(),
                count: 2
            }
        );
        assert_eq!(d.decide(&k, t0 + 6 * MIN), Action::Suppress);
        assert_eq!(
            d.decide(&k, t0 + 10 * MIN),
            Action::Update {
                name: "reviews.1".into(),
                count: 3
            }
        );
    }

    #[test]
    fn different_messages_on_the_same_object_are_different_events() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        assert_eq!(d.decide(&key("a"), t0), Action::Create);
        assert_eq!(d.decide(&key("b"), t0), Action::Create);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn an_event_whose_creation_failed_is_retried_after_the_window_only() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        assert_eq!(d.decide(&key("a"), t0), Action::Create);
        assert_eq!(d.decide(&key("a"), t0 + MIN), Action::Suppress);
        assert_eq!(d.decide(&key("a"), t0 + 5 * MIN), Action::Create);
    }

    #[test]
    fn old_events_are_forgotten_and_a_new_event_is_started() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        assert_eq!(d.decide(&key("a"), t0), Action::Create);
        d.created(&key("a"), "reviews.1".into());
        assert_eq!(d.decide(&key("a"), t0 + 61 * MIN), Action::Create);
    }

    #[test]
    fn the_deduper_keeps_at_most_capacity_keys_dropping_the_oldest() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 2);
        let t0 = Instant::now();
        d.decide(&key("a"), t0);
        d.decide(&key("b"), t0 + Duration::from_secs(1));
        d.decide(&key("c"), t0 + Duration::from_secs(2));
        assert_eq!(d.len(), 2);
        // "a" was dropped, so it is new again.
        assert_eq!(d.decide(&key("a"), t0 + Duration::from_secs(3)), Action::Create);
        assert_eq!(d.decide(&key("c"), t0 + Duration::from_secs(3)), Action::Suppress);
    }
}
