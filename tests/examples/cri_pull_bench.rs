//! Bench fixture for bench/run: PullImage (download + unpack) of a ~100 MB multi-layer signed
//! image through containerd 1.6's CRI API, with kcached as the CRI snapshotter (enforce mode,
//! verdict warm and cold) against containerd's own overlayfs snapshotter; and kcached's memory
//! idle, after those pulls and at the peak of a storm of concurrent pulls.
//!
//!     cri_pull_bench <kcached binary> [runs]
//!
//! Prints one JSON line. Needs root, containerd, runc, busybox-static and docker-registry.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kcache_core::{cosign::sign::sign_and_push, signing::PrivateKey};
use kcache_tests::{
    containerd::{prerequisites, Containerd, ContainerdConfig, CriConfig, Programs},
    cri::{pb, Cri},
    images::{self, Image},
    kcached::{Kcached, KcachedConfig},
    TestRegistry,
};

const LAYERS: u64 = 6;
const LAYER_BYTES: usize = 16 << 20;
const STORM: usize = 16;

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Removes every image and waits until the snapshotter's directory is empty (GC done).
async fn remove_all(cri: &Cri, snapshots: &Path, log: impl Fn() -> String) {
    let mut images = cri.images.clone();
    let listed = images
        .list_images(pb::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    for image in listed {
        images
            .remove_image(pb::RemoveImageRequest {
                image: Some(kcache_tests::cri::image_spec(&image.id)),
            })
            .await
            .expect("RemoveImage");
    }
    let start = Instant::now();
    while entries(snapshots) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "GC left {}:\n{}",
            snapshots.display(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until containerd reaches the (re)started kcached: its gRPC connection backs off after a
/// failed dial, and `ctr snapshots ls` alone never reaches the backend, so a probe snapshot is
/// prepared (and removed again, the GC emptying kcached before anything is timed).
async fn reconnected(c: &Containerd, snapshots: &Path) {
    let start = Instant::now();
    while !c
        .ctr("bench", &["snapshots", "--snapshotter", "kcache", "prepare", "probe"])
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "containerd did not reconnect:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.ctr_ok("bench", &["snapshots", "--snapshotter", "kcache", "rm", "probe"]);
    while entries(snapshots) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "GC did not remove the probe:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One PullImage, timed. Dirty pages of the previous round are written back first (untimed),
/// so no pull pays for another's writeback.
async fn timed_pull(cri: &Cri, image: &str) -> u128 {
    assert!(std::process::Command::new("sync").status().unwrap().success());
    let t = Instant::now();
    cri.pull(image, None)
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"));
    t.elapsed().as_nanos()
}

/// The `_sum` (seconds) of the histogram `name` in kcached's /metrics, over every label set.
fn metric_sum(api: &Path, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(api).expect("kcached API socket");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: kcache\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let prefix = format!("{name}_sum");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn cri_config(host: &str, snapshotter: &str) -> CriConfig {
    CriConfig {
        sandbox_image: format!("{host}/bench/pause:1"),
        snapshotter: snapshotter.into(),
        plain_http: vec![host.to_owned()],
        ..CriConfig::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let kcached_bin = PathBuf::from(args.next().expect("usage: cri_pull_bench <kcached> [runs]"));
    let runs: usize = args.next().map_or(5, |r| r.parse().expect("runs"));
    let Some(programs): Option<Programs> = prerequisites("cri_pull_bench", &["runc", "containerd-shim-runc-v2"]) else {
        std::process::exit(3);
    };
    assert!(images::have_busybox_static(), "busybox-static is not installed");

    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new().prefix("kc-bench").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let key = PrivateKey::generate_p256();
    std::fs::write(dir.join("bench.pub"), key.public_key().to_pem()).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: bench\n    images: [\"{host}/bench/*\"]\n    authorities:\n      - key: {{path: bench.pub}}\n    transparencyLog: off\n"
        ),
    )
    .unwrap();
    let sign = |repo_tag: &str| {
        let (client, r, key) = (reg.client(), reg.reference(repo_tag), &key);
        async move { sign_and_push(&client, key, &r, false).await.expect("sign") }
    };
    let mut big = Image::busybox("big", &["/bin/busybox", "sleep", "3600"]);
    for n in 0..LAYERS {
        big.layers.push(images::random_layer(
            &format!("l{n}"),
            0x0062_656e_6368 + n,
            LAYER_BYTES,
        ));
    }
    let image_bytes: usize = big.layers.iter().map(Vec::len).sum();
    big.push(&reg, "bench/big:v1").await;
    sign("bench/big:v1").await;
    let image = format!("{host}/bench/big:v1");
    // The storm: distinct small signed images, pulled all at once.
    const STORM_TAGS: [&str; STORM] = [
        "bench/s0:v1",
        "bench/s1:v1",
        "bench/s2:v1",
        "bench/s3:v1",
        "bench/s4:v1",
        "bench/s5:v1",
        "bench/s6:v1",
        "bench/s7:v1",
        "bench/s8:v1",
        "bench/s9:v1",
        "bench/s10:v1",
        "bench/s11:v1",
        "bench/s12:v1",
        "bench/s13:v1",
        "bench/s14:v1",
        "bench/s15:v1",
    ];
    for (n, tag) in STORM_TAGS.iter().enumerate() {
        Image::busybox(&format!("storm {n}"), &["/bin/busybox", "sleep", "3600"])
            .push(&reg, tag)
            .await;
        sign(tag).await;
    }

    // Both containerds run side by side and the modes are interleaved in every round, so drift
    // in the machine's load hits each mode alike: containerd's own overlayfs snapshotter, kcached
    // with a warm verdict, kcached just restarted (cold verdict).
    let overlay = Containerd::start(
        &programs,
        &dir.join("containerd-overlayfs"),
        &ContainerdConfig {
            kcache_socket: None,
            cri: Some(cri_config(&host, "overlayfs")),
            ..ContainerdConfig::default()
        },
    );
    let overlay_cri = Cri::ready(&overlay).await;
    let overlay_snapshots = overlay.root().join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let mut k = Kcached::start(
        &kcached_bin,
        &dir.join("kcached"),
        KcachedConfig {
            policy: Some(dir.join("policy.yaml")),
            insecure: vec![host.clone()],
            ..KcachedConfig::default()
        },
    );
    let c = Containerd::start(
        &programs,
        &dir.join("containerd-kcache"),
        &ContainerdConfig {
            kcache_socket: Some(k.snapshotter_socket()),
            cri: Some(cri_config(&host, "kcache")),
            ..ContainerdConfig::default()
        },
    );
    let cri = Cri::ready(&c).await;
    let snapshots = k.root().join("snapshots");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = kib(k.pid().unwrap(), "VmRSS:");
    // Warm-up, untimed: the registry's page cache, both containerds, kcached's verdict.
    timed_pull(&overlay_cri, &image).await;
    remove_all(&overlay_cri, &overlay_snapshots, || overlay.log()).await;
    timed_pull(&cri, &image).await;
    remove_all(&cri, &snapshots, || k.log()).await;

    let (mut overlay_ns, mut warm_ns, mut cold_ns) = (Vec::new(), Vec::new(), Vec::new());
    // Where a cold pull's time goes inside kcached: the verdict, and all Snapshots calls.
    let (mut cold_verify_s, mut cold_snapshot_s) = (Vec::new(), Vec::new());
    let mut after_pulls_hwm_kib = 0;
    for round in 0..runs {
        // A new digest every round (the same layers under another config), as for any image a
        // node pulls the first time: the verdict is cold in a long-running kcached. Untimed.
        let tag = format!("bench/big:r{round}");
        big.cmd = vec![format!("round-{round}")];
        big.push(&reg, &tag).await;
        sign(&tag).await;
        let image = format!("{host}/{tag}");
        // The order rotates (cold always before warm: it makes the verdict warm).
        let order: &[&str] = match round % 3 {
            0 => &["overlay", "cold", "warm"],
            1 => &["cold", "overlay", "warm"],
            _ => &["cold", "warm", "overlay"],
        };
        for mode in order {
            match *mode {
                "overlay" => {
                    overlay_ns.push(timed_pull(&overlay_cri, &image).await);
                    remove_all(&overlay_cri, &overlay_snapshots, || overlay.log()).await;
                }
                "cold" => {
                    let api = k.api_socket();
                    let (v0, s0) = (
                        metric_sum(&api, "kcache_verification_seconds"),
                        metric_sum(&api, "kcache_snapshot_operation_seconds"),
                    );
                    cold_ns.push(timed_pull(&cri, &image).await);
                    cold_verify_s.push(metric_sum(&api, "kcache_verification_seconds") - v0);
                    cold_snapshot_s.push(metric_sum(&api, "kcache_snapshot_operation_seconds") - s0);
                    remove_all(&cri, &snapshots, || k.log()).await;
                }
                _ => {
                    warm_ns.push(timed_pull(&cri, &image).await);
                    remove_all(&cri, &snapshots, || k.log()).await;
                }
            }
            after_pulls_hwm_kib = after_pulls_hwm_kib.max(kib(k.pid().unwrap(), "VmHWM:"));
        }
    }
    drop(overlay_cri);
    drop(overlay);
    // The storm, on a fresh kcached: every small image at once (cold verdicts).
    k.restart();
    reconnected(&c, &snapshots).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let storm_idle_kib = kib(k.pid().unwrap(), "VmRSS:");
    let t = Instant::now();
    let pulls: Vec<_> = STORM_TAGS
        .iter()
        .map(|tag| {
            let (cri, image) = (cri.clone(), format!("{host}/{tag}"));
            tokio::spawn(async move { cri.pull(&image, None).await })
        })
        .collect();
    for p in pulls {
        p.await.unwrap().expect("storm pull");
    }
    let storm_ns = t.elapsed().as_nanos();
    let storm_hwm_kib = kib(k.pid().unwrap(), "VmHWM:");
    drop(c);
    drop(k);

    println!(
        "{}",
        serde_json::json!({
            "image_bytes": image_bytes,
            "layers": LAYERS + 1,
            "overlayfs_ns": overlay_ns,
            "kcache_warm_ns": warm_ns,
            "kcache_cold_ns": cold_ns,
            "kcache_cold_verify_s": cold_verify_s,
            "kcache_cold_snapshot_ops_s": cold_snapshot_s,
            "rss_kib": {
                "idle": idle_kib,
                "after_pulls_peak": after_pulls_hwm_kib,
                "storm_idle": storm_idle_kib,
                "storm_peak": storm_hwm_kib,
            },
            "storm_pulls": STORM,
            "storm_ns": storm_ns,
        })
    );
}
