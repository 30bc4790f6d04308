use std::process::ExitCode;

use clap::Parser;
use sharedip_operator::config::Config;
use sharedip_operator::{controller, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    match controller::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sharedip-operator failed");
            ExitCode::FAILURE
        }
    }
}
