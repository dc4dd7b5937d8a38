//! The receiving side of a snapshot transfer as a state machine without I/O: it is told
//! what happened (an offer, a chunk, bytes made durable, a fetch from the store ended,
//! the chain verified or not, time passed) and answers what to do ([`Do`]: ask the
//! leader, write a chunk, verify the chain, fetch from the store, remove part files).
//! The cluster snapshotter carries that out; the disk is read only through
//! [`PartFiles`], which a test answers from a map.

use std::time::{Duration, Instant};

use super::{CHUNK_BYTES, ChainId, Part, Phases, Transfers};
use crate::raftlog::image::Link;

/// How long a fetch from the store may take before the leader is asked instead.
pub(crate) const FETCH_MAX: Duration = Duration::from_secs(60);

/// How long a whole chain may wait for its verification before it is asked again.
pub(crate) const VERIFY_AGAIN: Duration = Duration::from_secs(10);

/// What the receiving side asks its driver to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Do {
    /// Send `part` (an ask for chunks) to member `to`.
    Ask { to: u64, part: Part },
    /// Write `data` at byte `at` of part file `part` (created at 0); sync it if `sync`
    /// and tell [`Receiving::durable`] the durable length.
    Write {
        part: String,
        at: u64,
        data: Vec<u8>,
        sync: bool,
    },
    /// The chain is whole (the files named in `received` in their part files, the
    /// others in place): verify it, rename the received files into place and tell
    /// [`Receiving::verified`].
    Verify { id: ChainId, received: Vec<String> },
    /// Fetch the files `need` of chain `id` from the snapshot store into their part
    /// files and tell [`Receiving::fetched`].
    Fetch { id: ChainId, need: Vec<Link> },
    /// Remove the part files other than `keep`.
    Forget { keep: Vec<String> },
}

/// What the receiving side reads from the disk.
pub(crate) trait PartFiles {
    /// Whether `link.file` is in place and is that very file (size and checksum).
    fn holds(&self, link: &Link) -> bool;
    /// The length of file `name`, if it exists.
    fn len(&self, name: &str) -> Option<u64>;
}

/// A snapshot being received.
#[derive(Debug)]
struct Download {
    id: ChainId,
    /// The member that offered it, asked for its chunks.
    leader: u64,
    /// The chain's files this node lacks, base first, and which one is being received
    /// (all are whole once `at` reaches the end).
    need: Vec<Link>,
    at: usize,
    /// Bytes of that file's part file durable, and asked for so far.
    durable: u64,
    asked: u64,
    /// Chunks are taken in order: the next one must start here.
    expected: u64,
    /// The last ask, or the last progress.
    asked_at: Instant,
    /// Whole, and being verified.
    verifying: bool,
    /// When the offer came, and when the last byte was durable.
    started: Instant,
    received: Option<Instant>,
    /// Being fetched from the snapshot store (since when), or not; whether the store
    /// was tried for this snapshot already; whether the part files came from it.
    fetching: Option<Instant>,
    store_tried: bool,
    from_store: bool,
}

impl Download {
    fn current(&self) -> Option<&Link> {
        self.need.get(self.at)
    }

    /// Goes on from the first needed file not yet whole (by its part file's length on
    /// disk), from that file's durable length.
    fn skip_whole(&mut self, disk: &dyn PartFiles) {
        while let Some(l) = self.need.get(self.at) {
            let have = disk.len(&l.part_name()).unwrap_or(0).min(l.size);
            if have < l.size {
                (self.durable, self.asked, self.expected) = (have, have, have);
                return;
            }
            self.at += 1;
        }
        (self.durable, self.asked, self.expected) = (0, 0, 0);
    }

    /// Starts over from zero, every file, from the leader.
    fn restart(&mut self) {
        self.at = 0;
        (self.durable, self.asked, self.expected) = (0, 0, 0);
        (
            self.verifying,
            self.received,
            self.fetching,
            self.from_store,
        ) = (false, None, None, false);
    }

    /// Bytes received so far (of the files needed).
    fn have(&self) -> u64 {
        self.need[..self.at.min(self.need.len())]
            .iter()
            .map(|l| l.size)
            .sum::<u64>()
            + self.durable
    }
}

/// The receiving side of a member's snapshot transfers: at most one download, and the
/// counts `wal_status` shows.
#[derive(Debug)]
pub(crate) struct Receiving {
    download: Option<Download>,
    /// Counts of the transfers so far (`last.install_ms` is the consensus actor's).
    pub(crate) stats: Transfers,
    /// Chunks asked for at once.
    window: u32,
    /// A download without progress for this long asks again.
    ask_again: Duration,
    /// Whether a snapshot store may hold what is offered.
    store: bool,
}

impl Receiving {
    pub(crate) fn new(window: u32, ask_again: Duration, store: bool) -> Receiving {
        Receiving {
            download: None,
            stats: Transfers::default(),
            window: window.max(1),
            ask_again,
            store,
        }
    }

    /// The snapshot being received, if any.
    pub(crate) fn receiving(&self) -> Option<&ChainId> {
        self.download.as_ref().map(|d| &d.id)
    }

    /// Member `from` offers snapshot `id`. The same snapshot offered again goes on
    /// from what arrived (asking the member that offered it last); another one starts
    /// over, from the part files an earlier attempt left.
    pub(crate) fn offer(
        &mut self,
        id: ChainId,
        from: u64,
        now: Instant,
        disk: &dyn PartFiles,
    ) -> Vec<Do> {
        if let Some(d) = &mut self.download
            && d.id == id
        {
            d.leader = from;
            return Vec::new();
        }
        // The chain's files this node already holds are not received again.
        let need: Vec<Link> = id.links().into_iter().filter(|l| !disk.holds(l)).collect();
        let mut d = Download {
            id,
            leader: from,
            need,
            at: 0,
            durable: 0,
            asked: 0,
            expected: 0,
            asked_at: now,
            verifying: false,
            started: now,
            received: None,
            fetching: None,
            store_tried: false,
            from_store: false,
        };
        // Part files kept from an earlier attempt: whole ones skipped, the first that
        // is not whole resumed from its length.
        d.skip_whole(disk);
        let have = d.have();
        let to_receive: u64 = d.need.iter().map(|l| l.size).sum();
        let t = &mut self.stats;
        t.started += 1;
        if have > 0 {
            t.resumed += 1;
        }
        if self.download.is_some() {
            t.restarted += 1;
        }
        let held = d.id.links().len() - d.need.len();
        t.bytes_held += d.id.total_size() - to_receive;
        log::info!(
            "receiving snapshot {} (index {}, {} file(s), {to_receive} bytes to receive{}) \
             from node {from}{}",
            d.id.file,
            d.id.index,
            d.need.len(),
            if held > 0 {
                format!(", {held} held already")
            } else {
                String::new()
            },
            if have > 0 {
                format!(", resuming with {have} bytes received")
            } else {
                String::new()
            }
        );
        let mut out = vec![Do::Forget {
            keep: d.need.iter().map(Link::part_name).collect(),
        }];
        if have == 0 && self.store && !d.need.is_empty() {
            d.store_tried = true;
            d.fetching = Some(now);
            out.push(Do::Fetch {
                id: d.id.clone(),
                need: d.need.clone(),
            });
            self.download = Some(d);
            return out;
        }
        self.download = Some(d);
        out.extend(self.ask(now, disk));
        out
    }

    /// Asks the offering member for the next window of chunks of the file being
    /// received or, when the chain is whole, has it verified.
    fn ask(&mut self, now: Instant, disk: &dyn PartFiles) -> Vec<Do> {
        let window = self.window;
        let Some(d) = &mut self.download else {
            return Vec::new();
        };
        if d.verifying || d.fetching.is_some() {
            return Vec::new();
        }
        if d.current().is_some_and(|l| d.durable >= l.size) {
            d.skip_whole(disk);
        }
        d.asked_at = now;
        let Some(l) = d.current().cloned() else {
            d.verifying = true;
            d.received.get_or_insert(now);
            let received = d.need.iter().map(|l| l.file.clone()).collect();
            return vec![Do::Verify {
                id: d.id.clone(),
                received,
            }];
        };
        d.expected = d.durable;
        d.asked = (d.durable + u64::from(window) * CHUNK_BYTES).min(l.size);
        vec![Do::Ask {
            to: d.leader,
            part: Part::Ask {
                file: l.file,
                checksum: l.checksum,
                from: d.durable,
                count: window,
            },
        }]
    }

    /// A chunk arrived: written if it is the next one of the file being received
    /// (synced if it ends the window); anything else (out of order, damaged, stale)
    /// is dropped and asked again after a pause.
    pub(crate) fn chunk(&mut self, part: Part, now: Instant) -> Option<Do> {
        let Part::Chunk {
            file,
            checksum,
            at,
            size,
            data,
            crc,
        } = part
        else {
            return None;
        };
        let d = self.download.as_mut()?;
        let ok = d.fetching.is_none()
            && !d.verifying
            && d.current()
                .is_some_and(|l| l.file == file && l.checksum == checksum && l.size == size)
            && at == d.expected
            && at + data.len() as u64 <= size
            && crc32c::crc32c(&data) == crc;
        if !ok {
            return None;
        }
        d.expected += data.len() as u64;
        // Progress: asked again only after a pause without any.
        d.asked_at = now;
        // One sync per window: the window's last chunk makes it durable.
        let sync = d.expected >= d.asked;
        Some(Do::Write {
            part: crate::core::layout::snapshot_part(&file, checksum),
            at,
            data,
            sync,
        })
    }

    /// Part file `part` holds `durable` bytes durably: once the window is, the next
    /// one is asked for.
    pub(crate) fn durable(
        &mut self,
        part: &str,
        durable: u64,
        now: Instant,
        disk: &dyn PartFiles,
    ) -> Vec<Do> {
        let Some(d) = &mut self.download else {
            return Vec::new();
        };
        if d.current().is_none_or(|l| l.part_name() != part) || durable <= d.durable {
            return Vec::new();
        }
        d.durable = durable;
        if durable >= d.asked {
            return self.ask(now, disk);
        }
        Vec::new()
    }

    /// A fetch from the store ended: the part files are whole (verified next, as if
    /// the leader had sent them), or the leader is asked, from zero.
    pub(crate) fn fetched(
        &mut self,
        id: &ChainId,
        outcome: Result<String, String>,
        now: Instant,
        disk: &dyn PartFiles,
    ) -> Vec<Do> {
        let Some(d) = self
            .download
            .as_mut()
            .filter(|d| d.id == *id && d.fetching.is_some())
        else {
            return Vec::new();
        };
        d.fetching = None;
        let mut out = Vec::new();
        match outcome {
            Ok(objects) => {
                log::info!("fetched snapshot {} from the store ({objects})", id.file);
                d.at = d.need.len();
                d.from_store = true;
            }
            Err(why) => {
                log::info!(
                    "snapshot {} not fetched from the store ({why}): asking the leader",
                    id.file
                );
                d.restart();
                // What the fetch left in the part files is not trusted.
                out.push(Do::Forget { keep: Vec::new() });
            }
        }
        out.extend(self.ask(now, disk));
        out
    }

    /// The chain `id` was verified and put in place (`Ok`: the download is over and
    /// its phases are counted), or did not verify (its received files are gone: it
    /// is received again from the start).
    pub(crate) fn verified(
        &mut self,
        id: &ChainId,
        outcome: Result<(), String>,
        now: Instant,
        disk: &dyn PartFiles,
    ) -> Vec<Do> {
        let Some(d) = self.download.as_mut().filter(|d| d.id == *id) else {
            return Vec::new();
        };
        match outcome {
            Ok(()) => {
                let d = self.download.take().expect("matched above");
                self.stats.completed += 1;
                if d.from_store {
                    self.stats.from_store += 1;
                }
                let received = d.received.unwrap_or(now);
                let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_millis() as u64;
                self.stats.last = Some(Phases {
                    bytes: d.need.iter().map(|l| l.size).sum(),
                    transfer_ms: ms(d.started, received),
                    verify_ms: ms(received, now),
                    install_ms: 0,
                });
                Vec::new()
            }
            Err(why) => {
                log::warn!("{why}; receiving it again from the start");
                self.stats.restarted += 1;
                d.restart();
                self.ask(now, disk)
            }
        }
    }

    /// The sender no longer has `file`: a download that needs it waits for a newer
    /// offer. Returns whether one was dropped.
    pub(crate) fn gone(&mut self, file: &str, checksum: u32) -> bool {
        let needs = self.download.as_ref().is_some_and(|d| {
            d.need
                .iter()
                .any(|l| l.file == file && l.checksum == checksum)
        });
        if needs {
            log::info!("the leader no longer has snapshot {file}: waiting for a newer offer");
            self.download = None;
        }
        needs
    }

    /// Time passed: a download without progress asks again from its durable length; a
    /// fetch from the store that takes too long gives way to the leader; a chain whose
    /// verification was lost is verified again.
    pub(crate) fn tick(&mut self, now: Instant, disk: &dyn PartFiles) -> Vec<Do> {
        let Some(d) = &mut self.download else {
            return Vec::new();
        };
        let since = |t: Instant| now.saturating_duration_since(t);
        if let Some(started) = d.fetching {
            if since(started) >= FETCH_MAX {
                log::warn!(
                    "fetching snapshot {} from the store takes too long: asking the leader",
                    d.id.file
                );
                d.fetching = None;
                return self.ask(now, disk);
            }
        } else if !d.verifying && since(d.asked_at) >= self.ask_again {
            self.stats.asked_again += 1;
            return self.ask(now, disk);
        } else if d.verifying && since(d.asked_at) >= VERIFY_AGAIN {
            d.verifying = false;
            return self.ask(now, disk);
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::core::layout;

    /// A disk of part files (by length) and files in place.
    #[derive(Default)]
    struct Disk {
        lens: HashMap<String, u64>,
        held: Vec<Link>,
    }

    impl PartFiles for Disk {
        fn holds(&self, link: &Link) -> bool {
            self.held.contains(link)
        }
        fn len(&self, name: &str) -> Option<u64> {
            self.lens.get(name).copied()
        }
    }

    fn link(file: String, size: u64, checksum: u32) -> Link {
        Link {
            file,
            size,
            checksum,
        }
    }

    /// A chain of a full snapshot at 100 (3 chunks and a bit) and a delta at 200.
    fn chain() -> ChainId {
        ChainId {
            index: 200,
            term: 3,
            file: layout::raft_delta(200),
            size: 1000,
            checksum: 22,
            parents: vec![link(layout::raft_snapshot(100), 3 * CHUNK_BYTES + 10, 11)],
        }
    }

    fn chunk_of(l: &Link, at: u64, n: u64) -> Part {
        let data = vec![7u8; n as usize];
        Part::Chunk {
            file: l.file.clone(),
            checksum: l.checksum,
            at,
            size: l.size,
            crc: crc32c::crc32c(&data),
            data,
        }
    }

    fn asks(out: &[Do]) -> Vec<(u64, String, u64)> {
        out.iter()
            .filter_map(|d| match d {
                Do::Ask {
                    to,
                    part: Part::Ask { file, from, .. },
                } => Some((*to, file.clone(), *from)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_offer_asks_the_leader_for_the_base_first_and_forgets_other_part_files() {
        let t0 = Instant::now();
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        let out = r.offer(chain(), 1, t0, &Disk::default());
        let links = chain().links();
        assert_eq!(
            out[0],
            Do::Forget {
                keep: links.iter().map(Link::part_name).collect()
            }
        );
        assert_eq!(asks(&out), vec![(1, links[0].file.clone(), 0)]);
        assert_eq!(r.stats.started, 1);
        assert_eq!(r.stats.resumed, 0);
    }

    #[test]
    fn chunks_are_written_in_order_with_one_sync_per_window_and_the_next_window_asked_once_durable()
    {
        let t0 = Instant::now();
        let disk = Disk::default();
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        r.offer(chain(), 1, t0, &disk);
        let base = &chain().links()[0];
        // Out of order: dropped.
        assert_eq!(r.chunk(chunk_of(base, CHUNK_BYTES, CHUNK_BYTES), t0), None);
        let first = r.chunk(chunk_of(base, 0, CHUNK_BYTES), t0);
        assert!(matches!(
            first,
            Some(Do::Write {
                at: 0,
                sync: false,
                ..
            })
        ));
        let second = r.chunk(chunk_of(base, CHUNK_BYTES, CHUNK_BYTES), t0);
        assert!(matches!(second, Some(Do::Write { sync: true, .. })));
        // Durable up to the window's end: the next window.
        let out = r.durable(&base.part_name(), 2 * CHUNK_BYTES, t0, &disk);
        assert_eq!(asks(&out), vec![(1, base.file.clone(), 2 * CHUNK_BYTES)]);
    }

    #[test]
    fn a_damaged_or_foreign_chunk_is_dropped() {
        let t0 = Instant::now();
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        r.offer(chain(), 1, t0, &Disk::default());
        let base = &chain().links()[0];
        let Part::Chunk {
            file,
            checksum,
            at,
            size,
            data,
            crc,
        } = chunk_of(base, 0, 100)
        else {
            unreachable!()
        };
        let damaged = Part::Chunk {
            file: file.clone(),
            checksum,
            at,
            size,
            data: data.clone(),
            crc: crc ^ 1,
        };
        assert_eq!(r.chunk(damaged, t0), None);
        let other_file = Part::Chunk {
            file: chain().file,
            checksum: 22,
            at,
            size: 1000,
            data: data.clone(),
            crc,
        };
        assert_eq!(r.chunk(other_file, t0), None);
        let past_the_end = Part::Chunk {
            file,
            checksum,
            at,
            size: 50,
            data,
            crc,
        };
        assert_eq!(r.chunk(past_the_end, t0), None);
    }

    #[test]
    fn files_held_are_not_received_and_part_files_resume_from_their_length() {
        let t0 = Instant::now();
        let links = chain().links();
        // The base is in place: only the delta is received.
        let held = Disk {
            held: vec![links[0].clone()],
            ..Disk::default()
        };
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        let out = r.offer(chain(), 1, t0, &held);
        assert_eq!(asks(&out), vec![(1, links[1].file.clone(), 0)]);
        assert_eq!(r.stats.bytes_held, links[0].size);
        // The base's part file is half there from an earlier attempt.
        let half = Disk {
            lens: HashMap::from([(links[0].part_name(), CHUNK_BYTES + 5)]),
            ..Disk::default()
        };
        let mut r = Receiving::new(2, Duration::from_millis(400), true);
        let out = r.offer(chain(), 1, t0, &half);
        assert_eq!(
            asks(&out),
            vec![(1, links[0].file.clone(), CHUNK_BYTES + 5)]
        );
        assert_eq!(r.stats.resumed, 1);
        // With the base whole, the delta's part file is asked from its own length.
        let whole = Disk {
            lens: HashMap::from([
                (links[0].part_name(), links[0].size),
                (links[1].part_name(), 10),
            ]),
            ..Disk::default()
        };
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        assert_eq!(
            asks(&r.offer(chain(), 1, t0, &whole)),
            vec![(1, links[1].file.clone(), 10)]
        );
    }

    #[test]
    fn the_same_offer_again_goes_on_and_asks_its_sender_another_starts_over() {
        let t0 = Instant::now();
        let disk = Disk::default();
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        r.offer(chain(), 1, t0, &disk);
        assert_eq!(r.offer(chain(), 2, t0, &disk), vec![]);
        let later = t0 + Duration::from_millis(400);
        let out = r.tick(later, &disk);
        assert_eq!(asks(&out), vec![(2, chain().links()[0].file.clone(), 0)]);
        assert_eq!(r.stats.asked_again, 1);
        let newer = ChainId {
            index: 300,
            file: layout::raft_snapshot(300),
            parents: vec![],
            ..chain()
        };
        let out = r.offer(newer.clone(), 2, later, &disk);
        assert_eq!(asks(&out), vec![(2, newer.file.clone(), 0)]);
        assert_eq!((r.stats.started, r.stats.restarted), (2, 1));
    }

    #[test]
    fn a_stalled_download_asks_again_only_after_the_pause() {
        let t0 = Instant::now();
        let disk = Disk::default();
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        r.offer(chain(), 1, t0, &disk);
        assert_eq!(r.tick(t0 + Duration::from_millis(399), &disk), vec![]);
        // Progress restarts the pause.
        let base = &chain().links()[0];
        r.chunk(
            chunk_of(base, 0, CHUNK_BYTES),
            t0 + Duration::from_millis(300),
        );
        assert_eq!(r.tick(t0 + Duration::from_millis(600), &disk), vec![]);
        let out = r.tick(t0 + Duration::from_millis(700), &disk);
        assert_eq!(asks(&out), vec![(1, base.file.clone(), 0)]);
    }

    #[test]
    fn a_whole_chain_is_verified_then_counted_and_one_that_fails_is_received_again() {
        let t0 = Instant::now();
        let links = chain().links();
        let mut r = Receiving::new(8, Duration::from_millis(400), false);
        let mut disk = Disk::default();
        r.offer(chain(), 1, t0, &disk);
        for l in &links {
            let mut at = 0;
            while at < l.size {
                let n = CHUNK_BYTES.min(l.size - at);
                assert!(r.chunk(chunk_of(l, at, n), t0).is_some());
                at += n;
            }
            disk.lens.insert(l.part_name(), l.size);
            let out = r.durable(&l.part_name(), l.size, t0, &disk);
            if l.file == chain().file {
                assert_eq!(
                    out,
                    vec![Do::Verify {
                        id: chain(),
                        received: links.iter().map(|l| l.file.clone()).collect()
                    }]
                );
            }
        }
        // It did not verify: its files are gone, and it starts over.
        let out = r.verified(&chain(), Err("bad".into()), t0, &Disk::default());
        assert_eq!(asks(&out), vec![(1, links[0].file.clone(), 0)]);
        assert_eq!(r.stats.restarted, 1);
        // A verification of another chain changes nothing.
        let other = ChainId {
            index: 9,
            ..chain()
        };
        assert_eq!(r.verified(&other, Ok(()), t0, &disk), vec![]);
        assert!(r.receiving().is_some());
        // Received whole again (its part files on disk), verified this time.
        let whole = t0 + Duration::from_secs(1);
        let out = r.durable(&links[0].part_name(), links[0].size, whole, &disk);
        assert!(matches!(&out[..], [Do::Verify { .. }]));
        let done = t0 + Duration::from_secs(2);
        assert_eq!(r.verified(&chain(), Ok(()), done, &disk), vec![]);
        assert!(r.receiving().is_none());
        assert_eq!(r.stats.completed, 1);
        let last = r.stats.last.expect("phases");
        assert_eq!(last.bytes, links.iter().map(|l| l.size).sum::<u64>());
        assert_eq!((last.transfer_ms, last.verify_ms), (1000, 1000));
    }

    #[test]
    fn with_a_store_the_offer_is_fetched_first_and_the_leader_asked_if_that_fails() {
        let t0 = Instant::now();
        let disk = Disk::default();
        let mut r = Receiving::new(2, Duration::from_millis(400), true);
        let out = r.offer(chain(), 1, t0, &disk);
        assert!(asks(&out).is_empty());
        assert!(matches!(&out[1], Do::Fetch { id, need } if *id == chain() && need.len() == 2));
        // Chunks and stalls wait for the fetch.
        let base = &chain().links()[0];
        assert_eq!(r.chunk(chunk_of(base, 0, 10), t0), None);
        assert_eq!(r.tick(t0 + Duration::from_secs(5), &disk), vec![]);
        let out = r.fetched(&chain(), Err("no such object".into()), t0, &disk);
        assert_eq!(out[0], Do::Forget { keep: vec![] });
        assert_eq!(asks(&out), vec![(1, base.file.clone(), 0)]);
        // The store is tried once per offer.
        let again = r.tick(t0 + Duration::from_secs(1), &disk);
        assert!(again.iter().all(|d| !matches!(d, Do::Fetch { .. })));
    }

    #[test]
    fn a_fetch_that_lands_is_verified_and_counted_from_the_store() {
        let t0 = Instant::now();
        let disk = Disk::default();
        let mut r = Receiving::new(2, Duration::from_millis(400), true);
        r.offer(chain(), 1, t0, &disk);
        let out = r.fetched(&chain(), Ok("2 objects".into()), t0, &disk);
        assert!(matches!(&out[..], [Do::Verify { .. }]));
        r.verified(&chain(), Ok(()), t0, &disk);
        assert_eq!((r.stats.completed, r.stats.from_store), (1, 1));
        // A fetch that hangs gives way to the leader.
        let mut r = Receiving::new(2, Duration::from_millis(400), true);
        r.offer(chain(), 1, t0, &disk);
        let out = r.tick(t0 + FETCH_MAX, &disk);
        assert_eq!(asks(&out), vec![(1, chain().links()[0].file.clone(), 0)]);
    }

    #[test]
    fn a_file_gone_from_the_sender_drops_the_download_that_needs_it() {
        let t0 = Instant::now();
        let mut r = Receiving::new(2, Duration::from_millis(400), false);
        r.offer(chain(), 1, t0, &Disk::default());
        assert!(!r.gone(&layout::raft_snapshot(5), 11));
        assert!(r.gone(&chain().links()[0].file, 11));
        assert!(r.receiving().is_none());
        assert_eq!(
            r.tick(t0 + Duration::from_secs(9), &Disk::default()),
            vec![]
        );
    }
}
