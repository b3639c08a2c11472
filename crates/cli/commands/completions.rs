//! `completions SHELL` and `man`: generated from the CLI definition itself, so they never
//! drift from the flags. Both print on stdout and need no working dir.

use clap::CommandFactory;
use roff::{Roff, bold, italic, roman};

use crate::exit::ExitStatus;
use crate::printer::Printer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub(crate) fn run(args: &Args, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "nuwax-cli", &mut out);
    printer.data(&String::from_utf8_lossy(&out));
    Ok(ExitStatus::Success)
}

/// One page, `nuwax-cli(1)`: synopsis, global options, every command with its own arguments
/// (a packager installs one file), examples, exit status.
pub(crate) fn run_man(printer: &Printer) -> anyhow::Result<ExitStatus> {
    let mut cmd = crate::Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands() {
        command_section(&mut roff, sub, "nuwax-cli");
    }
    roff.control("SH", ["EXAMPLES"]);
    preformatted(&mut roff, crate::EXAMPLES);
    roff.control("SH", ["EXIT STATUS"]);
    preformatted(&mut roff, crate::EXIT_CODES);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "The README of nuwax-cli: the JSON contract, the progress lines, troubleshooting.",
    )]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    printer.data(&String::from_utf8_lossy(&out));
    Ok(ExitStatus::Success)
}

/// `.SS nuwax-cli backup`, what it does, then its arguments; nested commands follow.
fn command_section(roff: &mut Roff, cmd: &clap::Command, parent: &str) {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let name = format!("{parent} {}", cmd.get_name());
    roff.control("SS", [name.as_str()]);
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        roff.text([roman(about.to_string())]);
    }
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() || arg.is_global_set() || arg.get_id() == "help" {
            continue;
        }
        let mut head = Vec::new();
        if let Some(long) = arg.get_long() {
            head.push(bold(format!("--{long}")));
        } else if let Some(short) = arg.get_short() {
            head.push(bold(format!("-{short}")));
        }
        let takes_value = arg.get_num_args().is_some_and(|r| r.takes_values());
        if arg.is_positional() || takes_value {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first().map(ToString::to_string))
                .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            if !head.is_empty() {
                head.push(roman(" "));
            }
            head.push(italic(format!("<{value}>")));
        }
        roff.control("TP", []);
        roff.text(head);
        if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
            roff.text([roman(help.to_string())]);
        }
    }
    for sub in cmd.get_subcommands() {
        command_section(roff, sub, &name);
    }
}

/// Lines kept as written (`.nf` ... `.fi`).
fn preformatted(roff: &mut Roff, text: &str) {
    roff.control("nf", []);
    for line in text.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
}
