//! Rendering connection settings as a libpq key=value string, the form `DATABASE_URL` takes
//! when Tally hands a database to another process.

use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs,
};

/// A value in libpq key=value syntax, quoted when it has to be.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Renders a connection configuration as a libpq key=value string that
/// `tokio_postgres::Config::from_str` (and libpq) parse back into the same settings,
/// password included. Settings left at their defaults are omitted.
pub fn to_connection_string(config: &Config) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    if !hosts.is_empty() {
        pairs.push(("host", hosts.join(",")));
    }
    if !config.get_hostaddrs().is_empty() {
        let addrs: Vec<String> = config
            .get_hostaddrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        pairs.push(("hostaddr", addrs.join(",")));
    }
    if !config.get_ports().is_empty() {
        let ports: Vec<String> = config.get_ports().iter().map(ToString::to_string).collect();
        pairs.push(("port", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        pairs.push(("user", user.to_string()));
    }
    if let Some(password) = config.get_password() {
        pairs.push(("password", String::from_utf8_lossy(password).into_owned()));
    }
    if let Some(dbname) = config.get_dbname() {
        pairs.push(("dbname", dbname.to_string()));
    }
    if let Some(options) = config.get_options() {
        pairs.push(("options", options.to_string()));
    }
    if let Some(name) = config.get_application_name() {
        pairs.push(("application_name", name.to_string()));
    }
    match config.get_ssl_mode() {
        SslMode::Disable => pairs.push(("sslmode", "disable".into())),
        SslMode::Require => pairs.push(("sslmode", "require".into())),
        _ => {}
    }
    if config.get_ssl_negotiation() == SslNegotiation::Direct {
        pairs.push(("sslnegotiation", "direct".into()));
    }
    // Both settings take whole seconds; rounding up keeps a sub-second timeout from vanishing.
    let seconds = |duration: &Duration| duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    if let Some(timeout) = config.get_connect_timeout() {
        pairs.push(("connect_timeout", seconds(timeout).to_string()));
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        pairs.push(("tcp_user_timeout", seconds(timeout).to_string()));
    }
    if !config.get_keepalives() {
        pairs.push(("keepalives", "0".into()));
    }
    if config.get_keepalives_idle() != Config::new().get_keepalives_idle() {
        pairs.push((
            "keepalives_idle",
            seconds(&config.get_keepalives_idle()).to_string(),
        ));
    }
    if let Some(interval) = config.get_keepalives_interval() {
        pairs.push(("keepalives_interval", seconds(&interval).to_string()));
    }
    if let Some(retries) = config.get_keepalives_retries() {
        pairs.push(("keepalives_retries", retries.to_string()));
    }
    match config.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => pairs.push(("target_session_attrs", "read-write".into())),
        TargetSessionAttrs::ReadOnly => pairs.push(("target_session_attrs", "read-only".into())),
        _ => {}
    }
    match config.get_channel_binding() {
        ChannelBinding::Disable => pairs.push(("channel_binding", "disable".into())),
        ChannelBinding::Require => pairs.push(("channel_binding", "require".into())),
        _ => {}
    }
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        pairs.push(("load_balance_hosts", "random".into()));
    }
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", conninfo_value(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn connection_string_quotes_what_needs_quoting_and_parses_back() {
        let mut config = Config::new();
        config
            .host_path("/var/lib/my data/it's\\here")
            .port(5433)
            .user("tally")
            .password("p w'd")
            .dbname("test_db");
        let rendered = to_connection_string(&config);
        assert_eq!(
            rendered,
            r"host='/var/lib/my data/it\'s\\here' port=5433 user=tally password='p w\'d' dbname=test_db"
        );
        let parsed = Config::from_str(&rendered).expect("the rendered string parses");
        assert_eq!(parsed.get_hosts(), config.get_hosts());
        assert_eq!(parsed.get_ports(), &[5433]);
        assert_eq!(parsed.get_password(), Some(&b"p w'd"[..]));
        assert_eq!(parsed.get_dbname(), Some("test_db"));
    }

    #[test]
    fn connection_string_keeps_the_settings_of_a_url() {
        let url = "postgres://alice:s3cret@db.example.com:6543,replica:6544/orders\
                   ?sslmode=require&connect_timeout=7&application_name=tally&target_session_attrs=read-write";
        let mut config = Config::from_str(url).expect("the URL parses");
        config.dbname("other");
        let parsed = Config::from_str(&to_connection_string(&config)).expect("parses back");
        assert_eq!(parsed.get_hosts(), config.get_hosts());
        assert_eq!(parsed.get_ports(), &[6543, 6544]);
        assert_eq!(parsed.get_user(), Some("alice"));
        assert_eq!(parsed.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(parsed.get_dbname(), Some("other"));
        assert_eq!(parsed.get_ssl_mode(), SslMode::Require);
        assert_eq!(parsed.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(parsed.get_application_name(), Some("tally"));
        assert_eq!(
            parsed.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn empty_values_are_quoted() {
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("plain"), "plain");
    }
}
