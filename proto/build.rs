//! Generates the gRPC code from `proto/shoal/v1/*.proto` with a vendored `protoc`, so a
//! fresh machine needs no system package to build shoal.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/shoal/v1/master.proto",
        "proto/shoal/v1/worker.proto",
        "proto/shoal/v1/runner.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    Ok(())
}
