use std::process::ExitCode;

use clap::Parser;
use sharedip_operator::config::{Command, Config};
use sharedip_operator::{controller, telemetry, uninstall};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
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
