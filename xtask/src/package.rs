//! `cargo xtask package`: the release build, then the .deb (tests/src/package.rs builds it, so
//! the test installs exactly what this command ships).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use redis_ha_tests::{package, run_within, target_dir};

use crate::build_load::{build, run_shown};

pub fn package() -> Result<()> {
    let ctl = build()?;
    let out = target_dir().join("debian");
    println!("==> packaging {} into {}", ctl.display(), out.display());
    let deb = package::build_deb(&ctl, &out)?;
    run_shown(
        Command::new("dpkg-deb").arg("--info").arg(&deb),
        Duration::from_secs(60),
    )?;
    let size = std::fs::metadata(&deb)?.len();
    // The file list too, so a reviewer sees what an install puts where.
    let contents = run_within(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
        Duration::from_secs(60),
    )?;
    let files = contents.lines().filter(|l| !l.ends_with('/')).count();
    println!(
        "==> {} ({} KiB, {files} files); install with `apt install {}`",
        deb.display(),
        size.div_ceil(1024),
        deb.display()
    );
    Ok(())
}
