//! Catching a follower up: receiving a snapshot from the leader, serving one to a
//! follower (see [`super::transfer`]); methods of the consensus actor.

use super::*;
use crate::raftlog::image::Link;

/// A snapshot being received: see [`transfer`].
pub(super) struct Download {
    id: transfer::ChainId,
    /// The offer, stepped into raft-rs once the chain is whole and in place.
    msg: Message,
    /// The chain's files this node lacks, base first, and which one is being
    /// received (all are whole once `at` reaches the end).
    need: Vec<Link>,
    at: usize,
    /// Bytes of that file's part file durable, and asked for so far.
    durable: u64,
    asked: u64,
    /// Chunks are taken in order: the next one must start here.
    expected: u64,
    asked_at: Instant,
    finishing: bool,
    /// When the offer came, and when the last byte was durable.
    started: Instant,
    received: Option<Instant>,
    /// Being fetched from the snapshot store (since when), or not; and whether the
    /// store was tried for this snapshot already.
    fetching: Option<Instant>,
    store_tried: bool,
    /// The part file came from the store.
    from_store: bool,
}

/// How long a fetch from the store may take before the leader is asked instead.
const FETCH_MAX: Duration = Duration::from_secs(60);

/// How long a whole file may wait for its verification before it is asked again.
const FINISH_AGAIN: Duration = Duration::from_secs(10);

/// How long a leader waits for a follower to ask for chunks of the snapshot it offered
/// before it offers again (raft-rs sends a new offer once told the last one failed):
/// 3 s, or twice the time a window takes at the send rate if that is longer.
pub(super) fn offer_wait(rate: u64, limits: &crate::config::ClusterLimits) -> Duration {
    let window = u64::from(limits.transfer_window) * transfer::CHUNK_BYTES;
    let at_rate = if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(2.0 * window as f64 / rate as f64)
    };
    at_rate.max(Duration::from_secs(3))
}

impl Download {
    /// The file being received.
    fn current(&self) -> Option<&Link> {
        self.need.get(self.at)
    }

    /// Whether `file` with `checksum` is the file being received.
    fn receiving(&self, file: &str, checksum: u32) -> bool {
        self.current()
            .is_some_and(|l| l.file == file && l.checksum == checksum)
    }

    /// Goes on from the first needed file not yet whole (by its part file's length,
    /// as `len` gives it), from that file's durable length.
    fn skip_whole(&mut self, len: impl Fn(&str) -> Option<u64>) {
        while let Some(l) = self.need.get(self.at) {
            let have = len(&l.part_name()).unwrap_or(0).min(l.size);
            if have < l.size {
                (self.durable, self.asked, self.expected) = (have, have, have);
                return;
            }
            self.at += 1;
        }
        (self.durable, self.asked, self.expected) = (0, 0, 0);
    }

    /// Starts over from zero, every file.
    fn restart(&mut self) {
        self.at = 0;
        (self.durable, self.asked, self.expected) = (0, 0, 0);
    }
}

impl Consensus {
    /// A leader offers a snapshot (`MsgSnapshot`, carrying its identity): receive it
    /// in full before raft-rs sees the offer. The same snapshot offered again goes on
    /// from what arrived; another one starts over.
    pub(super) fn offered(&mut self, m: Message) {
        let id = match transfer::ChainId::decode(&m.get_snapshot().data) {
            Ok(id) if id.index == m.get_snapshot().get_metadata().index => id,
            Ok(_) => return log::warn!("a snapshot offer whose identity names another index"),
            Err(why) => return log::warn!("a snapshot offer that does not decode: {why}"),
        };
        if id.index <= self.peer.machine().applied {
            // Nothing to fetch: raft-rs answers it from what this node has.
            return self.peer.step(m);
        }
        if let Some(d) = &mut self.download
            && d.id == id
        {
            d.msg = m;
            return;
        }
        // Received whole already, and waiting to be installed.
        if self
            .installing
            .as_ref()
            .is_some_and(|(_, image)| image.index() == id.index)
        {
            return;
        }
        // The chain's files this node already holds are not received again.
        let store = self.peer.store();
        let need: Vec<Link> = id.links().into_iter().filter(|l| !store.holds(l)).collect();
        let mut d = Download {
            id,
            msg: m,
            need,
            at: 0,
            durable: 0,
            asked: 0,
            expected: 0,
            asked_at: self.clock.now(),
            finishing: false,
            started: self.clock.now(),
            received: None,
            fetching: None,
            store_tried: false,
            from_store: false,
        };
        // Part files kept from an earlier attempt: whole ones skipped, the first that
        // is not whole resumed from its length.
        d.skip_whole(|name| store.file_len(name));
        let have = d.need[..d.at].iter().map(|l| l.size).sum::<u64>() + d.durable;
        let (id, need) = (&d.id, &d.need);
        let t = &mut self.manager.status.transfers;
        t.started += 1;
        if have > 0 {
            t.resumed += 1;
        }
        if self.download.is_some() {
            t.restarted += 1;
        }
        let held = id.links().len() - need.len();
        t.bytes_held += id.total_size() - need.iter().map(|l| l.size).sum::<u64>();
        log::info!(
            "receiving snapshot {} (index {}, {} file(s), {} bytes to receive{}) from node {}{}",
            id.file,
            id.index,
            need.len(),
            need.iter().map(|l| l.size).sum::<u64>(),
            if held > 0 {
                format!(", {held} held already")
            } else {
                String::new()
            },
            d.msg.from,
            if have > 0 {
                format!(", resuming with {have} bytes received")
            } else {
                String::new()
            }
        );
        self.manager.job(snapshotter::Job::Forget {
            keep: need.iter().map(Link::part_name).collect(),
        });
        self.download = Some(d);
        if have == 0 && self.fetch_from_store() {
            return;
        }
        self.ask();
    }

    /// With a snapshot store: fetches the snapshot being received from it, on a
    /// thread of its own, instead of asking the leader (which is asked if the store
    /// fails or lacks it). Returns whether a fetch started.
    fn fetch_from_store(&mut self) -> bool {
        let (Some((config, fs, dir)), Some(d)) = (&self.store_fetch, &mut self.download) else {
            return false;
        };
        if d.store_tried {
            return false;
        }
        d.store_tried = true;
        d.fetching = Some(self.clock.now());
        let (config, fs, dir) = (config.clone(), fs.clone(), dir.clone());
        let (id, need) = (d.id.clone(), d.need.clone());
        let reports = self.manager.reporter();
        let on_panic = {
            let (reports, id) = (reports.clone(), id.clone());
            move |why: String| {
                let outcome = Err(format!("the fetch failed: {why}"));
                let _ = reports.send(snapshotter::Report::Fetched { id, outcome });
            }
        };
        let spawned = spawn_actor("store-fetch", on_panic, move || {
            let outcome = crate::store::open(&config).and_then(|store| {
                let mut objects = Vec::new();
                for l in &need {
                    let path = crate::fs::join(&dir, &l.part_name());
                    objects.push(crate::store::fetch_file(
                        &*store, &*fs, &path, &l.file, l.size, l.checksum,
                    )?);
                }
                Ok(objects.join(", "))
            });
            let _ = reports.send(snapshotter::Report::Fetched { id, outcome });
        });
        // Fetches that ended are joined here; the rest when the actor stops.
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fetchers)
            .into_iter()
            .partition(std::thread::JoinHandle::is_finished);
        for fetcher in ended {
            let _ = fetcher.join();
        }
        self.fetchers = running;
        let d = self.download.as_mut().expect("checked above");
        let spawned = match spawned {
            Ok(join) => {
                self.fetchers.push(join);
                true
            }
            Err(e) => {
                log::warn!("cannot start a thread to fetch from the store: {e}");
                false
            }
        };
        if !spawned {
            d.fetching = None;
        }
        spawned
    }

    /// A fetch from the store ended: the part file is whole (verified next, as if the
    /// leader had sent it), or the leader is asked.
    pub(super) fn fetched(
        &mut self,
        id: transfer::ChainId,
        outcome: std::result::Result<String, String>,
    ) {
        let Some(d) = self
            .download
            .as_mut()
            .filter(|d| d.id == id && d.fetching.is_some())
        else {
            return;
        };
        d.fetching = None;
        match outcome {
            Ok(object) => {
                log::info!("fetched snapshot {} from the store ({object})", id.file);
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
                self.manager
                    .job(snapshotter::Job::Forget { keep: Vec::new() });
            }
        }
        self.ask();
    }

    /// Asks the offering leader for the next window of chunks of the file being
    /// received (or, when the chain is whole, has it verified and put in place).
    pub(super) fn ask(&mut self) {
        let window = self.limits.transfer_window;
        let Some(d) = &mut self.download else { return };
        if d.finishing || d.fetching.is_some() {
            return;
        }
        if d.current().is_some_and(|l| d.durable >= l.size) {
            let store = self.peer.store();
            d.skip_whole(|name| store.file_len(name));
        }
        let Some(l) = d.current().cloned() else {
            d.finishing = true;
            d.asked_at = self.clock.now();
            d.received.get_or_insert(d.asked_at);
            let (id, received) = (
                d.id.clone(),
                d.need.iter().map(|l| l.file.clone()).collect(),
            );
            return self.manager.job(snapshotter::Job::Finish { id, received });
        };
        d.expected = d.durable;
        d.asked = (d.durable + u64::from(window) * transfer::CHUNK_BYTES).min(l.size);
        d.asked_at = self.clock.now();
        let part = transfer::Part::Ask {
            file: l.file,
            checksum: l.checksum,
            from: d.durable,
            count: window,
        };
        self.transport.send_part(d.msg.from, part);
    }

    pub(super) fn on_part(&mut self, from: u64, part: transfer::Part) {
        match part {
            transfer::Part::Ask {
                file,
                checksum,
                from: at,
                count,
            } => {
                // The index the follower goes on from: the offered chain's tip (it
                // asks for the base first), or the file's own.
                let own = crate::core::layout::parse_raft_snapshot(&file).unwrap_or(0);
                let index = self
                    .peer
                    .followers_in_snapshot()
                    .into_iter()
                    .find(|(id, _)| *id == from)
                    .map_or(own, |(_, tip)| tip.max(own));
                self.serving.insert(from, (self.clock.now(), index));
                self.manager.job(snapshotter::Job::Serve {
                    to: from,
                    file,
                    checksum,
                    from: at,
                    count: count.min(4 * self.limits.transfer_window),
                    asked: self.clock.now(),
                });
            }
            transfer::Part::Chunk {
                file,
                checksum,
                at,
                size,
                data,
                crc,
            } => {
                let Some(d) = &mut self.download else { return };
                let ok = d.receiving(&file, checksum)
                    && d.current().is_some_and(|l| l.size == size)
                    && at == d.expected
                    && at + data.len() as u64 <= size
                    && crc32c::crc32c(&data) == crc;
                if !ok {
                    // Out of order, damaged or stale: asked again after a pause.
                    return;
                }
                d.expected += data.len() as u64;
                // Progress: asked again only after a pause without any.
                d.asked_at = self.clock.now();
                // One sync per window: the window's last chunk makes it durable.
                let sync = d.expected >= d.asked;
                self.manager.job(snapshotter::Job::Receive {
                    part: crate::core::layout::snapshot_part(&file, checksum),
                    at,
                    data,
                    sync,
                });
            }
            transfer::Part::Gone { file, checksum } => {
                if self.download.as_ref().is_some_and(|d| {
                    d.need
                        .iter()
                        .any(|l| l.file == file && l.checksum == checksum)
                }) {
                    log::info!(
                        "the leader no longer has snapshot {file}: waiting for a newer offer"
                    );
                    self.download = None;
                }
            }
        }
    }

    /// The part file holds `durable` bytes durably.
    pub(super) fn received(&mut self, part: &str, durable: u64) {
        let Some(d) = &mut self.download else { return };
        if d.current().is_none_or(|l| l.part_name() != part) || durable <= d.durable {
            return;
        }
        d.durable = durable;
        if durable >= d.asked {
            self.ask();
        }
    }

    /// A received snapshot is in place (or did not verify): step the offer into
    /// raft-rs, which installs it.
    pub(super) fn downloaded(
        &mut self,
        id: transfer::ChainId,
        outcome: std::result::Result<
            (crate::consensus::Image, Vec<crate::snapshot::SnapshotFile>),
            String,
        >,
    ) {
        let Some(d) = self.download.take_if(|d| d.id == id) else {
            return;
        };
        match outcome {
            Ok((image, chain)) => {
                self.manager.status.transfers.completed += 1;
                if d.from_store {
                    self.manager.status.transfers.from_store += 1;
                }
                let now = self.clock.now();
                let received = d.received.unwrap_or(now);
                let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_millis() as u64;
                self.manager.status.transfers.last = Some(manage::Phases {
                    bytes: d.need.iter().map(|l| l.size).sum(),
                    transfer_ms: ms(d.started, received),
                    verify_ms: ms(received, now),
                    install_ms: 0,
                });
                self.install_timer = Some((id.index, now));
                log::info!("received snapshot {} whole; installing it", id.file);
                self.peer
                    .store_mut()
                    .offer(id.clone(), &image.voters, &image.learners);
                self.manager.status.snapshot = chain.last().cloned();
                self.newest_client = image.machine.next_offset;
                // The install replaces the log's files: not while the compactor may
                // still rewrite log.meta for the old log.
                self.installing = Some((d.msg, Box::new(image)));
                self.install_when_idle();
            }
            Err(why) => {
                log::warn!("{why}; receiving it again from the start");
                self.manager.status.transfers.restarted += 1;
                self.download = Some(Download {
                    at: 0,
                    durable: 0,
                    asked: 0,
                    expected: 0,
                    finishing: false,
                    received: None,
                    fetching: None,
                    from_store: false,
                    ..d
                });
                self.ask();
            }
        }
    }

    /// Steps a received snapshot into raft-rs (which installs it) once no compaction
    /// is in flight.
    pub(super) fn install_when_idle(&mut self) {
        if self.manager.compacting() {
            return;
        }
        if let Some((msg, image)) = self.installing.take() {
            self.peer.step_snapshot(msg, *image);
        }
    }

    /// After each round of Readies: once the state machine stands at a received
    /// snapshot's index, its install is over.
    pub(super) fn install_timed(&mut self) {
        if let Some((index, since)) = self.install_timer
            && self.peer.machine().applied >= index
        {
            self.install_timer = None;
            if let Some(last) = &mut self.manager.status.transfers.last {
                last.install_ms = self
                    .clock
                    .now()
                    .saturating_duration_since(since)
                    .as_millis() as u64;
            }
        }
    }

    /// Every tick: a transfer that stalled asks again from its durable length; a
    /// leader tells raft-rs that an offer nobody acted on failed, so that it offers
    /// again (to a follower that restarted, say).
    pub(super) fn transfers_tick(&mut self) {
        if let Some(d) = &mut self.download {
            if let Some(since) = d.fetching {
                if self.clock.now().saturating_duration_since(since) >= FETCH_MAX {
                    log::warn!(
                        "fetching snapshot {} from the store takes too long: asking the leader",
                        d.id.file
                    );
                    d.fetching = None;
                    self.ask();
                }
            } else if !d.finishing
                && self.clock.now().saturating_duration_since(d.asked_at) >= self.limits.ask_again
            {
                self.manager.status.transfers.asked_again += 1;
                self.ask();
            } else if d.finishing
                && self.clock.now().saturating_duration_since(d.asked_at) >= FINISH_AGAIN
            {
                // The verification job was dropped (the snapshotter's queue was full).
                d.finishing = false;
                self.ask();
            }
        }
        for (id, index) in self.peer.followers_in_snapshot() {
            let quiet = self.serving.get(&id).is_none_or(|(at, _)| {
                self.clock.now().saturating_duration_since(*at) >= self.offer_wait
            });
            if quiet {
                self.serving.insert(id, (self.clock.now(), index));
                self.peer.snapshot_failed(id);
            }
        }
        // A follower that installed the snapshot it asked for and caught up past this
        // node's newest snapshot needs nothing the compaction behind it frees: the log
        // no longer waits for it (the policy's rule for followers takes over).
        let newest = self.manager.newest_index();
        let matched: HashMap<u64, u64> = self
            .peer
            .followers()
            .into_iter()
            .map(|(id, m, _)| (id, m))
            .collect();
        self.serving.retain(|id, (at, index)| {
            self.clock.now().saturating_duration_since(*at) < self.limits.pin
                && matched.get(id).is_none_or(|m| *m < newest.max(*index))
        });
    }
}
