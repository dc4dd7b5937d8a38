//! `wal_status`: the figures the appender gathers, and the policy's view of them.

use super::*;
use crate::core::policy::SegmentView;

impl Appender {
    pub(super) fn status(&self) -> Status {
        let segments = self.log.segment_infos();
        Status {
            first_offset: self.log.first_offset(),
            next_offset: self.log.next_offset(),
            entries: self.log.live_entries(),
            total_bytes: self.log.total_bytes(),
            segments: segments.len(),
            active_segment: segments.last().expect("active segment").file.clone(),
            keys: self.state.map.len() as u64,
            other_payloads: self.state.other_payloads,
            fsync: self.fsync,
            fsynced: !self.log.has_unsynced(),
            segment_bytes_max: self.log.segment_bytes_max(),
            payload_bytes_max: self.payload_bytes_max,
            latest_snapshot: self.latest_snapshot.clone(),
            last_snapshot_ms: self.last_snapshot_ms,
            counters: self.counters,
            poisoned: self.poison.reason().map(str::to_string),
            recovery: self.recovery.clone(),
            management: self.management(&segments),
            store: self.uploader.as_ref().map(UploaderHandle::status),
        }
    }

    pub(super) fn management(&self, segments: &[crate::wal::SegmentInfo]) -> Management {
        let auto = &self.auto;
        let now = self.clock.now();
        let progress = auto.progress(now);
        let triggers = policy::distances(&auto.thresholds, &progress).to_vec();
        let snapshots = auto
            .on_disk
            .iter()
            .map(|(offset, file)| {
                let known = auto.known.get(offset);
                KeptSnapshot {
                    file: file.clone(),
                    kind: if crate::snapshot::is_delta(file) {
                        "delta"
                    } else {
                        "full"
                    },
                    offset: *offset,
                    size_bytes: known.map(|k| k.0),
                    age_ms: known
                        .and_then(|k| k.1)
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                }
            })
            .collect();
        let snap = self.latest_snapshot.as_ref().map(|s| s.offset);
        let views: Vec<SegmentView> = segments
            .iter()
            .map(|s| SegmentView {
                sealed: s.sealed,
                start: s.start_offset,
                end: s.end_offset.map_or(s.start_offset, Offset::next),
                size_bytes: s.size_bytes,
            })
            .collect();
        let costs = policy::costs(
            &views,
            snap,
            self.log.first_offset(),
            self.log.next_offset(),
            self.state.map.len() as u64,
            (self.recovery.entries_replayed, self.recovery.replay_ms),
        );
        let trailing = if auto.policy.auto_compact {
            auto.policy.trailing_entries
        } else {
            0
        };
        let oldest_segment = segments.first().zip(views.first()).map(|(s, v)| {
            (
                s.file.clone(),
                policy::keeper(v.sealed, v.end, snap, trailing).reason(),
            )
        });
        Management {
            policy: auto.policy,
            triggers,
            snapshots,
            last_snapshot_bytes: self
                .last_snapshot_ms
                .and(self.latest_snapshot.as_ref().map(|s| s.size_bytes)),
            bytes_reclaimable: costs.bytes_reclaimable,
            replay_entries: costs.replay_entries,
            replay_estimate_ms: costs.replay_estimate_ms,
            oldest_segment,
        }
    }
}
