//! Generates the SPIFFE Workload API's Rust types, server and client from `proto/workload.proto`.
//!
//! `protox` parses the proto in pure Rust (it ships `google/protobuf/*.proto` itself), so a
//! fresh machine needs no `protoc` binary, only the Rust toolchain.

use std::error::Error;

const PROTO_DIR: &str = "proto";
const WORKLOAD_PROTO: &str = "proto/workload.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={WORKLOAD_PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile([WORKLOAD_PROTO], [PROTO_DIR])
        .map_err(|err| format!("compiling `{WORKLOAD_PROTO}`: {err}"))?;
    tonic_prost_build::configure()
        // The server is the agent; the client is for our own tests and tools.
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .map_err(|err| format!("generating code for `{WORKLOAD_PROTO}`: {err}"))?;
    Ok(())
}
