//! TLS for a served node (rustls, with the `ring` provider): mutual TLS between peers,
//! whose certificates must name their node ids, and TLS for clients, with client
//! certificates required when a client CA is given.
//!
//! A peer connection is read and written by one thread at a time, so it is a rustls
//! `StreamOwned`. A client connection is read by one thread and written by another:
//! `split` gives each its half, sharing the TLS state under a lock that no thread
//! holds while it waits for the network to bring it bytes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

/// The files a node's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM): for peers it must name the node id (a DNS
    /// name in its subject alternative names); for clients, the names they connect to.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs every member's certificate (PEM).
    pub ca: PathBuf,
    /// The CA that signs clients' certificates, if clients must present one.
    pub client_ca: Option<PathBuf>,
}

/// A node's TLS configurations.
#[derive(Clone)]
pub struct Tls {
    /// Dialling a peer: its certificate checked against the CA and the peer's node id;
    /// ours presented.
    pub peer_client: Arc<ClientConfig>,
    /// A peer dialling us: its certificate required and checked against the CA (its
    /// node id is checked against its hello).
    pub peer_server: Arc<ServerConfig>,
    /// Clients.
    pub clients: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A client's configuration: servers checked against `ca`; with `identity` (a
/// certificate and key file), that certificate presented.
///
/// # Errors
/// A file that cannot be read or used: which and why.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn server_config(files: &TlsFiles, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(Arc::new(config))
}

impl Tls {
    /// Reads and checks the files.
    ///
    /// # Errors
    /// A file that cannot be read or used: which and why.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        Ok(Tls {
            peer_client: client_config(&files.ca, Some((&files.cert, &files.key)))?,
            peer_server: server_config(files, Some(&files.ca))?,
            clients: server_config(files, files.client_ca.as_deref())?,
        })
    }
}

/// Whether `cert` names `node_id` (a DNS name among its subject alternative names).
pub fn names(cert: &CertificateDer<'_>, node_id: &str) -> bool {
    let Ok(name) = ServerName::try_from(node_id) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// A peer connection, in the clear or over TLS.
pub(crate) enum Wire {
    Plain(TcpStream),
    Dialled(Box<StreamOwned<ClientConnection, TcpStream>>),
    Accepted(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Wire {
    /// Wraps a dialled connection to `node_id` (whose certificate must name it).
    pub(crate) fn dialled(
        tcp: TcpStream,
        tls: Option<&Tls>,
        node_id: &str,
    ) -> Result<Wire, String> {
        let Some(tls) = tls else {
            return Ok(Wire::Plain(tcp));
        };
        let name = ServerName::try_from(node_id.to_string())
            .map_err(|e| format!("node id {node_id} as a certificate name: {e}"))?;
        let conn =
            ClientConnection::new(tls.peer_client.clone(), name).map_err(|e| e.to_string())?;
        Ok(Wire::Dialled(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Wraps an accepted connection.
    pub(crate) fn accepted(tcp: TcpStream, tls: Option<&Tls>) -> Result<Wire, String> {
        let Some(tls) = tls else {
            return Ok(Wire::Plain(tcp));
        };
        let conn = ServerConnection::new(tls.peer_server.clone()).map_err(|e| e.to_string())?;
        Ok(Wire::Accepted(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Sets the socket's read timeout (`None`: reads wait for ever).
    pub(crate) fn set_read_timeout(&self, t: Option<std::time::Duration>) {
        let tcp = match self {
            Wire::Plain(s) => s,
            Wire::Dialled(s) => &s.sock,
            Wire::Accepted(s) => &s.sock,
        };
        let _ = tcp.set_read_timeout(t);
    }

    /// On an accepted TLS connection: whether the peer's certificate names `node_id`
    /// (`None` in the clear).
    pub(crate) fn peer_named(&self, node_id: &str) -> Option<bool> {
        match self {
            Wire::Accepted(s) => Some(
                s.conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .is_some_and(|c| names(c, node_id)),
            ),
            _ => None,
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Dialled(s) => s.read(buf),
            Wire::Accepted(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Dialled(s) => s.write(buf),
            Wire::Accepted(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Dialled(s) => s.flush(),
            Wire::Accepted(s) => s.flush(),
        }
    }
}

/// The TLS state of one client connection, shared by its reader and its writer.
struct Shared {
    conn: Mutex<ServerConnection>,
    /// The socket, for the records either half produces.
    out: TcpStream,
}

impl Shared {
    /// Writes every record rustls has ready (with the lock held: records go out in
    /// order).
    fn send(&self, conn: &mut ServerConnection) -> io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(&mut &self.out)?;
        }
        Ok(())
    }
}

/// The reading half of a client connection over TLS.
pub(crate) struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    buf: Vec<u8>,
}

/// The writing half.
pub(crate) struct TlsWriter {
    shared: Arc<Shared>,
}

/// Splits an accepted client connection over TLS into a reader and a writer, each
/// for its own thread.
///
/// # Errors
/// The socket cannot be cloned, or rustls refuses the configuration.
pub(crate) fn split(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<(TlsReader, TlsWriter)> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
        out: tcp.try_clone()?,
    });
    Ok((
        TlsReader {
            shared: shared.clone(),
            sock: tcp,
            buf: vec![0; 8 * 1024],
        },
        TlsWriter { shared },
    ))
}

impl Read for TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.shared.conn.lock().expect("TLS lock");
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            // Nothing decrypted yet: wait for bytes without the lock.
            let n = self.sock.read(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut conn = self.shared.conn.lock().expect("TLS lock");
            let mut bytes = &self.buf[..n];
            while !bytes.is_empty() {
                conn.read_tls(&mut bytes)?;
                if let Err(e) = conn.process_new_packets() {
                    // The alert that says why goes out before the error does.
                    let _ = self.shared.send(&mut conn);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            // Handshake records, and replies written before the handshake ended.
            self.shared.send(&mut conn)?;
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut conn = self.shared.conn.lock().expect("TLS lock");
        let n = conn.writer().write(buf)?;
        self.shared.send(&mut conn)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut conn = self.shared.conn.lock().expect("TLS lock");
        conn.writer().flush()?;
        self.shared.send(&mut conn)
    }
}
