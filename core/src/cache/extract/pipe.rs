//! Two-stage pipeline: the caller's thread reads and decompresses the layer into 1 MiB chunks; a
//! worker thread parses the tar stream from them and writes files. GNU `tar -xzf` gets the same
//! overlap by running `gzip -d` as a separate process.

use std::{
    cell::Cell,
    io::{self, BufReader, Read},
    sync::mpsc::{Receiver, SyncSender, TrySendError},
};

use flate2::bufread::MultiGzDecoder;

use super::error::ExtractError;

/// Size of one chunk handed from the decoder to the writer.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
pub(crate) const DEPTH: usize = 4;

/// A chunk: the buffer and how many bytes of it are valid, or the reader's error.
pub(crate) type Chunk = io::Result<(Vec<u8>, usize)>;

/// Reads `reader` (gunzipping it when `gzip`) and sends it in chunks until EOF, an error, or the
/// worker hanging up. Returns the read or decode error, if any (the worker is told too).
pub(crate) fn pump(reader: impl Read, gzip: bool, tx: SyncSender<Chunk>, pool: Receiver<Vec<u8>>) -> Option<io::Error> {
    let buffered = BufReader::with_capacity(CHUNK, reader);
    if gzip {
        pump_from(MultiGzDecoder::new(buffered), tx, pool)
    } else {
        pump_from(buffered, tx, pool)
    }
}

fn pump_from(mut src: impl Read, tx: SyncSender<Chunk>, pool: Receiver<Vec<u8>>) -> Option<io::Error> {
    loop {
        let mut buf = pool.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let mut len = 0;
        while len < buf.len() {
            match src.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The worker sees a generic error; the caller reports this one.
                    let _ = tx.send(Err(io::Error::other("layer read failed")));
                    return Some(e);
                }
            }
        }
        if len == 0 {
            return None; // EOF: dropping `tx` tells the worker.
        }
        if tx.send(Ok((buf, len))).is_err() {
            return None; // The worker stopped; it has the error.
        }
    }
}

/// What the worker's reader has seen, shared with the entry loop (same thread).
#[derive(Default)]
pub(crate) struct Meter {
    /// Bytes read since the entry loop last reset it, outside file data: headers, long names,
    /// PAX records. Bounded, so a huge PAX record cannot make the tar crate buffer gigabytes.
    pub(crate) header_bytes: Cell<u64>,
    /// Whether the entry loop is reading file data (not counted in `header_bytes`).
    pub(crate) in_data: Cell<bool>,
    /// The stream has ended.
    pub(crate) eof: Cell<bool>,
    /// The decoder reported an error.
    pub(crate) failed: Cell<bool>,
    /// A limit error raised inside `read` (the tar crate only passes on an `io::Error`).
    pub(crate) error: Cell<Option<ExtractError>>,
}

/// The worker's end: a `Read` over the chunks.
pub(crate) struct PipeReader<'m> {
    rx: Receiver<Chunk>,
    pool: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    meter: &'m Meter,
    header_limit: u64,
    index: &'m Cell<u64>,
}

impl<'m> PipeReader<'m> {
    pub(crate) fn new(
        rx: Receiver<Chunk>,
        pool: SyncSender<Vec<u8>>,
        meter: &'m Meter,
        header_limit: u64,
        index: &'m Cell<u64>,
    ) -> Self {
        Self {
            rx,
            pool,
            cur: Vec::new(),
            len: 0,
            pos: 0,
            meter,
            header_limit,
            index,
        }
    }
}

impl Read for PipeReader<'_> {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        if into.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len {
            if self.meter.eof.get() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok((buf, len))) => {
                    let old = std::mem::replace(&mut self.cur, buf);
                    if old.capacity() > 0 {
                        match self.pool.try_send(old) {
                            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
                        }
                    }
                    self.len = len;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.meter.failed.set(true);
                    return Err(e);
                }
                Err(_) => {
                    self.meter.eof.set(true);
                    return Ok(0);
                }
            }
        }
        let n = into.len().min(self.len - self.pos);
        if !self.meter.in_data.get() {
            let seen = self.meter.header_bytes.get() + n as u64;
            self.meter.header_bytes.set(seen);
            if seen > self.header_limit {
                let err = ExtractError::HeadersTooLarge {
                    index: self.index.get(),
                    limit: self.header_limit,
                };
                self.meter.error.set(Some(err));
                return Err(io::Error::other("headers too large"));
            }
        }
        into[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
