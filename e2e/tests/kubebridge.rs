//! The apiserver bridge: a listener on a namespace's own 127.0.0.1 forwarding to a server
//! on the root namespace's 127.0.0.1. Root only (skipped with a message otherwise).

use std::io::{Read, Write};
use std::time::Duration;

use sharedip_e2e::kubebridge::KubeBridge;
use sharedip_e2e::netns::{self, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_from_inside_a_namespace_to_root_loopback() {
    if !netns::is_root() {
        eprintln!("SKIPPED: the kube bridge test needs root (network namespaces)");
        return;
    }
    // An echo server on the root namespace's loopback, prefixing what it returns.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = server.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"root:").await.unwrap();
        s.write_all(&buf).await.unwrap();
    });

    let ns = Netns::create("bridge").unwrap();
    // The namespace's loopback does not reach the root's: the target port is closed there.
    let direct = ns
        .in_namespace(|| std::net::TcpStream::connect(target))
        .unwrap();
    assert!(direct.is_err(), "namespace loopback is separate");

    let bridge = KubeBridge::start(&ns, 0, target).unwrap();
    let port = bridge.port();
    // Blocking I/O from inside the namespace, like the agent; block_in_place keeps the
    // runtime's other worker serving the bridge and the echo server meanwhile.
    let reply = tokio::task::block_in_place(|| {
        ns.in_namespace(|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"hello")?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)?;
            Ok::<_, std::io::Error>(reply)
        })
    })
    .unwrap()
    .unwrap();
    assert_eq!(reply, b"root:hello");
    tokio::time::timeout(Duration::from_secs(10), echo)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        bridge.server_url(),
        format!("https://127.0.0.1:{port}"),
        "kubeconfig URL"
    );

    // The kubeconfig rewrite keeps everything but the server.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.yaml");
    std::fs::write(
        &src,
        r#"{"apiVersion":"v1","kind":"Config","clusters":[{"name":"c","cluster":{"server":"https://127.0.0.1:1","certificate-authority":"/ca.crt"}}],"users":[{"name":"u","user":{"token":"t"}}],"contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}],"current-context":"x"}"#,
    )
    .unwrap();
    let out = dir.path().join("out.yaml");
    bridge.write_kubeconfig(&src, &out).unwrap();
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        v["clusters"][0]["cluster"]["server"].as_str(),
        Some(bridge.server_url().as_str())
    );
    assert_eq!(
        v["clusters"][0]["cluster"]["certificate-authority"].as_str(),
        Some("/ca.crt")
    );
    assert_eq!(v["current-context"].as_str(), Some("x"));
    drop(bridge);
}
