//! Recovery planning: what each file in a node's directory is, decided from its name.

use crate::core::layout::{self, BROKEN_SUFFIX, LOCK, META, TEMP_SUFFIX};

/// The directory's files, sorted into what recovery does with them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirListing {
    /// Log segments, `(start offset, name)`, in offset order.
    pub segments: Vec<(u64, String)>,
    /// Snapshots and deltas, `(offset, name)`, in offset order.
    pub snapshots: Vec<(u64, String)>,
    /// Whether `log.meta` exists.
    pub meta: bool,
    /// Leftover temporary files of an interrupted write: removed.
    pub temps: Vec<String>,
    /// Bytes kept from earlier repairs: left alone.
    pub broken: Vec<String>,
    /// Files that are none of the node's: ignored and logged.
    pub foreign: Vec<String>,
}

/// Sorts a directory's names.
pub fn classify(names: impl IntoIterator<Item = String>) -> DirListing {
    let mut out = DirListing::default();
    for name in names {
        if let Some(start) = layout::parse_segment(&name) {
            out.segments.push((start, name));
        } else if let Some(offset) = layout::parse_snapshot(&name) {
            out.snapshots.push((offset, name));
        } else if name == META {
            out.meta = true;
        } else if name.ends_with(TEMP_SUFFIX) {
            out.temps.push(name);
        } else if name.ends_with(BROKEN_SUFFIX) {
            out.broken.push(name);
        } else if name != LOCK {
            out.foreign.push(name);
        }
    }
    out.segments.sort();
    out.snapshots.sort();
    out.temps.sort();
    out.broken.sort();
    out.foreign.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_every_kind_of_file() {
        let names = [
            "00000000000000000010.log",
            "00000000000000000000.log",
            "00000000000000000005.snap",
            "00000000000000000005.snap.tmp",
            "00000000000000000020.log.tmp",
            "log.meta",
            "log.meta.tmp",
            "00000000000000000010.log.64.broken",
            "LOCK",
            "notes.txt",
            "1.log",
        ];
        let l = classify(names.iter().map(|s| s.to_string()));
        assert_eq!(
            l.segments,
            vec![(0, names[1].into()), (10, names[0].into())]
        );
        assert_eq!(l.snapshots, vec![(5, names[2].into())]);
        assert!(l.meta);
        assert_eq!(
            l.temps,
            vec![
                "00000000000000000005.snap.tmp",
                "00000000000000000020.log.tmp",
                "log.meta.tmp"
            ]
        );
        assert_eq!(l.broken, vec!["00000000000000000010.log.64.broken"]);
        assert_eq!(l.foreign, vec!["1.log", "notes.txt"]);
    }
}
