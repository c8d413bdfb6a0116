//! Builders for test layers and a store with a sentinel dir beside it.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use flate2::{write::GzEncoder, Compression};

/// A ustar header with raw name and link fields (so `..`, absolute and odd names get through).
pub fn raw_header(name: &[u8], kind: u8, mode: u32, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::new(kind));
    let bytes = h.as_mut_bytes();
    bytes[..100].fill(0);
    bytes[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    bytes[157..257].fill(0);
    bytes[157..157 + link.len()].copy_from_slice(link);
    h.set_cksum();
    h
}

/// An archive under construction.
pub struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    pub fn raw(&mut self, name: &[u8], kind: u8, mode: u32, data: &[u8], link: &[u8]) -> &mut Self {
        let h = raw_header(name, kind, mode, data.len() as u64, link);
        self.append_raw(&h, data)
    }

    pub fn append_raw(&mut self, h: &tar::Header, data: &[u8]) -> &mut Self {
        self.0.append(h, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(name.as_bytes(), b'0', mode, data, b"")
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), b'5', 0o755, b"", b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), b'2', 0o777, b"", target.as_bytes())
    }

    /// A regular file whose name travels in a GNU long-name (`L`) entry, bytes as given.
    pub fn long_name(&mut self, name: &[u8], data: &[u8]) -> &mut Self {
        let mut h = raw_header(b"././@LongLink", b'L', 0o644, name.len() as u64, b"");
        h.as_mut_bytes()[257..265].copy_from_slice(b"ustar  \0"); // GNU magic: the tar crate wants it.
        h.set_cksum();
        self.append_raw(&h, name);
        let mut h = raw_header(b"placeholder", b'0', 0o644, data.len() as u64, b"");
        h.as_mut_bytes()[257..265].copy_from_slice(b"ustar  \0");
        h.set_cksum();
        self.append_raw(&h, data)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Deterministic bytes (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A temp dir holding `store/` and `sentinel/keep.txt`.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub sentinel: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let sentinel = tmp.path().join("sentinel");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&sentinel).unwrap();
        std::fs::write(sentinel.join("keep.txt"), b"keep").unwrap();
        Self { tmp, store, sentinel }
    }

    /// Every path under the temp dir outside the store, with its contents.
    pub fn sentinel_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        walk(self.tmp.path(), &self.store, &mut out);
        out.sort();
        out
    }

    /// Nothing at the final path, no temp dir, nothing new outside the store.
    pub fn assert_clean(&self, before: &[(PathBuf, Vec<u8>)]) {
        assert!(
            self.store.join("layer").symlink_metadata().is_err(),
            "final path exists"
        );
        assert_eq!(self.temp_dirs(), Vec::<String>::new(), "temp dir left behind");
        assert_eq!(
            self.sentinel_snapshot(),
            before,
            "something was written outside the store"
        );
    }

    pub fn temp_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    }
}

fn walk(dir: &Path, skip: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path == skip {
            continue;
        }
        let meta = path.symlink_metadata().unwrap();
        if meta.is_dir() {
            out.push((path.clone(), Vec::new()));
            walk(&path, skip, out);
        } else if meta.is_file() {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        } else {
            out.push((path.clone(), b"<other>".to_vec()));
        }
    }
}

/// A reader that hands out at most `step` bytes per call, sleeping `pause` before each.
pub struct SlowReader<'a> {
    pub data: &'a [u8],
    pub step: usize,
    pub pause: Duration,
}

impl Read for SlowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.pause);
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
