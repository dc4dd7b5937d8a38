//! What a store holds, node by node: the chains, the shipped log of each history, and
//! the newest and oldest points a restore reaches (`flintlog store ls`). Only names,
//! sizes and manifests are read: no chain or log object is downloaded.

use super::*;

/// One node's part of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeListing {
    /// The node.
    pub node: String,
    /// Its chains, newest first.
    pub chains: Vec<Manifest>,
    /// Its shipped log, per history.
    pub histories: Vec<HistoryListing>,
    /// The newest point a restore reaches, as an offset (entries before it), and when
    /// the object holding the last entry (or the chain, with no log after it) was
    /// written.
    pub newest: Option<(u64, u64)>,
    /// The oldest point a restore reaches: its oldest chain's index.
    pub oldest: Option<u64>,
}

/// One history's shipped log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryListing {
    /// The history's id.
    pub history: String,
    /// Objects and their bytes in the store.
    pub objects: u64,
    pub bytes: u64,
    /// The first and last offsets shipped.
    pub first: u64,
    pub last: u64,
    /// Offsets missing between the first and the last (`[from, to)` each).
    pub gaps: Vec<(u64, u64)>,
    /// When its newest object was written.
    pub newest_written_ms: u64,
}

/// The store's contents per node, sorted by node.
///
/// # Errors
/// The store could not be listed.
pub fn listing(store: &dyn SnapshotStore) -> Result<Vec<NodeListing>, StoreError> {
    let (all, _) = manifests(store)?;
    let mut nodes: Vec<String> = all.iter().map(|m| m.node.clone()).collect();
    let objects = store.list("")?;
    for o in &objects {
        if let Some(node) = o.name.split_once("/log/").map(|(n, _)| n.to_string())
            && shipped::parse(o).is_some()
        {
            nodes.push(node);
        }
    }
    nodes.sort();
    nodes.dedup();
    let mut out = Vec::new();
    for node in nodes {
        let chains: Vec<Manifest> = all.iter().filter(|m| m.node == node).cloned().collect();
        let prefix = shipped::prefix(&node);
        let mut logs: Vec<shipped::ShippedRange> = objects
            .iter()
            .filter(|o| o.name.starts_with(&prefix))
            .filter_map(shipped::parse)
            .collect();
        logs.sort_by_key(|r| (r.history.clone(), r.first));
        let mut histories: Vec<HistoryListing> = Vec::new();
        for r in &logs {
            match histories.last_mut().filter(|h| h.history == r.history) {
                Some(h) => {
                    if r.first > h.last + 1 {
                        h.gaps.push((h.last + 1, r.first));
                    }
                    h.objects += 1;
                    h.bytes += r.size;
                    h.last = h.last.max(r.last);
                    h.newest_written_ms = h.newest_written_ms.max(r.written_ms);
                }
                None => histories.push(HistoryListing {
                    history: r.history.clone(),
                    objects: 1,
                    bytes: r.size,
                    first: r.first,
                    last: r.last,
                    gaps: Vec::new(),
                    newest_written_ms: r.written_ms,
                }),
            }
        }
        let origins = shipped::origins(&node, &logs);
        // Where a restore of the newest state goes: from the chain uploaded last.
        let newest = chains
            .iter()
            .chain(&origins)
            .max_by_key(|m| (m.created_ms, m.index))
            .map(|m| reach(m, &logs));
        out.push(NodeListing {
            oldest: chains.iter().chain(&origins).map(|m| m.index).min(),
            node,
            chains,
            histories,
            newest,
        });
    }
    Ok(out)
}

/// How far a restore from chain `m` goes through its history's shipped log (by the
/// names alone), and when the last object on the way was written.
pub fn reach(m: &Manifest, logs: &[shipped::ShippedRange]) -> (u64, u64) {
    let (mut at, mut when) = (m.index, m.created_ms);
    while let Some(o) = logs
        .iter()
        .filter(|o| m.history.as_ref() == Some(&o.history))
        .find(|o| o.first <= at && at <= o.last)
    {
        at = o.last + 1;
        when = o.written_ms;
    }
    (at, when)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_reaches_along_its_own_history_up_to_the_first_gap() {
        let h = |id: &str, first: u64, last: u64, ms: u64| shipped::ShippedRange {
            object: shipped::object_name("n1", id, first, last, ms),
            history: id.into(),
            first,
            last,
            written_ms: ms,
            size: 10,
        };
        let (a, b) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb");
        let logs = vec![
            h(a, 0, 99, 1),
            h(a, 100, 199, 2),
            h(a, 250, 299, 4),
            h(b, 100, 500, 9),
        ];
        let chain = Manifest {
            node: "n1".into(),
            cluster: vec![],
            index: 150,
            term: 0,
            voters: vec![],
            learners: vec![],
            created_ms: 3,
            files: vec![],
            history: Some(a.into()),
        };
        assert_eq!(reach(&chain, &logs), (200, 2), "stops at the gap 200..250");
        let unshipped = Manifest {
            history: None,
            ..chain.clone()
        };
        assert_eq!(reach(&unshipped, &logs), (150, 3));
    }
}
