// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]
use std::process::ExitCode;

use clap::Parser;
use sharedip_operator::config::{Command, Config};
use sharedip_operator::{controller, uninstall};
use sharedip_process::logging;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(config.log_format, &config.log_level);
    if let Some(Command::Uninstall(args)) = &config.command {
        return match uninstall::run(&config, args).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "sharedip-operator uninstall failed");
                ExitCode::FAILURE
            }
        };
    }
    match controller::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sharedip-operator failed");
            ExitCode::FAILURE
        }
    }
}
