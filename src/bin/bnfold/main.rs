//! The `bnfold` binary: the command line of `src/cli/`, with its exit code.

#[path = "../../cli/mod.rs"]
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(cli::main(std::env::args_os()).code())
}
