//! The `ktstr` command line.
//!
//! Exit codes: 0 success; 1 a check failed (the kernel is unusable, the
//! scheduler died, a worker did not run); 2 an infrastructure error
//! (download, file, tool, VM); 130 interrupted (Ctrl-C).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KTSTR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "ktstr: error: {}",
                cli::output::terminal_safe(&cli::output::error_text(&e))
            );
            ExitCode::from(2)
        }
    }
}
