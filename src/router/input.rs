//! The router's input: lines read from stdin or a client connection, bounded in length
//! (an over-long line is dropped whole, with enough of its ends kept to answer it) and
//! handed over in batches, with the opening and closing of connections in the same
//! queue.

use std::io::{BufRead, BufReader, Read};

use crossbeam_channel::Sender;

pub(crate) enum Line {
    Data(Vec<u8>),
    /// A line over the limit, dropped: its length, and its first and last bytes
    /// (at most [`SALVAGE_BYTES`] each), in which its `src` and `msg_id` may be found.
    TooLong {
        bytes: usize,
        head: Vec<u8>,
        tail: Vec<u8>,
    },
}

/// Bytes kept from each end of an over-long line to find where to answer it.
const SALVAGE_BYTES: usize = 4096;

/// The last `n` bytes of `a` followed by `b`.
fn last_bytes(a: &[u8], b: &[u8], n: usize) -> Vec<u8> {
    let from_b = b.len().min(n);
    let from_a = (n - from_b).min(a.len());
    let mut out = a[a.len() - from_a..].to_vec();
    out.extend_from_slice(&b[b.len() - from_b..]);
    out
}

/// Most lines the reader hands over at once.
const LINES_PER_HANDOVER: usize = 256;

/// Batches of lines the reader may have queued for the router.
pub(super) const HANDOVERS_QUEUED: usize = 4;

/// What the router takes in, in order: lines, and (where clients connect) the
/// opening and closing of their connections.
pub(crate) enum Item {
    /// A line from connection `conn` (0: stdin).
    Line(u64, Line),
    /// Connection `conn` opened: its replies go to the [`Connection`].
    Opened(u64, Connection),
    /// Connection `conn` sends nothing more (its replies are still written).
    Closed(u64),
    /// The group's first message to this joining node named its Raft id.
    Joined(u64),
}

/// Where one client connection's replies go: a bounded queue of bytes written by a
/// thread of its own, and how to close the connection when that queue stays full
/// (a client that does not read its replies).
pub(crate) struct Connection {
    pub(crate) tx: Sender<Vec<u8>>,
    pub(crate) close: Box<dyn Fn() + Send>,
}

/// The connection id of stdin (and stdout).
pub(crate) const STDOUT: u64 = 0;

/// Reads lines of at most `max` bytes from connection `conn`; longer ones are skipped
/// to their newline. The lines already read are handed over together (at most
/// [`LINES_PER_HANDOVER`]) before the reader waits for more input: one wake-up of the
/// router for all of them. The last item is [`Item::Closed`].
pub(crate) fn read_lines(input: impl Read, max: usize, conn: u64, tx: Sender<Vec<Item>>) {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    let mut dropped = 0usize;
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut ready: Vec<Item> = Vec::new();
    loop {
        let hand_over =
            (reader.buffer().is_empty() && !ready.is_empty()) || ready.len() >= LINES_PER_HANDOVER;
        if hand_over && tx.send(std::mem::take(&mut ready)).is_err() {
            return;
        }
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if conn == STDOUT {
                    log::error!("reading stdin failed: {e}; treating it as end of input");
                } else {
                    log::debug!("reading client connection {conn} failed: {e}");
                }
                break;
            }
        };
        if buf.is_empty() {
            if dropped > 0 {
                let (head, tail) = (std::mem::take(&mut head), std::mem::take(&mut tail));
                ready.push(Item::Line(
                    conn,
                    Line::TooLong {
                        bytes: dropped,
                        head,
                        tail,
                    },
                ));
            } else if !line.is_empty() {
                ready.push(Item::Line(conn, Line::Data(std::mem::take(&mut line))));
            }
            break;
        }
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if dropped > 0 || line.len() + chunk.len() > max {
            if dropped == 0 {
                head = line
                    .iter()
                    .chain(chunk)
                    .take(SALVAGE_BYTES)
                    .copied()
                    .collect();
            }
            tail = last_bytes(
                &tail,
                &last_bytes(&line, chunk, SALVAGE_BYTES),
                SALVAGE_BYTES,
            );
            dropped += line.len() + chunk.len();
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        let used = newline.unwrap_or(buf.len());
        reader.consume(used);
        if newline.is_some() {
            let msg = if dropped > 0 {
                Line::TooLong {
                    bytes: dropped,
                    head: std::mem::take(&mut head),
                    tail: std::mem::take(&mut tail),
                }
            } else {
                Line::Data(std::mem::take(&mut line))
            };
            dropped = 0;
            ready.push(Item::Line(conn, msg));
        }
    }
    ready.push(Item::Closed(conn));
    let _ = tx.send(ready);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_dropped_whole_and_reading_goes_on() {
        let input = format!("short\n{}\nafter\nend", "x".repeat(100));
        let (tx, rx) = crossbeam_channel::unbounded();
        read_lines(std::io::Cursor::new(input.into_bytes()), 10, 7, tx);
        let got: Vec<String> = rx
            .iter()
            .flatten()
            .map(|item| match item {
                Item::Line(7, Line::Data(d)) => String::from_utf8(d).unwrap(),
                Item::Closed(7) => "<closed>".into(),
                Item::Line(7, Line::TooLong { bytes, head, tail }) => format!(
                    "<{bytes} {} {}>",
                    String::from_utf8(head).unwrap().len(),
                    String::from_utf8(tail).unwrap().len()
                ),
                _ => panic!("an item of another connection, or an opening"),
            })
            .collect();
        assert_eq!(got, ["short", "<100 100 100>", "after", "end", "<closed>"]);
    }
}
