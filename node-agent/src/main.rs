// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]
use std::process::ExitCode;

use sharedip_node_agent::config::{self, Command};
use sharedip_node_agent::report::cli;
use sharedip_node_agent::{kubernetes, standalone};
use sharedip_process::logging;

// One thread: the agent's work is a few sockets and timers, nothing CPU-bound, and the default
// runtime's worker thread per core (each with its own malloc arena) would make the footprint grow
// with the node's core count. The binder's state-file writes still go to tokio's blocking pool.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = config::parse();
    let result = match cli.command {
        Command::Run(args) => {
            logging::init(args.common.log_format, &args.common.log_level);
            kubernetes::run(args).await
        }
        Command::Standalone(args) => {
            logging::init(args.log_format(), &args.common.log_level);
            if !args.ignored.is_empty() {
                tracing::warn!(ignored = ?args.ignored, "ignoring the arguments after the flags, as lelastic does");
            }
            if args.primary && args.secondary {
                tracing::warn!(
                    "both -primary and -secondary given: announcing as primary, as lelastic does"
                );
            }
            standalone::run(args).await
        }
        Command::Status(args) => {
            return match cli::run(&args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sharedip-node-agent status: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sharedip-node-agent failed");
            ExitCode::FAILURE
        }
    }
}
