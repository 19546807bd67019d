//! Compiles the gRPC contract in `proto/` and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let (config, includes) = prost_setup()?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("brx_sync_v1_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                PathBuf::from("proto/brx/sync/v1/admin.proto"),
                PathBuf::from("proto/brx/sync/v1/accounts.proto"),
                PathBuf::from("proto/brx/sync/v1/blueprints.proto"),
                PathBuf::from("proto/brx/sync/v1/sync.proto"),
                PathBuf::from("proto/brx/sync/v1/purchases.proto"),
                PathBuf::from("proto/brx/sync/v1/inventory.proto"),
            ],
            &includes,
        )?;

    println!("cargo:rustc-env=BRX_GIT_REV={}", git_revision());
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}

/// A developer may bring their own `protoc` through `PROTOC`; otherwise the vendored binary (and its
/// bundled `google/protobuf/*.proto`) keeps the build free of system packages.
fn prost_setup() -> Result<(prost_build::Config, Vec<PathBuf>), Box<dyn std::error::Error>> {
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
    Ok((config, includes))
}

/// Short hash of the checked-out commit, or "unknown" outside a git checkout (a source tarball).
fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=9", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|rev| rev.trim().to_owned())
        .filter(|rev| !rev.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
