//! Group commit: staging writes into one batch (with an overlay through which reads
//! and compare-and-set in the same batch see its earlier writes), writing and syncing
//! it once, applying it, and only then answering.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;

pub(super) type Pending = Box<dyn FnOnce(&Result<()>) + Send>;

#[derive(Default)]
pub(super) struct Batch {
    pub(super) payloads: Vec<Vec<u8>>,
    pub(super) bytes: u64,
    pub(super) overlay: HashMap<Arc<str>, Option<Arc<str>>>,
    pub(super) pending: Vec<Pending>,
    /// How many of the answers wake a thread that waits for them.
    pub(super) waking: usize,
}

impl Appender {
    pub(super) fn current(&self, key: &str) -> Option<Arc<str>> {
        match self.batch.overlay.get(key) {
            Some(v) => v.clone(),
            None => self.state.get(key).cloned(),
        }
    }

    pub(super) fn defer<T: Send + 'static>(&mut self, reply: Reply<T>, value: Result<T>) {
        self.batch.waking += usize::from(reply.wakes_a_thread());
        self.batch
            .pending
            .push(Box::new(move |outcome: &Result<()>| {
                match (outcome, value) {
                    (Ok(()), v) => reply.send(v),
                    (Err(e), Ok(_)) => reply.send(Err(e.clone())),
                    (Err(_), Err(e)) => reply.send(Err(e)),
                }
            }));
    }

    /// Adds one entry to the batch; returns the offset it will have.
    pub(super) fn stage(&mut self, payload: Vec<u8>) -> Result<Offset> {
        self.refuse_if_poisoned()?;
        debug_assert!(payload.len() as u64 <= self.payload_bytes_max);
        if !self
            .log
            .fits(self.batch.payloads.len(), self.batch.bytes, payload.len())
        {
            self.flush();
            self.refuse_if_poisoned()?;
            match self.log.roll() {
                Ok(()) => {}
                Err(RollError::Sync(e)) => {
                    return Err(self.poison(format!("fsync while sealing a segment failed: {e}")));
                }
                Err(RollError::Create(e)) if is_sync_failure(&e) => {
                    return Err(self.poison(format!("creating a new segment failed: {e}")));
                }
                Err(RollError::Create(e)) => {
                    log::warn!("could not open a new segment: {e}");
                    return Err(Error::Unavailable(format!(
                        "could not open a new segment (nothing was written): {e}"
                    )));
                }
            }
        }
        let offset = self
            .log
            .next_offset()
            .plus(self.batch.payloads.len() as u64);
        match kv::Command::parse(&payload) {
            kv::Command::Set { key, value } => {
                self.batch
                    .overlay
                    .insert(Arc::from(key), Some(Arc::from(value)));
            }
            kv::Command::Del { key } => {
                self.batch.overlay.insert(Arc::from(key), None);
            }
            kv::Command::Other => {}
        }
        self.batch.bytes += record::record_bytes(payload.len());
        self.batch.payloads.push(payload);
        Ok(offset)
    }

    /// Writes, syncs (per policy) and applies the batch, then answers its requests.
    pub(super) fn flush(&mut self) {
        let Batch {
            payloads,
            bytes,
            overlay,
            pending,
            waking,
        } = std::mem::take(&mut self.batch);
        let entries = payloads.len() as u64;
        let outcome = if payloads.is_empty() {
            Ok(())
        } else {
            self.write_batch(payloads)
        };
        if outcome.is_ok() {
            // The overlay holds exactly this batch's writes, each key's last value.
            if let Some(changed) = &mut self.changed {
                changed.extend(overlay);
                if changed.len() > WRITTEN_MAX.max(self.state.map.len() / 2)
                    && let Some(given_up) = self.changed.take()
                {
                    self.spent.extend(given_up.into_shards());
                }
            }
            // Half a million keys' entries freed at once stall appends, even freed on
            // a thread of their own (50 ms: the allocator hands frees made elsewhere
            // back to this thread): spent writes are freed a part per batch.
            let mut budget = FREE_PER_BATCH;
            while budget > 0
                && let Some(shard) = self.spent.pop()
            {
                budget = budget.saturating_sub(shard.len().max(1));
                drop(shard);
            }
            self.counters.appends += entries;
            self.auto.entries += entries;
            self.auto.bytes += bytes;
        }
        self.replier.answer(pending, waking, outcome);
    }

    /// Writes the batch, syncs it (per policy) and applies it to the state: a large
    /// batch on the apply thread while the sync runs. On failure the node is poisoned
    /// and the state is as before the batch.
    fn write_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<()> {
        self.counters.batches += 1;
        if let Err(e) = self.log.append(payloads.iter().map(|p| p.as_slice())) {
            return Err(self.poison(format!("write to the log failed: {e}")));
        }
        if self.fsync != FsyncPolicy::Always {
            self.apply(&payloads);
            return Ok(());
        }
        self.counters.fsyncs += 1;
        let synced = match &self.applier {
            Some(applier) if applier::worth_handing_over(payloads.len(), self.state.map.len()) => {
                let state = std::mem::take(&mut self.state);
                let log = &mut self.log;
                let (mut state, undo, synced) = applier.around(state, payloads, || log.sync());
                if synced.is_err() {
                    // Reads on a poisoned node see only what was durable.
                    state.undo(undo);
                }
                self.state = state;
                synced
            }
            _ => {
                let synced = self.log.sync();
                if synced.is_ok() {
                    self.apply(&payloads);
                }
                synced
            }
        };
        if let Err(e) = synced {
            return Err(self.poison(format!("fsync of the log failed: {e}")));
        }
        Ok(())
    }

    fn apply(&mut self, payloads: &[Vec<u8>]) {
        for payload in payloads {
            self.state.apply(payload);
        }
    }
}
