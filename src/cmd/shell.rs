//! `tether completions SHELL` and `tether man`: generated from the command-line
//! definition itself, so they can never describe options tether does not have.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut impl Write) {
    clap_complete::generate(shell, &mut Cli::command(), "tether", out);
}

/// `tether man`.
pub fn man_command() -> std::process::ExitCode {
    match man(&mut io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::from(crate::exit::OK),
        Err(e) => {
            eprintln!("tether: {e}");
            std::process::ExitCode::from(crate::exit::FAILURE)
        }
    }
}

/// Writes the man page: the top-level page, then one section per command, so that one
/// `man tether` shows every option.
pub fn man(out: &mut impl Write) -> io::Result<()> {
    let command = Cli::command();
    clap_mangen::Man::new(command.clone()).render(out)?;
    for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
        writeln!(out, ".SH \"TETHER {}\"", sub.get_name().to_uppercase())?;
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(out)?;
        page.render_options_section(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bash_completion_offers_every_command() {
        let mut out = Vec::new();
        completions(Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        for command in [
            "run",
            "check-config",
            "probe",
            "wait",
            "status",
            "events",
            "demo",
        ] {
            assert!(script.contains(command), "{command} missing");
        }
        assert!(script.contains("--probe"));
    }

    #[test]
    fn the_man_page_documents_every_command_and_option() {
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.starts_with(".ie"), "roff: {}", &page[..40]);
        for text in [
            "check\\-config",
            "\\-\\-expect\\-status",
            "\\-\\-log\\-format",
        ] {
            assert!(page.contains(text), "{text} missing");
        }
    }
}
