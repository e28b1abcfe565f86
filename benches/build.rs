//! Compiles the peers' wire types (a bare echo service, the part of etcd's API the peer
//! benchmark calls) with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/echo.proto", "proto/etcd.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_build::configure().build_server(true).build_client(true).bytes(["."]).compile_fds(fds)?;
    Ok(())
}
