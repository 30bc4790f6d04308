use std::process::ExitCode;

use sharedip_node_agent::config::{self, Command};
use sharedip_node_agent::{kube_agent, standalone, status_cmd, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = config::parse();
    let result = match cli.command {
        Command::Run(args) => {
            telemetry::init(args.common.log_format, &args.common.log_level);
            kube_agent::run(args).await
        }
        Command::Standalone(args) => {
            telemetry::init(args.common.log_format, &args.common.log_level);
            standalone::run(args).await
        }
        Command::Status(args) => {
            return match status_cmd::run(args.http_addr, args.json).await {
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
