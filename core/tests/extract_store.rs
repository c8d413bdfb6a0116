//! `cache::extract` on good layers: a realistic Triton cache, a SIGKILL mid-way, and two
//! extractions racing for one digest.
#![cfg(feature = "cache")]

mod extract_support;

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Barrier,
    },
    time::{Duration, Instant},
};

use extract_support::{gz, noise, Env, SlowReader, Tar};
use kcache_core::cache::extract::{
    extract_layer, extract_once, sweep_temp_dirs, ExtractLimits, ExtractOutcome, ExtractReport,
};

const KEY: &str = "io.triton.cache/2PQ6ZKUXVWF7WJ3LDZ5WJCN4GXE5KHPAYJMGNLX4WQNM6ETTKBSQ";

fn triton_layer() -> Vec<u8> {
    let mut t = Tar::new();
    t.dir("./");
    t.dir("io.triton.cache/");
    t.dir(&format!("{KEY}/"));
    t.file(
        &format!("{KEY}/matmul_kernel.json"),
        br#"{"name":"matmul_kernel","num_warps":4}"#,
        0o644,
    );
    t.file(&format!("{KEY}/matmul_kernel.cubin"), &noise(300_000, 3), 0o644);
    t.file(&format!("{KEY}/matmul_kernel.ptx"), b"// ptx", 0o644);
    t.file(
        &format!("{KEY}/__grp__matmul_kernel.json"),
        br#"{"child_paths":{}}"#,
        0o644,
    );
    // No explicit dir entry: the parent is created implicitly.
    t.file("io.triton.cache/LAUNCHERKEY/cuda_utils.so", &noise(20_000, 4), 0o755);
    t.symlink("io.triton.cache/latest", "LAUNCHERKEY");
    t.symlink(&format!("{KEY}/launcher"), "../LAUNCHERKEY/cuda_utils.so");
    t.file("io.triton.manifest/manifest.json", br#"{"entries":4}"#, 0o600);
    t.finish()
}

#[test]
fn triton_cache_layer_extracts_with_sane_modes() {
    let env = Env::new();
    let layer = gz(&triton_layer());
    let report = extract_layer(&layer[..], true, &env.store, "sha256-abc", &ExtractLimits::default()).unwrap();
    assert_eq!(
        report,
        ExtractReport {
            files: 6,
            dirs: 4,
            symlinks: 2,
            bytes: 320_000 + 75
        }
    );
    let root = env.store.join("sha256-abc");
    let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(""), 0o755);
    assert_eq!(mode(KEY), 0o755);
    assert_eq!(mode("io.triton.cache/LAUNCHERKEY"), 0o755);
    assert_eq!(mode("io.triton.cache/LAUNCHERKEY/cuda_utils.so"), 0o755);
    assert_eq!(mode(&format!("{KEY}/matmul_kernel.json")), 0o644);
    assert_eq!(
        mode("io.triton.manifest/manifest.json"),
        0o644,
        "group/other read restored"
    );
    assert_eq!(
        std::fs::read(root.join(format!("{KEY}/matmul_kernel.cubin"))).unwrap(),
        noise(300_000, 3)
    );
    assert_eq!(
        std::fs::read(root.join(format!("{KEY}/launcher"))).unwrap(),
        noise(20_000, 4)
    );
    assert_eq!(env.temp_dirs(), Vec::<String>::new());
}

#[test]
fn plain_tar_layer_extracts_too() {
    let env = Env::new();
    let report = extract_layer(
        &triton_layer()[..],
        false,
        &env.store,
        "plain",
        &ExtractLimits::default(),
    )
    .unwrap();
    assert_eq!(report.files, 6);
    let limits = ExtractLimits {
        expected_bytes: Some(report.bytes),
        ..ExtractLimits::default()
    };
    extract_layer(&triton_layer()[..], false, &env.store, "exact", &limits).unwrap();
}

const CHILD_ENV: &str = "KCACHE_EXTRACT_CHILD_STORE";

fn slow_layer() -> Vec<u8> {
    let mut t = Tar::new();
    for i in 0..400 {
        t.file(
            &format!("io.triton.cache/K{}/k{i}.cubin", i % 20),
            &noise(16_384, i),
            0o644,
        );
    }
    t.finish()
}

/// Run only as the child of `sigkill_mid_extraction_leaves_only_a_temp_dir_that_sweep_removes`.
#[test]
#[ignore = "helper: runs as a child process"]
fn child_extracts_slowly() {
    let Some(store) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let layer = slow_layer();
    let reader = SlowReader {
        data: &layer,
        step: 4096,
        pause: Duration::from_millis(2),
    };
    extract_layer(reader, false, store.as_ref(), "layer", &ExtractLimits::default()).unwrap();
}

#[test]
fn sigkill_mid_extraction_leaves_only_a_temp_dir_that_sweep_removes() {
    let env = Env::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_extracts_slowly",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &env.store)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = env.temp_dirs().iter().any(|t| {
            let cache = env.store.join(t).join("io.triton.cache");
            std::fs::read_dir(cache)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        });
        if started {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "child finished before it was killed"
        );
        assert!(Instant::now() < deadline, "child never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(env.store.join("layer").symlink_metadata().is_err());
    assert_eq!(env.temp_dirs().len(), 1);
    assert_eq!(sweep_temp_dirs(&env.store).unwrap(), 1);
    assert!(env.temp_dirs().is_empty());
}

#[test]
fn two_concurrent_extractions_of_one_digest_do_the_work_once() {
    let env = Env::new();
    let layer = slow_layer();
    let opened = AtomicUsize::new(0);
    let barrier = Barrier::new(2);
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            extract_once(&env.store, "sha256-abc", false, &ExtractLimits::default(), || {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok(SlowReader {
                    data: &layer,
                    step: 1 << 20,
                    pause: Duration::from_millis(20),
                })
            })
            .unwrap()
        };
        let a = s.spawn(run);
        let b = s.spawn(run);
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    let extracted = outcomes
        .iter()
        .filter(|o| matches!(o, ExtractOutcome::Extracted(_)))
        .count();
    assert_eq!(extracted, 1, "{outcomes:?}");
    assert!(outcomes.contains(&ExtractOutcome::AlreadyPresent));
    assert!(env.temp_dirs().is_empty());
}

#[test]
fn sweep_leaves_a_running_extract_once_alone() {
    let env = Env::new();
    let layer = slow_layer();
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            extract_once(&env.store, "busy", false, &ExtractLimits::default(), || {
                Ok(SlowReader {
                    data: &layer,
                    step: 1 << 16,
                    pause: Duration::from_millis(10),
                })
            })
        });
        while env.temp_dirs().is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(sweep_temp_dirs(&env.store).unwrap(), 0);
        assert!(matches!(worker.join().unwrap().unwrap(), ExtractOutcome::Extracted(_)));
    });
}

#[test]
fn a_failed_final_check_discards_the_whole_tree() {
    use kcache_core::cache::extract::{extract_layer_checked, extract_once_checked, ExtractError};
    let env = Env::new();
    let layer = gz(&triton_layer());
    let called = std::cell::Cell::new(false);
    let err = extract_layer_checked(
        &layer[..],
        true,
        &env.store,
        "sha256-bad",
        &ExtractLimits::default(),
        || {
            called.set(true);
            Err(std::io::Error::other("digest mismatch"))
        },
    )
    .unwrap_err();
    assert!(called.get());
    assert!(matches!(err, ExtractError::Unverified(_)), "{err:?}");
    let left: Vec<_> = std::fs::read_dir(&env.store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // extract_once_checked: the same, and a later good pass commits.
    let err = extract_once_checked(
        &env.store,
        "sha256-bad",
        true,
        &ExtractLimits::default(),
        || Ok(&layer[..]),
        || Err(std::io::Error::other("digest mismatch")),
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::Unverified(_)), "{err:?}");
    assert!(!env.store.join("sha256-bad").exists());
    let ok = extract_once_checked(
        &env.store,
        "sha256-bad",
        true,
        &ExtractLimits::default(),
        || Ok(&layer[..]),
        || Ok(()),
    )
    .unwrap();
    assert!(matches!(ok, ExtractOutcome::Extracted(_)));
    assert!(env.store.join("sha256-bad").is_dir());
}
