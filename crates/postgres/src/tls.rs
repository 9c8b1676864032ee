//! TLS to PostgreSQL, with libpq's meanings for `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`, through rustls (no OpenSSL to install).
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and no certificate settings, so
//! [`split`] takes these four out of a connection string before tokio-postgres parses the rest,
//! and [`TlsSettings::connector`] builds the rustls configuration that gives each mode its
//! meaning:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is set: then as `verify-ca` |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | signed by a CA of `sslrootcert`, and made out to the host name |
//!
//! As in libpq, `sslrootcert` defaults to `~/.postgresql/root.crt`, and `sslrootcert=system`
//! takes the operating system's CAs (and then requires `verify-full`). A client certificate is
//! sent when `sslcert` and `sslkey` are both given. Unix sockets never use TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, all but `allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err("sslmode=allow is not supported: use prefer or disable".to_owned());
            }
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// The mode as tokio-postgres knows it: whether to ask for TLS, and whether to insist.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }

    /// The name libpq gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of a connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `None` when the string does not say, which means `prefer` (or `verify-full` with
    /// `sslrootcert=system`).
    pub mode: Option<SslMode>,
    pub root_cert: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The connection-string keywords [`split`] takes out.
const KEYWORDS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes the TLS keywords out of a connection string, URL or `key=value` form. Returns the
/// rest, for tokio-postgres to parse, and the settings.
pub fn split(s: &str) -> Result<(String, TlsSettings), String> {
    let (rest, pairs) = if s.contains("://") {
        split_url(s)
    } else {
        split_pairs(s)?
    };
    let mut settings = TlsSettings::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => settings.mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => settings.root_cert = Some(value),
            "sslcert" => settings.cert = Some(PathBuf::from(value)),
            "sslkey" => settings.key = Some(PathBuf::from(value)),
            _ => unreachable!("split_* return only KEYWORDS"),
        }
    }
    Ok((rest, settings))
}

/// A URL's query parameters are `&`-separated and percent-encoded.
fn split_url(s: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = s.split_once('?') else {
        return (s.to_owned(), Vec::new());
    };
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key);
        if KEYWORDS.contains(&key.as_str()) {
            taken.push((key, decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

/// `key = value` pairs separated by white space; a value may be single-quoted, with `\'` and
/// `\\` inside. Written by hand because tokio-postgres's parser, which this mirrors, is
/// private and refuses keywords it does not know.
fn split_pairs(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!("expected '=' after {key:?}"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated quoted value".to_owned()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated quoted value".to_owned()),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        if KEYWORDS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(&s[start..end]);
        }
    }
    Ok((kept.join(" "), taken))
}

impl TlsSettings {
    /// The mode in force: the one given, or libpq's default for the settings given.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, self.root_cert.as_deref()) {
            (Some(mode), _) => mode,
            (None, Some("system")) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        }
    }

    /// Builds the rustls connector these settings ask for, reading the certificate files now,
    /// so that a missing or unreadable file is reported at start, not at the first connection.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let mode = self.effective_mode();
        let roots = self.roots(mode)?;
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(IgnoreHostName {
                inner: webpki(roots, &provider)?,
            }),
            (_, _) => Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| format!("sslcert={}: {e}", cert.display()))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey={}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("sslcert and sslkey: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("sslcert and sslkey go together: give both or neither".to_owned()),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The certificate authorities to check the server against, if the mode checks.
    fn roots(&self, mode: SslMode) -> Result<Option<RootCertStore>, String> {
        let verifies = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let path = match self.root_cert.as_deref() {
            Some("system") => {
                if mode != SslMode::VerifyFull {
                    return Err(format!(
                        "sslrootcert=system needs sslmode=verify-full, not {}",
                        mode.as_str()
                    ));
                }
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "sslrootcert=system: no certificate authority found on this \
                                system"
                            .to_owned(),
                    );
                }
                return Ok(Some(roots));
            }
            Some(path) => PathBuf::from(path),
            None => match default_root_cert() {
                Some(path) if path.exists() => path,
                // libpq: without a CA file, `require` does not check, and the verify modes fail.
                _ if verifies => {
                    return Err(format!(
                        "sslmode={} needs the server's certificate authority: set sslrootcert \
                         to its PEM file",
                        mode.as_str()
                    ));
                }
                _ => return Ok(None),
            },
        };
        if mode == SslMode::Prefer || mode == SslMode::Disable {
            return Ok(None);
        }
        Ok(Some(read_roots(&path)?))
    }
}

/// libpq's default CA file, `~/.postgresql/root.crt`.
fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"))
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("sslrootcert={}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (_, refused) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert={}: no usable certificate ({refused} refused)",
            path.display()
        ));
    }
    Ok(roots)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS: {e}"))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name on the certificate is not
/// checked.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: the connection is encrypted, and the server's
/// certificate is taken as it comes (libpq does the same). The handshake's signatures are
/// still checked.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keywords_leave_a_url_and_keep_the_rest() {
        let (rest, tls) = split(
            "postgres://ada:pw@db:5432/tally?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://ada:pw@db:5432/tally?application_name=x");
        assert_eq!(tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));

        let (rest, tls) = split("postgres://db/tally?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://db/tally");
        assert_eq!(tls.effective_mode(), SslMode::Require);
    }

    #[test]
    fn tls_keywords_leave_key_value_pairs_and_keep_the_rest() {
        let (rest, tls) = split(
            "host=db sslmode = verify-ca user=ada sslcert='/a b/c.pem' sslkey=/k.pem password='x y'",
        )
        .unwrap();
        assert_eq!(rest, "host=db user=ada password='x y'");
        assert_eq!(tls.mode, Some(SslMode::VerifyCa));
        assert_eq!(tls.cert, Some(PathBuf::from("/a b/c.pem")));
        assert_eq!(tls.key, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn modes_follow_libpq() {
        assert!(
            split("host=db sslmode=allow")
                .unwrap_err()
                .contains("prefer")
        );
        assert!(
            split("host=db sslmode=on")
                .unwrap_err()
                .contains("verify-full")
        );
        let (_, none) = split("host=db").unwrap();
        assert_eq!(none.effective_mode(), SslMode::Prefer);
        let (_, system) = split("host=db sslrootcert=system").unwrap();
        assert_eq!(system.effective_mode(), SslMode::VerifyFull);
        let (_, weak) = split("host=db sslrootcert=system sslmode=require").unwrap();
        assert!(weak.connector().err().unwrap().contains("verify-full"));
    }

    #[test]
    fn missing_files_are_named() {
        let (_, tls) =
            split("host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem").unwrap();
        let e = tls.connector().err().unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let (_, tls) = split("host=db sslcert=/c.pem").unwrap();
        assert!(tls.connector().err().unwrap().contains("both"));
    }
}
