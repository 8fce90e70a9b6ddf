//! Compiles `proto/spool/v1/*.proto` into Rust without a system `protoc`: `protox` parses the
//! files into a descriptor set, `tonic-prost-build` generates messages, clients and servers
//! from it, and the encoded set is written to `OUT_DIR/spool_descriptor.bin` for reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_FILES: [&str; 5] = [
    "proto/spool/v1/records.proto",
    "proto/spool/v1/topics.proto",
    "proto/spool/v1/produce.proto",
    "proto/spool/v1/consume.proto",
    "proto/spool/v1/groups.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTO_FILES, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("spool_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".spool.v1").compile_fds(descriptors)?;
    Ok(())
}
