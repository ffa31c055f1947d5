//! The `ordertrack` binary: parses the command line and hands over to the library.

use clap::error::ErrorKind;
use clap::Parser;
use ordertrack::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0; a command given without what it needs
        // to do anything (`ordertrack`, `ordertrack db`) prints its help on stderr, exit code 2.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        // A usage error is one line carrying all of clap's detail, and exit code 2.
        Err(e) => {
            eprintln!("ordertrack: {} (see --help)", one_line(&e.to_string()));
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => exit(ordertrack::serve(args)),
        Command::Token(args) => exit(ordertrack::token(args)),
        Command::Demo(args) => exit(ordertrack::demo(args)),
        Command::Watch(args) => exit(ordertrack::watch(args)),
        Command::Db(cmd) => exit(ordertrack::db(cmd)),
    }
}

/// clap's rendering of a usage error folded into one line: the message, the lines under it (the
/// missing arguments, the accepted values) and its tips. The usage block and the closing "For
/// more information" line are left out; `(see --help)` stands for them.
fn one_line(rendered: &str) -> String {
    let mut out = String::new();
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let joint = if out.is_empty() {
            ""
        } else if line.starts_with("tip:") {
            "; "
        } else if out.ends_with(':') || line.starts_with('[') {
            " "
        } else {
            ", "
        };
        out.push_str(joint);
        out.push_str(line);
    }
    if out.is_empty() {
        "bad arguments".to_string()
    } else {
        out
    }
}

/// Success, or the error as one line on stderr and a failure exit code.
fn exit<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ordertrack: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
