//! The .deb (`cargo xtask package`, built here by the same code) installs with dpkg into an
//! empty root and what it installed works there on its own: the binary, its example config,
//! the man pages, the completions and the unit, with control fields from Cargo's metadata.
//! An operator's config survives a reinstall and the package's removal. Needs root (dpkg
//! installs files owned by root); no namespace, no network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_ha_tests::package::{self, PACKAGE};
use redis_ha_tests::{
    ctl_binary, find_program, output_within, require_root, run_within, workspace_root,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const SECRET_LINE: &str = "secret_file = \"/etc/redis-ha/secret\"";
/// The subcommand every generated file must know about.
const SUBCOMMAND: &str = "check-config";

/// A directory removed with its contents on drop, also when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("rha-package-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    run_within(cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"))
}

fn output(cmd: &mut Command) -> Output {
    output_within(cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `dpkg --root=ROOT ...`. Empty roots have no shell, so the maintainer scripts run outside
/// it (script-chrootless), where DPKG_ROOT tells them to leave this machine's systemd alone;
/// --force-depends because the empty root has no libc6 package (the host's libc runs it).
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"]);
    cmd
}

/// An empty dpkg database under `root`, as debootstrap starts one.
fn init_admin_dir(root: &Path) {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(dir)).expect("creating the dpkg admin dir");
    }
    for file in ["status", "available"] {
        std::fs::write(admin.join(file), "").expect("creating the dpkg database");
    }
}

fn control_field(deb: &Path, field: &str) -> String {
    run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field))
        .trim()
        .to_owned()
}

/// The example config made usable: the secret file it names, in `dir` with mode 0600.
fn usable_example(example: &str, dir: &Path) -> PathBuf {
    assert!(
        example.contains(SECRET_LINE),
        "the example should name {SECRET_LINE}"
    );
    let secret = dir.join("secret");
    std::fs::write(&secret, "an-example-secret-of-32-characters\n").expect("writing the secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600 the secret");
    let path = dir.join("redis-ha.toml");
    let text = example.replace(
        SECRET_LINE,
        &format!("secret_file = \"{}\"", secret.display()),
    );
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// `systemd-analyze verify` of the installed unit finds nothing wrong with it. verify checks that
/// ExecStart's binary exists on this machine, so the binary is pointed at one that does.
fn verify_unit(unit: &str, dir: &Path) {
    let analyze = find_program("systemd-analyze")
        .expect("systemd-analyze is missing: `apt-get install systemd` (`cargo xtask` does)");
    let path = dir.join("redis-ha-ctl.service");
    std::fs::write(&path, unit.replace("/usr/bin/redis-ha-ctl", "/bin/true"))
        .expect("writing the unit");
    let out = output(Command::new(analyze).arg("verify").arg(&path));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only complaints about this unit count (the host's other units are not ours to judge).
    assert!(
        out.status.success() && !printed.contains("redis-ha-ctl.service"),
        "systemd-analyze verify of the packaged unit ({}):\n{printed}",
        out.status
    );
}

#[test]
fn deb_installs_into_an_empty_root_and_works_from_there() {
    require_root();
    let ctl = ctl_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let tmp = TempDir::new();
    let deb = package::build_deb(&ctl, &tmp.0.join("out")).unwrap_or_else(|e| panic!("{e:#}"));

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(control_field(&deb, "Package"), PACKAGE);
    assert_eq!(control_field(&deb, "Version"), version);
    let depends = control_field(&deb, "Depends");
    assert!(
        depends.starts_with("libc6 (>= 2."),
        "Depends names libc6 with its minimum version: {depends}"
    );
    assert!(
        control_field(&deb, "Maintainer").ends_with('>'),
        "Maintainer is `Name <address>`"
    );

    let root = tmp.0.join("root");
    init_admin_dir(&root);
    run(dpkg(&root).arg("--install").arg(&deb));
    let status = run(dpkg(&root).args(["--status", PACKAGE]));
    assert!(
        status.contains("Status: install ok installed"),
        "dpkg installed it: {status}"
    );

    // The binary alone, from the root: the version Cargo has.
    let bin = root.join(package::BIN);
    assert_eq!(
        run(Command::new(&bin).arg("--version")),
        format!("redis-ha-ctl {version}\n")
    );

    // The installed example is the repository's, and the installed binary judges it as the
    // one built here does (same output, both succeed).
    let example = read(&root.join(package::EXAMPLE));
    assert_eq!(
        example,
        read(&workspace_root().join("deploy/redis-ha.toml.example"))
    );
    let config = usable_example(&example, &tmp.0);
    let installed = output(Command::new(&bin).arg("check-config").arg(&config));
    let built = output(Command::new(&ctl).arg("check-config").arg(&config));
    assert!(
        installed.status.success(),
        "check-config of the installed example failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    assert_eq!(installed.status.code(), built.status.code());
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&built.stdout)
    );
    assert!(String::from_utf8_lossy(&installed.stdout).contains("[[service]]"));

    // The man page renders, with the commands in it; every command has its own page.
    let man_dir = root.join(package::MAN_DIR);
    let page = run(Command::new("man")
        .arg("-l")
        .arg(man_dir.join("redis-ha-ctl.1.gz"))
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat"));
    assert!(page.contains("NAME"), "a NAME section: {page}");
    assert!(page.contains(SUBCOMMAND), "the commands are listed: {page}");
    assert!(man_dir.join("redis-ha-ctl-check-config.1.gz").is_file());
    assert!(
        !man_dir.join("redis-ha-ctl-generate-assets.1.gz").exists(),
        "the hidden packaging command gets no page"
    );

    for completion in [
        package::BASH_COMPLETION,
        package::ZSH_COMPLETION,
        package::FISH_COMPLETION,
    ] {
        let text = read(&root.join(completion));
        assert!(
            text.contains(SUBCOMMAND),
            "{completion} completes {SUBCOMMAND}"
        );
        assert!(
            !text.contains("generate-assets"),
            "{completion} offers the hidden packaging command"
        );
    }

    // The unit runs the packaged binary, and nothing enabled it.
    let unit = read(&root.join(package::UNIT));
    assert!(
        unit.contains("ExecStart=/usr/bin/redis-ha-ctl run --config /etc/redis-ha/redis-ha.toml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    verify_unit(&unit, &tmp.0);
    assert!(
        !root.join("etc/systemd").exists(),
        "the install enabled the service"
    );

    let doc = root.join(package::DOC_DIR);
    for file in ["copyright", "changelog.gz", "changelog.Debian.gz"] {
        assert!(doc.join(file).is_file(), "{file} in {}", doc.display());
    }
    assert!(read(&doc.join("copyright")).contains("License: MIT or Apache-2.0"));

    // The operator's config is never the package's: a reinstall (an upgrade's path) and the
    // removal leave it as written.
    let operator_config = root.join("etc/redis-ha/redis-ha.toml");
    std::fs::write(&operator_config, "# this site's config\n").expect("writing a config");
    run(dpkg(&root).arg("--install").arg(&deb));
    assert_eq!(read(&operator_config), "# this site's config\n");
    run(dpkg(&root).args(["--purge", PACKAGE]));
    assert!(!bin.exists(), "removed with the package");
    assert_eq!(read(&operator_config), "# this site's config\n");
}
