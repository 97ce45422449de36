//! The `bnfold` command line: maps `run()` to an exit code and prints errors on one line.
//!
//! One command line for both ways it is installed: the Rust binary (`src/bin/bnfold/main.rs`)
//! and the Python package's console script (`bnfold._native.main`, built with the `python`
//! feature), which runs it in the Python process.

pub(crate) mod args;
pub(crate) mod commands;
mod progress;
pub(crate) mod report;
mod style;
mod text;
mod text_readiness;

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;

use crate::cli::args::{Cli, Command};
use crate::cli::commands::fold::run_fold;
use crate::cli::commands::inspect::run_inspect;
use crate::cli::commands::verify::run_verify;
use bnfold::printable::Shown;
use bnfold::Model;

/// How a run ends; its exit code is the same for every command (see `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// 0: folded (and verified), nothing left to fold, or the models agree.
    Success,
    /// 1: verification failed (or was required and not reached), or `--check` found a fold.
    Failure,
    /// 2: bad input, bad usage, or an I/O error.
    Error,
}

impl ExitStatus {
    /// The process exit code: 0, 1 or 2.
    pub(crate) fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Error => 2,
        }
    }
}

/// Set by the signal thread before it removes the staged files, so that the run it interrupts
/// (which may fail on a file removed under it) reports nothing and leaves the exit to it.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// On SIGINT and SIGTERM, removes the files staged so far and exits 128 + the signal's number
/// (130, 143), as a shell reports a process the signal ended.
#[cfg(unix)]
fn remove_staging_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                SIGNALLED.store(true, Ordering::SeqCst);
                bnfold::staging::remove_all();
                std::process::exit(128 + signal);
            }
        });
    }
}

/// Once a signal has come, waits for the signal thread to end the process: the interrupted
/// run's own outcome is neither printed nor returned.
fn defer_to_a_signal() {
    while SIGNALLED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Runs the command line on `args` (the program's name first), as a process of its own would:
/// staged files are removed on SIGINT and SIGTERM, errors are printed on stderr.
pub(crate) fn main(args: impl IntoIterator<Item = OsString>) -> ExitStatus {
    #[cfg(unix)]
    remove_staging_on_signals();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let status = match e.use_stderr() {
                true => ExitStatus::Error,
                false => ExitStatus::Success,
            };
            let _ = e.print();
            return status;
        }
    };
    let verbose = match &cli.command {
        Some(Command::Verify { output, .. } | Command::Inspect { output, .. }) => output.verbose,
        None => cli.fold.output_args.verbose,
    };
    let outcome = run(cli);
    defer_to_a_signal();
    match outcome {
        Ok(status) => status,
        Err(e) if is_broken_pipe(&e) => ExitStatus::Success,
        Err(e) => {
            eprintln!("bnfold: error: {}", Shown(&one_line(&e)));
            if verbose {
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {}", Shown(&cause.to_string()));
                }
            }
            ExitStatus::Error
        }
    }
}

/// The chain of causes on one line, without repeating what a neighbour already says.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        match parts.last_mut() {
            Some(last) if last.contains(&text) => {}
            Some(last) if text.contains(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Some(Command::Verify {
            original,
            candidate,
            float_folds,
            check,
            output,
        }) => run_verify(&original, &candidate, &check, &output, float_folds),
        Some(Command::Inspect {
            model,
            inputs_are_constants,
            output,
        }) => run_inspect(&model, inputs_are_constants, &output),
        None => run_fold(cli.fold),
    }
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Model> {
    Model::load(path).with_context(|| format!("{}", path.display()))
}
