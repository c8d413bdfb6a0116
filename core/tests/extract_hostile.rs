//! Hostile layers against `cache::extract`: one test per rule. Each archive is built here, run
//! both plain and gzip'd, and must fail with the named variant, leave nothing at the final path,
//! no temp dir, and the sentinel dir outside the store untouched.
#![cfg(feature = "cache")]

mod extract_support;

use std::{io::Write, path::Path};

use extract_support::{gz, raw_header, Env, Tar};
use kcache_core::cache::extract::{extract_layer, ExtractError, ExtractLimits};

/// Runs `archive` plain and gzip'd in fresh stores; checks that nothing leaked; returns the
/// plain run's error (the gzip'd one must be the same variant).
fn reject_with(archive: &[u8], limits: &ExtractLimits) -> ExtractError {
    let plain = reject_one(archive, false, limits);
    let zipped = reject_one(&gz(archive), true, limits);
    assert_eq!(
        std::mem::discriminant(&plain),
        std::mem::discriminant(&zipped),
        "plain: {plain:?}, gzip: {zipped:?}"
    );
    plain
}

fn reject(archive: &[u8]) -> ExtractError {
    reject_with(archive, &ExtractLimits::default())
}

fn reject_one(archive: &[u8], gzip: bool, limits: &ExtractLimits) -> ExtractError {
    let env = Env::new();
    let before = env.sentinel_snapshot();
    let err = extract_layer(archive, gzip, &env.store, "layer", limits).expect_err("hostile layer was accepted");
    env.assert_clean(&before);
    err
}

fn sentinel_abs(name: &str) -> Vec<u8> {
    // Not the env's own sentinel (each run has one), but a path that must never be created.
    format!("/tmp/kcache-extract-sentinel-{}/{name}", std::process::id()).into_bytes()
}

#[test]
fn absolute_name_is_rejected() {
    let mut t = Tar::new();
    t.raw(&sentinel_abs("evil"), b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::AbsolutePath { .. }));
    assert!(!Path::new(std::str::from_utf8(&sentinel_abs("")).unwrap()).exists());
}

#[test]
fn parent_component_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"../sentinel/evil", b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::ParentComponent { .. }));
    let mut t = Tar::new();
    t.dir("a/");
    t.raw(b"a/../../sentinel/evil", b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::ParentComponent { .. }));
}

#[test]
fn symlink_with_absolute_target_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"link", b'2', 0o777, b"", b"/etc");
    assert!(matches!(reject(&t.finish()), ExtractError::SymlinkAbsolute { .. }));
}

#[test]
fn symlink_escaping_with_dotdot_is_rejected() {
    let mut t = Tar::new();
    t.dir("a/");
    t.raw(b"a/link", b'2', 0o777, b"", b"../../sentinel");
    assert!(matches!(reject(&t.finish()), ExtractError::SymlinkEscapes { .. }));
}

#[test]
fn symlink_climbing_through_another_symlink_is_rejected() {
    // `x -> .` is fine, but `y -> x/..` would be the store itself: '..' after a name is refused.
    let mut t = Tar::new();
    t.raw(b"x", b'2', 0o777, b"", b".");
    t.raw(b"y", b'2', 0o777, b"", b"x/..");
    assert!(matches!(reject(&t.finish()), ExtractError::SymlinkEscapes { .. }));
}

#[test]
fn symlink_then_write_through_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"link", b'2', 0o777, b"", &sentinel_abs(""));
    t.raw(b"link/file", b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::SymlinkAbsolute { .. }));
}

#[test]
fn write_through_an_inside_symlink_is_rejected() {
    let mut t = Tar::new();
    t.dir("sub/");
    t.raw(b"link", b'2', 0o777, b"", b"sub");
    t.raw(b"link/file", b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::ParentNotDirectory { .. }));
    let mut t = Tar::new();
    t.raw(b"a", b'2', 0o777, b"", b".");
    t.raw(b"a/a/file", b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::ParentNotDirectory { .. }));
}

#[test]
fn write_through_a_file_is_rejected() {
    let mut t = Tar::new();
    t.file("f", b"x", 0o644);
    t.raw(b"f/g", b'0', 0o644, b"x", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::ParentNotDirectory { .. }));
}

#[test]
fn hardlink_outside_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"h", b'1', 0o644, b"", b"../sentinel/keep.txt");
    assert!(matches!(reject(&t.finish()), ExtractError::Hardlink { .. }));
    let mut t = Tar::new();
    t.raw(b"h", b'1', 0o644, b"", b"/etc/passwd");
    assert!(matches!(reject(&t.finish()), ExtractError::Hardlink { .. }));
}

#[test]
fn hardlink_inside_is_rejected_too() {
    let mut t = Tar::new();
    t.file("f", b"x", 0o644);
    t.raw(b"h", b'1', 0o644, b"", b"f");
    assert!(matches!(reject(&t.finish()), ExtractError::Hardlink { .. }));
}

#[test]
fn char_device_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"null", b'3', 0o666, b"", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::UnsupportedType { kind, .. } if kind == "character device"));
}

#[test]
fn block_device_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"sda", b'4', 0o660, b"", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::UnsupportedType { kind, .. } if kind == "block device"));
}

#[test]
fn fifo_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"pipe", b'6', 0o644, b"", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::UnsupportedType { kind, .. } if kind == "fifo"));
}

#[test]
fn setuid_file_is_rejected() {
    let mut t = Tar::new();
    t.file("launcher.so", b"\x7fELF", 0o4755);
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::SpecialBits { mode: 0o4755, .. }
    ));
}

#[test]
fn setgid_dir_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"d/", b'5', 0o2755, b"", b"");
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::SpecialBits { mode: 0o2755, .. }
    ));
}

#[test]
fn sticky_dir_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"d/", b'5', 0o1777, b"", b"");
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::SpecialBits { mode: 0o1777, .. }
    ));
}

#[test]
fn duplicate_entry_is_rejected() {
    let mut t = Tar::new();
    t.file("a.json", b"{}", 0o644);
    t.file("./a.json", b"{\"evil\":1}", 0o644);
    assert!(matches!(reject(&t.finish()), ExtractError::Duplicate { .. }));
    let mut t = Tar::new();
    t.dir("d/");
    t.dir("./d");
    assert!(matches!(reject(&t.finish()), ExtractError::Duplicate { .. }));
}

#[test]
fn truncated_archive_is_rejected() {
    let mut t = Tar::new();
    t.file("big.cubin", &[7u8; 10_000], 0o644);
    let mut archive = t.finish();
    archive.truncate(512 + 4000);
    let err = reject_one(&archive, false, &ExtractLimits::default());
    assert!(
        matches!(
            err,
            ExtractError::Truncated {
                expected: 10_000,
                actual: 4000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_gzip_is_rejected() {
    let mut t = Tar::new();
    t.file("big.cubin", &extract_support::noise(200_000, 1), 0o644);
    let mut zipped = gz(&t.finish());
    zipped.truncate(zipped.len() / 2);
    assert!(matches!(
        reject_one(&zipped, true, &ExtractLimits::default()),
        ExtractError::Read(_)
    ));
}

#[test]
fn archive_without_end_marker_is_rejected() {
    let mut t = Tar::new();
    t.file("a.json", b"{}", 0o644);
    let mut archive = t.finish();
    archive.truncate(1024); // Header + one data block, no zero blocks.
    assert!(matches!(reject(&archive), ExtractError::Truncated { .. }));
}

/// A PAX extended header's data: `<len> <key>=<value>\n` records.
fn pax_records(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = format!(" {key}={value}\n");
        // The length counts its own digits.
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

#[test]
fn lying_pax_size_is_rejected() {
    // PAX says 5000 bytes, the ustar header and the data say 10: a PAX reader (GNU tar, the tar
    // crate) would eat the end marker; a ustar reader would not. Refused before any data.
    let mut t = Tar::new();
    t.raw(b"././@PaxHeader", b'x', 0o644, b"13 size=5000\n", b"");
    t.raw(b"f", b'0', 0o644, b"0123456789", b"");
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::PaxSize { header: 10, pax, .. } if pax == "5000"
    ));
}

#[test]
fn pax_size_smaller_than_the_header_is_rejected() {
    // ustar says 10, PAX says 5: both stay in block sync, but the file would be "01234" to a PAX
    // reader and "0123456789" to a ustar one.
    let mut t = Tar::new();
    t.raw(b"././@PaxHeader", b'x', 0o644, &pax_records(&[("size", "5")]), b"");
    t.raw(b"f", b'0', 0o644, b"0123456789", b"");
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::PaxSize { header: 10, pax, .. } if pax == "5"
    ));
    // The desync: 1024 bytes of data whose second block is a valid header. With the PAX size
    // that block would be read as the next entry, one a ustar reader never sees.
    let mut data = vec![b'a'; 512];
    data.extend_from_slice(raw_header(b"smuggled", b'0', 0o644, 0, b"").as_bytes());
    let mut t = Tar::new();
    t.raw(b"././@PaxHeader", b'x', 0o644, &pax_records(&[("size", "5")]), b"");
    t.raw(b"f", b'0', 0o644, &data, b"");
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::PaxSize { header: 1024, .. }
    ));
    // A size record that is not a number is not silently ignored either.
    let mut t = Tar::new();
    t.raw(b"././@PaxHeader", b'x', 0o644, &pax_records(&[("size", "5x")]), b"");
    t.raw(b"f", b'0', 0o644, b"0123456789", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::PaxSize { .. }));
}

#[test]
fn unknown_type_byte_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"odd", b'Z', 0o644, b"", b"");
    let err = reject(&t.finish());
    assert!(
        matches!(&err, ExtractError::UnsupportedType { kind, .. } if kind == "'Z' (unknown)"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "entry \"odd\": entry type 'Z' (unknown) is not allowed"
    );
    let mut t = Tar::new();
    t.raw(b"odd", 0x80, 0o644, b"data", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::UnsupportedType { kind, .. } if kind == "0x80 (unknown)"));
}

#[test]
fn contiguous_file_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"c.cubin", b'7', 0o644, b"data", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::UnsupportedType { kind, .. } if kind == "contiguous file"));
}

#[test]
fn gnu_sparse_file_is_rejected() {
    // Old GNU format, the map in the header: 512 bytes of data at offset 3584 of a 4096-byte file
    // (valid, so the tar crate accepts the header and the type rule decides).
    let mut h = tar::Header::new_gnu();
    h.set_path("holes.cubin").unwrap();
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(512);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(3584);
    gnu.sparse[0].set_length(512);
    gnu.set_real_size(4096);
    h.set_cksum();
    let mut t = Tar::new();
    t.append_raw(&h, &[7u8; 512]);
    assert!(matches!(reject(&t.finish()), ExtractError::UnsupportedType { kind, .. } if kind == "GNU sparse file"));
    // PAX format 1.0: a regular entry whose data starts with the sparse map.
    let mut data = b"1\n3584\n512\n".to_vec();
    data.resize(1024, 7);
    let records = pax_records(&[
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "holes.cubin"),
        ("GNU.sparse.realsize", "4096"),
    ]);
    let mut t = Tar::new();
    t.raw(b"././@PaxHeader", b'x', 0o644, &records, b"");
    t.raw(b"GNUSparseFile.0/holes.cubin", b'0', 0o644, &data, b"");
    assert!(matches!(
        reject(&t.finish()),
        ExtractError::UnsupportedType { kind, .. } if kind == "GNU sparse file (PAX format)"
    ));
}

#[test]
fn header_size_smaller_than_data_is_rejected() {
    let mut t = Tar::new();
    let mut h = raw_header(b"f", b'0', 0o644, 10, b"");
    h.set_size(10);
    h.set_cksum();
    t.append_raw(&h, &extract_support::noise(4096, 2)); // 4096 bytes follow a 10-byte header.
    assert!(matches!(reject(&t.finish()), ExtractError::Malformed(_)));
}

#[test]
fn trailing_garbage_is_rejected() {
    let mut t = Tar::new();
    t.file("a.json", b"{}", 0o644);
    let mut archive = t.finish();
    archive.extend_from_slice(b"#!/bin/sh\nrm -rf /\n");
    assert!(matches!(reject(&archive), ExtractError::TrailingData));
}

#[test]
fn dir_carrying_data_is_rejected() {
    let mut t = Tar::new();
    t.raw(b"d/", b'5', 0o755, b"hidden", b"");
    assert!(matches!(reject(&t.finish()), ExtractError::UnexpectedData { .. }));
}

#[test]
fn too_many_bytes_is_rejected() {
    let mut t = Tar::new();
    t.file("a", &[1u8; 60], 0o644);
    t.file("b", &[1u8; 60], 0o644);
    let limits = ExtractLimits {
        max_bytes: 100,
        ..ExtractLimits::default()
    };
    assert!(matches!(
        reject_with(&t.finish(), &limits),
        ExtractError::TooManyBytes { limit: 100, .. }
    ));
}

#[test]
fn too_many_entries_is_rejected() {
    let mut t = Tar::new();
    for i in 0..4 {
        t.file(&format!("f{i}"), b"", 0o644);
    }
    let limits = ExtractLimits {
        max_entries: 3,
        ..ExtractLimits::default()
    };
    assert!(matches!(
        reject_with(&t.finish(), &limits),
        ExtractError::TooManyEntries { limit: 3 }
    ));
}

#[test]
fn implied_parents_count_against_the_entry_limit() {
    // 20 entries, each 60 levels deep under its own top dir: 1200 inodes from 20 entries.
    let deep = |i: usize| format!("u{i}/{}f", "d/".repeat(58));
    let mut t = Tar::new();
    for i in 0..20 {
        t.long_name(deep(i).as_bytes(), b"x");
    }
    let limits = ExtractLimits {
        max_entries: 1000,
        ..ExtractLimits::default()
    };
    assert!(matches!(
        reject_with(&t.finish(), &limits),
        ExtractError::TooManyEntries { limit: 1000 }
    ));
    // The count is exact: two entries of four dirs and a file plus a symlink are 11 inodes.
    let mut t = Tar::new();
    t.file("a0/b/c/d/f", b"x", 0o644);
    t.file("a1/b/c/d/f", b"x", 0o644);
    t.symlink("a0/b/c/d/l", "f");
    let archive = t.finish();
    let limits = ExtractLimits {
        max_entries: 10,
        ..ExtractLimits::default()
    };
    assert!(matches!(
        reject_with(&archive, &limits),
        ExtractError::TooManyEntries { limit: 10 }
    ));
    let env = Env::new();
    let limits = ExtractLimits {
        max_entries: 11,
        ..ExtractLimits::default()
    };
    let report = extract_layer(&archive[..], false, &env.store, "layer", &limits).unwrap();
    assert_eq!((report.dirs, report.files, report.symlinks), (8, 2, 1));
}

#[test]
fn over_expected_bytes_is_rejected() {
    let mut t = Tar::new();
    t.file("a", &[1u8; 600], 0o644);
    let limits = ExtractLimits {
        expected_bytes: Some(599),
        ..ExtractLimits::default()
    };
    assert!(matches!(
        reject_with(&t.finish(), &limits),
        ExtractError::OverExpectedBytes { expected: 599, .. }
    ));
}

#[test]
fn path_too_long_is_rejected() {
    let mut t = Tar::new();
    let long = format!("{}/f", "d".repeat(4200));
    t.long_name(long.as_bytes(), b"x");
    assert!(matches!(reject(&t.finish()), ExtractError::PathTooLong { .. }));
}

#[test]
fn path_too_deep_is_rejected() {
    let mut t = Tar::new();
    t.long_name("d/".repeat(70).as_bytes(), b"");
    assert!(matches!(reject(&t.finish()), ExtractError::TooDeep { depth: 65, .. }));
}

#[test]
fn nul_in_name_is_rejected() {
    // A ustar name field stops at its first NUL; a GNU long name carries it through.
    let mut t = Tar::new();
    t.long_name(b"ok.json\0/../../evil\0", b"x");
    assert!(matches!(reject(&t.finish()), ExtractError::NulInName { .. }));
}

#[test]
fn huge_pax_header_is_rejected_before_it_is_buffered() {
    let mut t = Tar::new();
    let mut record = b"2097165 comment=".to_vec();
    record.resize(2_097_164, b'a');
    record.push(b'\n');
    t.raw(b"././@PaxHeader", b'x', 0o644, &record, b"");
    t.file("f", b"x", 0o644);
    assert!(matches!(reject(&t.finish()), ExtractError::HeadersTooLarge { .. }));
}

#[test]
fn bad_final_names_are_rejected() {
    let env = Env::new();
    for name in ["", ".", "..", "a/b", ".tmp-x", "../x"] {
        let err = extract_layer(
            &Tar::new().finish()[..],
            false,
            &env.store,
            name,
            &ExtractLimits::default(),
        );
        assert!(matches!(err, Err(ExtractError::InvalidFinalName(_))), "{name:?}");
    }
}

#[test]
fn existing_final_dir_is_left_alone() {
    let env = Env::new();
    let final_path = env.store.join("layer");
    std::fs::create_dir(&final_path).unwrap();
    std::fs::File::create(final_path.join("mine"))
        .unwrap()
        .write_all(b"keep")
        .unwrap();
    let mut t = Tar::new();
    t.file("mine", b"theirs", 0o644);
    let err = extract_layer(&t.finish()[..], false, &env.store, "layer", &ExtractLimits::default());
    assert!(matches!(err, Err(ExtractError::AlreadyExists(_))));
    assert_eq!(std::fs::read(final_path.join("mine")).unwrap(), b"keep");
}
