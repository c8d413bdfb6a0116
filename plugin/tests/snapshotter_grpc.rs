//! The Snapshots service on the wire, without containerd: a tonic client over the unix socket
//! checks the exact gRPC codes (containerd's metadata layer answers many errors itself, so the
//! E2E test cannot reach them all), the conversions and the socket's mode.

use std::{collections::HashMap, os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use hyper_util::rt::TokioIo;
use kcache_core::snapshot::{OverlayOptions, OverlaySnapshotter};
use kcache_plugin::proto::snapshots::{self as pb, snapshots_client::SnapshotsClient};
use tokio::net::UnixStream;
use tonic::{transport::Endpoint, Code};

type Client = SnapshotsClient<tonic::transport::Channel>;

async fn start(dir: &std::path::Path) -> (Client, tokio::sync::oneshot::Sender<()>) {
    let snapshotter = OverlaySnapshotter::open_with(dir.join("root"), OverlayOptions::default()).unwrap();
    let socket = dir.join("run/snapshotter.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve_socket = socket.clone();
    tokio::spawn(async move {
        kcache_plugin::snapshotter::serve(Arc::new(snapshotter), &serve_socket, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    kcache_tests::socket::wait_until_listening_async(
        "the snapshotter server",
        &[&socket],
        String::new,
        kcache_tests::socket::LISTEN_TIMEOUT,
    )
    .await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket must be private to root");
    let path: PathBuf = socket;
    let channel = Endpoint::try_from("http://kcache.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    (SnapshotsClient::new(channel), stop)
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn every_rpc_answers_with_the_codes_containerd_maps_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut c, stop) = start(tmp.path()).await;
    let prepare = |key: &str, parent: &str| pb::PrepareSnapshotRequest {
        snapshotter: "kcache".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(&[("a", "1")]),
    };
    let mounts = c.prepare(prepare("k1", "")).await.unwrap().into_inner().mounts;
    assert_eq!(
        (mounts[0].r#type.as_str(), mounts[0].options.clone()),
        ("bind", vec!["rw".into(), "rbind".into()])
    );
    assert_eq!(
        c.prepare(prepare("k1", "")).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(
        c.prepare(prepare("k2", "nope")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.prepare(prepare("k2", "k1")).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let commit = |name: &str, key: &str| pb::CommitSnapshotRequest {
        snapshotter: "kcache".into(),
        name: name.into(),
        key: key.into(),
        labels: labels(&[("c", "2")]),
    };
    c.commit(commit("c1", "k1")).await.unwrap();
    assert_eq!(c.commit(commit("c2", "k1")).await.unwrap_err().code(), Code::NotFound);

    let view = pb::ViewSnapshotRequest {
        snapshotter: String::new(),
        key: "v1".into(),
        parent: "c1".into(),
        labels: labels(&[]),
    };
    let mounts = c.view(view).await.unwrap().into_inner().mounts;
    assert_eq!(mounts[0].options, vec!["ro".to_owned(), "rbind".to_owned()]);
    assert_eq!(
        c.commit(commit("c2", "v1")).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    let stat = |key: &str| pb::StatSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    };
    let info = c.stat(stat("c1")).await.unwrap().into_inner().info.unwrap();
    assert_eq!((info.name.as_str(), info.kind()), ("c1", pb::Kind::Committed));
    assert_eq!(info.labels, labels(&[("c", "2")]));
    assert!(info.created_at.unwrap().seconds > 1_600_000_000);
    assert_eq!(c.stat(stat("nope")).await.unwrap_err().code(), Code::NotFound);

    // As containerd's metadata layer sends it: Kind UNKNOWN and zero times are ignored.
    let update = pb::UpdateSnapshotRequest {
        snapshotter: String::new(),
        info: Some(pb::Info {
            name: "c1".into(),
            labels: labels(&[("containerd.io/snapshot/x", "y")]),
            created_at: Some(prost_types::Timestamp {
                seconds: -62_135_596_800,
                nanos: 0,
            }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels.containerd.io/snapshot/x".into()],
        }),
    };
    let info = c.update(update.clone()).await.unwrap().into_inner().info.unwrap();
    assert_eq!(info.labels, labels(&[("c", "2"), ("containerd.io/snapshot/x", "y")]));
    let bad = pb::UpdateSnapshotRequest {
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["kind".into()],
        }),
        ..update
    };
    assert_eq!(c.update(bad).await.unwrap_err().code(), Code::InvalidArgument);

    let list = |filters: &[&str]| pb::ListSnapshotsRequest {
        snapshotter: String::new(),
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
    };
    let mut stream = c.list(list(&["kind==view"])).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    assert_eq!(names, ["v1"]);
    assert_eq!(
        c.list(list(&["name~=x"])).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let usage = c
        .usage(pb::UsageRequest {
            snapshotter: String::new(),
            key: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.inodes, 1);
    let remove = |key: &str| pb::RemoveSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    };
    assert_eq!(
        c.remove(remove("c1")).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(c.remove(remove("nope")).await.unwrap_err().code(), Code::NotFound);
    c.remove(remove("v1")).await.unwrap();
    c.remove(remove("c1")).await.unwrap();
    std::fs::create_dir(tmp.path().join("root/snapshots/new-orphan")).unwrap();
    c.cleanup(pb::CleanupRequest {
        snapshotter: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_dir(tmp.path().join("root/snapshots")).unwrap().count(), 0);
    let _ = stop.send(());
}
