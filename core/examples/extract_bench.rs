//! Times `cache::extract::extract_layer` against GNU `tar -xzf` on one generated cache layer.
//!
//! ```text
//! cargo run --release -p kcache-core --example extract_bench -- [--dir DIR] [--runs N] [--json]
//! ```
//!
//! The layer (~500 MB, ~20,000 files: many small JSON/IR files, a few MB-sized cubins, data that
//! compresses about 2:1) is written once to DIR/layer.tar.gz and reused. Each run extracts into a
//! fresh dir; the three tools are interleaved; the tree is synced and removed between runs (not
//! timed). Ours makes the data durable (syncfs) before its rename; plain GNU tar does not, so
//! `tar+sync` (`tar -xzf` then `sync -f`) is shown too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use flate2::{write::GzEncoder, Compression};
use kcache_core::cache::extract::{extract_layer, ExtractLimits};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Text-ish bytes: 16 symbols, ~4 bits of entropy each.
    fn text(&mut self, buf: &mut Vec<u8>, len: usize) {
        const ALPHABET: &[u8; 16] = b"{}\":,0123abcdef ";
        buf.clear();
        while buf.len() < len {
            let r = self.next();
            buf.extend((0..16).map(|i| ALPHABET[((r >> (i * 4)) & 15) as usize]));
        }
        buf.truncate(len);
    }

    /// Binary-ish bytes: half zeros, half random.
    fn binary(&mut self, buf: &mut Vec<u8>, len: usize) {
        buf.clear();
        while buf.len() < len {
            let r = self.next();
            buf.extend((0..4).map(|i| {
                if (r >> (i * 16)) & 1 == 0 {
                    0
                } else {
                    (r >> (i * 16 + 8)) as u8
                }
            }));
        }
        buf.truncate(len);
    }
}

fn generate(path: &Path) -> (u64, u64) {
    let out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    let mut add = |tar: &mut tar::Builder<_>, name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).unwrap();
        files += 1;
        bytes += data.len() as u64;
    };
    for k in 0..2000u64 {
        let dir = format!(
            "io.triton.cache/{:052X}",
            rng.next() as u128 * 0x1_0000_0001 + k as u128
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, format!("{dir}/"), &[][..]).unwrap();
        for (i, ext) in ["json", "ttir", "ttgir", "llir", "ptx", "source", "json.meta", "__grp__"]
            .iter()
            .enumerate()
        {
            let len = 512 + (rng.next() % (if i < 4 { 7_000 } else { 3_000 })) as usize;
            rng.text(&mut buf, len);
            add(&mut tar, &format!("{dir}/kernel_{i}.{ext}"), &buf, 0o644);
        }
        let len = if k % 8 == 0 {
            1_200_000 + (rng.next() % 1_000_000) as usize
        } else {
            25_000 + (rng.next() % 80_000) as usize
        };
        rng.binary(&mut buf, len);
        add(&mut tar, &format!("{dir}/kernel.cubin"), &buf, 0o644);
        if k % 4 == 0 {
            rng.binary(&mut buf, 40_000);
            add(&mut tar, &format!("{dir}/cuda_utils.so"), &buf, 0o755);
        }
    }
    rng.text(&mut buf, 2_000);
    add(&mut tar, "io.triton.manifest/manifest.json", &buf, 0o644);
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    (files, bytes)
}

fn sync_and_remove(dir: &Path) {
    let _ = Command::new("sync").status();
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Decompression alone: flate2 (whichever backend this build has) vs `gzip -dc`.
fn decode_only(layer: &Path, runs: usize) {
    let (mut ours, mut gzip) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let file = std::io::BufReader::with_capacity(1 << 20, File::open(layer).unwrap());
        let n = std::io::copy(&mut flate2::bufread::MultiGzDecoder::new(file), &mut std::io::sink()).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(layer)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(out.success());
        gzip.push(t.elapsed().as_secs_f64());
        eprintln!("{n} bytes");
    }
    let (o, g) = (median(&mut ours), median(&mut gzip));
    println!("decode only: flate2 {o:.3}s, gzip -dc {g:.3}s, ratio {:.2}", o / g);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    let json = args.iter().any(|a| a == "--json");
    let runs: usize = flag("--runs").map_or(3, |r| r.parse().unwrap());
    let dir = PathBuf::from(flag("--dir").unwrap_or_else(|| "/tmp/kcache-extract-bench".into()));
    std::fs::create_dir_all(&dir).unwrap();
    let layer = dir.join("layer.tar.gz");
    if !layer.exists() {
        let t = Instant::now();
        let partial = dir.join("layer.tar.gz.partial");
        let (files, bytes) = generate(&partial);
        std::fs::rename(&partial, &layer).unwrap();
        eprintln!(
            "generated {files} files, {bytes} bytes in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    let gz_size = layer.metadata().unwrap().len();
    if args.iter().any(|a| a == "--decode") {
        return decode_only(&layer, runs);
    }
    let (mut ours, mut tar, mut tar_sync) = (Vec::new(), Vec::new(), Vec::new());
    let mut report = None;
    for run in 0..runs {
        let out = dir.join(format!("ours-{run}"));
        sync_and_remove(&out);
        std::fs::create_dir(&out).unwrap();
        let t = Instant::now();
        let reader = File::open(&layer).unwrap();
        report = Some(extract_layer(reader, true, &out, "layer", &ExtractLimits::default()).unwrap());
        ours.push(t.elapsed().as_secs_f64());
        sync_and_remove(&out);

        for (with_sync, times) in [(false, &mut tar), (true, &mut tar_sync)] {
            let out = dir.join(format!("tar-{run}"));
            sync_and_remove(&out);
            std::fs::create_dir(&out).unwrap();
            let t = Instant::now();
            let status = Command::new("tar")
                .arg("-xzf")
                .arg(&layer)
                .arg("-C")
                .arg(&out)
                .status()
                .unwrap();
            assert!(status.success());
            if with_sync {
                assert!(Command::new("sync").arg("-f").arg(&out).status().unwrap().success());
            }
            times.push(t.elapsed().as_secs_f64());
            sync_and_remove(&out);
        }
    }
    let report = report.unwrap();
    let (m_ours, m_tar, m_tar_sync) = (median(&mut ours), median(&mut tar), median(&mut tar_sync));
    if json {
        let out = serde_json::json!({
            "layer_gz_bytes": gz_size, "files": report.files, "dirs": report.dirs, "bytes": report.bytes,
            "runs": runs,
            "ours_s": ours, "tar_s": tar, "tar_sync_s": tar_sync,
            "median_ours_s": m_ours, "median_tar_s": m_tar, "median_tar_sync_s": m_tar_sync,
            "ratio_vs_tar": m_ours / m_tar, "ratio_vs_tar_sync": m_ours / m_tar_sync,
        });
        println!("{out}");
    } else {
        println!(
            "layer: {:.1} MB gz, {} files, {} dirs, {:.1} MB data; {runs} runs, interleaved",
            gz_size as f64 / 1e6,
            report.files,
            report.dirs,
            report.bytes as f64 / 1e6
        );
        println!("{:<28} {:>9} {:>9} {:>7}", "tool", "median s", "min s", "ratio");
        for (name, times, m) in [
            ("kcache extract (durable)", &ours, m_ours),
            ("GNU tar -xzf", &tar, m_tar),
            ("GNU tar -xzf + sync -f", &tar_sync, m_tar_sync),
        ] {
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            println!("{name:<28} {m:>9.3} {min:>9.3} {:>7.2}", m_ours / m);
        }
    }
}
