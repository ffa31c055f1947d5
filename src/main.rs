//! The `ordertrack` binary: parses the command line and hands over to the library.

use clap::Parser;
use ordertrack::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        // A usage error is one line (clap's own rendering adds a hint block) and exit code 2.
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "ordertrack: {} (see --help)",
                first.trim_start_matches("error: ")
            );
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
