//! loam: a CSI driver for node-local storage. This crate is the binary layer: the command line, the gRPC
//! services and the CSI client. It is the only layer that knows protobuf types.

pub mod bench;
pub mod cli;
pub mod client;
pub mod codes;
pub mod config;
pub mod csi;
pub mod endpoint;
pub mod metrics;
pub mod server;
