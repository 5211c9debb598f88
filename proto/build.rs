//! Compiles `meterflow/v1/meter.proto` with prost. protox parses the .proto in pure Rust,
//! so the build needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "meterflow/v1/meter.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
