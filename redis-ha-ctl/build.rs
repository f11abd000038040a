use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the XDP program (redis-ha-ebpf, for bpfel-unknown-none with the nightly toolchain)
/// into OUT_DIR so the controller embeds it with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "redis-ha-ebpf")
        .ok_or_else(|| anyhow!("redis-ha-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("redis-ha-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
