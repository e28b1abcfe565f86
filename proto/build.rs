//! Compiles every `.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/kv/store/v1/store.proto",
        "proto/kv/raft/v1/raft.proto",
        "proto/kv/admin/v1/admin.proto",
        "proto/kv/client/v1/client.proto",
        "proto/kv/tier/v1/tier.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("kv_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::Codec")
        // Values are shared between caches, pushes and replies without copying.
        .bytes([".kv.client.v1", ".kv.store.v1.Entry.value", ".kv.store.v1.Change.value", ".kv.store.v1.Put.value"])
        .compile_fds(fds)?;
    Ok(())
}
