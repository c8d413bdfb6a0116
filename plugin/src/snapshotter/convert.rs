//! Proto <-> domain conversions for the Snapshots service, all in one place.

use std::time::{Duration, SystemTime};

use kcache_core::snapshot::{Info, Kind, Mount, Usage};
use tonic::Status;

use crate::proto::{snapshots as pb, types};

/// A request field that has no domain value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The kind is UNKNOWN or not one of the enum's values.
    #[error("invalid snapshot kind {0}")]
    Kind(i32),
    /// A required message field was not set.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A timestamp before 1970 or with out-of-range nanoseconds.
    #[error("invalid timestamp {0:?}")]
    Timestamp(prost_types::Timestamp),
}

impl From<ConvertError> for Status {
    fn from(err: ConvertError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl From<Kind> for pb::Kind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        }
    }
}

impl TryFrom<i32> for KindFromProto {
    type Error = ConvertError;

    fn try_from(value: i32) -> Result<Self, ConvertError> {
        match pb::Kind::try_from(value) {
            Ok(pb::Kind::View) => Ok(Self(Kind::View)),
            Ok(pb::Kind::Active) => Ok(Self(Kind::Active)),
            Ok(pb::Kind::Committed) => Ok(Self(Kind::Committed)),
            Ok(pb::Kind::Unknown) | Err(_) => Err(ConvertError::Kind(value)),
        }
    }
}

/// A domain [`Kind`] read from the proto enum's wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindFromProto(pub Kind);

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn system_time(ts: Option<prost_types::Timestamp>) -> Result<SystemTime, ConvertError> {
    let Some(ts) = ts else {
        return Ok(SystemTime::UNIX_EPOCH);
    };
    match (u64::try_from(ts.seconds), u32::try_from(ts.nanos)) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => Ok(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)),
        _ => Err(ConvertError::Timestamp(ts)),
    }
}

impl From<Info> for pb::Info {
    fn from(info: Info) -> Self {
        pb::Info {
            name: info.name,
            parent: info.parent,
            kind: pb::Kind::from(info.kind).into(),
            created_at: Some(timestamp(info.created_at)),
            updated_at: Some(timestamp(info.updated_at)),
            labels: info.labels,
        }
    }
}

impl TryFrom<pb::Info> for Info {
    type Error = ConvertError;

    fn try_from(info: pb::Info) -> Result<Self, ConvertError> {
        Ok(Info {
            name: info.name,
            parent: info.parent,
            kind: KindFromProto::try_from(info.kind)?.0,
            labels: info.labels,
            created_at: system_time(info.created_at)?,
            updated_at: system_time(info.updated_at)?,
        })
    }
}

impl From<Mount> for types::Mount {
    fn from(m: Mount) -> Self {
        types::Mount {
            r#type: m.fs_type,
            source: m.source,
            target: m.target,
            options: m.options,
        }
    }
}

impl From<types::Mount> for Mount {
    fn from(m: types::Mount) -> Self {
        Mount {
            fs_type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        }
    }
}

impl From<Usage> for pb::UsageResponse {
    fn from(u: Usage) -> Self {
        pb::UsageResponse {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        }
    }
}

/// The Info of an Update request. Only the name and the labels count: containerd sends Kind
/// UNKNOWN and Go's zero time (year 1) for the fields an update cannot change.
pub fn update_info(info: pb::Info) -> Info {
    Info {
        name: info.name,
        parent: info.parent,
        kind: KindFromProto::try_from(info.kind).map_or(Kind::Active, |k| k.0),
        labels: info.labels,
        created_at: system_time(info.created_at).unwrap_or(SystemTime::UNIX_EPOCH),
        updated_at: system_time(info.updated_at).unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

/// The mounts of a response.
pub fn mounts(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts.into_iter().map(types::Mount::from).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn info_round_trips_through_the_proto() {
        let info = Info {
            name: "n".into(),
            parent: "p".into(),
            kind: Kind::Committed,
            labels: HashMap::from([("a".into(), "b".into())]),
            created_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            updated_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_001, 0),
        };
        assert_eq!(Info::try_from(pb::Info::from(info.clone())).unwrap(), info);
    }

    #[test]
    fn unknown_kinds_and_bad_timestamps_are_invalid_arguments() {
        let bad_kind = pb::Info {
            kind: 0,
            ..Default::default()
        };
        assert!(matches!(Info::try_from(bad_kind), Err(ConvertError::Kind(0))));
        let bad_time = pb::Info {
            kind: pb::Kind::Active.into(),
            created_at: Some(prost_types::Timestamp { seconds: -1, nanos: 0 }),
            ..Default::default()
        };
        let err = Info::try_from(bad_time).unwrap_err();
        assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
    }
}
