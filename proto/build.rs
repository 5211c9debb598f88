//! Compiles `meterflow/v1/meter.proto` with prost. protox parses the .proto in pure Rust,
//! so the build needs no system `protoc`.
fn main() {
    let proto = "meterflow/v1/meter.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."]).expect("meter.proto must compile");
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("prost code generation");
}
