//! Generated protobuf and gRPC code for package `dccf.v1` (see `proto/dccf/v1/`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `dccf.v1`: the wire contract.
pub mod v1 {
    tonic::include_proto!("dccf.v1");
}

/// The customs message types that may travel in an envelope (agreement flows name these; the
/// other `dccf.v1` messages are the protocol's own and never a payload).
pub const MESSAGE_TYPES: &[&str] = &[
    "dccf.v1.PreArrivalDeclaration",
    "dccf.v1.AeoStatusQuery",
    "dccf.v1.AeoStatusResponse",
    "dccf.v1.RiskAlert",
];

/// The compiled file descriptor set of `proto/` (for reflection, JSON mapping and field checks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dccf_descriptor.bin"));

/// A descriptor pool over [`FILE_DESCRIPTOR_SET`], built once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the build's own descriptor set decodes")
    })
}
