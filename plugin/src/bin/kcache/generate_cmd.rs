//! `kcache generate`: man pages and shell completions rendered from kcache's own clap command,
//! for the deb and rpm packages (scripts/build-packages.sh). Hidden: packagers run it, users
//! read the results. As ripgrep's `--generate man|complete-*`, the files come from the binary
//! they describe, so they cannot drift from its flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Subcommand, ValueEnum};
use kcache_core::fsutil::write_atomic;

use crate::{Cli, Outcome};

#[derive(Subcommand)]
pub enum GenerateCommand {
    /// Write section-1 man pages: kcache.1 and one per subcommand (kcache-install-containerd.1).
    Man(ManArgs),
    /// Print the completion script for SHELL on stdout.
    Completions(CompletionsArgs),
}

#[derive(Args)]
pub struct ManArgs {
    /// The directory the pages go to (created).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells packages ship completions for.
#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(c: GenerateCommand) -> Result<Outcome> {
    match c {
        GenerateCommand::Man(a) => {
            std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
            let cmd = built();
            let n = man_pages(&cmd, &a.out)?;
            println!("wrote {n} man pages into {}", a.out.display());
        }
        GenerateCommand::Completions(a) => {
            let mut cmd = built();
            let shell = match a.shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kcache", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).context("writing the completions")?;
        }
    }
    Ok(Outcome::Ok)
}

/// The command, built (so subcommands carry their full names, `kcache-install-containerd`).
fn built() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// Writes the page of `cmd` and of each subcommand, recursively; the number written.
fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<usize> {
    let mut n = 0;
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .manual("kcache")
        .render(&mut page)
        .context("rendering a man page")?;
    let path = dir.join(format!("{name}.1"));
    write_atomic(&path, &page, 0o644, true).with_context(|| format!("cannot write {}", path.display()))?;
    n += 1;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        n += man_pages(sub, dir)?;
    }
    Ok(n)
}
