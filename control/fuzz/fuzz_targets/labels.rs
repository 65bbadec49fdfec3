//! Any labels (keys from the contract or not, any UTF-8 values) on any kind of object: `parse`
//! never panics, and every `traffic.*` label is either applied or reported.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use traffic_labels::{names, parse, ObjectKind};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(kind) = u.choose(&[ObjectKind::Pod, ObjectKind::Workload, ObjectKind::Service]) else {
        return;
    };
    let mut labels = BTreeMap::new();
    while let Ok(true) = bool::arbitrary(&mut u) {
        let key = match u.int_in_range(0..=2u8) {
            Ok(0) => u.choose(&names::ALL).map(|k| k.to_string()),
            Ok(1) => String::arbitrary(&mut u).map(|p| format!("{}{p}", names::PORT_PREFIX)),
            _ => String::arbitrary(&mut u),
        };
        let (Ok(key), Ok(value)) = (key, String::arbitrary(&mut u)) else {
            break;
        };
        labels.insert(key, value);
    }
    let parsed = parse(*kind, &labels);
    for (label, value) in labels
        .iter()
        .filter(|(l, _)| l.starts_with(traffic_labels::PREFIX))
    {
        let reported = parsed.errors.iter().any(|e| &e.label == label);
        assert!(
            reported || parsed.settings.holds(label),
            "{kind} label {label}={value:?} neither applied nor reported"
        );
    }
});
