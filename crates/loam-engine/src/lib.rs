//! loam's engine: one node's pools and volumes. Allocation and capacity accounting, idempotency by name,
//! per-volume locking, durable records, start-up reconciliation, and the node-side mount logic.
//! No gRPC or protobuf here: the binary translates.

pub mod backend;
pub mod capability;
pub mod capacity;
pub mod engine;
pub mod error;
pub mod id;
pub mod locks;
mod node;
pub mod notes;
pub mod pool;
pub mod record;
pub mod spec;
pub mod types;

pub use engine::{Engine, EngineConfig, PoolStatus};
pub use error::{Error, Result};
