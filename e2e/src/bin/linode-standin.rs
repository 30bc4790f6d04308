//! `linode-standin`: the Linode API v4 stand-in as a process (for the lab and manual use).
//!
//! ```text
//! linode-standin --listen 127.0.0.1:8080 --token-file /run/token --seed lab.yaml
//! ```
//! The API is at `http://LISTEN/v4` (and `/v4beta`), the admin API at `http://LISTEN/_standin`.
//! The seed format is documented in `sharedip_e2e::standin::seed`. Logs go to stderr
//! (`RUST_LOG`, default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sharedip_e2e::standin::{Seed, StandIn};

#[derive(Debug, Parser)]
#[command(
    name = "linode-standin",
    about = "Stand-in for the Linode API v4 IP sharing subset"
)]
struct Args {
    /// Address to listen on. Keep it on loopback (or inside a test network namespace).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// File holding the accepted bearer token (surrounding whitespace is ignored).
    #[arg(long, conflicts_with = "token", required_unless_present = "token")]
    token_file: Option<PathBuf>,
    /// The accepted bearer token (visible in the process list: prefer --token-file).
    #[arg(long, env = "LINODE_STANDIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seed file (YAML or JSON) with the initial Linodes, addresses, ranges and shares.
    #[arg(long)]
    seed: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("either --token or --token-file is required")]
    NoToken,
    #[error(transparent)]
    StandIn(#[from] sharedip_e2e::standin::StandInError),
}

async fn run(args: Args) -> Result<(), CliError> {
    let token = match (&args.token_file, args.token) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|source| CliError::TokenFile {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned(),
        (None, Some(t)) => t,
        (None, None) => return Err(CliError::NoToken),
    };
    let mut builder = StandIn::builder().token(token).listen(args.listen);
    if let Some(path) = &args.seed {
        let seed = Seed::load(path)?;
        tracing::info!(
            path = %path.display(),
            linodes = seed.linodes.len(),
            ipv4 = seed.ipv4.len(),
            ipv6_ranges = seed.ipv6_ranges.len(),
            shares = seed.sharing.len(),
            "seed loaded"
        );
        builder = builder.seed(seed);
    }
    let handle = builder.start().await?;
    tracing::info!(api = %handle.base_url(), admin = %handle.admin_url(), "ready");
    wait_for_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; waiting for Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "linode-standin failed");
            ExitCode::FAILURE
        }
    }
}
