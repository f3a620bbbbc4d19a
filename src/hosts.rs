//! Several PostgreSQL hosts, as libpq reads them, and which of them is the primary.
//!
//! [`HostList::parse`] reads libpq's multi-host connection strings, which sqlx's own parser
//! refuses: `postgres://app@db1:5432,db2:5432,db3/app?target_session_attrs=read-write` or the
//! key=value form `host=db1,db2,db3 port=5432 dbname=app target_session_attrs=read-write`.
//! [`discover`] asks every host at once what it is (one checked statement each) and picks the
//! one `target_session_attrs` asks for. [`Db::connect`](crate::Db::connect) does both when it
//! is given such a string; they are public for a service that wants to look for itself (a
//! health check, a tool that lists a cluster's roles).

pub use crate::conn::discover::{
    DEFAULT_PROBE_TIMEOUT, Discovery, PRIMARY_GRACE, Probe, Role, ServerState, choose, discover,
    probe, probe_all,
};
pub use crate::conn::hosts::{Host, HostList, TargetSessionAttrs};
