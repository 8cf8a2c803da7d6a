//! Generates the Rust code of the wire protocol from the `.proto` files.
//!
//! `protox` is a pure-Rust protobuf compiler: it parses the IDL into a
//! `FileDescriptorSet` that `tonic-prost-build` turns into code, so a fresh
//! machine with only the Rust toolchain builds dfs without a system `protoc`.

const PROTOS: [&str; 4] = [
    "common.proto",
    "datanode.proto",
    "coordinator.proto",
    "raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure()
        // Chunk bytes are `bytes::Bytes`: frames are sliced, not copied.
        .bytes(".dfs.v1.ChunkData.data")
        .compile_fds(fds)?;
    Ok(())
}
