//! Which resources a proxy rejected, and the search for them (pure: no I/O).
//!
//! Envoy rejects a whole response when one resource in it fails validation (a state-of-the-world
//! CDS update with one bad cluster takes every cluster of the update with it; a delta response is
//! all-or-nothing too), and its error message does not reliably say which resource it was. So a
//! NACK only says "at least one of the resources this response introduced is bad". To keep the
//! damage to that one resource, the stream narrows the suspects down by sending subsets (adaptive
//! group testing): the suspects are split into two groups; the first is sent while the second is
//! held back; an ACK clears the group sent, a NACK splits it again, and a group of one that is
//! rejected is the culprit. The culprit is *quarantined*: kept out of this proxy's configuration
//! (the proxy keeps its last accepted copy, or none) until its content changes — a new version
//! is a new input and is sent again.
//!
//! The split puts the suspects the error message names (Envoy usually prints the resource, e.g.
//! `name: "9080|default|web"`) in the second group, so the first probe sends every other
//! resource: the proxy gets everything else after one round trip and the named one is confirmed
//! on its own. The message is only a hint; the search is correct whatever it says.
//!
//! Dependents are not quarantined with what they depend on: Envoy accepts a route or a listener
//! that names a cluster it does not have (requests to that cluster fail, 503 "no cluster" /
//! connection reset, and only those), and a listener whose RDS route configuration is kept out
//! warms until Envoy's initial fetch timeout (15 s) and then serves without it. Keeping the
//! dependents out as well would cost exactly the unrelated traffic this module exists to keep.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use traffic_translate::snapshot::{Resource, Resources};

/// Resources by name, each at the version concerned.
type Group = BTreeMap<String, Arc<Resource>>;

/// What a NACK told about the resources it answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// These are the rejected ones; they are now kept out.
    Quarantined(Vec<Arc<Resource>>),
    /// The response carried resources already quarantined (sent before the verdict on them, e.g.
    /// a response that was in flight): nothing new is learnt.
    Explained(Vec<Arc<Resource>>),
    /// One of these is bad; subsets are being sent to find which.
    Narrowing(Vec<Arc<Resource>>),
    /// The response introduced no resource the proxy did not already hold (it rejected a
    /// removal, or something outside this server's knowledge): nothing to blame.
    Unexplained,
}

impl Verdict {
    /// The resources the verdict is about.
    pub fn resources(&self) -> &[Arc<Resource>] {
        match self {
            Verdict::Quarantined(r) | Verdict::Explained(r) | Verdict::Narrowing(r) => r,
            Verdict::Unexplained => &[],
        }
    }

    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Quarantined(_) => "quarantined",
            Verdict::Explained(_) => "already-quarantined",
            Verdict::Narrowing(_) => "narrowing",
            Verdict::Unexplained => "unexplained",
        }
    }

    /// Whether the verdict changed what the proxy should be sent.
    pub fn changes_config(&self) -> bool {
        matches!(self, Verdict::Quarantined(_) | Verdict::Narrowing(_))
    }
}

/// One type's rejected resources and open suspicions on one stream.
#[derive(Debug, Default)]
pub struct Quarantine {
    bad: Group,
    /// Suspect groups; the front one is being probed (sent), the others are held back.
    groups: VecDeque<Group>,
}

fn same(a: &Resource, b: &Resource) -> bool {
    a.name == b.name && a.version == b.version
}

fn holds(group: &Group, r: &Resource) -> bool {
    group.get(&r.name).is_some_and(|g| g.version == r.version)
}

impl Quarantine {
    /// Nothing quarantined and nothing under suspicion.
    pub fn is_empty(&self) -> bool {
        self.bad.is_empty() && self.groups.is_empty()
    }

    /// Whether a search is under way.
    pub fn narrowing(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Number of quarantined resources.
    pub fn len(&self) -> usize {
        self.bad.len()
    }

    pub fn quarantined(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.bad.values()
    }

    /// Whether `r` (at its version) is quarantined.
    pub fn is_bad(&self, r: &Resource) -> bool {
        holds(&self.bad, r)
    }

    /// Whether `r` may be sent now: not quarantined and not a held-back suspect.
    pub fn admits(&self, r: &Resource) -> bool {
        !self.is_bad(r) && !self.groups.iter().skip(1).any(|g| holds(g, r))
    }

    /// Everything that may not be sent now (quarantined, then held back).
    pub fn withheld(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.bad
            .values()
            .chain(self.groups.iter().skip(1).flat_map(|g| g.values()))
    }

    /// A NACK of a response whose new resources (those the proxy did not hold before it) were
    /// `suspects`; `message` is the proxy's error, used to order the search.
    pub fn rejected(&mut self, suspects: Vec<Arc<Resource>>, message: &str) -> Verdict {
        let known: Vec<Arc<Resource>> = suspects.iter().filter(|r| self.is_bad(r)).cloned().collect();
        if !known.is_empty() {
            return Verdict::Explained(known);
        }
        if suspects.is_empty() {
            return Verdict::Unexplained;
        }
        // They are one open question now, whatever group they were in before.
        for g in &mut self.groups {
            g.retain(|_, r| !suspects.iter().any(|s| same(s, r)));
        }
        self.groups.retain(|g| !g.is_empty());
        if suspects.len() == 1 {
            for r in &suspects {
                self.bad.insert(r.name.clone(), r.clone());
            }
            return Verdict::Quarantined(suspects);
        }
        let (first, second) = split(&suspects, message);
        self.groups.push_front(second);
        self.groups.push_front(first);
        Verdict::Narrowing(suspects)
    }

    /// The proxy accepted a response carrying `resources`: none of them is suspect any more.
    /// Returns whether that moved the search on (the next group is to be sent).
    pub fn accepted<'a>(&mut self, resources: impl IntoIterator<Item = &'a Arc<Resource>>) -> bool {
        if self.groups.is_empty() {
            return false;
        }
        let mut changed = false;
        for r in resources {
            for g in &mut self.groups {
                if holds(g, r) {
                    g.remove(&r.name);
                    changed = true;
                }
            }
        }
        self.groups.retain(|g| !g.is_empty());
        changed
    }

    /// Forgets every entry `keep` refuses: those whose resource the snapshot no longer has at
    /// that version (a changed input is retried) and those no longer subscribed (they would never
    /// be answered, stalling the search). Returns whether anything was forgotten.
    pub fn retain(&mut self, keep: impl Fn(&Resource) -> bool) -> bool {
        let before = self.bad.len() + self.groups.iter().map(BTreeMap::len).sum::<usize>();
        self.bad.retain(|_, r| keep(r));
        for g in &mut self.groups {
            g.retain(|_, r| keep(r));
        }
        self.groups.retain(|g| !g.is_empty());
        before != self.bad.len() + self.groups.iter().map(BTreeMap::len).sum::<usize>()
    }
}

/// Whether `current` has `r` at its version (for [`Quarantine::retain`]).
pub fn current_in(current: &Resources, r: &Resource) -> bool {
    holds(current, r)
}

/// Whether `message` names `name` as a whole word (`"name"`, or between separators).
fn names(message: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let word = |c: char| c.is_ascii_alphanumeric() || "_-.|:/".contains(c);
    message.match_indices(name).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + name.len()..].chars().next();
        before.is_none_or(|c| !word(c)) && after.is_none_or(|c| !word(c) || c == ':')
    })
}

/// Splits suspects into the group probed first and the one held back: the unnamed ones first
/// when the message names some (but not all) of them, else two halves.
fn split(suspects: &[Arc<Resource>], message: &str) -> (Group, Group) {
    let (named, unnamed): (Vec<_>, Vec<_>) = suspects.iter().partition(|r| names(message, &r.name));
    let (first, second) = if !named.is_empty() && !unnamed.is_empty() {
        (unnamed, named)
    } else {
        let (a, b) = suspects.split_at(suspects.len() / 2);
        (a.iter().collect(), b.iter().collect())
    };
    let group = |v: Vec<&Arc<Resource>>| v.into_iter().map(|r| (r.name.clone(), r.clone())).collect();
    (group(first), group(second))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::res;
    use crate::CLUSTER;

    fn c(name: &str, version: &str) -> Arc<Resource> {
        res(CLUSTER, name, version)
    }

    fn names_of(v: &Verdict) -> Vec<&str> {
        v.resources().iter().map(|r| r.name.as_str()).collect()
    }

    /// Plays the proxy: rejects any probe containing one of `bad`, until the search ends.
    /// Returns the number of probes.
    fn search(q: &mut Quarantine, all: &[Arc<Resource>], bad: &[&str], message: &str) -> usize {
        let mut probes = 0;
        let mut verdict = q.rejected(all.to_vec(), message);
        while q.narrowing() {
            probes += 1;
            assert!(probes < 100, "the search does not end");
            let sent: Vec<Arc<Resource>> = all.iter().filter(|r| q.admits(r)).cloned().collect();
            // Only the probed group is new to the proxy (the rest was accepted before).
            let probe: Vec<Arc<Resource>> = sent
                .iter()
                .filter(|r| q.groups.front().is_some_and(|g| holds(g, r)))
                .cloned()
                .collect();
            if probe.iter().any(|r| bad.contains(&r.name.as_str())) {
                verdict = q.rejected(probe, message);
            } else {
                q.accepted(sent.iter());
            }
        }
        let _ = verdict;
        probes
    }

    #[test]
    fn a_single_suspect_is_quarantined_at_once_and_kept_out() {
        let mut q = Quarantine::default();
        let v = q.rejected(vec![c("b", "1")], "bad");
        assert_eq!(v, Verdict::Quarantined(vec![c("b", "1")]));
        assert!(!q.admits(&c("b", "1")));
        assert!(q.admits(&c("b", "2")), "a new version is a new input");
        assert!(q.admits(&c("a", "1")));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn many_suspects_are_narrowed_down_to_the_one_the_proxy_rejects() {
        let all: Vec<_> = (0..20).map(|i| c(&format!("c{i}"), "1")).collect();
        let mut q = Quarantine::default();
        let probes = search(&mut q, &all, &["c13"], "opaque error");
        let bad: Vec<&str> = q.quarantined().map(|r| r.name.as_str()).collect();
        assert_eq!(bad, ["c13"]);
        assert!(probes <= 2 * 5, "{probes} probes for 20 suspects");
        assert!(all.iter().filter(|r| r.name != "c13").all(|r| q.admits(r)));
    }

    #[test]
    fn two_bad_resources_among_many_are_both_found() {
        let all: Vec<_> = (0..9).map(|i| c(&format!("c{i}"), "1")).collect();
        let mut q = Quarantine::default();
        search(&mut q, &all, &["c2", "c7"], "opaque error");
        let bad: Vec<&str> = q.quarantined().map(|r| r.name.as_str()).collect();
        assert_eq!(bad, ["c2", "c7"]);
    }

    #[test]
    fn the_resource_the_message_names_is_held_back_so_everything_else_goes_first() {
        let all: Vec<_> = ["9080|default|web", "9080|default|db", "broken"]
            .iter()
            .map(|n| c(n, "1"))
            .collect();
        let mut q = Quarantine::default();
        let message = "Proto constraint validation failed (ClusterValidationError.ConnectTimeout: value must be greater than 0s): name: \"broken\"";
        let v = q.rejected(all.clone(), message);
        assert_eq!(names_of(&v), ["9080|default|web", "9080|default|db", "broken"]);
        assert!(q.admits(&all[0]) && q.admits(&all[1]));
        assert!(!q.admits(&all[2]));
        assert_eq!(search(&mut Quarantine::default(), &all, &["broken"], message), 2);
    }

    #[test]
    fn a_name_inside_another_name_is_not_taken_as_named() {
        assert!(names("cluster 'a' failed: x", "a"));
        assert!(names("Error adding/updating cluster(s) broken: bad", "broken"));
        assert!(!names("9080|default|ab failed", "default"));
        assert!(!names("cluster abc", "ab"));
        assert!(!names("anything", ""));
    }

    #[test]
    fn a_nack_of_a_response_carrying_a_quarantined_resource_blames_nothing_else() {
        let mut q = Quarantine::default();
        q.rejected(vec![c("bad", "1")], "x");
        // A response that was in flight carried it along with an innocent change.
        let v = q.rejected(vec![c("bad", "1"), c("new", "1")], "x");
        assert_eq!(names_of(&v), ["bad"]);
        assert!(matches!(v, Verdict::Explained(_)));
        assert!(q.admits(&c("new", "1")));
        assert!(!q.rejected(Vec::new(), "x").changes_config());
    }

    #[test]
    fn a_changed_or_removed_input_leaves_quarantine_and_open_suspicions() {
        let mut q = Quarantine::default();
        q.rejected(vec![c("a", "1")], "x");
        q.rejected(vec![c("b", "1"), c("d", "1"), c("e", "1")], "x");
        let mut current = Resources::new();
        current.insert("a".into(), c("a", "2"));
        current.insert("b".into(), c("b", "1"));
        assert!(q.retain(|r| current_in(&current, r)));
        assert_eq!(q.len(), 0);
        assert!(q.narrowing(), "b is still a suspect");
        current.insert("b".into(), c("b", "2"));
        q.retain(|r| current_in(&current, r));
        assert!(q.is_empty());
        assert!(!q.retain(|r| current_in(&current, r)));
    }
}
