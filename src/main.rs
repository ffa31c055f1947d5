//! The `ordertrack` binary: parses the command line and hands over to the library.

use clap::Parser;
use ordertrack::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => exit(ordertrack::run::serve(args)),
        Command::Token(args) => exit(ordertrack::run::token(args)),
        Command::Demo(args) => exit(ordertrack::demo::demo(args)),
        Command::Watch(args) => exit(ordertrack::watch::watch(args)),
        Command::Db(cmd) => exit(ordertrack::db::run(cmd)),
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
