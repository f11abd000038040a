//! The .deb of redis-ha-ctl: `cargo xtask package` builds it from a release binary, and
//! tests/tests/package.rs builds it the same way, then installs it into an empty root.
//!
//! Built with Debian's own `dpkg-deb --build` on a staged tree rather than with cargo-deb:
//! dpkg-deb is on every Debian machine, while cargo-deb would be compiled by `cargo install`
//! on every fresh CI machine (minutes on two cores). `dpkg-shlibdeps` (dpkg-dev) computes the
//! `Depends:` from the symbols the binary imports, as Debian's own builds do.
//!
//! The binary embeds the XDP program (`include_bytes_aligned!` in redis-ha-ctl's lib.rs), so
//! it is the whole program: no nightly Rust, bpf-linker or clang on the Redis machines.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::{run, run_within, workspace_root};

pub const PACKAGE: &str = "redis-ha-ctl";

// Where the files go inside the package, relative to its root: Debian's places (a package
// never installs into /usr/local; units go under /usr/lib/systemd/system since Debian 12).
pub const BIN: &str = "usr/bin/redis-ha-ctl";
pub const UNIT: &str = "usr/lib/systemd/system/redis-ha-ctl.service";
pub const DOC_DIR: &str = "usr/share/doc/redis-ha-ctl";
/// The example config, as documentation: the service needs a config naming this site's
/// interfaces, addresses and peers, so the package installs none in /etc (as keepalived's
/// does); the operator's /etc/redis-ha/redis-ha.toml is never the package's, so no install,
/// upgrade or purge touches it.
pub const EXAMPLE: &str = "usr/share/doc/redis-ha-ctl/examples/redis-ha.toml.example";
pub const MAN_DIR: &str = "usr/share/man/man1";
pub const BASH_COMPLETION: &str = "usr/share/bash-completion/completions/redis-ha-ctl";
pub const ZSH_COMPLETION: &str = "usr/share/zsh/vendor-completions/_redis-ha-ctl";
pub const FISH_COMPLETION: &str = "usr/share/fish/vendor_completions.d/redis-ha-ctl.fish";
/// Created empty (mode 0750) so the operator's config has a home; not a conffile.
pub const CONFIG_DIR: &str = "etc/redis-ha";

/// The unit in the repository runs the binary from here (the manual install's place).
const UNIT_BIN_SOURCE: &str = "/usr/local/bin/";
const UNIT_BIN_PACKAGED: &str = "/usr/bin/";

/// The Debian packages the binary may need: glibc (libc, libm) and the unwinder Rust's std
/// links (libgcc_s). Both have priority "required": every Debian system has them.
const ALLOWED_DEPENDS: &[&str] = &["libc6", "libgcc-s1"];

/// The maintainer scripts, kept readable in the repository.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The control fields that come from the workspace's Cargo metadata.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Debian's spelling of the crate version (a pre-release `-` becomes `~`, which sorts
    /// before the release as Cargo's does).
    pub version: String,
    pub description: String,
    /// The SPDX expression, e.g. `MIT OR Apache-2.0`.
    pub license: String,
    pub maintainer: String,
}

/// redis-ha-ctl's version, description, license and first author, with the workspace's
/// `[workspace.package]` values where the crate inherits them.
pub fn metadata() -> Result<Metadata> {
    let read = |relative: &str| -> Result<toml::Table> {
        let path = workspace_root().join(relative);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.parse()
            .with_context(|| format!("parsing {}", path.display()))
    };
    let workspace = read("Cargo.toml")?;
    let krate = read("redis-ha-ctl/Cargo.toml")?;
    let inherited = workspace
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(toml::Value::as_table);
    let field = |key: &str| -> Result<toml::Value> {
        let own = krate.get("package").and_then(|p| p.get(key));
        let from_workspace = own
            .and_then(|v| v.get("workspace"))
            .and_then(toml::Value::as_bool)
            == Some(true);
        let value = if from_workspace {
            inherited.and_then(|w| w.get(key))
        } else {
            own
        };
        value.cloned().with_context(|| {
            format!("redis-ha-ctl/Cargo.toml: [package] {key} is missing (the .deb needs it)")
        })
    };
    let string = |key: &str| -> Result<String> {
        let value = field(key)?;
        value
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("redis-ha-ctl/Cargo.toml: [package] {key} should be a string"))
    };
    let maintainer = field("authors")?
        .as_array()
        .and_then(|a| a.first())
        .and_then(toml::Value::as_str)
        .filter(|a| a.contains('<') && a.ends_with('>'))
        .map(str::to_owned)
        .context(
            "Cargo.toml: [workspace.package] authors should start with `Name <address>` \
             (the .deb's Maintainer)",
        )?;
    Ok(Metadata {
        version: string("version")?.replace('-', "~"),
        description: string("description")?,
        license: string("license")?,
        maintainer,
    })
}

/// Builds `<out_dir>/redis-ha-ctl_<version>_<arch>.deb` from the release binary `ctl`, staging
/// it in `<out_dir>/staging`. Returns the .deb's path.
pub fn build_deb(ctl: &Path, out_dir: &Path) -> Result<PathBuf> {
    let meta = metadata()?;
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    // dpkg-shlibdeps wants the layout of a Debian source tree: debian/control, and the
    // package's files under debian/<package>/.
    let staging = out_dir.join("staging");
    let root = staging.join("debian").join(PACKAGE);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the old {}", staging.display()))?;
    }
    std::fs::create_dir_all(root.join("DEBIAN"))
        .with_context(|| format!("creating {}", root.display()))?;
    let repo = workspace_root();

    let bin = root.join(BIN);
    copy(ctl, &bin)?;
    // What dh_strip does: the symbols and debug info are most of the binary's size; the XDP
    // object lives in .rodata, which stripping leaves as it is.
    run_within(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(&bin),
        Duration::from_secs(120),
    )?;
    set_mode(&bin, 0o755)?;

    // From the binary being packaged, so the pages and completions describe exactly it.
    let assets = staging.join("assets");
    run(Command::new(&bin).arg("generate-assets").arg(&assets))
        .context("generating the man pages and completions")?;
    let man_dir = root.join(MAN_DIR);
    for page in read_dir(&assets.join("man"))? {
        let dest = man_dir.join(page.file_name().unwrap_or_default());
        copy(&page, &dest)?;
        gzip(&dest)?;
    }
    let completions = assets.join("completions");
    copy(
        &completions.join("redis-ha-ctl.bash"),
        &root.join(BASH_COMPLETION),
    )?;
    copy(
        &completions.join("_redis-ha-ctl"),
        &root.join(ZSH_COMPLETION),
    )?;
    copy(
        &completions.join("redis-ha-ctl.fish"),
        &root.join(FISH_COMPLETION),
    )?;

    let unit_source = repo.join("deploy/redis-ha-ctl.service");
    let unit = std::fs::read_to_string(&unit_source)
        .with_context(|| format!("reading {}", unit_source.display()))?;
    let exec_start = format!("ExecStart={UNIT_BIN_SOURCE}redis-ha-ctl ");
    if !unit.contains(&exec_start) {
        bail!(
            "{}: no `{exec_start}...` line; the package moves the binary to {UNIT_BIN_PACKAGED} \
             and rewrites that path (tests/src/package.rs)",
            unit_source.display()
        );
    }
    // The unit's own comments describe the manual install; say which steps the package did.
    let packaged_unit = format!(
        "# Installed by the redis-ha-ctl package (the binary in /usr/bin, this unit,\n\
         # /etc/redis-ha/); the config, the secret and `systemctl enable` are the operator's\n\
         # (docs/deploying.md, \"Install from the .deb\").\n{}",
        unit.replace(UNIT_BIN_SOURCE, UNIT_BIN_PACKAGED)
    );
    write(&root.join(UNIT), &packaged_unit)?;

    let doc = root.join(DOC_DIR);
    copy(
        &repo.join("deploy/redis-ha.toml.example"),
        &root.join(EXAMPLE),
    )?;
    copy(&repo.join("CHANGELOG.md"), &doc.join("changelog"))?;
    gzip(&doc.join("changelog"))?;
    write(
        &doc.join("changelog.Debian"),
        &debian_changelog(&meta, &changelog_date()?),
    )?;
    gzip(&doc.join("changelog.Debian"))?;
    write(&doc.join("copyright"), &copyright(&meta)?)?;
    std::fs::create_dir_all(root.join(CONFIG_DIR))
        .with_context(|| format!("creating {}", root.join(CONFIG_DIR).display()))?;

    for script in SCRIPTS {
        let dest = root.join("DEBIAN").join(script);
        copy(&repo.join("deploy/debian").join(script), &dest)?;
        set_mode(&dest, 0o755)?;
    }
    normalize_modes(&root)?;
    set_mode(&root.join(CONFIG_DIR), 0o750)?;

    let depends = shlib_depends(&staging)?;
    let installed_kib = tree_size(&root, &root.join("DEBIAN"))?.div_ceil(1024);
    write(&root.join("DEBIAN/md5sums"), &md5sums(&root)?)?;
    write(
        &root.join("DEBIAN/control"),
        &control(&meta, &arch, &depends, installed_kib),
    )?;
    for file in ["md5sums", "control"] {
        set_mode(&root.join("DEBIAN").join(file), 0o644)?;
    }

    let deb = out_dir.join(format!("{PACKAGE}_{}_{arch}.deb", meta.version));
    // --root-owner-group: every file root's, whoever builds the package.
    run_within(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb),
        Duration::from_secs(300),
    )?;
    Ok(deb)
}

/// `Depends:` as dpkg-shlibdeps finds it, refused if the binary needs more than libc.
fn shlib_depends(staging: &Path) -> Result<String> {
    write(
        &staging.join("debian/control"),
        &format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = run_within(
        Command::new("dpkg-shlibdeps")
            .current_dir(staging)
            .args(["-O", "-e"])
            .arg(Path::new("debian").join(PACKAGE).join(BIN)),
        Duration::from_secs(120),
    )?;
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))?
        .trim()
        .to_owned();
    for dep in depends.split(',') {
        let name = dep.split_whitespace().next().unwrap_or_default();
        if !ALLOWED_DEPENDS.contains(&name) {
            bail!(
                "redis-ha-ctl now needs {dep} ({depends}): the package promises a binary that \
                 needs only libc (docs/deploying.md); link that library statically or change \
                 ALLOWED_DEPENDS in tests/src/package.rs and the docs"
            );
        }
    }
    Ok(depends)
}

fn control(meta: &Metadata, arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: {description}\n \
         Replaces Redis Sentinel, HAProxy and Pacemaker for a Redis master and its\n \
         replicas: a VIP served by an XDP program, failover by three controllers.\n \
         The XDP program is embedded in the binary. The service is installed but\n \
         neither enabled nor started: write /etc/redis-ha/redis-ha.toml from\n \
         /{EXAMPLE} first.\n",
        version = meta.version,
        maintainer = meta.maintainer,
        description = meta.description,
    )
}

/// debian/copyright in Debian's machine-readable format. Licenses Debian ships in
/// /usr/share/common-licenses are referred to there; the others are spelled out.
fn copyright(meta: &Metadata) -> Result<String> {
    // The format's own identifier, which its parsers look for (not a reference for readers).
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: redis-ha\n\
         Upstream-Contact: {maintainer}\n\
         \n\
         Files: *\n\
         Copyright: {maintainer}\n\
         License: {license}\n",
        maintainer = meta.maintainer,
        license = meta.license.replace(" OR ", " or "),
    );
    for license in meta.license.split(" OR ") {
        text.push('\n');
        match license.trim() {
            "MIT" => text.push_str(MIT),
            "Apache-2.0" => text.push_str(
                "License: Apache-2.0\n \
                 On Debian systems, the full text of the Apache License, Version 2.0, is in\n \
                 /usr/share/common-licenses/Apache-2.0.\n",
            ),
            other => bail!(
                "Cargo.toml license {other:?}: the .deb's copyright file has no text for it \
                 (add it in tests/src/package.rs)"
            ),
        }
    }
    Ok(text)
}

const MIT: &str = "License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.
";

/// The Debian changelog dpkg and its tools expect next to the project's own (changelog.gz).
fn debian_changelog(meta: &Metadata, date: &str) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  \
         * Built from the redis-ha workspace by `cargo xtask package`; what changed\n    \
         is in changelog.gz.\n\n \
         -- {maintainer}  {date}\n",
        version = meta.version,
        maintainer = meta.maintainer,
    )
}

/// The Debian changelog's date: $SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn changelog_date() -> Result<String> {
    let mut date = Command::new("date");
    date.args(["-u", "-R"]);
    if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let mut at = std::ffi::OsString::from("@");
        at.push(epoch);
        date.arg("-d").arg(at);
    }
    Ok(run(&mut date)?.trim().to_owned())
}

/// `md5sum` lines for every file outside DEBIAN/, paths relative to the root (what debsums
/// and `dpkg --verify` check against).
fn md5sums(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(root, &root.join("DEBIAN"), &mut files)?;
    files.sort();
    let mut out = String::new();
    for chunk in files.chunks(64) {
        let mut cmd = Command::new("md5sum");
        cmd.current_dir(root);
        for file in chunk {
            cmd.arg(file.strip_prefix(root).unwrap_or(file));
        }
        let _ = write!(out, "{}", run(&mut cmd)?);
    }
    Ok(out)
}

fn collect_files(dir: &Path, skip: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for path in read_dir(dir)? {
        if path == skip {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, skip, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn tree_size(dir: &Path, skip: &Path) -> Result<u64> {
    let mut files = Vec::new();
    collect_files(dir, skip, &mut files)?;
    files.iter().try_fold(0, |sum, f| {
        Ok(sum
            + f.metadata()
                .with_context(|| format!("reading {}", f.display()))?
                .len())
    })
}

/// 0755 for directories and programs, 0644 for the rest, whatever the umask was.
fn normalize_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for path in read_dir(dir)? {
        if path.is_dir() {
            normalize_modes(&path)?;
        } else {
            let executable = path
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .permissions()
                .mode()
                & 0o111
                != 0;
            set_mode(&path, if executable { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

fn parent_dir(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    parent_dir(to)?;
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    parent_dir(path)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `gzip -9n`, as Debian compresses man pages and changelogs (-n: no name or time stamp).
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))?;
    Ok(())
}
