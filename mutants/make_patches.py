#!/usr/bin/env python3
"""Writes mutants/*.patch: each plants one bug in a copy of the tree.

Each mutant names the tests that must fail with it applied (`make mutants` checks
that they do). When the code a mutant edits moves, fix its `old` text here and run
`python3 mutants/make_patches.py` again; it refuses to write a patch whose text is
not found exactly once.
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (name, what it plants, cargo test arguments that must fail, [(file, old, new)])
MUTANTS = [
    ("ack-before-fdatasync",
     "acknowledge a group commit before its fdatasync",
     "--test it -- crash::every_crash_point_in_every_mode_keeps_every_acknowledged_entry",
     [("src/actor/appender/batch.rs",
       "            if let Err(e) = self.log.sync() {\n                return Err(self.poison(format!(\"fsync of the log failed: {e}\")));\n            }",
       "            if false {\n                let _ = self.log.sync();\n            }")]),
    ("compaction-deletes-past-the-snapshot",
     "compaction deletes every sealed segment, far past the snapshot",
     "--test it -- crash::every_crash_point_in_every_mode_keeps_every_acknowledged_entry",
     [("src/actor/appender/mod.rs",
       "let segments = self.log.sealed_below(at);",
       "let segments = self.log.sealed_below(next);")]),
    ("snapshot-rename-without-directory-fsync",
     "a snapshot is renamed into place without the directory fsync",
     "--test it -- crash::crash_after_the_snapshot_rename_before_the_directory_fsync",
     [("src/fs/mod.rs",
       "        fs.rename(&temp, &join(dir, name))?;\n        fs.sync_dir(dir).map_err(sync_failed)",
       "        fs.rename(&temp, &join(dir, name))?;\n        if name.ends_with(\".snap\") {\n            return Ok(());\n        }\n        fs.sync_dir(dir).map_err(sync_failed)")]),
    ("retry-a-failed-log-sync",
     "retry a failed log fdatasync once, then acknowledge",
     "--test it -- crash::a_failed_sync_anywhere_is_fail_stop",
     [("src/wal/mod.rs",
       "        self.active.sync_data()?;",
       "        self.active\n            .sync_data()\n            .or_else(|_| self.active.sync_data())?;")]),
    ("ignore-a-failed-snapshot-directory-fsync",
     "ignore a failed directory fsync while writing a snapshot",
     "--test it -- crash::a_failed_sync_anywhere_is_fail_stop",
     [("src/fs/mod.rs",
       "        fs.rename(&temp, &join(dir, name))?;\n        fs.sync_dir(dir).map_err(sync_failed)",
       "        fs.rename(&temp, &join(dir, name))?;\n        if name.ends_with(\".snap\") || name.ends_with(\".delta\") {\n            let _ = fs.sync_dir(dir);\n            return Ok(());\n        }\n        fs.sync_dir(dir).map_err(sync_failed)")]),
    ("compaction-moves-the-first-offset-too-far",
     "compaction moves the first offset past what it was asked",
     "--test it -- crash::every_crash_point_in_every_mode_keeps_every_acknowledged_entry",
     [("src/actor/appender/mod.rs",
       "let segments = self.log.sealed_below(at);",
       "let at = at.plus(3).min(next);\n                let segments = self.log.sealed_below(at);")]),
    ("no-after-sync-flag",
     "records never carry the after-sync flag, so damage passes for a torn tail",
     "--test it -- damage::",
     [("src/wal/mod.rs",
       "        let after_sync = !self.unsynced;",
       "        let after_sync = false && !self.unsynced;")]),
    ("record-checksum-not-checked",
     "a record whose checksum does not match is read as valid",
     "--lib -- wal::record",
     [("src/wal/record.rs",
       "        && checksum(header.stored_len(), header.offset, payload) == header.crc",
       "        && (checksum(header.stored_len(), header.offset, payload) == header.crc || true)")]),
    ("segment-without-directory-sync",
     "a new segment is renamed into place without the directory sync",
     "--test it -- crash::crash_after_a_new_segment_is_created_before_its_directory_sync crash::every_crash_point",
     [("src/fs/mod.rs",
       "        fs.rename(&temp, &join(dir, name))?;\n        fs.sync_dir(dir).map_err(sync_failed)",
       "        fs.rename(&temp, &join(dir, name))?;\n        if name.ends_with(\".log\") {\n            return Ok(());\n        }\n        fs.sync_dir(dir).map_err(sync_failed)")]),
    ("delta-rename-without-directory-fsync",
     "a delta is renamed into place without the directory fsync",
     "--test it -- crash::every_crash_point_in_every_mode_keeps_every_acknowledged_entry",
     [("src/fs/mod.rs",
       "        fs.rename(&temp, &join(dir, name))?;\n        fs.sync_dir(dir).map_err(sync_failed)",
       "        fs.rename(&temp, &join(dir, name))?;\n        if name.ends_with(\".delta\") {\n            return Ok(());\n        }\n        fs.sync_dir(dir).map_err(sync_failed)")]),
    ("first-offset-without-directory-fsync",
     "log.meta is renamed into place without the directory fsync",
     "--test it -- crash::every_crash_point_in_every_mode_keeps_every_acknowledged_entry strace::syscalls_happen_in_the_durable_order",
     [("src/fs/mod.rs",
       "        fs.rename(&temp, &join(dir, name))?;\n        fs.sync_dir(dir).map_err(sync_failed)",
       "        fs.rename(&temp, &join(dir, name))?;\n        if name == \"log.meta\" {\n            return Ok(());\n        }\n        fs.sync_dir(dir).map_err(sync_failed)")]),
    ("retirement-without-directory-fsync",
     "an old snapshot is renamed for retirement and freed without the directory fsync",
     "--test it -- crash::crash_while_an_old_snapshot_is_retired",
     [("src/actor/snapshotter.rs",
       "            if let Err(e) = self.fs.sync_dir(&self.dir) {\n                self.poison.set(format!(\n                    \"the directory sync after retiring",
       "            if let Err(e) = Ok::<(), std::io::Error>(()) {\n                self.poison.set(format!(\n                    \"the directory sync after retiring")]),
    ("ignore-a-failed-delta-directory-fsync",
     "ignore a failed directory fsync while writing a delta",
     "--test it -- crash::a_failed_sync_anywhere_is_fail_stop",
     [("src/fs/mod.rs",
       "        fs.rename(&temp, &join(dir, name))?;\n        fs.sync_dir(dir).map_err(sync_failed)",
       "        fs.rename(&temp, &join(dir, name))?;\n        if name.ends_with(\".delta\") {\n            let _ = fs.sync_dir(dir);\n            return Ok(());\n        }\n        fs.sync_dir(dir).map_err(sync_failed)")]),
    ("ignore-a-failed-retirement-directory-sync",
     "ignore a failed directory sync while retiring an old snapshot",
     "--test it -- crash::a_failed_sync_anywhere_is_fail_stop",
     [("src/actor/snapshotter.rs",
       "            if let Err(e) = self.fs.sync_dir(&self.dir) {\n                self.poison.set(format!(\n                    \"the directory sync after retiring",
       "            if let Err(e) = self.fs.sync_dir(&self.dir).or(Ok::<(), std::io::Error>(())) {\n                self.poison.set(format!(\n                    \"the directory sync after retiring")]),
    ("ignore-a-failed-compaction-directory-sync",
     "ignore a failed directory sync after a compaction's deletions",
     "--test it -- crash::a_failed_sync_anywhere_is_fail_stop",
     [("src/actor/compactor.rs",
       "        if !removed.is_empty()\n            && let Err(e) = self.fs.sync_dir(&self.dir)",
       "        if !removed.is_empty()\n            && let Err(e) = self.fs.sync_dir(&self.dir).or(Ok::<(), std::io::Error>(()))")]),
    ("new-directory-without-parent-sync",
     "the node's new data directory is used without syncing its parent",
     "--test it -- strace::syscalls_happen_in_the_durable_order",
     [("src/node.rs",
       "    for parent in created.iter().filter_map(|d| d.parent()) {",
       "    for parent in created.iter().filter_map(|d| d.parent()).filter(|_| false) {")]),
    ("no-sync-at-open",
     "recovery leaves the killed run's unsynced tail unsynced before the first write",
     "--test it -- damage::a_restart_after_kill_then_a_power_cut_never_looks_like_damage",
     [("src/wal/recover.rs",
       "                file.sync_data().map_err(|e| {",
       "                Ok::<(), std::io::Error>(()).map_err(|e| {")]),
    ("no-panic-guard",
     "a panicking actor does not poison the node",
     "--test it -- library::a_panic_in_the_snapshotter_poisons_the_node library::a_panic_in_the_compactor_poisons_the_node",
     [("src/actor/mod.rs",
       "    if let Some((name, on_panic)) = ON_PANIC.with(|g| g.borrow_mut().take()) {",
       "    if let Some((name, on_panic)) = ON_PANIC.with(|g| g.borrow_mut().take()).filter(|_| false) {")]),
    ("compaction-reported-before-its-directory-sync",
     "a compaction is counted done before the directory sync of its deletions",
     "--test it -- library::a_compaction_counts_as_done_only_after_its_directory_sync",
     [("src/actor/compactor.rs",
       "        if !removed.is_empty()\n            && let Err(e) = self.fs.sync_dir(&self.dir)",
       "        let _ = self.feedback.send(Feedback::Compacted {\n            first_offset: at,\n            removed: removed.clone(),\n            resized: None,\n            bytes_freed,\n        });\n        if !removed.is_empty()\n            && let Err(e) = self.fs.sync_dir(&self.dir)")]),
    ("replies-wait-in-the-buffer",
     "the router waits for input with replies still in its buffer",
     "--test it -- node::a_reply_is_written_before_the_node_waits_for_more_input",
     [("src/router/mod.rs",
       "            if done.is_empty() && input.is_empty() && peers.is_empty() {",
       "            if false && done.is_empty() && input.is_empty() && peers.is_empty() {")]),
    ("scan-ignores-the-log-start",
     "recovery scans a segment whose compacted blocks were freed from its header",
     "--test it -- node::compacting_inside_the_active_segment_frees_its_blocks_and_reports_them crash::crash_around_freeing_the_compacted_blocks_of_a_live_segment",
     [("src/wal/scan.rs",
       "            && let Some(skip) = log_start.skip.filter(|s| s.segment == *start)",
       "            && let Some(skip) = log_start.skip.filter(|_| false)")]),
    ("blocks-freed-before-the-log-start-is-durable",
     "compacted blocks are freed before log.meta says where the live log starts",
     "--test it -- crash::every_crash_point_in_every_mode_keeps_every_acknowledged_entry",
     [("src/actor/compactor.rs",
       "        let start = LogStart {\n            first_offset: at,",
       "        if skip.byte >= 2 * BATCH_ALIGN_BYTES {\n            let _ = self.punch(file, BATCH_ALIGN_BYTES, skip.byte / BATCH_ALIGN_BYTES * BATCH_ALIGN_BYTES);\n        }\n        let start = LogStart {\n            first_offset: at,")]),
    ("freed-blocks-reach-the-first-live-record",
     "the hole punched below the first live offset takes the block of its record too",
     "--test it -- node::compacting_inside_the_active_segment_frees_its_blocks_and_reports_them crash::crash_around_freeing_the_compacted_blocks_of_a_live_segment",
     [("src/actor/compactor.rs",
       "            skip.byte / BATCH_ALIGN_BYTES * BATCH_ALIGN_BYTES,\n        );",
       "            skip.byte / BATCH_ALIGN_BYTES * BATCH_ALIGN_BYTES + BATCH_ALIGN_BYTES,\n        );")]),
    ("raft-messages-before-persistence",
     "a follower's votes and acknowledgements leave before its log and hard state are durable",
     "--lib -- consensus::sim",
     [("src/consensus/mod.rs",
       "        out.send = rd.take_messages();",
       "        out.send = rd.take_messages();\n        out.send.extend(rd.take_persisted_messages());")]),
    ("reads-without-read-index",
     "a read is served from the local state machine without confirming leadership",
     "--lib -- consensus::sim",
     [("src/consensus/mod.rs",
       "        self.node.read_index(seq.to_le_bytes().to_vec());\n        Ok(seq)",
       "        self.asked.remove(&seq);\n        self.reads.push((seq, 0));\n        Ok(seq)")]),
    ("checker-ignores-real-time",
     "the linearizability checker lets an operation take effect before one that returned before it began",
     "--lib -- lincheck",
     [("src/lincheck.rs",
       "            .min()\n            .unwrap_or(u64::MAX);",
       "            .min()\n            .map(|_| u64::MAX)\n            .unwrap_or(u64::MAX);")]),
    ("raft-acknowledgement-before-sync",
     "the consensus actor sends votes and acknowledgements before the sync that makes them true",
     "--test it -- consensus::every_vote_and_acknowledgement_is_durable_before_it_leaves",
     [("src/cluster/mod.rs",
       "            for m in cycle.send {\n                self.transport.send(m);\n            }\n            if let Err(e) = self.peer.store_mut().sync() {",
       "            for m in cycle.send {\n                self.transport.send(m);\n            }\n            for m in std::mem::take(&mut persist.then_send) {\n                self.transport.send(m);\n            }\n            if let Err(e) = self.peer.store_mut().sync() {"),
      ("src/cluster/mod.rs",
       "            let Some(persist) = cycle.persist else {",
       "            let Some(mut persist) = cycle.persist else {")]),
    ("raft-vote-not-persisted",
     "raft.state is rewritten when the term changes but not when only the vote does",
     "--test it -- raftlog::a_vote_alone_is_made_durable_by_sync",
     [("src/consensus/durable.rs",
       "        if hs.term != self.durable_state.term || hs.vote != self.durable_state.vote {",
       "        if hs.term != self.durable_state.term {")]),
    ("raft-truncation-without-sync",
     "a conflicting suffix is cut from the segment without syncing before new entries follow",
     "--test it -- raftlog::a_power_cut_at_every_operation_keeps_what_was_durable",
     [("src/wal/mod.rs",
       "        self.active.allocate(target)?;\n        self.active.sync_data().map_err(sync_failed)?;",
       "        self.active.allocate(target)?;")]),
]


def main():
    out = ROOT / "mutants"
    for old_patch in out.glob("*.patch"):
        old_patch.unlink()
    for name, what, tests, edits in MUTANTS:
        originals = {}
        try:
            for path, old, new in edits:
                p = ROOT / path
                text = originals.setdefault(path, p.read_text())
                current = p.read_text()
                if current.count(old) != 1:
                    sys.exit(f"{name}: the text to change is not found exactly once in {path}")
                p.write_text(current.replace(old, new))
            diff = subprocess.run(["git", "diff", "--", *originals], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout
        finally:
            for path, text in originals.items():
                (ROOT / path).write_text(text)
        header = f"# plants: {what}\n# must fail: cargo test {tests}\n"
        (out / f"{name}.patch").write_text(header + diff)
        print(f"wrote mutants/{name}.patch")


if __name__ == "__main__":
    main()
