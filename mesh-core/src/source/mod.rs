//! Config sources: where snapshots come from besides code.
//!
//! - [`file`](mod@file): a YAML/JSON file (`MESH_CONFIG`), watched for changes.

pub mod file;
