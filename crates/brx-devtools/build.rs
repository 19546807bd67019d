//! Compiles the RPC benchmark's minimal echo service with the same toolchain as the service's own
//! contract, so the comparison is fair.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut includes = vec![PathBuf::from("proto")];
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => {
            includes.push(protoc_bin_vendored::include_path()?);
            protoc_bin_vendored::protoc_bin_path()?
        }
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[PathBuf::from("proto/bench/v1/echo.proto")],
        &includes,
    )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
