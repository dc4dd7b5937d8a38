//! The key-value state machine the log drives.
//!
//! Each payload is a command, applied in offset order:
//! `set KEY=VALUE` (KEY non-empty and without whitespace, VALUE everything after the
//! first `=`), `del KEY`, and anything else, which changes no key but is counted.
//!
//! The map is persistent (`imbl::OrdMap` of `Arc<str>`): cloning it is O(1) and shares
//! structure, which is how the appender hands an immutable cut of the state to the
//! snapshotter without a pause that grows with the state. Keys and values are
//! reference-counted so that the nodes copied on write during a snapshot share the
//! strings instead of duplicating them.

use std::sync::Arc;

use imbl::OrdMap;

/// A parsed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `set KEY=VALUE`.
    Set {
        /// The key.
        key: &'a str,
        /// The value, possibly empty.
        value: &'a str,
    },
    /// `del KEY`.
    Del {
        /// The key.
        key: &'a str,
    },
    /// Any other payload: logged, acknowledged, changes no key.
    Other,
}

/// Whether `key` is a valid key: non-empty, no whitespace, no `=`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && !key.contains(|c: char| c.is_whitespace() || c == '=')
}

impl<'a> Command<'a> {
    /// Parses a payload. Never fails: what is not a valid command is [`Command::Other`].
    pub fn parse(payload: &'a [u8]) -> Command<'a> {
        let Ok(text) = std::str::from_utf8(payload) else {
            return Command::Other;
        };
        if let Some(rest) = text.strip_prefix("set ")
            && let Some((key, value)) = rest.split_once('=')
            && valid_key(key)
        {
            return Command::Set { key, value };
        }
        if let Some(key) = text.strip_prefix("del ")
            && valid_key(key)
        {
            return Command::Del { key };
        }
        Command::Other
    }
}

/// The payload that sets `key` to `value`. The caller has checked the key.
pub fn set_payload(key: &str, value: &str) -> String {
    debug_assert!(valid_key(key));
    format!("set {key}={value}")
}

/// The persistent map type of the state.
pub type KvMap = OrdMap<Arc<str>, Arc<str>>;

/// What puts a [`KvState`] back as it was before some payloads were applied: each
/// changed key's value before the change, in the order the changes were made.
#[derive(Debug, Default)]
pub struct Undo {
    before: Vec<(Arc<str>, Option<Arc<str>>)>,
    others: u64,
}

/// The state machine: keys and values, and a count of payloads that were not commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvState {
    /// Keys and values, in key order.
    pub map: KvMap,
    /// How many applied payloads were neither `set` nor `del`.
    pub other_payloads: u64,
}

impl KvState {
    /// Applies one payload.
    pub fn apply(&mut self, payload: &[u8]) {
        match Command::parse(payload) {
            Command::Set { key, value } => {
                self.map.insert(Arc::from(key), Arc::from(value));
            }
            Command::Del { key } => {
                self.map.remove(key);
            }
            Command::Other => self.other_payloads += 1,
        }
    }

    /// Applies one payload, recording in `undo` what puts the state back as it was.
    pub fn apply_recording(&mut self, payload: &[u8], undo: &mut Undo) {
        match Command::parse(payload) {
            Command::Set { key, value } => {
                let key: Arc<str> = Arc::from(key);
                let before = self.map.insert(key.clone(), Arc::from(value));
                undo.before.push((key, before));
            }
            Command::Del { key } => {
                if let Some((key, before)) = self.map.remove_with_key(key) {
                    undo.before.push((key, Some(before)));
                }
            }
            Command::Other => {
                self.other_payloads += 1;
                undo.others += 1;
            }
        }
    }

    /// Takes back the payloads recorded in `undo` (which must be the last applied).
    pub fn undo(&mut self, undo: Undo) {
        for (key, before) in undo.before.into_iter().rev() {
            match before {
                Some(value) => {
                    self.map.insert(key, value);
                }
                None => {
                    self.map.remove(&key);
                }
            }
        }
        self.other_payloads -= undo.others;
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Arc<str>> {
        self.map.get(key)
    }

    /// What turns `self` into `newer`: the keys set (with their new value) or deleted
    /// (`None`), in key order. Cheap when the two share most of their structure, as two
    /// cuts of the same persistent map do.
    pub fn changes_to(&self, newer: &KvState) -> Vec<Change> {
        use imbl::ordmap::DiffItem;
        let mut out: Vec<Change> = self
            .map
            .diff(&newer.map)
            .map(|item| match item {
                DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => {
                    (k.clone(), Some(v.clone()))
                }
                DiffItem::Remove(k, _) => (k.clone(), None),
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Applies changes made by [`KvState::changes_to`].
    pub fn apply_changes(&mut self, changes: &[Change], other_payloads: u64) {
        for (k, v) in changes {
            match v {
                Some(v) => {
                    self.map.insert(k.clone(), v.clone());
                }
                None => {
                    self.map.remove(k);
                }
            }
        }
        self.other_payloads = other_payloads;
    }
}

/// One key set to a value, or deleted (`None`).
pub type Change = (Arc<str>, Option<Arc<str>>);

/// Shards of a [`Written`]. A hash map grows by moving every entry it holds into a
/// table twice the size, in one go: for the half-million keys the appender may track
/// between two cuts, that took 150 ms on the append path (each key's string is read
/// again to hash it). Split in this many maps, one grows at a time, and by a 256th.
pub const WRITTEN_SHARDS: usize = 256;

/// The keys written (set, or deleted: `None`) over some stretch of the log, each with
/// its last value. Extending one with a later one gives the writes of both stretches.
///
/// Held in [`WRITTEN_SHARDS`] hash maps, a key's shard chosen by its hash, so that the
/// map grows in small steps, never by rehashing every key at once.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Empty until the first write.
    shards: Vec<WrittenShard>,
    len: usize,
}

/// One shard of a [`Written`].
pub type WrittenShard = std::collections::HashMap<Arc<str>, Option<Arc<str>>>;

/// Picks a key's shard: one seed for the process, random (keys come from clients).
fn shard_of(key: &str) -> usize {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    (SEED.get_or_init(Default::default).hash_one(key) % WRITTEN_SHARDS as u64) as usize
}

impl Written {
    pub fn new() -> Written {
        Written::default()
    }

    /// Keys written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records `key`'s last value; returns what it replaced, if `key` was written before.
    pub fn insert(&mut self, key: Arc<str>, value: Option<Arc<str>>) -> Option<Option<Arc<str>>> {
        if self.shards.is_empty() {
            self.shards = (0..WRITTEN_SHARDS).map(|_| Default::default()).collect();
        }
        let old = self.shards[shard_of(&key)].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The last value written to `key` (`Some(None)`: deleted), if it was written.
    pub fn get(&self, key: &str) -> Option<&Option<Arc<str>>> {
        self.shards.get(shard_of(key))?.get(key)
    }

    /// Each key written and its last value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Option<Arc<str>>)> {
        self.shards.iter().flatten()
    }

    /// The shards, to be freed a part at a time.
    pub fn into_shards(self) -> Vec<WrittenShard> {
        self.shards
    }

    /// Forgets every write, keeping the memory for the next ones.
    pub fn clear(&mut self) {
        self.shards.iter_mut().for_each(|s| s.clear());
        self.len = 0;
    }
}

impl Extend<Change> for Written {
    fn extend<I: IntoIterator<Item = Change>>(&mut self, writes: I) {
        for (key, value) in writes {
            self.insert(key, value);
        }
    }
}

impl FromIterator<Change> for Written {
    fn from_iter<I: IntoIterator<Item = Change>>(writes: I) -> Written {
        let mut w = Written::new();
        w.extend(writes);
        w
    }
}

impl IntoIterator for Written {
    type Item = Change;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<WrittenShard>>;
    fn into_iter(self) -> Self::IntoIter {
        self.shards.into_iter().flatten()
    }
}

/// The writes as changes, in key order: what turns the state before the stretch into
/// the state after it.
pub fn changes_of(written: &Written) -> Vec<Change> {
    let mut out: Vec<Change> = written
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_turn_one_cut_into_a_later_one() {
        let mut old = KvState::default();
        for i in 0..1000 {
            old.apply(format!("set k{i}=v{i}").as_bytes());
        }
        let mut new = old.clone();
        new.apply(b"set k5=changed");
        new.apply(b"del k7");
        new.apply(b"set new=1");
        new.apply(b"noise");
        let changes = old.changes_to(&new);
        let keys: Vec<&str> = changes.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["k5", "k7", "new"]);
        assert_eq!(changes[1].1, None);
        let mut replayed = old.clone();
        replayed.apply_changes(&changes, new.other_payloads);
        assert_eq!(replayed, new);
        assert!(new.changes_to(&new).is_empty());
        // From the writes instead of a diff: the same, plus no-op rewrites.
        let written: Written = [
            ("k5", Some("changed")),
            ("k7", None),
            ("new", Some("1")),
            ("k9", Some("v9")),
        ]
        .iter()
        .map(|(k, v)| (Arc::from(*k), v.map(Arc::from)))
        .collect();
        let mut replayed = old.clone();
        replayed.apply_changes(&changes_of(&written), new.other_payloads);
        assert_eq!(replayed, new);
    }

    #[test]
    fn written_keeps_each_keys_last_value_and_counts_keys_once() {
        let mut w = Written::new();
        assert!(w.is_empty() && w.get("a").is_none());
        assert_eq!(w.insert("a".into(), Some("1".into())), None);
        assert_eq!(w.insert("b".into(), None), None);
        assert_eq!(
            w.insert("a".into(), Some("2".into())),
            Some(Some("1".into()))
        );
        assert_eq!(w.len(), 2);
        assert_eq!(w.get("a"), Some(&Some("2".into())));
        assert_eq!(w.get("b"), Some(&None));
        let later: Written = [
            (Arc::from("b"), Some(Arc::from("3"))),
            (Arc::from("c"), None),
        ]
        .into_iter()
        .collect();
        w.extend(later);
        assert_eq!(w.len(), 3);
        let mut all: Vec<Change> = w.clone().into_iter().collect();
        all.sort();
        assert_eq!(all, changes_of(&w));
        assert_eq!(
            all,
            [
                (Arc::from("a"), Some(Arc::from("2"))),
                (Arc::from("b"), Some(Arc::from("3"))),
                (Arc::from("c"), None)
            ]
        );
        w.clear();
        assert!(w.is_empty() && w.iter().next().is_none() && w.get("a").is_none());
    }

    #[test]
    fn written_grows_one_small_shard_at_a_time() {
        // A map grows by moving all its keys: no shard may hold much more than its
        // share, so that no growth moves more than a small part of the keys.
        let mut w = Written::new();
        let n = 100_000;
        for i in 0..n {
            w.insert(format!("key{i}").into(), None);
        }
        assert_eq!(w.len(), n);
        assert_eq!(w.shards.iter().map(|s| s.len()).sum::<usize>(), n);
        let largest = w.shards.iter().map(|s| s.len()).max().unwrap();
        assert!(
            largest < 2 * n / WRITTEN_SHARDS,
            "a shard of {largest} keys of {n}"
        );
    }

    fn check(payload: &str, expected: Command<'_>) {
        assert_eq!(Command::parse(payload.as_bytes()), expected, "{payload:?}");
    }

    #[test]
    fn parses_commands_as_the_protocol_defines_them() {
        check(
            "set a=1",
            Command::Set {
                key: "a",
                value: "1",
            },
        );
        check(
            "set a=",
            Command::Set {
                key: "a",
                value: "",
            },
        );
        check(
            "set a=b=c",
            Command::Set {
                key: "a",
                value: "b=c",
            },
        );
        check(
            "set a= x y ",
            Command::Set {
                key: "a",
                value: " x y ",
            },
        );
        check("del a", Command::Del { key: "a" });
        check("set =1", Command::Other);
        check("set a b=1", Command::Other);
        check("set a\t=1", Command::Other);
        check("set a", Command::Other);
        check("SET a=1", Command::Other);
        check("set  a=1", Command::Other);
        check("del ", Command::Other);
        check("del a b", Command::Other);
        check("del a=b", Command::Other);
        check("hello", Command::Other);
        check("", Command::Other);
        assert_eq!(Command::parse(&[0xff, 0xfe]), Command::Other);
    }

    #[test]
    fn applies_in_order_and_counts_other_payloads() {
        let mut state = KvState::default();
        for p in [
            "set a=1",
            "set b=2",
            "noise",
            "set a=3",
            "del b",
            "del missing",
        ] {
            state.apply(p.as_bytes());
        }
        assert_eq!(state.get("a").map(|v| &**v), Some("3"));
        assert_eq!(state.get("b"), None);
        assert_eq!(state.map.len(), 1);
        assert_eq!(state.other_payloads, 1);
    }

    #[test]
    fn a_clone_is_an_independent_cut() {
        let mut state = KvState::default();
        state.apply(b"set a=1");
        let cut = state.clone();
        state.apply(b"set a=2");
        state.apply(b"del a");
        assert_eq!(cut.get("a").map(|v| &**v), Some("1"));
        assert_eq!(state.get("a"), None);
    }
}
