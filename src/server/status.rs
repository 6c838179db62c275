//! The one place engine errors become gRPC statuses. The table is pinned by a test: the sidecars act on these
//! codes (the provisioner reschedules only on RESOURCE_EXHAUSTED and retries ABORTED forever).

use std::error::Error as _;

use loam_engine::Error;
use tonic::{Code, Status};

pub fn code_of(e: &Error) -> Code {
    match e {
        Error::Invalid { .. } => Code::InvalidArgument,
        Error::VolumeNotFound { .. } | Error::NotAtPath { .. } => Code::NotFound,
        Error::ForeignVolume { .. } | Error::Quarantined { .. } => Code::FailedPrecondition,
        Error::NameConflict { .. } | Error::MountConflict(_) => Code::AlreadyExists,
        Error::Exhausted(_) => Code::ResourceExhausted,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::BadToken(_) | Error::Busy(_) => Code::Aborted,
        Error::Precondition(_) | Error::PoolUnusable { .. } => Code::FailedPrecondition,
        Error::Io { .. } | Error::Corrupt { .. } => Code::Internal,
    }
}

/// The status for an engine error, with the whole cause chain in the message.
pub fn to_status(e: &Error) -> Status {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    Status::new(code_of(e), msg)
}

#[cfg(test)]
mod tests {
    use std::{io, path::PathBuf};

    use super::*;

    #[test]
    fn code_table() {
        let s = || String::from("x");
        let table: Vec<(Error, Code)> = vec![
            (Error::invalid("name", "x"), Code::InvalidArgument),
            (Error::VolumeNotFound { id: s(), node: s() }, Code::NotFound),
            (
                Error::NotAtPath {
                    id: s(),
                    path: PathBuf::from("/p"),
                },
                Code::NotFound,
            ),
            (
                Error::ForeignVolume {
                    id: s(),
                    owner: s(),
                    node: s(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Quarantined { id: s(), reason: s() },
                Code::FailedPrecondition,
            ),
            (
                Error::NameConflict {
                    name: s(),
                    id: s(),
                    reason: s(),
                },
                Code::AlreadyExists,
            ),
            (Error::MountConflict(s()), Code::AlreadyExists),
            (Error::Exhausted(s()), Code::ResourceExhausted),
            (Error::OutOfRange(s()), Code::OutOfRange),
            (Error::BadToken(s()), Code::Aborted),
            (Error::Busy(s()), Code::Aborted),
            (Error::Precondition(s()), Code::FailedPrecondition),
            (
                Error::PoolUnusable {
                    pool: s(),
                    reason: s(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Io {
                    op: s(),
                    source: io::Error::other("boom"),
                },
                Code::Internal,
            ),
            (
                Error::Corrupt {
                    path: PathBuf::from("/r"),
                    reason: s(),
                },
                Code::Internal,
            ),
        ];
        for (e, want) in table {
            assert_eq!(to_status(&e).code(), want, "{e:?}");
        }
    }

    #[test]
    fn message_carries_the_cause() {
        let e = Error::Io {
            op: "creating directory /p/v".into(),
            source: io::Error::other("disk on fire"),
        };
        let st = to_status(&e);
        assert!(st.message().contains("creating directory /p/v"));
        assert!(st.message().contains("disk on fire"));
    }
}
