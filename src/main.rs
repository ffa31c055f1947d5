//! The `ordertrack` binary: parses the command line and hands over to the library.

use clap::Parser;
use ordertrack::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => ordertrack::run::serve(args),
        Command::Token(args) => ordertrack::run::token(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ordertrack: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
