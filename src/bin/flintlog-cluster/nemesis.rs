//! The nemesis (partitions, kills, pauses) and the replacement of a lost node, step by
//! step as an operator would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flintlog::fs::sim::Rng;
use serde_json::{Value, json};

use crate::Args;
use crate::network::{ask, current_leader, heal, set_partition, to_leader};
use crate::processes::{Shared, signal};

/// A nemesis event, for the report and the plot.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub(crate) what: String,
    pub(crate) from_s: f64,
    pub(crate) to_s: f64,
}

/// Cuts the network into `sides` for `hold`, then heals it; the fault's description.
pub(crate) fn partition_for(
    shared: &Shared,
    sides: &[Vec<usize>],
    label: &str,
    hold: Duration,
) -> String {
    set_partition(shared, sides);
    std::thread::sleep(hold);
    heal(shared);
    let named: Vec<Vec<String>> = sides
        .iter()
        .map(|s| s.iter().map(|&i| shared.ids[i].clone()).collect())
        .collect();
    format!("partition ({label}) {named:?}")
}

pub(crate) fn nemesis(shared: Arc<Shared>, args: Args, seed: u64, until: Instant) -> Vec<Fault> {
    let kinds: Vec<&str> = args
        .nemesis
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty() && *k != "none")
        .collect();
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let mut rng = Rng::new(seed ^ 0xfa17);
    let now_s = |s: &Shared| s.started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.nemesis_every.min(2.0)));
    while Instant::now() + Duration::from_secs_f64(args.nemesis_every) < until {
        let hold =
            Duration::from_secs_f64(args.nemesis_every * (0.5 + rng.below(50) as f64 / 100.0));
        let from_s = now_s(&shared);
        // Among the members now (a node being replaced is left alone).
        let members = shared.members();
        let n = members.len();
        let what = match kinds[rng.below(kinds.len() as u64) as usize] {
            "partition" => {
                let mut order: Vec<usize> = members.clone();
                for i in (1..n).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let shape = rng.below(4);
                let (sides, label) = match shape {
                    3 => {
                        // The leader cut off (when one is known), with a new leader
                        // elected on the other side while it still believes it leads.
                        let l = current_leader(&shared).unwrap_or(order[0]);
                        let rest: Vec<usize> =
                            members.iter().copied().filter(|&i| i != l).collect();
                        (vec![vec![l], rest], "leader isolated")
                    }
                    0 => {
                        let k = n / 2;
                        (
                            vec![order[..k].to_vec(), order[k..].to_vec()],
                            "majority/minority",
                        )
                    }
                    1 => (
                        vec![vec![order[0]], order[1..].to_vec()],
                        "one node isolated",
                    ),
                    _ => {
                        // A bridge: two halves that both see the middle node.
                        let mid = order[0];
                        let rest = &order[1..];
                        let k = rest.len() / 2;
                        let mut a = rest[..k].to_vec();
                        a.push(mid);
                        let mut b = rest[k..].to_vec();
                        b.push(mid);
                        (vec![a, b], "bridge")
                    }
                };
                partition_for(&shared, &sides, label, hold)
            }
            "isolate-leader" => {
                // Every time: the leader alone on one side, with clients still sending
                // it requests, while the others elect a leader and commit writes.
                let l = current_leader(&shared).unwrap_or(members[0]);
                let rest: Vec<usize> = members.iter().copied().filter(|&i| i != l).collect();
                partition_for(&shared, &[vec![l], rest], "leader isolated", hold)
            }
            "kill" => {
                let i = members[rng.below(n as u64) as usize];
                shared.kill(i);
                std::thread::sleep(hold);
                if shared.members().contains(&i) {
                    shared.start(i);
                }
                format!("kill -9 and restart {}", shared.ids[i])
            }
            "pause" => {
                let i = members[rng.below(n as u64) as usize];
                let pid = {
                    let mut net = shared.net.lock().expect("net");
                    net.nodes[i].as_mut().map(|p| {
                        p.paused = true;
                        p.child.id()
                    })
                };
                if let Some(pid) = pid {
                    signal(pid, libc::SIGSTOP);
                    std::thread::sleep(hold);
                    signal(pid, libc::SIGCONT);
                    if let Some(p) = shared.net.lock().expect("net").nodes[i].as_mut() {
                        p.paused = false;
                    }
                }
                format!("pause {}", shared.ids[i])
            }
            other => panic!(
                "unknown nemesis {other:?}: use partition, isolate-leader, kill, pause or none"
            ),
        };
        let fault = Fault {
            what,
            from_s,
            to_s: now_s(&shared),
        };
        println!(
            "  {:>6.1}-{:>6.1} s  {}",
            fault.from_s, fault.to_s, fault.what
        );
        faults.push(fault);
        std::thread::sleep(Duration::from_secs_f64(args.nemesis_every * 0.3));
    }
    faults
}

/// What the replacement of a lost node did, for the report.
#[derive(Default, Debug)]
pub(crate) struct Replacement {
    pub(crate) lost: String,
    pub(crate) new: String,
    /// Messages the members refused from the lost node, back under its old id.
    pub(crate) refused: u64,
    /// Seconds into the run: wiped, removed, added, caught up, promoted.
    pub(crate) steps: Vec<(String, f64)>,
    /// Snapshot transfers the new member completed to catch up.
    pub(crate) transfers: u64,
    /// Whether the new member loaded a snapshot from the store (its log says so).
    pub(crate) from_store: bool,
    pub(crate) done: bool,
}

/// A quarter into the run: a follower loses its disk and comes back under its old id
/// (refused), then is replaced by the spare node, step by step as the protocol
/// reference tells a user to.
pub(crate) fn replace(shared: Arc<Shared>, args: Args) -> Replacement {
    std::thread::sleep(Duration::from_secs_f64(args.duration / 4.0));
    let now_s = || shared.started.elapsed().as_secs_f64();
    let members = shared.members();
    let leader = current_leader(&shared);
    // A follower, chosen by the seed.
    let followers: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| Some(i) != leader)
        .collect();
    let lost = followers[args.seed as usize % followers.len()];
    let new = shared.ids.len() - 1;
    let mut r = Replacement {
        lost: shared.ids[lost].clone(),
        new: shared.ids[new].clone(),
        ..Replacement::default()
    };
    let refused_now = |shared: &Shared| -> u64 {
        shared
            .members()
            .into_iter()
            .filter(|&i| i != lost)
            .filter_map(|i| {
                ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_secs(2),
                )
            })
            .map(|b| b["status"]["refused_messages"].as_u64().unwrap_or(0))
            .sum()
    };
    let refused_before = refused_now(&shared);
    // The accident: the disk is gone, and the node is started again as it was.
    shared
        .members
        .lock()
        .expect("members")
        .retain(|&i| i != lost);
    shared.kill(lost);
    let _ = std::fs::remove_dir_all(shared.out.join("data").join(&shared.ids[lost]));
    shared.start(lost);
    r.steps.push((
        format!("{} wiped and restarted under its id", r.lost),
        now_s(),
    ));
    // Until its peers have refused some of its messages (a partition may keep it
    // apart for a while), 10 s at most.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        r.refused = refused_now(&shared).saturating_sub(refused_before);
        if r.refused > 0 {
            break;
        }
    }
    shared.kill(lost);
    let is = |code: u64, text: &'static str| {
        move |v: &Value| v["code"] == code && v["text"].as_str().is_some_and(|t| t.contains(text))
    };
    // 1. Remove the lost member.
    let removed = to_leader(
        &shared,
        &json!({"type": "member_remove", "member": r.lost}),
        "member_remove_ok",
        // Applied by an earlier attempt whose answer was lost.
        is(22, "is not a member"),
    );
    if removed.is_none() {
        return r;
    }
    r.steps.push((format!("{} removed", r.lost), now_s()));
    // 2. Add the new node as a learner, 3. start it empty with join.
    let added = to_leader(
        &shared,
        &json!({"type": "member_add", "member": r.new}),
        "member_add_ok",
        // Added by an earlier attempt whose answer was lost.
        is(22, "was already given"),
    );
    if added.is_none() {
        return r;
    }
    r.steps
        .push((format!("{} added as a learner", r.new), now_s()));
    // With a store, the new node is to start from it: wait (30 s at most) until a
    // member has a chain there. On a loaded machine the first upload can come later
    // than a quarter into the run.
    if args.store {
        let deadline = Instant::now() + Duration::from_secs(30);
        let in_store = |shared: &Shared| {
            shared.members().into_iter().any(|i| {
                ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_secs(2),
                )
                .is_some_and(|b| b["status"]["snapshot_store"]["uploaded_index"].is_u64())
            })
        };
        while !in_store(&shared) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    shared.start(new);
    // 4. Wait until it has applied what the leader had committed.
    let target = current_leader(&shared)
        .and_then(|l| {
            ask(
                &shared,
                l,
                json!({"type": "wal_status"}),
                Duration::from_secs(2),
            )
        })
        .and_then(|b| b["status"]["commit_index"].as_u64())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ask(
            &shared,
            new,
            json!({"type": "wal_status"}),
            Duration::from_secs(2),
        );
        if let Some(s) = s.as_ref().map(|b| &b["status"])
            && s["applied_index"].as_u64().unwrap_or(0) >= target
        {
            r.transfers = s["snapshot_transfers"]["completed"].as_u64().unwrap_or(0);
            r.from_store = std::fs::read_to_string(shared.out.join(format!("{}.log", r.new)))
                .is_ok_and(|log| log.contains("bootstrap: loaded the snapshot"));
            break;
        }
        if Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r.steps.push((format!("{} caught up", r.new), now_s()));
    // 5. Promote it.
    let promoted = to_leader(
        &shared,
        &json!({"type": "member_promote", "member": r.new}),
        "member_promote_ok",
        // Promoted by an earlier attempt whose answer was lost.
        is(22, "is not a learner"),
    );
    if promoted.is_none() {
        return r;
    }
    r.steps.push((format!("{} promoted", r.new), now_s()));
    shared.members.lock().expect("members").push(new);
    r.done = true;
    r
}

/// Ends every fault: no partition, no loss, nothing paused, every member running.
/// Returns the members.
pub(crate) fn end_faults(shared: &Shared) -> Vec<usize> {
    heal(shared);
    shared.net.lock().expect("net").lossy = false;
    let members = shared.members();
    for &i in &members {
        let pid = {
            let net = shared.net.lock().expect("net");
            net.nodes[i]
                .as_ref()
                .filter(|p| p.paused)
                .map(|p| p.child.id())
        };
        if let Some(pid) = pid {
            signal(pid, libc::SIGCONT);
        }
        if shared.net.lock().expect("net").nodes[i].is_none() {
            shared.start(i);
        }
    }
    members
}
