//! Compiles the .proto files with protox (pure Rust: no protoc to install) and generates tonic code.
//! Two descriptor sets are written for gRPC reflection: the public one (ingot.v1 only, served to clients)
//! and the full one (for tools and tests).
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = [
        "ingot/v1/common.proto",
        "ingot/v1/machine.proto",
        "ingot/v1/zone.proto",
        "ingot/v1/cluster.proto",
        "ingot/v1/pool.proto",
        "ingot/v1/tag.proto",
        "ingot/v1/user.proto",
        "ingot/v1/event.proto",
        "ingot/v1/agent.proto",
        "ingot/v1/rack.proto",
        "ingot/v1/subnet.proto",
        "ingot/v1/image.proto",
    ];
    let internal = [
        "ingot/raft/v1/raft.proto",
        "ingot/rack/v1/agent.proto",
        "ingot/rack/v1/rack.proto",
    ];
    println!("cargo:rerun-if-changed=ingot");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let public_fds = protox::compile(public, ["."])?;
    std::fs::write(
        out.join("ingot_v1_descriptor.bin"),
        public_fds.encode_to_vec(),
    )?;

    let all: Vec<&str> = public.iter().chain(internal.iter()).copied().collect();
    let fds = protox::compile(&all, ["."])?;
    tonic_prost_build::configure()
        // Large optional parts of a machine live on the heap, so a page of 10,000 basic machines does not
        // move their inline bytes around (measured: memmove was the top cost of listing).
        .boxed(".ingot.v1.Machine.inventory")
        .boxed(".ingot.v1.Machine.deploy")
        // The boot intent reply carries three files: boxed, so every session message is not its size.
        .boxed(".ingot.rack.v1.RegionMessage.msg.boot_intent")
        // Agent calls carry inventories, answers deploy work: boxed for the same reason.
        .boxed(".ingot.rack.v1.RackMessage.msg.agent_call")
        .boxed(".ingot.rack.v1.RegionMessage.msg.agent_answer")
        // Same wire format, hand-written so the region can send pre-encoded machines (see src/wire.rs).
        .extern_path(
            ".ingot.v1.ListMachinesResponse",
            "crate::wire::ListMachinesResponse",
        )
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
