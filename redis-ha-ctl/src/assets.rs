//! The man pages and shell completions the .deb installs (`cargo xtask package`), generated
//! from the clap definitions the binary itself parses with, so they cannot drift from it.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap_complete::Shell;

/// The name the completions are registered under: the installed binary's.
const BIN: &str = "redis-ha-ctl";

/// Writes into `dir`: `man/redis-ha-ctl.1` and one `man/redis-ha-ctl-<command>.1` per command,
/// and `completions/redis-ha-ctl.bash`, `_redis-ha-ctl` (zsh), `redis-ha-ctl.fish`. Returns
/// what it wrote, one path a line.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<String> {
    let cmd = without_hidden_commands(cmd);
    let man = dir.join("man");
    let completions = dir.join("completions");
    for sub in [&man, &completions] {
        std::fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), BIN, &completions).with_context(
            || {
                format!(
                    "writing the {shell} completions into {}",
                    completions.display()
                )
            },
        )?;
    }
    let mut written = Vec::new();
    for sub in [&man, &completions] {
        for entry in std::fs::read_dir(sub).with_context(|| format!("listing {}", sub.display()))? {
            written.push(entry?.path().display().to_string());
        }
    }
    written.sort();
    Ok(written.into_iter().map(|p| p + "\n").collect())
}

/// `cmd` without its hidden subcommands (this one among them): clap_mangen leaves them out, but
/// clap_complete would offer them. clap cannot remove a subcommand, so this is a copy of what
/// the pages and completions use: texts, arguments, visible subcommands; the name and version
/// are the binary's, as clap's derive gives them.
fn without_hidden_commands(cmd: clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(BIN).version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = cmd.get_about() {
        visible = visible.about(about.clone());
    }
    if let Some(long_about) = cmd.get_long_about() {
        visible = visible.long_about(long_about.clone());
    }
    if let Some(after_help) = cmd.get_after_help() {
        visible = visible.after_help(after_help.clone());
    }
    visible = visible.args(cmd.get_arguments().cloned());
    visible.subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_commands_are_left_out_and_the_rest_kept() {
        let cmd = clap::Command::new(BIN)
            .about("the about")
            .arg(
                clap::Arg::new("verbose")
                    .long("verbose")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(clap::Command::new("shown").about("a shown command"))
            .subcommand(clap::Command::new("secret").hide(true));
        let visible = without_hidden_commands(cmd);
        let names: Vec<&str> = visible.get_subcommands().map(|s| s.get_name()).collect();
        assert_eq!(names, ["shown"]);
        assert_eq!(visible.get_name(), BIN);
        assert_eq!(visible.get_version(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(
            visible.get_about().map(ToString::to_string).as_deref(),
            Some("the about")
        );
        assert!(visible.get_arguments().any(|a| a.get_id() == "verbose"));
    }
}
