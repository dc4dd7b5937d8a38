//! Directed tests: one written-out schedule per Raft rule, each named for the rule it
//! pins down, each reaching the corner where a known failure of a production Raft
//! system happened. RELIABILITY.md lists them with the planted bug each one catches
//! (`make mutants`) and the published failure it comes from.

mod harness;

use harness::Group;

use crate::consensus::{Change, Changed, Refused};
use crate::fs::sim::Rng;

/// The node of `ids` that leads, if one does.
fn leader_among(g: &Group, ids: &[u64]) -> Option<u64> {
    ids.iter().copied().find(|&id| g.is_leader(id))
}

/// A client that writes through whichever node leads now (highest term first),
/// giving up after `patience` rounds; whether the write was acknowledged.
fn write_through_the_leader(g: &mut Group, key: &str, value: &str, patience: usize) -> bool {
    let mut leaders = g.leaders();
    leaders.sort_by_key(|&id| std::cmp::Reverse(g.term(id)));
    let Some(&l) = leaders.first() else {
        g.run(1);
        return false;
    };
    let Some(seq) = g.write(l, key, value) else {
        return false;
    };
    if g.run_until(patience, |g| g.answer(l, seq).is_some()) {
        true
    } else {
        g.give_up(l, seq);
        false
    }
}

/// Jepsen's etcd 0.4.1 finding: a leader cut off from the majority, whose clock runs
/// slow, still believes it leads while the others elect a new leader and commit a
/// write. A read at the old leader must not return the value from before that write.
#[test]
fn a_deposed_leader_never_serves_a_read() {
    let mut g = Group::with_leader(3, 1);
    g.write_acked(1, "x", "1");
    assert!(g.run_until(50, Group::quiet));
    g.isolate(1);
    g.set_ticking(1, false);
    assert!(g.run_until(500, |g| leader_among(g, &[2, 3]).is_some()));
    let l = leader_among(&g, &[2, 3]).expect("a new leader");
    g.write_acked(l, "x", "2");
    assert!(
        g.is_leader(1),
        "the schedule needs n1 still believing it leads"
    );
    let r = g.read(1, "x").expect("n1 knows a leader: itself");
    g.run(50);
    assert_eq!(
        g.answer(1, r),
        None,
        "the deposed leader answered a read alone"
    );
    g.set_ticking(1, true);
    g.heal();
    assert!(g.run_until(500, |g| g.answer(1, r).is_some()));
    g.finish(l);
}

/// etcd #7331, TiKV PR #9239: a new leader does not know which entries of earlier
/// terms were committed until an entry of its own term is. Here the old leader
/// committed `x = 2` with both followers' acknowledgements and was cut off before
/// either learned it was committed; a read at the new leader, before the empty
/// entry of its term commits, must not return `x = 1`.
#[test]
fn a_new_leader_serves_no_read_before_an_entry_of_its_term_commits() {
    let mut g = Group::with_leader(3, 1);
    g.write_acked(1, "x", "1");
    assert!(g.run_until(50, Group::quiet));
    let w = g.write(1, "x", "2").expect("n1 leads");
    assert!(g.run_until(20, |g| g.answer(1, w).is_some()));
    // The messages that would tell the followers the new commit index are lost.
    g.isolate(1);
    let committed_on_1 = g.peer(1).role().3;
    assert!(g.peer(2).role().3 < committed_on_1 && g.peer(3).role().3 < committed_on_1);
    assert!(g.run_until(500, |g| leader_among(g, &[2, 3]).is_some()));
    let l = leader_among(&g, &[2, 3]).expect("a new leader");
    let other = 5 - l;
    // The new leader's entry of its term cannot commit for a while.
    g.cut_one_way(l, other);
    assert!(g.peer(l).role().3 < committed_on_1, "the schedule needs it");
    let r = g.read(l, "x").expect("the leader knows a leader: itself");
    g.run(8);
    assert_eq!(
        g.answer(l, r),
        None,
        "a read served before the leader committed an entry of its term"
    );
    g.heal();
    assert!(g.run_until(500, |g| g.answer(l, r).is_some()));
    g.finish(l);
}

/// etcd #20418: a leader's process stops while the confirmations of a read are on
/// their way; its client gives up; the others elect a leader and commit a write; when
/// the process goes on, a new read arrives first and the old confirmations (each
/// delivered twice) after it. They confirm the old read only, which nobody waits
/// for: the new read must not be answered from before the write.
#[test]
fn a_paused_leader_that_resumes_answers_no_read_from_before_the_pause() {
    let mut g = Group::with_leader(3, 1);
    g.write_acked(1, "x", "1");
    assert!(g.run_until(50, Group::quiet));
    let before = g.read(1, "x").expect("n1 leads");
    g.deliver(); // the heartbeats that carry the read reach the followers
    g.pause(1);
    g.deliver(); // their confirmations wait for n1
    g.give_up(1, before);
    assert!(g.run_until(500, |g| leader_among(g, &[2, 3]).is_some()));
    let l = leader_among(&g, &[2, 3]).expect("a new leader");
    g.write_acked(l, "x", "2");
    g.duplicate = true;
    g.unpause(1);
    let after = g.read(1, "x").expect("n1 still believes it leads");
    g.deliver_held(1);
    g.duplicate = false;
    assert!(g.run_until(500, |g| g.answer(1, after).is_some()));
    g.finish(l);
}

/// Entries of an earlier run of a node are applied again after it restarts. A
/// request it takes before it has replayed them (here: the first message from the
/// leader and a client's write reach it together) must be answered by its own entry,
/// never by the old entry with the same request number.
#[test]
fn after_a_restart_a_request_gets_the_answer_of_its_own_entry() {
    let mut g = Group::with_leader(3, 2);
    for v in ["a", "b", "c"] {
        g.write_acked(1, "k", v);
    }
    assert!(g.run_until(50, Group::quiet));
    g.crash(1);
    g.restart(1);
    // The leader's next heartbeat tells n1 who leads; n1 has not run a cycle yet.
    while g.peer(1).role().2 == 0 {
        g.tick(2);
        g.step_in_flight_to(1);
    }
    let seq = g.write(1, "k", "new").expect("n1 knows the leader");
    assert_eq!(
        seq, 1,
        "the schedule needs a request number the old run used"
    );
    assert!(g.run_until(300, |g| g.answer(1, seq).is_some()));
    g.write_acked(1, "k", "newer");
    g.finish(2);
}

/// braft #182, openraft PR #2051: a membership change proposed by a leader that has
/// not yet committed an entry of its own term can overlap a change of the previous
/// leader that it does not know committed. The leader refuses it until then, and a
/// second change until the first is applied.
#[test]
fn a_membership_change_waits_for_the_leaders_term_and_for_the_change_before_it() {
    let mut g = Group::new(3);
    g.campaign(1);
    assert!(g.run_until(50, |g| g.is_leader(1)));
    let term = g.term(1);
    assert!(
        g.peer(1)
            .node
            .raft
            .raft_log
            .term(g.peer(1).role().3)
            .unwrap()
            < term,
        "the schedule needs the leader's first entry not yet committed"
    );
    let early = g.change(1, &Change::AddLearner("n4".into()));
    assert!(
        matches!(early, Err(Refused::NotYet(_))),
        "a change proposed before the leader committed an entry of its term: {early:?}"
    );
    assert!(g.run_until(50, |g| g.peer(1).node.raft.commit_to_current_term()));
    let first = g.change(1, &Change::AddLearner("n4".into())).expect("now");
    let second = g.change(1, &Change::AddLearner("n5".into()));
    assert!(
        matches!(second, Err(Refused::Change(_))),
        "a second change proposed while the first is under way: {second:?}"
    );
    assert!(g.run_until(100, |g| g.peer(1).members().1 == [4]));
    assert!(matches!(
        g.changed(1)[..],
        [(seq, Changed::Done { id: 4, .. })] if seq == first
    ));
    g.run(5);
    g.change(1, &Change::AddLearner("n5".into()))
        .expect("the first change is applied: the next may go");
}

/// etcd #13527, hashicorp/raft #612: a leader whose disk stops syncing keeps sending
/// its entries, and one follower acknowledges them. The leader's own copy is not
/// durable, so nothing commits and no client is answered until the disk syncs again
/// (the harness checks every acknowledgement against the durable copies).
#[test]
fn a_leader_whose_disk_stalls_acknowledges_nothing_it_has_not_made_durable() {
    let mut g = Group::with_leader(3, 1);
    g.write_acked(1, "x", "1");
    assert!(g.run_until(50, Group::quiet));
    g.isolate(3);
    g.stall_disk(1, true);
    let w = g.write(1, "x", "2").expect("n1 leads");
    g.run(100);
    assert_eq!(
        g.answer(1, w),
        None,
        "acknowledged with its entry on one disk"
    );
    g.stall_disk(1, false);
    assert!(g.run_until(100, |g| g.answer(1, w).is_some()));
    g.heal();
    g.run(50);
    g.finish(1);
}

/// scylladb #9965, openraft #511: appends delivered twice and out of order (and
/// every other message too) under a workload on every node: no replica applies an
/// entry another applied differently, no request takes two offsets, and the history
/// is linearizable.
#[test]
fn reordered_and_duplicated_messages_never_apply_an_entry_twice_or_out_of_place() {
    for seed in 0..20 {
        let mut g = Group::with_leader(3, 1 + seed % 3);
        g.duplicate = true;
        g.shuffle = Some(Rng::new(seed));
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut open = Vec::new();
        for round in 0..400 {
            if round % 3 == 0 {
                let id = 1 + rng.below(3);
                let key = format!("k{}", rng.below(2));
                let seq = if rng.coin() {
                    g.write(id, &key, &round.to_string())
                } else {
                    g.read(id, &key)
                };
                open.extend(seq.map(|s| (id, s, round)));
            }
            // Clients give up after 60 rounds.
            open.retain(|&(id, seq, at)| {
                if g.answer(id, seq).is_some() {
                    return false;
                }
                if round - at > 60 {
                    g.give_up(id, seq);
                    return false;
                }
                true
            });
            g.round();
        }
        g.duplicate = false;
        g.shuffle = None;
        g.run(100);
        let l = g.leaders().into_iter().max_by_key(|&id| g.term(id));
        g.finish(l.expect("a leader"));
    }
}

/// Cloudflare's 2020 outage, openraft #2080: with n1 and n2 unable to reach each other
/// and n3 reaching both (a bridge), the group keeps one leader (check-quorum and
/// pre-vote: n3 does not vote while it hears a leader) and commits writes.
#[test]
fn under_a_bridge_partition_one_leader_stays_and_writes_commit() {
    let mut g = Group::with_leader(3, 1);
    g.cut_one_way(1, 2);
    g.cut_one_way(2, 1);
    let term = g.term(1);
    // Idle first: n2's log is as long as n3's, so only n3's refusal to vote while it
    // hears a leader keeps n2 from taking over (and n1, then, from taking it back).
    g.run(500);
    assert!(
        g.is_leader(1) && g.term(3) == term,
        "terms went from {term} to {}: leaders deposed each other",
        g.term(3)
    );
    let mut acked = 0;
    for i in 0..40 {
        acked += usize::from(write_through_the_leader(&mut g, "x", &i.to_string(), 30));
        g.run(10);
    }
    assert!(acked >= 35, "{acked} of 40 writes acknowledged");
    g.heal();
    g.run(50);
    g.finish(3);
}

/// A one-way cut: the leader's messages reach the others, theirs never reach it. It
/// must step down (check-quorum) so that the others elect a leader and commit.
#[test]
fn a_leader_that_cannot_hear_its_followers_steps_down_and_the_others_go_on() {
    let mut g = Group::with_leader(3, 1);
    g.cut_one_way(2, 1);
    g.cut_one_way(3, 1);
    assert!(
        g.run_until(200, |g| !g.is_leader(1)),
        "n1 still leads, hearing nobody"
    );
    // The others elect a leader (how soon depends on raft-rs's randomized election
    // timeouts, which this schedule does not choose), then commit.
    assert!(
        g.run_until(300, |g| leader_among(g, &[2, 3]).is_some()),
        "n2 and n3 elected no leader"
    );
    let mut acked = 0;
    for i in 0..20 {
        acked += usize::from(write_through_the_leader(&mut g, "x", &i.to_string(), 30));
        g.run(10);
    }
    assert!(acked >= 15, "{acked} of 20 writes acknowledged");
    let l = leader_among(&g, &[2, 3]).expect("a leader among the others");
    let term = g.term(l);
    g.run(300);
    assert!(
        leader_among(&g, &[2, 3]) == Some(l) && g.term(l) == term,
        "n1's campaigns deposed the leader it cannot hear"
    );
    g.heal();
    g.run(50);
    g.finish(l);
}

/// A follower's write forwarded to a leader that is handing leadership over is
/// dropped there (raft-rs drops proposals during a transfer). The follower must ask
/// the new leader as soon as it knows it, not after its usual wait for a lost
/// proposal (four heartbeat intervals).
#[test]
fn a_write_forwarded_to_a_leader_handing_over_reaches_the_new_leader_at_once() {
    let mut g = Group::with_leader(3, 1);
    g.write_acked(1, "x", "1");
    assert!(g.run_until(50, Group::quiet));
    g.transfer(1, 2);
    let seq = g.write(3, "x", "2").expect("n3 knows a leader: n1");
    let mut rounds = 0;
    while g.answer(3, seq).is_none() {
        assert!(rounds < 100, "the write was never answered");
        g.round();
        rounds += 1;
    }
    assert!(g.is_leader(2), "the schedule needs n2 to have taken over");
    // The election takes three rounds, the commit and its news to n3 five more: 9
    // rounds when n3 proposes again as soon as it hears of n2, 13 when it waits out
    // its timer (four heartbeat intervals of 2 ticks from its first proposal).
    assert!(
        rounds <= 10,
        "the write waited {rounds} rounds: it was proposed again on the follower's \
         timer, not when the new leader was known"
    );
    g.finish(2);
}
