//! The stand-in and client the lifecycle and reserved-IP tests share: a stand-in with one
//! holder Linode, and a client that retries quickly.

use std::net::Ipv4Addr;
use std::time::Duration;

use linode_client::{LinodeClient, TokenSource};
use sharedip_e2e::standin::{NewLinode, StandIn, StandInHandle};

pub const TOKEN: &str = "lifecycle-t0ken";
/// A Linode in us-east with one public IPv4 of its own.
pub const HOLDER: u64 = 100;
pub const HOLDER_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test exceeded its 30 s bound")
}

pub async fn standin() -> StandInHandle {
    let s = StandIn::builder().token(TOKEN).start().await.unwrap();
    s.state()
        .create_linode(
            &NewLinode::new("us-east")
                .id(HOLDER)
                .label("holder")
                .ipv4([HOLDER_IPV4]),
        )
        .unwrap();
    s
}

pub fn builder(s: &StandInHandle) -> linode_client::ClientBuilder {
    LinodeClient::builder(TokenSource::from_string(TOKEN).unwrap())
        .base_url(s.base_url())
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .max_retry_after(Duration::from_millis(10))
        .request_timeout(Duration::from_secs(5))
}

pub fn client(s: &StandInHandle) -> LinodeClient {
    builder(s).build().unwrap()
}

/// Every request of `method` on `template` the stand-in received, whatever it answered
/// (injected faults included).
pub fn requests(s: &StandInHandle, method: &str, template: &str) -> u64 {
    s.request_log()
        .counts()
        .iter()
        .filter(|c| c.method == method && c.template == template)
        .map(|c| c.count)
        .sum()
}
