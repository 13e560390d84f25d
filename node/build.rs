//! Compiles `proto/dccf/v1/*.proto` with protox (pure Rust, no `protoc`) and generates the prost
//! messages and tonic services. The file descriptor set is written to `OUT_DIR` too, for gRPC
//! reflection and for prost-reflect (JSON mapping and field-path checks).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto_root.join("dccf/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("dccf/v1").display()
    );

    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("dccf_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
