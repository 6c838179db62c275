//! Generated CSI v1.12 bindings (from `proto/csi.proto`); nothing else in the tree edits them.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

tonic::include_proto!("csi.v1");
