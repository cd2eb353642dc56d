//! A real local DNS server for integration tests: DNS-over-HTTPS (HTTP/2), DNS-over-TLS and plain
//! UDP/TCP on 127.0.0.1, answering from a [`TestZone`] with a certificate minted at run time.

use super::certs::mint_certificates_for;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_net::runtime::Time;
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rustls::ServerConfig;

/// Idle/handshake timeout of the server's connections: long, so tests decide when they close.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
const TTL: u32 = 60;

/// Records by lower-case FQDN. Unknown names get NXDOMAIN with an SOA; CNAME chains inside the
/// zone are followed like a recursive resolver would (CNAME + the target's records).
#[derive(Debug, Default, Clone)]
pub struct TestZone {
    records: HashMap<String, Vec<Record>>,
    servfail: HashSet<String>,
    refused: HashSet<String>,
    /// TTL of records added from now on (0 = the default).
    ttl: u32,
    /// TTL and MINIMUM of the SOA of negative answers (None = the default).
    soa: Option<(u32, u32)>,
}

fn key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(key(name)).expect("valid test name")
}

impl TestZone {
    pub fn new() -> Self {
        Self::default()
    }

    /// Any record for `name` (SVCB, HTTPS, TXT...).
    pub fn record(self, name: &str, data: RData) -> Self {
        self.add(name, data)
    }

    fn add(mut self, name: &str, data: RData) -> Self {
        let ttl = if self.ttl == 0 { TTL } else { self.ttl };
        let record = Record::from_rdata(fqdn(name), ttl, data);
        self.records.entry(key(name)).or_default().push(record);
        self
    }

    /// Records added after this call get `ttl` seconds.
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.add(name, RData::A(A(ip)))
    }

    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.add(name, RData::AAAA(AAAA(ip)))
    }

    pub fn cname(self, name: &str, target: &str) -> Self {
        self.add(name, RData::CNAME(CNAME(fqdn(target))))
    }

    /// Queries for `name` are answered SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Self {
        self.servfail.insert(key(name));
        self
    }

    /// Queries for `name` are answered REFUSED.
    pub fn refused(mut self, name: &str) -> Self {
        self.refused.insert(key(name));
        self
    }

    /// Negative answers carry an SOA with this TTL and MINIMUM field.
    pub fn with_soa(mut self, ttl: u32, minimum: u32) -> Self {
        self.soa = Some((ttl, minimum));
        self
    }

    /// (rcode, answers, SOA for negative answers)
    fn answer(&self, qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let mut name = key(&qname.to_ascii());
        if self.servfail.contains(&name) {
            return (ResponseCode::ServFail, vec![], vec![]);
        }
        if self.refused.contains(&name) {
            return (ResponseCode::Refused, vec![], vec![]);
        }
        let (soa_ttl, minimum) = self.soa.unwrap_or((TTL, TTL));
        let soa = || soa(soa_ttl, minimum);
        let mut answers = Vec::new();
        for _ in 0..8 {
            let Some(records) = self.records.get(&name) else {
                // Unknown name (possibly at the end of a chain): NXDOMAIN, keeping any CNAMEs.
                return (ResponseCode::NXDomain, answers, vec![soa()]);
            };
            let matching: Vec<Record> = records
                .iter()
                .filter(|r| r.record_type() == qtype)
                .cloned()
                .collect();
            if !matching.is_empty() {
                answers.extend(matching);
                return (ResponseCode::NoError, answers, vec![]);
            }
            let cname = records.iter().find_map(|r| match &r.data {
                RData::CNAME(CNAME(target)) => Some((r.clone(), target.clone())),
                _ => None,
            });
            match cname {
                Some((record, target)) => {
                    answers.push(record);
                    name = key(&target.to_ascii());
                }
                // The name exists without this type: NODATA.
                None => return (ResponseCode::NoError, answers, vec![soa()]),
            }
        }
        (ResponseCode::ServFail, vec![], vec![])
    }
}

fn soa(ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        Name::root(),
        ttl,
        RData::SOA(SOA::new(
            fqdn("ns.test"),
            fqdn("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            minimum,
        )),
    )
}

struct ZoneHandler {
    zone: Arc<TestZone>,
    queries: Arc<AtomicUsize>,
    names: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if let Ok(info) = request.request_info() {
            let q = info.query.original();
            let mut name = q.name().to_ascii().to_ascii_lowercase();
            if name.ends_with('.') {
                name.pop();
            }
            self.names
                .lock()
                .unwrap()
                .push(format!("{name} {}", q.query_type()));
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        // Echo EDNS so UDP answers may use the requester's buffer size; without it, 512 bytes.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let sent = match request.request_info() {
            Ok(info) => {
                let query = info.query.original();
                let (rcode, answers, soa) = self.zone.answer(query.name(), query.query_type());
                metadata.response_code = rcode;
                let response = builder.build(metadata, answers.iter(), [], soa.iter(), []);
                response_handle.send_response(response).await
            }
            Err(_) => {
                let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                response_handle.send_response(response).await
            }
        };
        sent.unwrap_or_else(|_| {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// A running (or halted) test server. All addresses stay fixed across `halt`/`resume`.
pub struct DohServer {
    /// DoH (HTTP/2) listener.
    pub addr: SocketAddr,
    /// Plain DNS over UDP.
    pub udp_addr: SocketAddr,
    /// Plain DNS over TCP (same port as `udp_addr`).
    pub tcp_addr: SocketAddr,
    /// DNS over TLS.
    pub dot_addr: SocketAddr,
    /// PEM of the CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// The name in the server certificate.
    pub tls_name: String,
    /// The certificate also names the IP, and any HTTP authority is served (as public
    /// resolvers do); otherwise the authority must be `tls_name`.
    ip_san: bool,
    queries: Arc<AtomicUsize>,
    names: Arc<std::sync::Mutex<Vec<String>>>,
    zone: Arc<TestZone>,
    h2_config: Arc<ServerConfig>,
    dot_config: Arc<ServerConfig>,
    server: Option<Server<ZoneHandler>>,
    _dir: tempfile::TempDir,
}

impl DohServer {
    pub async fn start(zone: TestZone) -> Self {
        Self::start_on(Ipv4Addr::LOCALHOST.into(), zone).await
    }

    /// Listens on `ip` (free ports), e.g. an address inside a test's network namespace.
    pub async fn start_on(ip: std::net::IpAddr, zone: TestZone) -> Self {
        Self::start_with(ip, zone, false).await
    }

    /// On 127.0.0.1, with a certificate that also names the IP address (an IP SAN).
    pub async fn start_with_ip_san(zone: TestZone) -> Self {
        Self::start_with(Ipv4Addr::LOCALHOST.into(), zone, true).await
    }

    async fn start_with(ip: std::net::IpAddr, zone: TestZone, ip_san: bool) -> Self {
        let tls_name = "doh.test".to_string();
        let ip_text = ip.to_string();
        let names: &[&str] = if ip_san {
            &[&tls_name, &ip_text]
        } else {
            &[&tls_name]
        };
        let (ca_pem, chain, key) = mint_certificates_for(names);
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write CA");

        let tls = |alpn: &[u8]| {
            let mut config = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .expect("server certificate");
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        let any: SocketAddr = (ip, 0).into();
        let mut server = Self {
            addr: any,
            udp_addr: any,
            tcp_addr: any,
            dot_addr: any,
            ca_file,
            tls_name,
            ip_san,
            queries: Arc::new(AtomicUsize::new(0)),
            names: Arc::default(),
            zone: Arc::new(zone),
            h2_config: tls(b"h2"),
            dot_config: tls(b"dot"),
            server: None,
            _dir: dir,
        };
        server.listen().await;
        server
    }

    /// The gate's `[upstream]` section with this server as its only upstream (DoH, trusting
    /// the test CA), for a test's configuration text.
    pub fn upstream_toml(&self) -> String {
        format!(
            "[upstream]\ntimeout_ms = 800\n\n[[upstream.servers]]\nurl = \"{}\"\ntls_name = \"{}\"\nca_file = \"{}\"\n",
            self.url(),
            self.tls_name,
            self.ca_file.display()
        )
    }

    /// `https://127.0.0.1:PORT/dns-query`
    pub fn url(&self) -> String {
        format!("https://{}/dns-query", self.addr)
    }

    pub fn udp_url(&self) -> String {
        format!("udp://{}", self.udp_addr)
    }

    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp_addr)
    }

    pub fn dot_url(&self) -> String {
        format!("tls://{}", self.dot_addr)
    }

    /// Requests handled so far, over every transport (probes included).
    /// Every question received, as `name TYPE` (lower case, no trailing dot), in order.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().unwrap().clone()
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection; the ports are released.
    pub async fn halt(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.shutdown_gracefully().await;
            // Connection tasks are aborted, not joined: let the aborts land so their sockets
            // are closed before the caller goes on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Listens again on the same ports with the same certificate and zone.
    pub async fn resume(&mut self) {
        if self.server.is_none() {
            self.listen().await;
        }
    }

    /// Really stops the server: subsequent queries fail.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    async fn listen(&mut self) {
        let handler = ZoneHandler {
            zone: self.zone.clone(),
            queries: self.queries.clone(),
            names: self.names.clone(),
        };
        let mut server = Server::new(handler);

        let https = tcp_listener(self.addr);
        self.addr = https.local_addr().unwrap();
        server
            .register_https_listener_with_tls_config(
                https,
                SERVER_TIMEOUT,
                self.h2_config.clone(),
                Some(self.tls_name.clone()).filter(|_| !self.ip_san),
                "/dns-query".to_string(),
            )
            .expect("https listener");

        let dot = tcp_listener(self.dot_addr);
        self.dot_addr = dot.local_addr().unwrap();
        server
            .register_tls_listener_with_tls_config(dot, SERVER_TIMEOUT, self.dot_config.clone())
            .expect("tls listener");

        // Plain DNS answers UDP and TCP on one port, as real servers do (TC retries rely on it).
        let (udp, tcp) = plain_sockets(self.udp_addr);
        self.udp_addr = udp.local_addr().unwrap();
        self.tcp_addr = tcp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, SERVER_TIMEOUT, 64);

        self.server = Some(server);
    }
}

/// A UDP socket and a TCP listener sharing a port (`addr`, or a free one if its port is 0).
fn plain_sockets(addr: SocketAddr) -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind(addr).expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        let Ok(tcp) = try_tcp_listener((addr.ip(), port).into()) else {
            // Someone holds that TCP port: pick another pair (only possible for port 0).
            assert_eq!(addr.port(), 0, "TCP port {port} taken");
            continue;
        };
        udp.set_nonblocking(true).unwrap();
        return (tokio::net::UdpSocket::from_std(udp).unwrap(), tcp);
    }
    panic!("no free UDP+TCP port pair");
}

/// SO_REUSEADDR so a resumed server can rebind while old connections sit in TIME_WAIT.
fn tcp_listener(addr: SocketAddr) -> tokio::net::TcpListener {
    try_tcp_listener(addr).expect("bind tcp")
}

fn try_tcp_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}
