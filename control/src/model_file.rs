//! A static model file as a model source: loaded at start (an error then is fatal) and re-read
//! when its modification time, size or content changes; an unreadable or invalid revision is logged
//! and the last good model kept.
//!
//! Re-reading is incremental: the file's top-level lists (`services:`, `pods:`, ...) are split into
//! their items and only items whose text changed since the last read are parsed again (a 10,000-pod
//! file where one pod moved costs one small parse instead of a full one: ~50 ms -> a few ms). Any
//! layout the splitter does not understand (flow-style lists, document markers, an item that does
//! not parse on its own, e.g. an alias to another item's anchor) falls back to parsing the whole
//! file, so the result is always what a full parse gives. The `istio:` block is one unit: parsed
//! again only when its text changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use traffic_istio::IstioConfig;
use traffic_translate::model::{
    read_model_file, Ingress, MeshModel, ModelError, Pod, Service, TlsSecret, Workload,
};

/// What identifies a revision of the file cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// The top-level keys of a model file, in [`MeshModel`] field order.
const SECTIONS: [&str; 5] = ["services", "pods", "workloads", "ingresses", "secrets"];

/// The top-level key of the Istio objects: a mapping of lists, cached as one block.
const ISTIO: &str = "istio";

/// A model file split by [`split_sections`].
#[derive(Debug, Default)]
struct Split<'t> {
    /// Per [`SECTIONS`] entry, the text of each item (a one-element YAML sequence).
    lists: [Vec<&'t str>; 5],
    /// The `istio:` block, its key line included.
    istio: Option<&'t str>,
}

/// `text` split into its top-level block lists and its `istio:` block. `None` when the layout is
/// anything else.
fn split_sections(text: &str) -> Option<Split<'_>> {
    let mut sections: [Vec<&str>; 5] = Default::default();
    // Start of the `istio:` block while inside it, and the block once it ended.
    let mut istio_start: Option<usize> = None;
    let mut istio: Option<&str> = None;
    let mut seen = [false; 5];
    // `key:` with a block list after it (an empty one is null, which a full parse refuses).
    let mut block = [false; 5];
    let mut current: Option<usize> = None;
    // Indentation of the current section's `- ` item markers, once known.
    let mut indent: Option<usize> = None;
    // Start offset of the item being collected.
    let mut item_start: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        // Fast paths for the bulk of a file (what the checks below would also conclude): a line
        // indented inside the `istio:` block, and an item's continuation line, indented deeper
        // than the item's marker.
        let bytes = line.as_bytes();
        if istio_start.is_some() && bytes.first() == Some(&b' ') {
            continue;
        }
        if let (Some(i), Some(_)) = (indent, item_start) {
            if bytes
                .get(..=i)
                .is_some_and(|lead| lead.iter().all(|b| *b == b' '))
            {
                continue;
            }
        }
        let content = line.trim_end_matches(['\n', '\r']);
        let trimmed = content.trim_start_matches(' ');
        let col = content.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue; // belongs to whatever item surrounds it (or to none)
        }
        if col == 0 && content.contains('\t') {
            return None;
        }
        if let Some(s) = istio_start {
            if col > 0 {
                continue; // inside the `istio:` block
            }
            istio = Some(&text[s..start]);
            istio_start = None;
        }
        if col == 0 && !trimmed.starts_with('-') {
            // A top-level key: `name:` (a block list follows) or `name: []`.
            let (key, rest) = trimmed.split_once(':')?;
            if key == ISTIO {
                if istio.is_some() || !rest.trim().is_empty() {
                    return None;
                }
                if let (Some(cur), Some(s)) = (current, item_start.take()) {
                    sections[cur].push(&text[s..start]);
                }
                current = None;
                istio_start = Some(start);
                continue;
            }
            let idx = SECTIONS.iter().position(|s| *s == key)?;
            if std::mem::replace(&mut seen[idx], true) {
                return None;
            }
            if let (Some(cur), Some(s)) = (current, item_start.take()) {
                sections[cur].push(&text[s..start]);
            }
            let rest = rest.split_once(" #").map_or(rest, |(r, _)| r).trim();
            match rest {
                "" => {
                    current = Some(idx);
                    block[idx] = true;
                }
                "[]" => current = None,
                _ => return None,
            }
            indent = None;
            continue;
        }
        let cur = current?;
        let is_marker = trimmed == "-" || trimmed.starts_with("- ");
        if is_marker && indent.is_none_or(|i| i == col) {
            if trimmed.starts_with("---") {
                return None;
            }
            indent = Some(col);
            if let Some(s) = item_start.replace(start) {
                sections[cur].push(&text[s..start]);
            }
            continue;
        }
        // A continuation line: must be inside an item, deeper than its marker.
        if item_start.is_none() || indent.is_none_or(|i| col <= i) {
            return None;
        }
    }
    if let (Some(cur), Some(s)) = (current, item_start) {
        sections[cur].push(&text[s..]);
    }
    if let Some(s) = istio_start {
        istio = Some(&text[s..]);
    }
    if (0..SECTIONS.len()).any(|i| block[i] && sections[i].is_empty()) {
        return None;
    }
    Some(Split {
        lists: sections,
        istio,
    })
}

/// The `istio:` block parsed on its own.
#[derive(Debug, Default, serde::Deserialize)]
struct IstioBlock {
    #[serde(default)]
    istio: IstioConfig,
}

/// The items of one list as last parsed: their exact text and value, in file order. The values
/// are shared with the models handed out, so an unchanged item is the same allocation in
/// consecutive models (no deep copy; compared by pointer).
#[derive(Debug)]
struct ItemCache<T>(Vec<(String, Arc<T>)>);

impl<T> Default for ItemCache<T> {
    fn default() -> Self {
        ItemCache(Vec::new())
    }
}

/// How a parse compares with the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// The same model.
    Same,
    /// A different model.
    Changed,
    /// Not known without comparing the models.
    Unknown,
}

impl Difference {
    fn and(self, other: Difference) -> Difference {
        use Difference::*;
        match (self, other) {
            (Changed, _) | (_, Changed) => Changed,
            (Unknown, _) | (_, Unknown) => Unknown,
            (Same, Same) => Same,
        }
    }
}

impl<T: DeserializeOwned + PartialEq> ItemCache<T> {
    /// Every item of `chunks`, parsing only texts not seen last time (an item at the same position
    /// with the same text costs a comparison; one that moved, a lookup); the cache then holds
    /// exactly these items. `None` if an item does not parse on its own. Also says how the list
    /// differs from the last one (an item parsed again is compared with the one it replaces).
    fn items(&mut self, chunks: &[&str]) -> Option<(Vec<Arc<T>>, usize, Difference)> {
        let mut diff = if chunks.len() == self.0.len() {
            Difference::Same
        } else {
            Difference::Changed
        };
        let mut old: Vec<Option<(String, Arc<T>)>> =
            std::mem::take(&mut self.0).into_iter().map(Some).collect();
        // Built only when items moved (several misses at their old position): a changed item is
        // one miss, and indexing 10,000 texts for it would cost more than parsing it.
        let mut by_text: Option<HashMap<String, usize>> = None;
        let mut misses = 0;
        let mut next = Vec::with_capacity(chunks.len());
        let mut out = Vec::with_capacity(chunks.len());
        let mut parsed = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let same_place = old
                .get(i)
                .and_then(|o| o.as_ref())
                .is_some_and(|(text, _)| text == chunk);
            let found = if same_place {
                old.get_mut(i).and_then(Option::take)
            } else if misses < 8 {
                diff = diff.and(Difference::Unknown);
                misses += 1;
                None
            } else {
                let index = by_text.get_or_insert_with(|| {
                    old.iter()
                        .enumerate()
                        .filter_map(|(j, o)| o.as_ref().map(|(text, _)| (text.clone(), j)))
                        .collect()
                });
                diff = diff.and(Difference::Unknown);
                index
                    .get(*chunk)
                    .and_then(|j| old.get_mut(*j))
                    .and_then(Option::take)
            };
            let item = match found {
                Some(item) => item,
                None => {
                    parsed += 1;
                    let mut one: Vec<T> = serde_yaml::from_str(chunk).ok()?;
                    if one.len() != 1 {
                        return None;
                    }
                    let value = one.pop()?;
                    // The item this one replaces, if still at its place: compared, the list is
                    // known to differ or (one item of several) not known to.
                    if let Some(Some((_, was))) = old.get(i) {
                        if **was != value {
                            diff = Difference::Changed;
                        }
                    }
                    ((*chunk).to_string(), Arc::new(value))
                }
            };
            out.push(item.1.clone());
            next.push(item);
        }
        self.0 = next;
        Some((out, parsed, diff))
    }
}

/// Parses successive revisions of one model file, re-parsing only changed list items.
#[derive(Debug, Default)]
pub struct ModelParser {
    services: ItemCache<Service>,
    pods: ItemCache<Pod>,
    workloads: ItemCache<Workload>,
    ingresses: ItemCache<Ingress>,
    secrets: ItemCache<TlsSecret>,
    /// The text of the last `istio:` block and what it parsed to (shared with the models).
    istio: Option<(String, Arc<IstioConfig>)>,
    /// How the last parse compared with the one before it.
    last: Option<Difference>,
}

impl ModelParser {
    /// The model `text` describes: the same as [`MeshModel::from_yaml_str`].
    pub fn parse(&mut self, text: &str) -> Result<MeshModel, ModelError> {
        let first = self.last.is_none();
        if let Some((model, diff)) = self.parse_items(text) {
            // Compared with the previous parse only when there was one (the caches start empty).
            self.last = Some(if first { Difference::Unknown } else { diff });
            model.check_unique()?;
            return Ok(model);
        }
        debug!("model file layout not split into items; parsing it whole");
        *self = ModelParser::default();
        MeshModel::from_yaml_str(text)
    }

    /// How the model of the last [`ModelParser::parse`] compares with the model of the parse
    /// before it (`Unknown` after a whole-file parse or an error).
    pub fn last_difference(&self) -> Difference {
        self.last.unwrap_or(Difference::Unknown)
    }

    fn parse_items(&mut self, text: &str) -> Option<(MeshModel, Difference)> {
        self.last = None;
        let split = split_sections(text)?;
        let (istio, istio_diff) = match split.istio {
            None => {
                let diff = if self.istio.is_none() {
                    Difference::Same
                } else {
                    Difference::Unknown
                };
                self.istio = None;
                (Arc::default(), diff)
            }
            Some(block) => match &self.istio {
                Some((last, parsed)) if last == block => (parsed.clone(), Difference::Same),
                _ => {
                    let parsed = Arc::new(serde_yaml::from_str::<IstioBlock>(block).ok()?.istio);
                    let diff = match &self.istio {
                        Some((_, was)) if **was == *parsed => Difference::Same,
                        Some(_) => Difference::Changed,
                        None => Difference::Unknown,
                    };
                    self.istio = Some((block.to_string(), parsed.clone()));
                    (parsed, diff)
                }
            },
        };
        let [services, pods, workloads, ingresses, secrets] = split.lists;
        let (services, a, da) = self.services.items(&services)?;
        let (pods, b, db) = self.pods.items(&pods)?;
        let (workloads, c, dc) = self.workloads.items(&workloads)?;
        let (ingresses, d, dd) = self.ingresses.items(&ingresses)?;
        let (secrets, e, de) = self.secrets.items(&secrets)?;
        // The model owns these (few) objects: copies of the cached ones.
        fn owned<T: Clone>(items: Vec<Arc<T>>) -> Vec<T> {
            items.iter().map(|item| T::clone(item)).collect()
        }
        debug!(
            parsed_items = a + b + c + d + e,
            "model file parsed incrementally"
        );
        let diff = [da, db, dc, dd, de].into_iter().fold(istio_diff, Difference::and);
        Some((
            MeshModel {
                services,
                pods,
                workloads: owned(workloads),
                ingresses: owned(ingresses),
                secrets: owned(secrets),
                istio,
                // A file with `outboundTrafficPolicy:` is not split (a full parse reads it).
                outbound_traffic_policy: None,
            },
            diff,
        ))
    }

    /// Reads and parses `path`.
    pub fn parse_file(&mut self, path: &Path) -> Result<MeshModel, ModelError> {
        self.parse(&read_model_file(path)?).map_err(|e| e.in_file(path))
    }
}

/// Loads `path` and watches it; the returned receiver always holds the last good model.
pub fn watch_model_file(
    path: PathBuf,
    poll: Duration,
) -> Result<(watch::Receiver<Arc<MeshModel>>, tokio::task::JoinHandle<()>), ModelError> {
    let mut last_stamp = stamp(&path);
    let mut parser = ModelParser::default();
    let model = parser.parse_file(&path)?;
    // The last parse gave the model sent.
    let mut previous_ok = true;
    let (tx, rx) = watch::channel(Arc::new(model));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let path = Arc::new(path);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = stamp(&path);
            if now == last_stamp {
                continue;
            }
            last_stamp = now;
            // Parsing is CPU work: off the runtime's worker threads.
            let p = path.clone();
            let started = std::time::Instant::now();
            let Ok((back, parsed)) = tokio::task::spawn_blocking(move || {
                let parsed = parser.parse_file(&p);
                (parser, parsed)
            })
            .await
            else {
                warn!("model file parser panicked; stopping the watch");
                return;
            };
            parser = back;
            match parsed {
                Ok(model) => {
                    // The parser knows, from the items it parsed again, whether the model differs
                    // from the previous parse (the model sent, unless that parse failed): the
                    // whole models are compared only when it does not know.
                    let changed = match parser.last_difference() {
                        Difference::Changed if previous_ok => true,
                        Difference::Same if previous_ok => false,
                        _ => **tx.borrow() != model,
                    };
                    previous_ok = true;
                    if changed {
                        info!(
                            path = %path.display(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "model file changed"
                        );
                        tx.send_replace(Arc::new(model));
                    }
                }
                Err(error) => {
                    previous_ok = false;
                    warn!(path = %path.display(), %error, "model file invalid; keeping the last good model")
                }
            }
        }
    });
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKINFO: &str = include_str!("../translate/examples/bookinfo.yaml");

    #[test]
    fn an_incremental_parse_equals_a_full_parse_for_every_revision() {
        let full = MeshModel::from_yaml_str(BOOKINFO).expect("bookinfo");
        let mut parser = ModelParser::default();
        assert_eq!(parser.parse(BOOKINFO).expect("first"), full);
        let yaml = full.to_yaml().expect("to yaml");
        assert_eq!(parser.parse(&yaml).expect("re-rendered"), full);
        let mut changed = full.clone();
        Arc::make_mut(&mut changed.pods[0]).ip = Some("10.9.9.9".parse().expect("ip"));
        changed.pods.remove(1);
        let yaml = changed.to_yaml().expect("to yaml");
        assert_eq!(parser.parse(&yaml).expect("changed"), changed);
        assert_eq!(parser.parse(&yaml).expect("again"), changed);
    }

    #[test]
    fn only_items_whose_text_changed_are_parsed_again() {
        let full = MeshModel::from_yaml_str(BOOKINFO).expect("bookinfo");
        let yaml = full.to_yaml().expect("to yaml");
        let mut parser = ModelParser::default();
        parser.parse(&yaml).expect("first");
        let [_, pods, ..] = split_sections(&yaml).expect("split").lists;
        let (_, parsed, diff) = parser.pods.items(&pods).expect("same");
        assert_eq!((parsed, diff), (0, Difference::Same));
        let mut changed = full.clone();
        Arc::make_mut(&mut changed.pods[0]).ready = false;
        let yaml = changed.to_yaml().expect("to yaml");
        let [_, pods, ..] = split_sections(&yaml).expect("split").lists;
        let (items, parsed, diff) = parser.pods.items(&pods).expect("changed");
        assert_eq!((parsed, diff), (1, Difference::Changed));
        assert_eq!(items, changed.pods);
    }

    #[test]
    fn the_parser_tells_a_changed_model_from_the_same_one_or_says_it_does_not_know() {
        let full = MeshModel::from_yaml_str(BOOKINFO).expect("bookinfo");
        let yaml = full.to_yaml().expect("to yaml");
        let mut parser = ModelParser::default();
        parser.parse(&yaml).expect("first");
        assert_eq!(parser.last_difference(), Difference::Unknown);
        parser.parse(&yaml).expect("again");
        assert_eq!(parser.last_difference(), Difference::Same);
        // One pod moved: that item parsed again and compared with the one it replaces.
        let mut moved = full.clone();
        Arc::make_mut(&mut moved.pods[0]).ip = Some("10.9.9.9".parse().expect("ip"));
        parser.parse(&moved.to_yaml().expect("yaml")).expect("moved");
        assert_eq!(parser.last_difference(), Difference::Changed);
        // The same pod written another way: the same model, but only a comparison can tell.
        let text = moved.to_yaml().expect("yaml");
        let [_, pods, ..] = split_sections(&text).expect("split").lists;
        let first = pods[0];
        let respelled = text.replacen(first, &format!("{}  # moved\n", first.trim_end()), 1);
        assert_eq!(parser.parse(&respelled).expect("respelled"), moved);
        assert_ne!(parser.last_difference(), Difference::Changed);
        // A pod fewer.
        let mut fewer = moved.clone();
        fewer.pods.pop();
        parser.parse(&fewer.to_yaml().expect("yaml")).expect("fewer");
        assert_eq!(parser.last_difference(), Difference::Changed);
    }

    const ISTIO: &str = "istio:\n  virtualServices:\n  - metadata: {name: reviews}\n    spec:\n      hosts: [reviews]\n      http:\n      - route: [{destination: {host: reviews, subset: v1}}]\n  destinationRules:\n  - metadata: {name: reviews}\n    spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n";

    #[test]
    fn the_istio_block_is_split_off_and_parsed_only_when_its_text_changed() {
        let mut full = MeshModel::from_yaml_str(BOOKINFO).expect("bookinfo");
        full.istio = MeshModel::from_yaml_str(ISTIO).expect("istio").istio;
        let yaml = full.to_yaml().expect("to yaml");
        let split = split_sections(&yaml).expect("split");
        assert!(split.istio.expect("istio block").starts_with("istio:"));
        let mut parser = ModelParser::default();
        assert_eq!(parser.parse(&yaml).expect("first"), full);
        let cached = parser.istio.as_ref().map(|(text, _)| text.clone());
        // A pod moves: the same block, taken from the cache.
        let mut moved = full.clone();
        Arc::make_mut(&mut moved.pods[0]).ip = Some("10.9.9.9".parse().expect("ip"));
        assert_eq!(
            parser.parse(&moved.to_yaml().expect("yaml")).expect("moved"),
            moved
        );
        assert_eq!(parser.istio.as_ref().map(|(text, _)| text.clone()), cached);
        // The block changes: parsed again.
        let mut edited = moved.clone();
        Arc::make_mut(&mut edited.istio).destination_rules.clear();
        assert_eq!(
            parser.parse(&edited.to_yaml().expect("yaml")).expect("edited"),
            edited
        );
        // The block anywhere in the file, before other lists too.
        let text = format!("{ISTIO}pods:\n- name: a\n  ip: 10.0.0.1\n");
        let whole = MeshModel::from_yaml_str(&text).expect("whole");
        assert!(split_sections(&text).is_some());
        assert_eq!(ModelParser::default().parse(&text).expect("split"), whole);
        // An invalid block: the error of a full parse.
        let bad = "istio:\n  virtualServices: 3\n";
        assert!(MeshModel::from_yaml_str(bad).is_err());
        assert!(ModelParser::default().parse(bad).is_err());
    }

    #[test]
    fn layouts_the_splitter_does_not_know_still_parse_like_a_full_parse() {
        for text in [
            "services: [{name: a, ports: [{port: 80}]}]\npods: []\n",
            "---\npods:\n- name: a\n",
            "pods:\n  - name: a\n    ip: 10.0.0.1\n  - name: b\n",
            "pods:\n- &p\n  name: a\n",
            "# comment\npods: # the pods\n- name: a # first\n\n- name: b\n",
            "pods:\nservices: []\n",
        ] {
            if MeshModel::from_yaml_str(text).is_err() {
                assert!(ModelParser::default().parse(text).is_err(), "{text}");
                continue;
            }
            let full = MeshModel::from_yaml_str(text).expect(text);
            assert_eq!(ModelParser::default().parse(text).expect(text), full, "{text}");
        }
    }

    #[test]
    fn errors_are_those_of_a_full_parse() {
        for text in [
            "pods:\n- name: a\n- name: a\n",
            "pods:\n- name: a\n  bogus: 1\n",
            "nodes:\n- name: a\n",
            "pods:\n- name: a\npods:\n- name: b\n",
        ] {
            assert!(MeshModel::from_yaml_str(text).is_err(), "{text}");
            assert!(ModelParser::default().parse(text).is_err(), "{text}");
        }
    }
}
