//! The one place snapshotter errors become gRPC statuses. containerd's proxy snapshotter turns
//! the codes back into its errdefs (`errdefs.FromGRPC`), so the four domain codes must be exact.

use tonic::{Code, Status};

use super::SnapshotError;

#[cfg(feature = "verify")]
impl<E: Into<Status>> From<super::gate::GateError<E>> for Status {
    /// A refusal is `PermissionDenied`, which containerd hands the kubelet as the pull's or the
    /// container's error; the snapshotter's own errors keep their codes.
    fn from(err: super::gate::GateError<E>) -> Self {
        match err {
            super::gate::GateError::Denied(d) => Status::permission_denied(d.to_string()),
            super::gate::GateError::Snapshot(e) => e.into(),
        }
    }
}

impl From<SnapshotError> for Status {
    fn from(err: SnapshotError) -> Self {
        let code = match &err {
            SnapshotError::NotFound(_) => Code::NotFound,
            SnapshotError::AlreadyExists(_) => Code::AlreadyExists,
            SnapshotError::FailedPrecondition(_) => Code::FailedPrecondition,
            SnapshotError::InvalidArgument(_) => Code::InvalidArgument,
            SnapshotError::Io { .. } | SnapshotError::Store(_) | SnapshotError::Corrupt { .. } => Code::Internal,
        };
        // The whole chain: the cause is what an operator needs in containerd's log.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_one_to_one_to_grpc_codes() {
        let cases = [
            (SnapshotError::NotFound("k".into()), Code::NotFound),
            (SnapshotError::AlreadyExists("k".into()), Code::AlreadyExists),
            (SnapshotError::FailedPrecondition("p".into()), Code::FailedPrecondition),
            (SnapshotError::InvalidArgument("a".into()), Code::InvalidArgument),
            (
                SnapshotError::Io {
                    op: "remove",
                    path: "/x".into(),
                    source: std::io::Error::other("boom"),
                },
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{status:?}");
        }
        let status = Status::from(SnapshotError::Io {
            op: "remove",
            path: "/x".into(),
            source: std::io::Error::other("boom"),
        });
        assert_eq!(status.message(), "failed to remove /x: boom");
    }
}
