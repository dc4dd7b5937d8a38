//! How fast a snapshot file may be written while the log is syncing.
//!
//! Each fdatasync of the log flushes the disk's cache, and with it every byte of
//! snapshot written since the last flush: a snapshot written at the disk's full speed
//! makes each of the log's syncs carry a share of it. While the log syncs, a snapshot
//! is therefore written at most at a set rate; while it does not, at full speed, so a
//! node with no appends is not made to wait.
//!
//! The rule is pure: the caller reports each write (its bytes, the time, how many
//! syncs the log has done in all) and sleeps for what it is told.

use std::time::{Duration, Instant};

/// After the log's last sync seen, how long it counts as busy still: a write that
/// went by between two of its syncs does not end the pacing.
pub const QUIET: Duration = Duration::from_millis(20);

/// Paces one file's writes; see the module's documentation.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    /// The log's sync count at the previous report, and when it was last seen to move.
    syncs_seen: u64,
    moved_at: Option<Instant>,
    /// When the writer last went on writing (the previous report, or after its wait).
    last: Instant,
    /// Since the log was first seen syncing, without a pause: when that began and the
    /// bytes written since.
    busy: Option<(Instant, u64)>,
}

impl Pacer {
    /// A pacer allowing `bytes_per_sec` while the log syncs (0: no limit); `syncs` is
    /// the log's sync count now.
    pub fn new(bytes_per_sec: u64, now: Instant, syncs: u64) -> Pacer {
        Pacer {
            bytes_per_sec,
            syncs_seen: syncs,
            moved_at: None,
            last: now,
            busy: None,
        }
    }

    /// Reports a write of `bytes` that ended at `now`, when the log had done `syncs`
    /// syncs in all; returns how long to wait before the next write.
    pub fn after_write(&mut self, bytes: u64, now: Instant, syncs: u64) -> Duration {
        if syncs != self.syncs_seen {
            self.syncs_seen = syncs;
            self.moved_at = Some(now);
        }
        let log_busy = self.moved_at.is_some_and(|at| now - at < QUIET);
        if !log_busy || self.bytes_per_sec == 0 {
            self.busy = None;
            self.last = now;
            return Duration::ZERO;
        }
        let (since, written) = self.busy.get_or_insert((self.last, 0));
        *written += bytes;
        let due = *since + Duration::from_secs_f64(*written as f64 / self.bytes_per_sec as f64);
        if due <= now {
            // Behind the rate already: that earns no burst later.
            self.busy = Some((now, 0));
            self.last = now;
            return Duration::ZERO;
        }
        self.last = due;
        due - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn while_the_log_syncs_writes_keep_to_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4 * MIB, t0, 7);
        // Each write takes 10 ms and the log syncs during each: 1 MiB at 4 MiB/s is due
        // 250 ms after the busy period began.
        let mut now = t0;
        let mut syncs = 7;
        let mut total = Duration::ZERO;
        for _ in 0..8 {
            now += Duration::from_millis(10);
            syncs += 3;
            let wait = p.after_write(MIB, now, syncs);
            total += wait;
            now += wait;
        }
        // 8 MiB at 4 MiB/s: two seconds from the start, whatever the writes took.
        assert_eq!(now - t0, Duration::from_secs(2));
        assert_eq!(total, Duration::from_secs(2) - Duration::from_millis(80));
    }

    #[test]
    fn while_the_log_is_idle_nothing_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1, t0, 0);
        for i in 1..100 {
            assert_eq!(
                p.after_write(MIB, t0 + Duration::from_millis(i), 0),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn no_limit_never_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0, 0);
        for i in 1..100 {
            assert_eq!(
                p.after_write(MIB, t0 + Duration::from_millis(i), i),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn a_pause_of_the_log_ends_the_busy_period() {
        let t0 = Instant::now();
        let mut p = Pacer::new(MIB, t0, 0);
        let wait = p.after_write(MIB, t0, 1);
        assert_eq!(wait, Duration::from_secs(1));
        // The log went quiet: the next write is not held back for the bytes before it.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(p.after_write(MIB, t1, 1), Duration::ZERO);
        // It syncs again: a new period begins at the previous write, owing only this one.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(
            p.after_write(MIB / 2, t2, 2),
            Duration::from_millis(400),
            "the new period counts from the write before, not from the first period"
        );
    }

    #[test]
    fn a_write_between_two_syncs_keeps_the_pace() {
        let t0 = Instant::now();
        // 256 KiB at 64 MiB/s: 3.90625 ms each.
        let step = Duration::from_micros(3906) + Duration::from_nanos(250);
        let mut p = Pacer::new(64 * MIB, t0, 0);
        assert_eq!(p.after_write(MIB / 4, t0, 1), step);
        // No sync since that report, but the last one was just now: still busy.
        let t1 = t0 + step;
        assert_eq!(p.after_write(MIB / 4, t1, 1), step);
        // Quiet for QUIET: no longer.
        let t2 = t0 + QUIET;
        assert_eq!(p.after_write(MIB / 4, t2, 1), Duration::ZERO);
    }

    #[test]
    fn a_slow_write_earns_no_burst_later() {
        let t0 = Instant::now();
        let mut p = Pacer::new(MIB, t0, 0);
        // 1 MiB that took 2 s is already slower than the rate.
        assert_eq!(
            p.after_write(MIB, t0 + Duration::from_secs(2), 1),
            Duration::ZERO
        );
        // And the time lost is not made up for by writing faster later: the next MiB
        // still takes a second.
        let t = t0 + Duration::from_secs(2) + Duration::from_millis(1);
        assert_eq!(p.after_write(MIB, t, 2), Duration::from_millis(999));
    }
}
