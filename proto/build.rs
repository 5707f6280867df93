use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The vendored protoc, so a fresh machine needs no system protobuf.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pulse_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/pulse/v1/embedding.proto",
                "proto/pulse/v1/models.proto",
                "proto/pulse/v1/signals.proto",
                "proto/pulse/v1/trends.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
