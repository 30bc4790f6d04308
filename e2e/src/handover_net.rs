//! The namespaces of the flow handover's data-path tests and benchmark: a client, a router,
//! and two nodes, each with the shared addresses on `lo` (an IPv4 address and an address of
//! an IPv6 range) and its own IPv4 and IPv6 address on its uplink `eth0`, each on its own link to the router (nodes share no link, as on
//! Linode), with reverse-path filtering of the given mode. The router sends the shared
//! addresses to the old node until told otherwise.
//!
//! ```text
//!  client eth0 198.51.100.66/26 ── router ── eth0 198.51.100.2/30, 2001:db8:a::2/64  old
//!              2001:db8:2::10/64         └── eth0 198.51.100.6/30, 2001:db8:b::2/64  new
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::netns::{self, Netns, NetnsError};

/// The shared address (on both nodes' `lo`).
pub const SHARED: &str = "192.0.2.10";
pub const SHARED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The shared IPv6 range, and the address of it the nodes serve.
pub const SHARED_RANGE_V6: &str = "2001:db8:5::/64";
pub const SHARED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0x10);
/// The port [`serve`] listens on.
pub const PORT: u16 = 8000;
/// The client's address.
pub const CLIENT: &str = "198.51.100.66";
/// The nodes' uplink addresses, the router's next hops for the shared address.
pub const OLD_V4: &str = "198.51.100.2";
pub const NEW_V4: &str = "198.51.100.6";
/// The nodes' own IPv6 addresses (the tunnel's ends).
pub const OLD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 2);
pub const NEW_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 2);
/// How long the client's reads and writes wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong setting the namespaces up or using them.
#[derive(Debug, thiserror::Error)]
pub enum HandoverNetError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HandoverNetError {
    let what = what.into();
    move |source| HandoverNetError::Io { what, source }
}

/// The four namespaces (see the module docs). Field order is drop order.
#[derive(Debug)]
pub struct HandoverNet {
    pub client: Netns,
    pub old: Netns,
    pub new: Netns,
    pub router: Netns,
}

impl HandoverNet {
    /// Creates the namespaces; `rp_filter` is the nodes' reverse-path filtering (0 off,
    /// 1 strict, 2 loose).
    pub fn create(rp_filter: u8) -> Result<Self, NetnsError> {
        let client = Netns::create("fhc")?;
        let router = Netns::create("fhr")?;
        let old = Netns::create("fha")?;
        let new = Netns::create("fhb")?;
        router.enable_forwarding()?;
        netns::veth(&client, "eth0", &router, "to-c")?;
        netns::veth(&old, "eth0", &router, "to-a")?;
        netns::veth(&new, "eth0", &router, "to-b")?;
        client.add_addr("eth0", &format!("{CLIENT}/26"))?;
        client.add_addr("eth0", "2001:db8:2::10/64")?;
        router.add_addr("to-c", "198.51.100.65/26")?;
        router.add_addr("to-c", "2001:db8:2::1/64")?;
        let rp = rp_filter.to_string();
        for (ns, dev, v4, r4, v6, r6) in [
            (
                &old,
                "to-a",
                OLD_V4,
                "198.51.100.1",
                OLD_V6,
                "2001:db8:a::1",
            ),
            (
                &new,
                "to-b",
                NEW_V4,
                "198.51.100.5",
                NEW_V6,
                "2001:db8:b::1",
            ),
        ] {
            ns.add_addr("eth0", &format!("{v4}/30"))?;
            ns.add_addr("eth0", &format!("{v6}/64"))?;
            router.add_addr(dev, &format!("{r4}/30"))?;
            router.add_addr(dev, &format!("{r6}/64"))?;
            ns.add_route("default", r4)?;
            ns.add_route("default", r6)?;
            ns.add_addr("lo", &format!("{SHARED}/32"))?;
            ns.add_addr("lo", &format!("{SHARED_V6}/128"))?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", &rp)?;
            ns.sysctl("net.ipv4.conf.eth0.rp_filter", &rp)?;
        }
        client.add_route("default", "198.51.100.65")?;
        client.add_route("default", "2001:db8:2::1")?;
        router.add_route(&format!("{SHARED}/32"), OLD_V4)?;
        router.add_route(SHARED_RANGE_V6, &OLD_V6.to_string())?;
        Ok(Self {
            client,
            old,
            new,
            router,
        })
    }

    /// Points the router's route for the shared IPv4 address at the node with uplink address
    /// `via` ([`OLD_V4`] or [`NEW_V4`]): the move, as the route servers would make it.
    pub fn route_via(&self, via: &str) -> Result<(), NetnsError> {
        self.router
            .ip(&["route", "replace", &format!("{SHARED}/32"), "via", via])
            .map(drop)
    }

    /// The same for the shared IPv6 range, `via` [`OLD_V6`] or [`NEW_V6`].
    pub fn route_range_via(&self, via: Ipv6Addr) -> Result<(), NetnsError> {
        self.router
            .ip(&[
                "-6",
                "route",
                "replace",
                SHARED_RANGE_V6,
                "via",
                &via.to_string(),
            ])
            .map(drop)
    }

    /// A client connection to the shared address, made inside the client's namespace.
    pub fn connect(&self) -> Result<TcpStream, HandoverNetError> {
        connect(&self.client)
    }
}

/// A connection from `client` to the shared IPv4 address.
pub fn connect(client: &Netns) -> Result<TcpStream, HandoverNetError> {
    connect_to(client, SHARED_V4.into())
}

/// A connection from `client` to `address` (a shared address).
pub fn connect_to(client: &Netns, address: IpAddr) -> Result<TcpStream, HandoverNetError> {
    let target = SocketAddr::new(address, PORT);
    let s = client
        .in_namespace(move || TcpStream::connect_timeout(&target, IO_TIMEOUT))?
        .map_err(io(format!("connect to {target}")))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("timeout"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("timeout"))?;
    Ok(s)
}

/// Serves `name` on port [`PORT`] of every address of `ns`, IPv4 and IPv6 (one dual-stack
/// socket, as many servers listen): a line is answered with `name`
/// and the line; `BULK n` then n bytes is answered with `name bulk n`. Runs until the
/// namespace goes.
pub fn serve(ns: &Netns, name: &'static str) -> Result<(), HandoverNetError> {
    let listener = ns
        .in_namespace(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, PORT)))?
        .map_err(io(format!("listen in {}", ns.name())))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || answer(conn, name));
        }
    });
    Ok(())
}

fn answer(conn: TcpStream, name: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let reply = match line.strip_prefix("BULK ") {
            Some(n) => {
                let n: u64 = n.trim().parse().unwrap_or(0);
                let mut body = (&mut reader).take(n);
                let got = std::io::copy(&mut body, &mut std::io::sink()).unwrap_or(0);
                format!("{name} bulk {got}\n")
            }
            None => format!("{name} {line}"),
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// Sends `line` on `conn` and returns who answered it (the first word of [`serve`]'s
/// answer).
pub fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> Result<String, HandoverNetError> {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io("send"))?;
    let mut answer = String::new();
    conn.read_line(&mut answer).map_err(io("answer"))?;
    Ok(answer.split(' ').next().unwrap_or("").to_owned())
}

/// What a long-lived connection saw: who answered each request, or the error that ended it.
pub type Conversation = std::thread::JoinHandle<Result<Vec<String>, String>>;

/// Sends a line every 50 ms on `conn` until `stop`; who answered each (the first word of
/// [`serve`]'s answer).
pub fn chat(conn: TcpStream, stop: Arc<AtomicBool>) -> Conversation {
    std::thread::spawn(move || {
        let mut writer = conn.try_clone().map_err(|e| format!("clone: {e}"))?;
        let mut reader = BufReader::new(conn);
        let mut who = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            writer
                .write_all(format!("ping {i}\n").as_bytes())
                .map_err(|e| format!("send {i}: {e}"))?;
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err(format!("closed after {i}")),
                Ok(_) => who.push(line.split(' ').next().unwrap_or("").to_owned()),
                Err(e) => return Err(format!("answer {i}: {e}")),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(who)
    })
}

/// Uploads 1 MiB at a time (full-size segments) on `conn` until `stop`; who answered each.
pub fn upload(conn: TcpStream, stop: Arc<AtomicBool>) -> Conversation {
    std::thread::spawn(move || {
        let mut writer = conn.try_clone().map_err(|e| format!("clone: {e}"))?;
        let mut reader = BufReader::new(conn);
        let chunk = vec![b'x'; 1 << 20];
        let mut who = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            writer
                .write_all(format!("BULK {}\n", chunk.len()).as_bytes())
                .and_then(|()| writer.write_all(&chunk))
                .map_err(|e| format!("upload: {e}"))?;
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err("closed".into()),
                Ok(_) => who.push(line.split(' ').next().unwrap_or("").to_owned()),
                Err(e) => return Err(format!("upload answer: {e}")),
            }
        }
        Ok(who)
    })
}

/// Joins the conversations: Ok when every one lasted and was answered by `by` alone, at
/// least `at_least` times each (the upload, `bulk`, at least once), else what went wrong.
pub fn answered_by_alone(
    chats: Vec<Conversation>,
    bulk: Conversation,
    by: &str,
    at_least: usize,
) -> Result<(), String> {
    let joined = |c: Conversation| c.join().map_err(|_| "a conversation panicked".to_owned())?;
    for (i, c) in chats.into_iter().enumerate() {
        let who = joined(c).map_err(|e| format!("connection {i} broke: {e}"))?;
        if who.len() < at_least || who.iter().any(|w| w != by) {
            return Err(format!(
                "connection {i} answered by {who:?}, want {by} ({at_least}+)"
            ));
        }
    }
    let who = joined(bulk).map_err(|e| format!("the upload broke: {e}"))?;
    if who.is_empty() || who.iter().any(|w| w != by) {
        return Err(format!("the upload answered by {who:?}, want {by}"));
    }
    Ok(())
}

/// Long-lived connections to one address: some sending a line every 50 ms ([`chat`]) and
/// one uploading full-size segments ([`upload`]).
pub struct Talk {
    chats: Vec<Conversation>,
    bulk: Conversation,
    stop: Arc<AtomicBool>,
}

impl Talk {
    /// Opens `chats` chatting connections and the upload from `client` to `address`.
    pub fn start(client: &Netns, address: IpAddr, chats: usize) -> Result<Self, HandoverNetError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut started = Vec::with_capacity(chats);
        for _ in 0..chats {
            started.push(chat(connect_to(client, address)?, stop.clone()));
        }
        let bulk = upload(connect_to(client, address)?, stop.clone());
        Ok(Self {
            chats: started,
            bulk,
            stop,
        })
    }

    /// How many connections it holds, the upload included.
    pub fn connections(&self) -> usize {
        self.chats.len() + 1
    }

    /// Stops every connection: how many lasted to the end (were never reset or stalled).
    pub fn survivors(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.chats
            .into_iter()
            .chain(std::iter::once(self.bulk))
            .map(std::thread::JoinHandle::join)
            .filter(|c| matches!(c, Ok(Ok(_))))
            .count()
    }

    /// Stops every connection: how each ended, the upload last (Ok: it lasted, with how
    /// many answers; Err: what ended it).
    pub fn endings(self) -> Vec<Result<usize, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.chats
            .into_iter()
            .chain(std::iter::once(self.bulk))
            .map(|c| match c.join() {
                Ok(ended) => ended.map(|who| who.len()),
                Err(_) => Err("the conversation panicked".into()),
            })
            .collect()
    }

    /// Stops every connection: Ok when each lasted and was answered by `by` alone.
    pub fn answered_by_alone(self, by: &str) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        answered_by_alone(self.chats, self.bulk, by, 1)
    }
}

/// What flow handover has installed in `ns`, a line each: its nf_tables tables and tunnel
/// devices (named `sipfh…`) and its routing rules (marks of the tunnels' range, 0x5f1…).
pub fn installed(ns: &Netns) -> Result<Vec<String>, HandoverNetError> {
    let tables = ns.exec("nft", &["list", "tables"])?;
    let links = ns.ip(&["-o", "link"])?;
    let rules = ns.ip(&["-4", "rule"])?;
    Ok(tables
        .lines()
        .chain(links.lines())
        .filter(|l| l.contains("sipfh"))
        .chain(rules.lines().filter(|l| l.contains("fwmark 0x5f1")))
        .map(str::to_owned)
        .collect())
}

/// What [`with_netlink`] runs.
pub type Job<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// Runs `f` with an rtnetlink handle of `ns`, on a runtime of its own.
pub fn with_netlink<T: Send>(
    ns: &Netns,
    f: impl for<'a> FnOnce(&'a rtnetlink::Handle) -> Job<'a, T> + Send,
) -> Result<T, HandoverNetError> {
    ns.in_namespace(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("a runtime"))?;
        rt.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection().map_err(io("netlink"))?;
            let driver = tokio::spawn(connection);
            let out = f(&handle).await;
            driver.abort();
            Ok(out)
        })
    })?
}
