//! A PostgreSQL connection string, as Tally takes it from `DATABASE_URL` or a flag.

use std::fmt;
use std::future::Future;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, SslMode};

/// A database connection string (a URL or `key=value` pairs), checked and ready to connect
/// with. Its `Debug` never shows it, since it may hold a password.
#[derive(Clone)]
pub struct DatabaseUrl {
    text: String,
    endpoint: Endpoint,
}

impl DatabaseUrl {
    /// The string itself, password included: for a connection, never for a log line.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Where and how to connect, TLS included.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Where and how to connect: tokio-postgres's settings and the TLS that `sslmode` asks for.
/// Every connection Tally opens to a PostgreSQL goes through one.
#[derive(Clone)]
pub struct Endpoint {
    pub config: Config,
    tls: MakeRustlsConnect,
    mode: SslMode,
}

impl Endpoint {
    /// Parses a connection string, TLS settings included; reads the certificate files it
    /// names.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (rest, settings) = tls::split(s)?;
        let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            // The cause says which option is wrong; the error's own text does not.
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        let mut mode = settings.effective_mode();
        // As in libpq, a Unix socket never uses TLS.
        if config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
        {
            mode = SslMode::Disable;
        }
        config.ssl_mode(mode.negotiation());
        Ok(Endpoint {
            config,
            tls: settings.connector()?,
            mode,
        })
    }

    /// A connection without TLS, for a server reached over its Unix socket.
    pub fn plain(mut config: Config) -> Endpoint {
        config.ssl_mode(SslMode::Disable.negotiation());
        Endpoint {
            config,
            tls: tls::TlsSettings::default()
                .connector()
                .expect("no files to read, no checks to build"),
            mode: SslMode::Disable,
        }
    }

    /// The `sslmode` in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The connector, for a pool that opens its own connections.
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// Opens one connection. The second value is the connection's task, to be spawned.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            Client,
            impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl DatabaseUrl {
    /// The string with its password replaced by `***`: fit for a message or a log line.
    pub fn redacted(&self) -> String {
        redact(&self.text)
    }
}

/// `s` with any password replaced by `***`: the `user:password@` of a URL, and the value of
/// `password=` in `key=value` form.
pub fn redact(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &s[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        // A password may also come as a query parameter.
        return redact_pairs(s, '&');
    }
    redact_pairs(s, ' ')
}

/// Replaces the value of every `password=` pair separated by `separator`.
fn redact_pairs(s: &str, separator: char) -> String {
    s.split(separator)
        .map(|pair| {
            let (key, _) = pair.split_once('=').unwrap_or((pair, ""));
            let bare = key.trim().rsplit(['?', '&']).next().unwrap_or(key);
            if bare.trim() == "password" && pair.contains('=') {
                format!("{key}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// The clap value parser of a connection string. clap's own message for a refused value
/// repeats the value, password included; this one repeats it with the password hidden.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        // clap's own wording for a refused value, with the value redacted. The argument goes
        // in the error's context too, so that the caller can name the environment variable
        // when the value came from one.
        let fail = |shown: &str, why: String| {
            let name = arg.map_or("the connection string".to_owned(), |a| format!("'{a}'"));
            let mut e = clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value '{shown}' for {name}: {why}\n"),
            )
            .with_cmd(cmd);
            if let Some(a) = arg {
                e.insert(ContextKind::InvalidArg, ContextValue::String(a.to_string()));
            }
            e
        };
        let s = value
            .to_str()
            .ok_or_else(|| fail("(not UTF-8)", "not UTF-8".to_owned()))?;
        s.parse::<DatabaseUrl>().map_err(|e| fail(&redact(s), e))
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Parse now so a typo or a missing certificate fails at start with exit 2, not at the
        // first connection.
        let endpoint = Endpoint::parse(s)
            .map_err(|e| format!("not a usable PostgreSQL connection string: {e}"))?;
        Ok(DatabaseUrl {
            text: s.to_owned(),
            endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_both_forms() {
        assert_eq!(
            redact("postgres://ada:s3cret@db:5432/tally?sslmode=require"),
            "postgres://ada:***@db:5432/tally?sslmode=require"
        );
        assert_eq!(redact("postgres://ada@db/tally"), "postgres://ada@db/tally");
        assert_eq!(
            redact("postgresql://db/tally?user=ada&password=s3cret"),
            "postgresql://db/tally?user=ada&password=***"
        );
        assert_eq!(
            redact("host=db user=ada password=s3cret dbname=tally"),
            "host=db user=ada password=*** dbname=tally"
        );
        assert_eq!(redact("host=db"), "host=db");
    }
}
