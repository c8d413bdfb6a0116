//! The entry loop: one check per rule on every entry, then creation relative to the temp root
//! without ever following a symlink.
//!
//! How writes stay inside: every path is opened relative to the temp root's fd; each parent
//! component must be a directory this extraction created (tracked in `nodes`, never a symlink or
//! file from the archive), and the last component is created with `O_CREAT|O_EXCL|O_NOFOLLOW`
//! (`mkdirat`/`symlinkat` fail on anything existing). The temp root is mode 0700 and freshly
//! named, so nobody else creates anything in it meanwhile.

use std::{
    cell::Cell,
    collections::HashMap,
    ffi::OsStr,
    fs::File,
    io::{self, Read, Write},
    os::{fd::BorrowedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, Mode, OFlags};
use tar::EntryType;

use super::{
    error::{lossy, ExtractError, Result},
    pipe::{Meter, PipeReader},
    rules::{check_link_target, normalize_name},
    ExtractLimits, ExtractReport,
};

/// Zero bytes allowed after the end-of-archive marker (GNU tar pads to 10 KiB records).
const TRAILING_LIMIT: u64 = 1 << 20;
/// Copy buffer for file data.
const COPY_BUF: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A directory entry of the archive.
    Dir,
    /// A directory created because an entry needed it as a parent.
    ImplicitDir,
    File,
    Symlink,
}

pub(crate) struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    root_path: &'a Path,
    limits: &'a ExtractLimits,
    meter: &'a Meter,
    index: &'a Cell<u64>,
    nodes: HashMap<Box<[u8]>, Node>,
    root_seen: bool,
    /// The last parent checked: entries come grouped by directory, so most need no walk.
    last_parent: Vec<u8>,
    raw: Vec<u8>,
    name: Vec<u8>,
    link: Vec<u8>,
    buf: Vec<u8>,
    report: ExtractReport,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(
        root: BorrowedFd<'a>,
        root_path: &'a Path,
        limits: &'a ExtractLimits,
        meter: &'a Meter,
        index: &'a Cell<u64>,
    ) -> Self {
        Self {
            root,
            root_path,
            limits,
            meter,
            index,
            nodes: HashMap::new(),
            root_seen: false,
            last_parent: Vec::new(),
            raw: Vec::new(),
            name: Vec::new(),
            link: Vec::new(),
            buf: vec![0; COPY_BUF],
            report: ExtractReport::default(),
        }
    }

    /// Extracts every entry of the stream, then checks the end of the archive.
    pub(crate) fn run(mut self, reader: PipeReader<'_>) -> Result<ExtractReport> {
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries().map_err(ExtractError::Malformed)?;
        loop {
            self.meter.header_bytes.set(0);
            self.meter.in_data.set(false);
            let entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(self.stream_error(e, b"", 512, 0)),
            };
            self.index.set(self.index.get() + 1);
            if self.index.get() > self.limits.max_entries {
                return Err(ExtractError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            self.entry(entry)?;
        }
        if self.meter.eof.get() {
            // The stream ended where a header should have been: no end-of-archive marker.
            return Err(ExtractError::Truncated {
                entry: String::new(),
                expected: 512,
                actual: 0,
            });
        }
        self.drain_trailer(archive.into_inner())?;
        Ok(self.report)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(()); // Metadata only; the tar crate skips its data (counted as headers).
        }
        let size = entry.size();
        let mode = entry.header().mode().map_err(ExtractError::Malformed)?;
        self.raw.clear();
        self.raw.extend_from_slice(&entry.path_bytes());
        let depth = normalize_name(&self.raw, self.limits, &mut self.name)?;
        check_pax_records(&mut entry, &self.raw)?;
        if mode & 0o7000 != 0 {
            return Err(ExtractError::SpecialBits {
                entry: lossy(&self.raw),
                mode,
            });
        }
        match kind {
            EntryType::Regular => {}
            EntryType::Directory => {}
            EntryType::Symlink => {
                self.link.clear();
                if let Some(target) = entry.link_name_bytes() {
                    self.link.extend_from_slice(&target);
                }
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| lossy(&t)).unwrap_or_default();
                return Err(ExtractError::Hardlink {
                    entry: lossy(&self.raw),
                    target,
                });
            }
            other => {
                return Err(ExtractError::UnsupportedType {
                    entry: lossy(&self.raw),
                    kind: kind_name(other),
                })
            }
        }
        if depth == 0 {
            // `./` itself: the root, which we created.
            if kind != EntryType::Directory {
                return Err(ExtractError::EmptyName);
            }
            if std::mem::replace(&mut self.root_seen, true) {
                return Err(ExtractError::Duplicate {
                    entry: lossy(&self.raw),
                });
            }
            return self.no_data(size, "directory");
        }
        if let Some(node) = self.nodes.get_mut(&self.name[..]) {
            if *node == Node::ImplicitDir && kind == EntryType::Directory {
                *node = Node::Dir;
                return self.no_data(size, "directory");
            }
            return Err(ExtractError::Duplicate {
                entry: lossy(&self.raw),
            });
        }
        self.ensure_parents()?;
        match kind {
            EntryType::Directory => {
                self.no_data(size, "directory")?;
                self.mkdir()?;
                self.insert(Node::Dir);
            }
            EntryType::Symlink => {
                self.no_data(size, "symlink")?;
                check_link_target(&self.raw, &self.link, depth, self.limits)?;
                self.reserve_inode()?;
                rustix::fs::symlinkat(&self.link[..], self.root, &self.name[..])
                    .map_err(|e| self.io("create symlink", e.into()))?;
                self.insert(Node::Symlink);
                self.report.symlinks += 1;
            }
            _ => {
                self.write_file(&mut entry, size, mode)?;
                self.insert(Node::File);
            }
        }
        Ok(())
    }

    fn write_file<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, size: u64, mode: u32) -> Result<()> {
        let total = self.report.bytes.saturating_add(size);
        if total > self.limits.max_bytes {
            return Err(ExtractError::TooManyBytes {
                entry: lossy(&self.raw),
                limit: self.limits.max_bytes,
            });
        }
        if let Some(expected) = self.limits.expected_bytes.filter(|e| total > *e) {
            return Err(ExtractError::OverExpectedBytes {
                entry: lossy(&self.raw),
                expected,
            });
        }
        // Exec bit kept (any of the three), nothing else: 0755 or 0644.
        let mode = Mode::from_raw_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        self.reserve_inode()?;
        let fd = rustix::fs::openat(self.root, &self.name[..], flags, mode).map_err(|e| self.io("create", e.into()))?;
        // The umask may have cleared bits the hook's readers need.
        rustix::fs::fchmod(&fd, mode).map_err(|e| self.io("chmod", e.into()))?;
        let mut file = File::from(fd);
        self.meter.in_data.set(true);
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let raw = std::mem::take(&mut self.raw);
                    return Err(self.stream_error(e, &raw, size, copied));
                }
            };
            file.write_all(&self.buf[..n]).map_err(|e| self.io("write", e))?;
            copied += n as u64;
        }
        self.meter.in_data.set(false);
        if copied != size {
            return Err(ExtractError::Truncated {
                entry: lossy(&self.raw),
                expected: size,
                actual: copied,
            });
        }
        self.report.bytes = total;
        self.report.files += 1;
        Ok(())
    }

    /// Creates each missing parent; fails if one is not a directory this extraction made.
    fn ensure_parents(&mut self) -> Result<()> {
        let Some(cut) = self.name.iter().rposition(|b| *b == b'/') else {
            return Ok(()); // Directly under the root.
        };
        if self.name[..cut] == self.last_parent[..] {
            return Ok(());
        }
        let mut start = 0;
        loop {
            let end = self.name[start..cut]
                .iter()
                .position(|b| *b == b'/')
                .map_or(cut, |i| start + i);
            match self.nodes.get(&self.name[..end]) {
                Some(Node::Dir | Node::ImplicitDir) => {}
                Some(Node::File | Node::Symlink) => {
                    return Err(ExtractError::ParentNotDirectory {
                        entry: lossy(&self.raw),
                        parent: lossy(&self.name[..end]),
                    });
                }
                None => {
                    self.mkdir_at(end)?;
                    self.nodes.insert(self.name[..end].into(), Node::ImplicitDir);
                }
            }
            if end == cut {
                break;
            }
            start = end + 1;
        }
        self.last_parent.clear();
        self.last_parent.extend_from_slice(&self.name[..cut]);
        Ok(())
    }

    fn mkdir(&mut self) -> Result<()> {
        self.mkdir_at(self.name.len())
    }

    fn mkdir_at(&mut self, end: usize) -> Result<()> {
        self.reserve_inode()?;
        let path = &self.name[..end];
        let mode = Mode::from_raw_mode(0o755);
        rustix::fs::mkdirat(self.root, path, mode).map_err(|e| self.io("create directory", e.into()))?;
        // Only our own directories lie on this path, so following is safe; undo the umask.
        rustix::fs::chmodat(self.root, path, mode, AtFlags::empty()).map_err(|e| self.io("chmod", e.into()))?;
        self.report.dirs += 1;
        Ok(())
    }

    /// Checks that one more inode fits [`ExtractLimits::max_entries`]. Every inode counts, not
    /// only entries: the directories a deep name implies are created too, so counting entries
    /// alone would let `a0/b/c/.../f`, `a1/b/c/.../f`, ... make up to `max_depth` inodes each.
    fn reserve_inode(&self) -> Result<()> {
        let made = self.report.files + self.report.dirs + self.report.symlinks;
        if made >= self.limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn insert(&mut self, node: Node) {
        self.nodes.insert(self.name.as_slice().into(), node);
    }

    fn no_data(&self, size: u64, kind: &'static str) -> Result<()> {
        match size {
            0 => Ok(()),
            _ => Err(ExtractError::UnexpectedData {
                entry: lossy(&self.raw),
                kind,
                size,
            }),
        }
    }

    /// After the end-of-archive marker: only zeros, and not too many. Reading to the end also
    /// makes the gzip decoder check its CRC and length trailer.
    fn drain_trailer(&mut self, mut reader: PipeReader<'_>) -> Result<()> {
        self.meter.in_data.set(true);
        let mut seen = 0u64;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_error(e, b"", 0, 0)),
            };
            seen += n as u64;
            if seen > TRAILING_LIMIT || self.buf[..n].iter().any(|b| *b != 0) {
                return Err(ExtractError::TrailingData);
            }
        }
    }

    /// Maps an error from the tar stream to the rule it broke.
    fn stream_error(&self, e: io::Error, entry: &[u8], expected: u64, actual: u64) -> ExtractError {
        if let Some(err) = self.meter.error.take() {
            err
        } else if self.meter.failed.get() {
            ExtractError::Read(e) // The caller replaces this with the decoder's own error.
        } else if self.meter.eof.get() {
            ExtractError::Truncated {
                entry: lossy(entry),
                expected,
                actual,
            }
        } else {
            ExtractError::Malformed(e)
        }
    }

    fn io(&self, op: &'static str, source: io::Error) -> ExtractError {
        ExtractError::Io {
            op,
            path: self.path(),
            source,
        }
    }

    fn path(&self) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(&self.name))
    }
}

/// Largest size a ustar header's 11 octal digits hold. Writers put a larger size in a PAX
/// `size` record and something else (0, or the largest value) in the header field.
const USTAR_SIZE_MAX: u64 = 0o777_7777_7777;

/// Checks the PAX records that describe this entry (the tar crate parses them leniently):
/// every record well formed; a `size` record a decimal number equal to the header's size field
/// unless that field cannot hold it (a PAX size that differs lets the archive read as different
/// entries to readers that do and do not honour it, whichever of the two is smaller); and no
/// GNU sparse records (the PAX form of a sparse file, whose data starts with a sparse map).
fn check_pax_records<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<()> {
    let header = entry.header().entry_size().map_err(ExtractError::Malformed)?;
    let Some(records) = entry.pax_extensions().map_err(ExtractError::Malformed)? else {
        return Ok(());
    };
    for record in records {
        let record = record.map_err(|e| {
            ExtractError::Malformed(io::Error::new(
                e.kind(),
                format!("malformed PAX record for entry {:?}: {e}", lossy(raw)),
            ))
        })?;
        let key = record.key_bytes();
        if key == b"size" {
            let value = record.value_bytes();
            let pax = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
            if !pax.is_some_and(|pax| pax == header || pax > USTAR_SIZE_MAX) {
                return Err(ExtractError::PaxSize {
                    entry: lossy(raw),
                    pax: lossy(value),
                    header,
                });
            }
        } else if key.starts_with(b"GNU.sparse.") {
            return Err(ExtractError::UnsupportedType {
                entry: lossy(raw),
                kind: "GNU sparse file (PAX format)".into(),
            });
        }
    }
    Ok(())
}

fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::Continuous => "contiguous file".into(),
        EntryType::GNUSparse => "GNU sparse file".into(),
        // Extension headers reach here only without a ustar or GNU magic (the tar crate
        // applies them otherwise).
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
            format!("'{}' (extension header in a non-ustar header)", kind.as_byte() as char)
        }
        other => match other.as_byte() {
            b if b.is_ascii_graphic() => format!("'{}' (unknown)", b as char),
            b => format!("{b:#04x} (unknown)"),
        },
    }
}
