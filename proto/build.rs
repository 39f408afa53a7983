//! Generates the gRPC code from `proto/shoal/v1/*.proto` with a vendored `protoc`, so a
//! fresh machine needs no system package to build shoal. `proto/csi/v1/csi.proto` (the
//! CSI subset `shoal csi` serves) is generated apart, without the descriptor set: the
//! descriptor set is for tests that walk shoal's own services and their access checks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/shoal/v1/master.proto",
        "proto/shoal/v1/worker.proto",
        "proto/shoal/v1/runner.proto",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The descriptor set lets tests walk every RPC of every service, so an
    // authorization test cannot miss a method added later.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("shoal_descriptor.bin"))
        .compile_protos(&files, &["proto"])?;
    // The CSI subset imports google/protobuf/wrappers.proto from protoc's own includes.
    let csi = "proto/csi/v1/csi.proto";
    println!("cargo:rerun-if-changed={csi}");
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure().compile_protos(
        &[std::path::PathBuf::from(csi)],
        &[std::path::PathBuf::from("proto"), include],
    )?;
    Ok(())
}
