//! The sending side's hold on its log, as a state machine without I/O: a leader keeps
//! the log a follower catching up from a snapshot goes on from, offers that follower a
//! snapshot again when it stops asking, and lets go once the follower has caught up or
//! after a pin's time without an ask. The consensus actor drives it with raft-rs's view
//! of its followers and the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::CHUNK_BYTES;

/// How long a leader waits for a follower to ask for chunks of the snapshot it offered
/// before it offers again (raft-rs sends a new offer once told the last one failed):
/// 3 s, or twice the time a window takes at the send rate if that is longer.
pub(crate) fn offer_wait(rate: u64, limits: &crate::config::ClusterLimits) -> Duration {
    let window = u64::from(limits.transfer_window) * CHUNK_BYTES;
    let at_rate = if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(2.0 * window as f64 / rate as f64)
    };
    at_rate.max(Duration::from_secs(3))
}

/// A leader's followers catching up from a snapshot: when each was last heard of
/// (offered one, or asked for chunks) and the index it goes on from.
#[derive(Debug)]
pub(crate) struct Holds {
    serving: HashMap<u64, (Instant, u64)>,
    /// How long a follower may stay silent before its offer counts as failed.
    offer_wait: Duration,
    /// How long a follower is held for after its last ask.
    pin: Duration,
}

impl Holds {
    pub(crate) fn new(offer_wait: Duration, pin: Duration) -> Holds {
        Holds {
            serving: HashMap::new(),
            offer_wait,
            pin,
        }
    }

    /// Follower `from` asked for chunks of `file`; `in_snapshot` is raft-rs's list of
    /// followers being sent a snapshot, with its index. The follower goes on from the
    /// offered chain's tip (it asks for the base first), or from the file's own index.
    pub(crate) fn asked(
        &mut self,
        from: u64,
        file: &str,
        in_snapshot: &[(u64, u64)],
        now: Instant,
    ) {
        let own = crate::core::layout::parse_raft_snapshot(file).unwrap_or(0);
        let index = in_snapshot
            .iter()
            .find(|(id, _)| *id == from)
            .map_or(own, |(_, tip)| (*tip).max(own));
        self.serving.insert(from, (now, index));
    }

    /// The first index the log must keep, given `keep` wanted and the followers
    /// `in_snapshot`: each follower receiving a snapshot, or still asking for one (raft-rs
    /// may have been told an offer failed, and offered again meanwhile), goes on from the
    /// log right after it, however long the transfer takes, or it would need another
    /// snapshot as soon as it installed this one.
    pub(crate) fn keep(&self, keep: u64, in_snapshot: &[(u64, u64)]) -> u64 {
        let mut keep = keep;
        for (_, sending) in in_snapshot {
            keep = keep.min(sending + 1);
        }
        for (_, sending) in self.serving.values() {
            if *sending > 0 {
                keep = keep.min(sending + 1);
            }
        }
        keep
    }

    /// Time passed: returns the followers whose offer nobody acted on for the offer
    /// wait (raft-rs is to be told it failed, so that it offers again: to a follower
    /// that restarted, say). A follower that caught up past `newest` (this node's newest
    /// snapshot) and past what it was sent, by `matched`, needs nothing a compaction
    /// frees: it is no longer held (the policy's rule for followers takes over); nor is
    /// one silent for the pin's time.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        in_snapshot: &[(u64, u64)],
        matched: &HashMap<u64, u64>,
        newest: u64,
    ) -> Vec<u64> {
        let mut failed = Vec::new();
        for (id, index) in in_snapshot {
            let quiet = self
                .serving
                .get(id)
                .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= self.offer_wait);
            if quiet {
                self.serving.insert(*id, (now, *index));
                failed.push(*id);
            }
        }
        self.serving.retain(|id, (at, index)| {
            now.saturating_duration_since(*at) < self.pin
                && matched.get(id).is_none_or(|m| *m < newest.max(*index))
        });
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::layout;

    fn holds() -> Holds {
        Holds::new(Duration::from_secs(3), Duration::from_secs(30))
    }

    #[test]
    fn an_ask_holds_the_log_from_the_offered_tip_on() {
        let t0 = Instant::now();
        let mut h = holds();
        // Asking for the base of a chain whose tip raft-rs offered at 500.
        h.asked(2, &layout::raft_snapshot(300), &[(2, 500)], t0);
        assert_eq!(h.keep(1000, &[]), 501);
        // Without raft-rs's view, the file's own index.
        let mut h = holds();
        h.asked(3, &layout::raft_snapshot(300), &[], t0);
        assert_eq!(h.keep(1000, &[]), 301);
        // raft-rs's followers in snapshot are held too, and the lowest wins.
        assert_eq!(h.keep(1000, &[(2, 200)]), 201);
        assert_eq!(h.keep(100, &[(2, 200)]), 100);
    }

    #[test]
    fn a_silent_follower_is_offered_again_after_the_offer_wait() {
        let t0 = Instant::now();
        let mut h = holds();
        let none = HashMap::new();
        // Never heard of: offered again at once (then waited for).
        assert_eq!(h.tick(t0, &[(2, 500)], &none, 0), vec![2]);
        assert_eq!(
            h.tick(t0 + Duration::from_secs(2), &[(2, 500)], &none, 0),
            Vec::<u64>::new()
        );
        h.asked(
            2,
            &layout::raft_snapshot(500),
            &[(2, 500)],
            t0 + Duration::from_secs(2),
        );
        assert_eq!(
            h.tick(t0 + Duration::from_secs(4), &[(2, 500)], &none, 0),
            Vec::<u64>::new()
        );
        assert_eq!(
            h.tick(t0 + Duration::from_secs(5), &[(2, 500)], &none, 0),
            vec![2]
        );
    }

    #[test]
    fn a_follower_is_let_go_once_caught_up_or_after_the_pin() {
        let t0 = Instant::now();
        let mut h = holds();
        h.asked(2, &layout::raft_snapshot(500), &[], t0);
        h.asked(3, &layout::raft_snapshot(500), &[], t0);
        // Follower 2 matched past the snapshot it was sent and this node's newest.
        let matched = HashMap::from([(2, 600), (3, 400)]);
        h.tick(t0, &[], &matched, 550);
        assert_eq!(h.keep(1000, &[]), 501);
        assert!(h.serving.contains_key(&3) && !h.serving.contains_key(&2));
        // Matched past 500 but not past the newest snapshot: still held.
        h.tick(t0, &[], &HashMap::from([(3, 520)]), 550);
        assert_eq!(h.keep(1000, &[]), 501);
        h.tick(t0 + Duration::from_secs(30), &[], &HashMap::new(), 550);
        assert_eq!(h.keep(1000, &[]), 1000);
    }
}
