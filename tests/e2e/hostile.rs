//! Hostile inbound peers against a meshed server, each with a legitimate
//! client beside it that must still be served: connections that never
//! speak, headers sent a byte at a time, idle keep-alive connections (in
//! plaintext and after an mTLS handshake), a flood past the connection cap,
//! oversized and too many headers, and HTTP/2 rapid reset.

use mesh::certs::DevCa;
use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_hyper::ServerLimits;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tight() -> ServerLimits {
    ServerLimits {
        handshake_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

async fn server(limits: ServerLimits) -> EchoHandle {
    Echo::new("echo")
        .limits(limits)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap()
}

/// A plain GET on a new connection: the status.
async fn legit(addr: SocketAddr) -> u16 {
    crate::support::http_get(&format!("http://{addr}/ok"))
        .await
        .0
}

/// Reads until the peer closes; how long that took (bounded at 10 s).
async fn closed_after(mut tcp: TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_slow_headers_and_idle_ones_are_closed() {
    let s = server(tight()).await;
    // Never a byte: closed after the handshake timeout.
    let silent = TcpStream::connect(s.addr()).await.unwrap();
    let took = closed_after(silent).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        s.server_stats().first_byte_timeouts.load(Ordering::Relaxed),
        1
    );

    // Headers a byte at a time: closed after the header-read timeout.
    let mut slow = TcpStream::connect(s.addr()).await.unwrap();
    let start = Instant::now();
    let request = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in request {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !cut {
        let took = closed_after(slow).await;
        assert!(start.elapsed() < Duration::from_secs(5), "{took:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "slow headers held {:?}",
        start.elapsed()
    );

    // Kept alive after a request, then silent: closed when idle.
    let mut idle = TcpStream::connect(s.addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_after(idle).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(legit(s.addr()).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_after_the_mtls_handshake_is_closed() {
    let ca = DevCa::new("demo.local").unwrap();
    let m = crate::support::mesh(
        "services: [{ name: reviews, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]\ninbound: [{ service: reviews, mtls: strict }]",
    );
    m.set_identity(crate::support::identity(
        &ca,
        &ca.issue_for("reviews").unwrap(),
    ));
    let s = Echo::new("reviews")
        .service("reviews")
        .limits(tight())
        .start(&m, "127.0.0.1:0")
        .await
        .unwrap();
    let id = crate::support::identity(&ca, &ca.issue_for("productpage").unwrap());
    let config = id.client_config(&"spiffe://demo.local/reviews".parse().unwrap(), false);
    let tcp = TcpStream::connect(s.addr()).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.server_stats().idle_closed.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_and_held_ones_served() {
    let s = server(ServerLimits {
        max_connections: 20,
        handshake_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    // A keep-alive client holding one of the twenty slots.
    let mut held = TcpStream::connect(s.addr()).await.unwrap();
    let ask = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    held.write_all(ask).await.unwrap();
    let mut buf = [0u8; 4096];
    assert!(held.read(&mut buf).await.unwrap() > 0);
    // Nineteen silent connections fill the rest; 100 more are closed.
    let mut flood = Vec::new();
    for _ in 0..119 {
        flood.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    let stats = s.server_stats();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.connections_refused.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.open_connections.load(Ordering::Relaxed), 20);
    assert_eq!(stats.connections_refused.load(Ordering::Relaxed), 100);
    // The connection the server holds is still served.
    for _ in 0..3 {
        held.write_all(ask).await.unwrap();
        let n = held.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // A new client is refused at once while the cap is full ...
    let mut refused = TcpStream::connect(s.addr()).await.unwrap();
    let _ = refused.write_all(ask).await;
    let n = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf))
        .await
        .expect("refused at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // ... and served once the flood goes away.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.open_connections.load(Ordering::Relaxed) > 1 {
        assert!(Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(legit(s.addr()).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_too_many_headers_are_refused() {
    let s = server(ServerLimits::default()).await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    for (what, req) in [("100 KiB header", big), ("150 headers", many)] {
        let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
        let _ = tcp.write_all(req.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{what}: {text}"
        );
    }
    assert_eq!(s.served(), 0);
    assert_eq!(legit(s.addr()).await, 200);
    // A limit below hyper's smallest buffer (8 KiB) is raised to it, not
    // a panic on the first connection.
    let small = server(ServerLimits {
        max_header_bytes: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(legit(small.addr()).await, 200);
}

/// HTTP/2 rapid reset (CVE-2023-44487): streams opened and reset at once,
/// thousands of them. The server ends the connection long before serving
/// them all, and a legitimate client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() {
    let s = Echo::new("echo")
        .delay(Duration::from_millis(50))
        .limits(ServerLimits::default())
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let tcp = TcpStream::connect(s.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut opened = 0u32;
    let mut cut_off = false;
    for _ in 0..10_000 {
        let req = http::Request::get(format!("http://{}/", s.addr()))
            .body(())
            .unwrap();
        let ready = tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await;
        let Ok(Ok(mut ready)) = ready else {
            cut_off = true;
            break;
        };
        match ready.send_request(req, false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => {
                cut_off = true;
                break;
            }
        }
    }
    assert!(cut_off, "10,000 opened-and-reset streams were all accepted");
    assert!(opened < 10_000);
    driver.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The handler ran for a bounded share of them.
    assert!(s.served() < 1_000, "served {} reset streams", s.served());
    assert_eq!(legit(s.addr()).await, 200);
}
