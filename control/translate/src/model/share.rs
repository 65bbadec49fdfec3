//! Sharing a rebuilt model's unchanged Services and pods with the model before it.
use std::collections::HashMap;
use std::sync::Arc;

use super::{MeshModel, Pod, Service};

/// An object identified by namespace and name.
trait Named: Eq {
    fn key(&self) -> (&str, &str);
}

impl Named for Service {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl Named for Pod {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

/// Replaces each item of `next` equal to the `prev` item of the same key by that one; returns how
/// many. Items are looked for at the same position first (a list sorted by key where one item
/// moved), then, once one is not there, in an index of `prev`.
fn share_list<T: Named>(prev: &[Arc<T>], next: &mut [Arc<T>]) -> usize {
    let mut index: Option<HashMap<(&str, &str), usize>> = None;
    let mut shared = 0;
    for (i, item) in next.iter_mut().enumerate() {
        let same_place = prev.get(i).filter(|p| p.key() == item.key());
        let found = match same_place {
            Some(p) => Some(p),
            None => {
                let index: &HashMap<_, _> =
                    index.get_or_insert_with(|| prev.iter().enumerate().map(|(j, p)| (p.key(), j)).collect());
                index.get(&item.key()).and_then(|j| prev.get(*j))
            }
        };
        if let Some(p) = found {
            if Arc::ptr_eq(p, item) || **p == **item {
                *item = p.clone();
                shared += 1;
            }
        }
    }
    shared
}

impl MeshModel {
    /// Makes every Service and pod equal to one of `prev` (same namespace and name) `prev`'s
    /// allocation, for a source that rebuilds the whole model on each change: the unchanged
    /// objects are then shared, so comparing the models (and
    /// [`crate::translate::translate_endpoint_change`]) checks pointers and the copies are freed
    /// now. The model stays equal to what it was. Returns how many objects are shared.
    pub fn share_unchanged(&mut self, prev: &MeshModel) -> usize {
        share_list(&prev.services, &mut self.services) + share_list(&prev.pods, &mut self.pods)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on bad fixtures")]
mod tests {
    use super::*;

    #[test]
    fn equal_objects_become_the_previous_allocations_and_the_model_stays_equal() {
        let prev = MeshModel::from_yaml_str(super::super::SMALL).unwrap();
        let mut next = MeshModel::from_yaml_str(super::super::SMALL).unwrap();
        Arc::make_mut(&mut next.pods[1]).ready = true;
        let expected = next.clone();
        assert_eq!(next.share_unchanged(&prev), 3);
        assert_eq!(next, expected);
        assert!(Arc::ptr_eq(&next.services[0], &prev.services[0]));
        assert!(Arc::ptr_eq(&next.pods[0], &prev.pods[0]));
        assert!(!Arc::ptr_eq(&next.pods[1], &prev.pods[1]));
        assert!(Arc::ptr_eq(&next.pods[2], &prev.pods[2]));
    }

    #[test]
    fn objects_found_at_another_position_are_shared_too() {
        let prev = MeshModel::from_yaml_str(super::super::SMALL).unwrap();
        let mut next = MeshModel::from_yaml_str(super::super::SMALL).unwrap();
        // The first pod gone: the others one place up.
        next.pods.remove(0);
        assert_eq!(next.share_unchanged(&prev), 3);
        assert!(Arc::ptr_eq(&next.pods[0], &prev.pods[1]));
        assert!(Arc::ptr_eq(&next.pods[1], &prev.pods[2]));
    }
}
