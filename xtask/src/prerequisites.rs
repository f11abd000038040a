//! Installs what building and testing redis-ha needs, so a fresh machine with only the rustup
//! toolchains gets there with one command. Each check is quick when the thing is present.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{find_program, is_root, run, run_within};

/// The bpf-linker release that builds with the pinned aya crates (docs/building.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The cargo-fuzz release the fuzz targets were built and run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Binaries the tests and the demo run, and the Debian package of each.
const DEBIAN_PROGRAMS: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("redis-benchmark", "redis-tools"),
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    // The LB high-availability testbed (tests/src/ha.rs) announces moved addresses and
    // captures ARP.
    ("arping", "iputils-arping"),
    ("tcpdump", "tcpdump"),
    // `cargo xtask bench` runs the seed stack it compares redis-ha with.
    ("haproxy", "haproxy"),
    ("redis-sentinel", "redis-sentinel"),
    // `cargo xtask bench --topology seed` moves the seed stack's VIP with it (for Pacemaker).
    ("keepalived", "keepalived"),
    // tests/tests/privileges.rs applies the unit's capabilities and checks its system calls.
    ("setpriv", "util-linux"),
    ("strace", "strace"),
    ("systemd-analyze", "systemd"),
    // tests/tests/status_page.rs loads the status page in headless Chromium.
    ("chromium", "chromium"),
    // tests/tests/peer_protocol.rs starts a controller with its clock stepped back
    // (libfaketime, preloaded).
    ("faketime", "faketime"),
    // `cargo xtask package` (tests/src/package.rs): dpkg-deb is in every Debian, but the
    // Depends: from the binary's symbols (dpkg-shlibdeps) and stripping are not; the test
    // renders the man page.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
    ("man", "man-db"),
];

/// Python modules the tests import, and the Debian package of each.
const DEBIAN_PYTHON_MODULES: &[(&str, &str)] = &[
    // tests/tests/operator.rs runs redis-py's Sentinel client against the controllers.
    ("redis", "python3-redis"),
];

/// Debian's interpreter: Debian's python3-* packages install into its dist-packages, which
/// another `python3` on the PATH (pyenv's, say) does not see.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

const BPFFS: &str = "/sys/fs/bpf";

pub fn prerequisites() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    debian_packages()?;
    bpffs()?;
    Ok(())
}

/// `rustup run nightly PROGRAM`: explicit, because inside `cargo xtask` the `cargo` on PATH
/// may be a toolchain's own binary, which does not understand `+nightly`.
pub fn nightly(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", program]);
    cmd
}

/// aya-build compiles the XDP program with `-Z build-std=core`, which needs nightly's sources.
fn rust_src() -> Result<()> {
    let installed = run(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed: `rustup toolchain install nightly`")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("==> installing rust-src for the nightly toolchain");
    run_within(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        Duration::from_secs(600),
    )?;
    Ok(())
}

/// bpf-linker must link with the same LLVM major as rustc: build it against the libLLVM the
/// nightly toolchain ships, through a prefix directory of symlinks (docs/building.md).
fn bpf_linker() -> Result<()> {
    if run(Command::new("bpf-linker").arg("--version")).is_ok() {
        return Ok(());
    }
    println!(
        "==> bpf-linker is missing or broken (it breaks when the toolchain it was built \
         against changes): building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM"
    );
    let sysroot = run(nightly("rustc").args(["--print", "sysroot"]))?;
    let toolchain_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm: Vec<PathBuf> = std::fs::read_dir(&toolchain_lib)
        .with_context(|| format!("listing {}", toolchain_lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .collect();
    let Some(first) = libllvm.first() else {
        bail!(
            "no libLLVM.so.* in {}: the nightly toolchain looks incomplete",
            toolchain_lib.display()
        );
    };
    // libLLVM.so.22.1-rust-1.97.0-nightly → 22: bpf-linker selects its LLVM by feature.
    let name = first.file_name().unwrap_or_default().to_string_lossy();
    let major: String = name["libLLVM.so.".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version from {name}");
    }

    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/redis-ha/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for lib in &libllvm {
        let file_name = lib.file_name().unwrap_or_default();
        for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(lib, &link)
                .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
        }
    }

    let mut install = nightly("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"));
    println!(
        "    LLVM_PREFIX={} {}",
        prefix.display(),
        redis_ha_tests::describe(&install)
    );
    let status = install.status().context("running cargo install")?;
    if !status.success() {
        bail!("building bpf-linker failed ({status}); see cargo's output above");
    }
    if let Err(e) = run(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run ({e:#}): is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// `cargo xtask fuzz-parsers` and `cargo xtask test` run the libFuzzer targets in `fuzz/`
/// with cargo fuzz, on the nightly toolchain that builds the XDP program.
fn cargo_fuzz() -> Result<()> {
    if run(nightly("cargo").args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    println!("==> installing cargo-fuzz {CARGO_FUZZ_VERSION} (nightly)");
    let mut install = nightly("cargo");
    install.args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    println!("    {}", redis_ha_tests::describe(&install));
    let status = install.status().context("running cargo install")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed ({status}); see cargo's output above");
    }
    Ok(())
}

/// Whether Debian's interpreter can import `module`.
fn has_python_module(module: &str) -> bool {
    Path::new(DEBIAN_PYTHON).is_file()
        && run(Command::new(DEBIAN_PYTHON).args(["-c", &format!("import {module}")])).is_ok()
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for &(program, package) in DEBIAN_PROGRAMS {
        if find_program(program).is_none() && !missing.contains(&package) {
            missing.push(package);
        }
    }
    for &(module, package) in DEBIAN_PYTHON_MODULES {
        if !has_python_module(module) && !missing.contains(&package) {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run as root (or `apt-get install {}` yourself)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("==> installing {} (apt-get)", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        run_within(&mut cmd, Duration::from_secs(900))
    };
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    for &(program, package) in DEBIAN_PROGRAMS {
        if find_program(program).is_none() {
            bail!("`{program}` is still missing after installing {package}");
        }
    }
    for &(module, package) in DEBIAN_PYTHON_MODULES {
        if !has_python_module(module) {
            bail!("{DEBIAN_PYTHON} cannot import `{module}` after installing {package}");
        }
    }
    Ok(())
}

/// redis-ha-ctl pins the program and its maps under /sys/fs/bpf, which is not always mounted.
fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at {BPFFS}: as root, `mount -t bpf bpf {BPFFS}`");
    }
    println!("==> mounting bpffs at {BPFFS}");
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(())
}
