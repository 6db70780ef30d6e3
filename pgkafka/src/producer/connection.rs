//! Connection strings: parsing, TLS settings, and redaction for logs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationConfig, TlsConfig};
use tokio_postgres::config::{Host, SslMode};

use super::ProducerError;
use crate::redact::{is_url, key_values, redact};

/// How long connecting the control connection may take, unless the connection string says
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the connection string asked for TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed connection string, ready for the control and the replication connection.
#[derive(Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls_mode: TlsMode,
    pub(crate) root_cert: Option<PathBuf>,
    /// The connection string with its password replaced, for messages.
    pub(crate) redacted: String,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo").field("connection", &self.redacted).finish()
    }
}

impl ConnectionInfo {
    /// Parses a libpq-style connection string (URL or `key=value` form). `sslmode` may be
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; `sslrootcert` names a PEM
    /// file of trusted CA certificates for the verifying modes.
    pub(crate) fn parse(connection_string: &str) -> Result<Self, ProducerError> {
        let redacted = redact(connection_string);
        let (rest, sslmode) = take_param(connection_string, "sslmode");
        let (rest, root_cert) = take_param(&rest, "sslrootcert");
        let tls_mode = match sslmode.as_deref() {
            None | Some("prefer") => TlsMode::Prefer,
            Some("disable") => TlsMode::Disable,
            Some("allow") => TlsMode::Prefer,
            Some("require") => TlsMode::Require,
            Some("verify-ca") => TlsMode::VerifyCa,
            Some("verify-full") => TlsMode::VerifyFull,
            Some(other) => {
                return Err(ProducerError::Config(format!(
                    "unknown sslmode {other:?} in the connection string {redacted}; use disable, prefer, require, verify-ca or verify-full"
                )))
            }
        };
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            ProducerError::Config(format!("cannot parse the PostgreSQL connection string {redacted}: {e}"))
        })?;
        config.ssl_mode(match tls_mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        if config.get_user().is_none() {
            return Err(ProducerError::Config(format!(
                "the PostgreSQL connection string {redacted} names no user; add one, e.g. postgresql://user@host/db"
            )));
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        // A server that stops answering (a network blackhole) must not hold the producer for
        // ever: give up connecting after a while, and let TCP notice a dead peer.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        Ok(Self { config, tls_mode, root_cert: root_cert.map(PathBuf::from), redacted })
    }

    /// Connects the control connection (queries, slot management); its I/O runs on a spawned task.
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        if self.tls_mode == TlsMode::Disable {
            let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "control connection closed");
                }
            });
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls_config());
        let (client, connection) = self.config.connect(tls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control connection closed");
            }
        });
        Ok(client)
    }

    fn rustls_config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => builder,
            // ring supports the default protocol versions; the process-wide provider (installed
            // by the producer at start) is only the fallback should rustls change that.
            Err(_) => rustls::ClientConfig::builder(),
        };
        let verifying = matches!(self.tls_mode, TlsMode::VerifyCa | TlsMode::VerifyFull);
        if !verifying {
            // libpq's `require` and `prefer` encrypt without checking the certificate.
            return builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
        }
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &self.root_cert {
            if let Ok(pem) = std::fs::read(path) {
                for cert in rustls_pemfile_certs(&pem) {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    }

    /// The database connected to (libpq's default: the user's name).
    pub(crate) fn database(&self) -> String {
        self.config.get_dbname().or(self.config.get_user()).unwrap_or_default().to_owned()
    }

    /// The replication connection's settings for `slot` and `publication`.
    pub(crate) fn replication_config(&self, slot: &str, publication: &str) -> ReplicationConfig {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_owned());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or_default().to_owned();
        let password =
            self.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
        let database = self.config.get_dbname().unwrap_or(&user).to_owned();
        let tls = match self.tls_mode {
            TlsMode::Disable => TlsConfig::disabled(),
            TlsMode::Prefer => TlsConfig { mode: pgwire_replication::SslMode::Prefer, ..TlsConfig::default() },
            TlsMode::Require => TlsConfig::require(),
            TlsMode::VerifyCa => TlsConfig::verify_ca(self.root_cert.clone()),
            TlsMode::VerifyFull => TlsConfig::verify_full(self.root_cert.clone()),
        };
        // publication_names is parsed as a list of identifiers: quote the name so upper case and
        // commas survive.
        let quoted_publication = format!("\"{}\"", publication.replace('"', "\"\""));
        ReplicationConfig::new(host, user, password, database, slot, quoted_publication)
            .with_port(port)
            .with_tls(tls)
            .with_application_name("pgkafka")
    }
}

/// Certificates from a PEM file; anything unreadable is skipped (the handshake then fails with a
/// certificate error that names the problem).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `error` with the chain of its sources, as one line: tokio-postgres puts the useful part
/// ("connection refused") in the source.
pub(crate) fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn unquote(value: &str) -> String {
    let inner = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let Some(hex) = s.get(i + 1..i + 3) {
                if let Ok(value) = u8::from_str_radix(hex, 16) {
                    out.push(value);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes parameter `key` from a connection string, returning the rest and the value.
/// tokio-postgres does not know every libpq parameter pgkafka honours (`verify-full`,
/// `sslrootcert`), so those are taken out before it parses the string.
fn take_param(s: &str, key: &str) -> (String, Option<String>) {
    if is_url(s) {
        let Some((base, query)) = s.split_once('?') else { return (s.to_owned(), None) };
        let mut value = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some((k, v)) if k == key => {
                    value = Some(percent_decode(v));
                    false
                }
                _ => true,
            })
            .collect();
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        (rest, value)
    } else {
        let mut value = None;
        let kept: Vec<String> = key_values(s)
            .into_iter()
            .filter_map(|(k, token)| {
                if k == key {
                    value = token.split_once('=').map(|(_, v)| unquote(v.trim()));
                    None
                } else {
                    Some(token)
                }
            })
            .collect();
        (kept.join(" "), value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_url_and_key_value_forms_with_libpq_ssl_modes() {
        let info = ConnectionInfo::parse("postgresql://u:p@h:6543/d?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(info.tls_mode, TlsMode::VerifyFull);
        assert_eq!(info.root_cert.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(info.config.get_ports(), &[6543]);
        assert_eq!(info.redacted, "postgresql://u:***@h:6543/d?sslmode=verify-full&sslrootcert=/ca.pem");

        let info = ConnectionInfo::parse("host=h user=u password='a b' sslmode=require dbname=d").unwrap();
        assert_eq!(info.tls_mode, TlsMode::Require);
        assert_eq!(info.config.get_password(), Some(&b"a b"[..]));
        assert_eq!(info.config.get_dbname(), Some("d"));
        let repl = info.replication_config("s", "My\"Pub");
        assert_eq!(repl.publication.names(), ["\"My\"\"Pub\""]);
    }

    #[test]
    fn bad_strings_are_config_errors_without_the_password() {
        let err = ConnectionInfo::parse("postgresql://u:hunter2@h/d?sslmode=sometimes").unwrap_err().to_string();
        assert!(err.contains("sslmode") && !err.contains("hunter2"), "{err}");
        let err = ConnectionInfo::parse("postgresql://u:hunter2@h:notaport/d").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
