//! A linearizability checker for histories of key-value registers (Maelstrom's
//! `lin-kv`: `read`, `write`, `cas` on independent keys).
//!
//! Each key is checked on its own (a history of independent registers is
//! linearizable exactly when each key's is). The search is Wing and Gong's, with
//! Lowe's memoization: repeatedly pick an operation that may take effect next (none
//! of the operations still pending returned before it was invoked), apply it to the
//! model if the value it observed agrees, and backtrack when nothing fits; a
//! (set of operations done, register value) pair already explored is not explored
//! again.
//!
//! An operation whose outcome is unknown (a timeout, error 13) may or may not have
//! taken effect, at any moment after its invocation: it never constrains the order
//! and the search may leave it out. A definite failure (any other error) did nothing
//! and is not part of the history the caller gives.

use std::collections::{BTreeMap, HashSet};

/// A register value, as the JSON text the client sent (`None`: the key is absent).
pub type Value = Option<String>;

/// What an operation did, as its reply showed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read that returned this value (`None`: key not found, error 20).
    Read(Value),
    /// A write of this value.
    Write(String),
    /// A compare-and-set from the first value to the second that succeeded.
    Cas(String, String),
    /// A compare-and-set from this value that failed because the key held another
    /// value (error 22).
    CasMismatch(String),
    /// A compare-and-set that failed because the key did not exist (error 20).
    CasAbsent,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The key.
    pub key: String,
    /// The operation and what its reply showed. For an operation whose outcome is
    /// unknown, what it would have done (a read with an unknown outcome tells
    /// nothing and should be left out).
    pub op: Op,
    /// When it was invoked (any monotonic unit).
    pub invoked: u64,
    /// When its reply arrived; `None` when the outcome is unknown.
    pub returned: Option<u64>,
}

/// A key whose history has no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// How many operations its history holds.
    pub ops: usize,
    /// The most operations any explored order could linearize.
    pub longest_prefix: usize,
    /// The first operation that no explored order could place after that prefix.
    pub stuck_at: Option<Event>,
}

/// The verdict on one history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable {
        /// Keys checked.
        keys: usize,
        /// Operations checked.
        ops: usize,
    },
    /// A key's history is not.
    Violation(Violation),
    /// The search for a key went past the budget without deciding.
    Undecided {
        /// The key.
        key: String,
        /// States explored.
        explored: u64,
    },
}

/// States the search of one key may explore before it gives up.
pub const SEARCH_BUDGET: u64 = 5_000_000;

/// Checks a history; see the module documentation.
pub fn check(history: &[Event]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e);
    }
    let mut ops = 0;
    for (key, events) in &by_key {
        ops += events.len();
        match check_key(events, SEARCH_BUDGET) {
            KeyVerdict::Ok => {}
            KeyVerdict::No { longest, stuck_at } => {
                return Verdict::Violation(Violation {
                    key: key.to_string(),
                    ops: events.len(),
                    longest_prefix: longest,
                    stuck_at: stuck_at.map(|i| events[i].clone()),
                });
            }
            KeyVerdict::Budget(explored) => {
                return Verdict::Undecided {
                    key: key.to_string(),
                    explored,
                };
            }
        }
    }
    Verdict::Linearizable {
        keys: by_key.len(),
        ops,
    }
}

enum KeyVerdict {
    Ok,
    No {
        longest: usize,
        stuck_at: Option<usize>,
    },
    Budget(u64),
}

/// Applies `op` to `state`: the new state, or `None` if what `op` observed cannot be.
fn step(state: &Value, op: &Op) -> Option<Value> {
    match op {
        Op::Read(v) => (v == state).then(|| state.clone()),
        Op::Write(v) => Some(Some(v.clone())),
        Op::Cas(from, to) => (state.as_deref() == Some(from.as_str())).then(|| Some(to.clone())),
        Op::CasMismatch(from) => state
            .as_deref()
            .is_some_and(|cur| cur != from)
            .then(|| state.clone()),
        Op::CasAbsent => state.is_none().then_some(None),
    }
}

fn check_key(events: &[&Event], budget: u64) -> KeyVerdict {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].invoked);
    let ops: Vec<&Event> = order.iter().map(|&i| events[i]).collect();
    let n = ops.len();
    let required = ops.iter().filter(|e| e.returned.is_some()).count();
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    // Depth-first search: each frame is (done set, state, next candidate to try).
    let mut done = vec![0u64; words];
    let mut state: Value = None;
    let mut stack: Vec<(usize, Value)> = Vec::new(); // (op placed, state before it)
    let mut next_try = 0usize;
    let mut placed_required = 0usize;
    let mut explored = 0u64;
    let mut longest = 0usize;
    let mut stuck_at = None;
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    loop {
        if placed_required == required {
            return KeyVerdict::Ok;
        }
        // The earliest return among pending required operations bounds who may go next.
        let horizon = (0..n)
            .filter(|&i| !is_done(&done, i))
            .filter_map(|i| ops[i].returned)
            .min()
            .unwrap_or(u64::MAX);
        let mut advanced = false;
        let mut i = next_try;
        while i < n && ops[i].invoked <= horizon {
            if !is_done(&done, i)
                && let Some(after) = step(&state, &ops[i].op)
            {
                let mut with = done.clone();
                with[i / 64] |= 1 << (i % 64);
                explored += 1;
                if explored > budget {
                    return KeyVerdict::Budget(explored);
                }
                if seen.insert((with.clone(), after.clone())) {
                    stack.push((i, std::mem::replace(&mut state, after)));
                    done = with;
                    if ops[i].returned.is_some() {
                        placed_required += 1;
                    }
                    next_try = 0;
                    advanced = true;
                    break;
                }
            }
            i += 1;
        }
        if advanced {
            if stack.len() > longest {
                longest = stack.len();
                stuck_at = None;
            }
            continue;
        }
        if stack.len() == longest && stuck_at.is_none() {
            stuck_at = (0..n).find(|&i| !is_done(&done, i) && ops[i].returned.is_some());
        }
        // Backtrack: undo the last placement and try the candidates after it.
        let Some((last, before)) = stack.pop() else {
            return KeyVerdict::No {
                longest,
                stuck_at: stuck_at.map(|i| order[i]),
            };
        };
        done[last / 64] &= !(1 << (last % 64));
        if ops[last].returned.is_some() {
            placed_required -= 1;
        }
        state = before;
        next_try = last + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, invoked: u64, returned: Option<u64>) -> Event {
        Event {
            key: "k".into(),
            op,
            invoked,
            returned,
        }
    }
    fn w(v: &str) -> Op {
        Op::Write(v.into())
    }
    fn r(v: Option<&str>) -> Op {
        Op::Read(v.map(str::to_string))
    }

    fn linearizable(h: &[Event]) -> bool {
        matches!(check(h), Verdict::Linearizable { .. })
    }

    #[test]
    fn sequential_histories() {
        assert!(linearizable(&[
            ev(r(None), 0, Some(1)),
            ev(w("1"), 2, Some(3)),
            ev(r(Some("1")), 4, Some(5)),
            ev(Op::Cas("1".into(), "2".into()), 6, Some(7)),
            ev(Op::CasMismatch("1".into()), 8, Some(9)),
            ev(r(Some("2")), 10, Some(11)),
        ]));
        // A read of a value overwritten before it began.
        assert!(!linearizable(&[
            ev(w("1"), 0, Some(1)),
            ev(w("2"), 2, Some(3)),
            ev(r(Some("1")), 4, Some(5)),
        ]));
        // A value nobody wrote.
        assert!(!linearizable(&[ev(r(Some("9")), 0, Some(1))]));
        // A cas that failed for absence after a write finished.
        assert!(!linearizable(&[
            ev(w("1"), 0, Some(1)),
            ev(Op::CasAbsent, 2, Some(3)),
        ]));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping writes, then reads that saw them in one order: fine.
        assert!(linearizable(&[
            ev(w("1"), 0, Some(10)),
            ev(w("2"), 1, Some(9)),
            ev(r(Some("1")), 11, Some(12)),
        ]));
        // A read overlapping a write may see the old or the new value...
        assert!(linearizable(&[
            ev(w("1"), 0, Some(1)),
            ev(w("2"), 2, Some(10)),
            ev(r(Some("1")), 3, Some(4)),
            ev(r(Some("2")), 5, Some(6)),
        ]));
        // ...but not go back to the old one once a later read saw the new.
        assert!(!linearizable(&[
            ev(w("1"), 0, Some(1)),
            ev(w("2"), 2, Some(10)),
            ev(r(Some("2")), 3, Some(4)),
            ev(r(Some("1")), 5, Some(6)),
        ]));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A write that timed out, seen later: it happened.
        assert!(linearizable(&[
            ev(w("1"), 0, None),
            ev(r(Some("1")), 5, Some(6)),
        ]));
        // Never seen: it did not.
        assert!(linearizable(&[
            ev(w("1"), 0, None),
            ev(r(None), 5, Some(6))
        ]));
        // It may take effect long after its invocation, between two reads.
        assert!(linearizable(&[
            ev(w("1"), 0, None),
            ev(r(None), 5, Some(6)),
            ev(r(Some("1")), 7, Some(8)),
        ]));
        // But never before it was invoked.
        assert!(!linearizable(&[
            ev(r(Some("1")), 0, Some(1)),
            ev(w("1"), 2, None),
        ]));
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected_and_named() {
        let h = vec![
            ev(w("1"), 0, Some(1)),
            ev(w("2"), 2, Some(3)),
            ev(r(Some("2")), 4, Some(5)),
            ev(r(Some("1")), 6, Some(7)), // the acknowledged write of 2 was lost
        ];
        match check(&h) {
            Verdict::Violation(v) => {
                assert_eq!(v.key, "k");
                assert_eq!(v.longest_prefix, 3);
                assert_eq!(v.stuck_at.unwrap().op, r(Some("1")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![
            ev(w("1"), 0, Some(1)),
            Event {
                key: "other".into(),
                op: r(Some("1")),
                invoked: 2,
                returned: Some(3),
            },
        ];
        assert!(!linearizable(&h));
        h.push(Event {
            key: "other".into(),
            op: w("1"),
            invoked: 0,
            returned: Some(1),
        });
        assert!(linearizable(&h));
    }

    #[test]
    fn many_concurrent_clients_are_decided_quickly() {
        // 10 clients, 300 operations on one key, a history made linearizable by
        // construction: each operation takes effect at a point inside its interval.
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut state: Value = None;
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..300u64 {
            t += 1 + next() % 3;
            let invoked = t.saturating_sub(next() % 20);
            let returned = t + next() % 20;
            let op = match next() % 4 {
                0 => r(state.as_deref()),
                1 => w(&i.to_string()),
                2 => match &state {
                    Some(cur) => Op::Cas(cur.clone(), i.to_string()),
                    None => Op::CasAbsent,
                },
                _ => Op::CasMismatch("nope".into()),
            };
            let Some(after) = step(&state, &op) else {
                continue; // a mismatch on an absent key
            };
            state = after;
            h.push(ev(op, invoked, Some(returned)));
        }
        let started = std::time::Instant::now();
        assert!(linearizable(&h), "{:?}", check(&h));
        // The same history with one read corrupted by hand is rejected.
        let k = h.iter().rposition(|e| matches!(e.op, Op::Read(_))).unwrap();
        h[k].op = r(Some("never written"));
        assert!(matches!(check(&h), Verdict::Violation(_)));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
