//! [`HostList`]: a PostgreSQL connection string naming several hosts, read with libpq's meaning.
//!
//! sqlx reads one host per URL (`postgres://a:1,b:2/db` is "invalid port number" to it), while
//! libpq, pgx and Npgsql accept a list and a `target_session_attrs` that says which of the hosts
//! will do. This module reads both of libpq's forms, the URL
//! (`postgres://user:pw@h1:p1,h2:p2,[::1]:p3/db?target_session_attrs=read-write&connect_timeout=2`)
//! and the key=value string (`host=h1,h2 port=p1,p2 dbname=db target_session_attrs=primary`),
//! and turns them into one sqlx [`PgConnectOptions`] per host. Which host is chosen is
//! [`discover`](super::discover)'s business.
//!
//! Each host's options are made by sqlx itself from a one-host URL, so the password is found as
//! sqlx finds it for a single host: the one in the string, else `PGPASSWORD`, else the passfile
//! (`PGPASSFILE` or `~/.pgpass`) looked up with *that* host's name and port.

use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use url::Url;

use crate::error::{Error, Result};

/// Which of the listed hosts a connection may use: libpq's `target_session_attrs`.
///
/// The meanings are libpq's (PostgreSQL's "Connection Strings" documentation): "read-write" and
/// "read-only" ask about the *session* (`transaction_read_only`, so a primary with
/// `default_transaction_read_only = on` is read-only), "primary" and "standby" about the
/// *server* (`pg_is_in_recovery()`, hot standby or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// Any host that accepts the connection will do (libpq's default).
    #[default]
    Any,
    /// The session must accept read-write transactions by default: the server is not in hot
    /// standby and `default_transaction_read_only` is off.
    ReadWrite,
    /// The session must not accept read-write transactions by default (a standby, or a primary
    /// made read-only).
    ReadOnly,
    /// The server must not be in hot standby mode.
    Primary,
    /// The server must be in hot standby mode.
    Standby,
    /// A server in hot standby mode if any of the hosts is one; otherwise any host, as `Any`.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// Every value, in libpq's documented order.
    pub const ALL: [TargetSessionAttrs; 6] = [
        TargetSessionAttrs::Any,
        TargetSessionAttrs::ReadWrite,
        TargetSessionAttrs::ReadOnly,
        TargetSessionAttrs::Primary,
        TargetSessionAttrs::Standby,
        TargetSessionAttrs::PreferStandby,
    ];

    /// The value as it is written in a connection string (`"read-write"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Reads a value as libpq does (exact, lowercase).
    ///
    /// # Errors
    /// [`Error::Config`] naming the value and the accepted ones.
    pub fn parse(value: &str) -> Result<TargetSessionAttrs> {
        TargetSessionAttrs::ALL
            .into_iter()
            .find(|attrs| attrs.as_str() == value)
            .ok_or_else(|| {
                Error::Config(format!(
                    "target_session_attrs `{value}` is not one of any, read-write, read-only, \
                     primary, standby, prefer-standby"
                ))
            })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host of a [`HostList`], with the sqlx options that connect to it.
#[derive(Clone)]
pub struct Host {
    /// As written (percent-decoded, brackets of an IPv6 address removed); empty for "the
    /// default host" (`PGHOST`, else sqlx's default socket or `localhost`).
    name: String,
    options: PgConnectOptions,
}

impl Host {
    /// The host as written in the string (empty when it was left to the default).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port this host is reached on (the list's, else `PGPORT`, else 5432).
    pub fn port(&self) -> u16 {
        self.options.get_port()
    }

    /// The options sqlx connects with: this host, the list's user, database and parameters,
    /// and the password sqlx found for this host.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// `host:port` as an operator reads it in an error (`[::1]:5432` for IPv6, a socket
    /// directory as it is).
    pub fn label(&self) -> String {
        let host = match (self.options.get_socket(), self.name.as_str()) {
            (Some(socket), _) => return format!("{}:{}", socket.display(), self.port()),
            (None, "") => self.options.get_host(),
            (None, name) => name,
        };
        if host.contains(':') {
            format!("[{host}]:{}", self.port())
        } else {
            format!("{host}:{}", self.port())
        }
    }
}

// The options hold the password: never printed.
impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// A PostgreSQL connection string read with libpq's rules: its hosts in order, each with the
/// sqlx options to reach it, the `target_session_attrs` that says which will do, and the
/// `connect_timeout`.
///
/// ```
/// use sqlrepo::hosts::{HostList, TargetSessionAttrs};
/// let list = HostList::parse(
///     "postgres://app:secret@db1:5433,db2,[::1]:5434/shop?target_session_attrs=read-write",
/// )?;
/// let labels: Vec<String> = list.hosts().iter().map(|host| host.label()).collect();
/// assert_eq!(labels, ["db1:5433", "db2:5432", "[::1]:5434"]);
/// assert_eq!(list.target_session_attrs(), TargetSessionAttrs::ReadWrite);
/// assert!(!format!("{list:?}").contains("secret"));
/// # Ok::<(), sqlrepo::Error>(())
/// ```
#[derive(Clone)]
pub struct HostList {
    hosts: Vec<Host>,
    target_session_attrs: TargetSessionAttrs,
    connect_timeout: Option<Duration>,
    has_password: bool,
}

impl HostList {
    /// Reads a `postgres://`/`postgresql://` URL or a key=value string. As libpq does,
    /// `PGHOST`, `PGPORT`, `PGTARGETSESSIONATTRS` and `PGCONNECT_TIMEOUT` fill in what the
    /// string leaves out (sqlx reads the other `PG*` variables per host).
    ///
    /// # Errors
    /// [`Error::Config`] naming the part that is malformed: an unclosed `[`, a port that is not
    /// a number from 1 to 65535, a port list whose length is neither 1 nor the number of hosts,
    /// an unknown `target_session_attrs`, a `connect_timeout` that is not a whole number, a
    /// key without `=`, an unterminated quote.
    pub fn parse(connection_string: &str) -> Result<HostList> {
        HostList::parse_with_env(connection_string, &|name| std::env::var(name).ok())
    }

    /// [`HostList::parse`], with the environment given (for tests, and for a caller that keeps
    /// libpq's variables away from its pools).
    ///
    /// # Errors
    /// As [`HostList::parse`].
    pub fn parse_with_env(
        connection_string: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HostList> {
        let mut params = read_params(connection_string.trim())?;
        if params.hosts.is_none() {
            params.hosts = env("PGHOST").map(|hosts| split_list(&hosts));
        }
        if params.ports.is_none() {
            params.ports = env("PGPORT").map(|ports| split_list(&ports));
        }
        let attrs = params
            .target_session_attrs
            .take()
            .or_else(|| env("PGTARGETSESSIONATTRS"));
        let timeout = params
            .connect_timeout
            .take()
            .or_else(|| env("PGCONNECT_TIMEOUT"));
        let target_session_attrs = match attrs {
            Some(attrs) => TargetSessionAttrs::parse(&attrs)?,
            None => TargetSessionAttrs::Any,
        };
        let connect_timeout = match timeout {
            Some(timeout) => parse_connect_timeout(&timeout)?,
            None => None,
        };
        let has_password = params.password.is_some();
        let hosts = pair_hosts_and_ports(
            params.hosts.take().unwrap_or_default(),
            params.ports.take().unwrap_or_default(),
        )?
        .into_iter()
        .map(|(name, port)| host_options(&params, name, port))
        .collect::<Result<Vec<Host>>>()?;
        Ok(HostList {
            hosts,
            target_session_attrs,
            connect_timeout,
            has_password,
        })
    }

    /// The hosts, in the order written (the order libpq tries them in).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Which hosts will do (`any` when the string does not say).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// How long to wait for each host to answer; `None` when the string gives none, zero or a
    /// negative number (libpq then waits indefinitely). A value of 1 is 2 s, as in libpq.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// True when the string names more than one host.
    pub fn is_multi_host(&self) -> bool {
        self.hosts.len() > 1
    }

    /// The same hosts, asking for `attrs` instead (a `Db`, which writes, looks for the primary
    /// of a list written for readers).
    pub fn with_target_session_attrs(&self, attrs: TargetSessionAttrs) -> HostList {
        HostList {
            target_session_attrs: attrs,
            ..self.clone()
        }
    }
}

// A connection string's password must never reach a log: the hosts are printed by label only.
impl fmt::Debug for HostList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.hosts.first().map(|host| host.options());
        f.debug_struct("HostList")
            .field("hosts", &self.hosts)
            .field("user", &first.map(|options| options.get_username()))
            .field(
                "database",
                &first.and_then(|options| options.get_database()),
            )
            .field(
                "password",
                &if self.has_password {
                    "<hidden>"
                } else {
                    "<from PGPASSWORD or the passfile, if any>"
                },
            )
            .field("target_session_attrs", &self.target_session_attrs)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What a connection string says, before the hosts and ports are paired.
#[derive(Default)]
struct Params {
    hosts: Option<Vec<String>>,
    ports: Option<Vec<String>>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    target_session_attrs: Option<String>,
    connect_timeout: Option<String>,
    /// Everything else, in order, handed to sqlx for every host (`sslmode`, `application_name`,
    /// `options`, ...): sqlx reads what it knows and ignores the rest, as for one host.
    others: Vec<(String, String)>,
}

impl Params {
    /// Takes one `key=value`; later ones win, as in libpq (a URL's `?host=` over its
    /// authority).
    fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "host" => self.hosts = Some(split_list(&value)),
            "port" => self.ports = Some(split_list(&value)),
            "user" => self.user = Some(value),
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "target_session_attrs" => self.target_session_attrs = Some(value),
            "connect_timeout" => self.connect_timeout = Some(value),
            // libpq connects to hostaddr instead of resolving host; sqlx knows one hostaddr
            // and no pairing with a host list.
            "hostaddr" if value.contains(',') => {
                return Err(Error::Config(format!(
                    "hostaddr `{value}` lists several addresses, which sqlrepo does not pair with \
                     hosts; list them in host instead"
                )));
            }
            // sqlx reads the passfile named by PGPASSFILE only; this key would be ignored and
            // the password silently looked up elsewhere.
            "passfile" => {
                return Err(Error::Config(
                    "passfile is not read from the connection string; set PGPASSFILE instead"
                        .to_owned(),
                ));
            }
            _ => self.others.push((key.to_owned(), value)),
        }
        Ok(())
    }
}

/// A comma-separated list, entries kept even when empty (libpq: an empty entry is the default).
fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|entry| entry.trim().to_owned())
        .collect()
}

fn read_params(connection_string: &str) -> Result<Params> {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = connection_string.strip_prefix(scheme) {
            return read_url(rest);
        }
    }
    if connection_string.contains('=') || connection_string.is_empty() {
        return read_key_values(connection_string);
    }
    Err(Error::Config(
        "a PostgreSQL connection string starts with postgres:// or postgresql://, or is a list \
         of key=value pairs"
            .to_owned(),
    ))
}

/// libpq's URL form: `[user[:password]@][host][:port][,...][/dbname][?param=value&...]`, every
/// part percent-decoded.
fn read_url(rest: &str) -> Result<Params> {
    let mut params = Params::default();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    // The last `@` ends the user part: an unencoded `@` in a password is what people write.
    let host_part = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                params.user = Some(decode(user, "the user name")?);
            }
            if let Some(password) = password {
                params.password = Some(decode(password, "the password")?);
            }
            hosts
        }
        None => authority,
    };
    if !host_part.is_empty() {
        let (hosts, ports) = read_url_hosts(host_part)?;
        params.hosts = Some(hosts);
        params.ports = Some(ports);
    }
    if let Some(path) = path.filter(|path| !path.is_empty()) {
        params.dbname = Some(decode(path, "the database name")?);
    }
    for pair in query.into_iter().flat_map(|query| query.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::Config(format!(
                "URL parameter `{pair}` has no `=value`"
            )));
        };
        let key = decode(key, "a parameter name")?;
        let value = decode(value, &format!("the value of {key}"))?;
        params.set(&key, value)?;
    }
    Ok(params)
}

/// `h1:p1,[v6]:p2,h3` into hosts and ports (empty where not given), as libpq splits them.
fn read_url_hosts(host_part: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for entry in host_part.split(',') {
        let (host, port) = if let Some(bracketed) = entry.strip_prefix('[') {
            let Some((address, after)) = bracketed.split_once(']') else {
                return Err(Error::Config(format!(
                    "host `{entry}` opens an IPv6 address with `[` and does not close it with `]`"
                )));
            };
            let port = match after.strip_prefix(':') {
                Some(port) => port,
                None if after.is_empty() => "",
                None => {
                    return Err(Error::Config(format!(
                        "host `{entry}` has `{after}` after its IPv6 address; expected `:port`"
                    )));
                }
            };
            (address, port)
        } else {
            match entry.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(Error::Config(format!(
                        "host `{entry}` looks like an IPv6 address; write it in brackets, as \
                         [{entry}]"
                    )));
                }
                Some((host, port)) => (host, port),
                None => (entry, ""),
            }
        };
        hosts.push(decode(host, "a host name")?);
        ports.push(decode(port, "a port")?);
    }
    Ok((hosts, ports))
}

/// libpq's key=value form: pairs separated by whitespace, spaces allowed around `=`, a value in
/// single quotes when it holds spaces, `\'` and `\\` escaping inside.
fn read_key_values(text: &str) -> Result<Params> {
    let mut params = Params::default();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::Config(format!(
                "`{key}` in the connection string is not followed by `=`"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => return Err(unterminated(&key)),
                    },
                    Some(c) => value.push(c),
                    None => return Err(unterminated(&key)),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        params.set(&key, value)?;
    }
}

fn unterminated(key: &str) -> Error {
    Error::Config(format!(
        "the quoted value of `{key}` in the connection string has no closing `'`"
    ))
}

fn decode(text: &str, what: &str) -> Result<String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| Error::Config(format!("{what} `{text}` is not UTF-8 once percent-decoded")))
}

/// libpq's rule: one port for every host, or one per host; an empty entry is the default.
fn pair_hosts_and_ports(
    mut hosts: Vec<String>,
    ports: Vec<String>,
) -> Result<Vec<(String, Option<u16>)>> {
    if hosts.is_empty() {
        hosts.push(String::new());
    }
    let ports: Vec<Option<u16>> = ports
        .iter()
        .map(|port| parse_port(port))
        .collect::<Result<_>>()?;
    let port_of = |index: usize| match ports.len() {
        0 => Ok(None),
        1 => Ok(ports[0]),
        n if n == hosts.len() => Ok(ports[index]),
        n => Err(Error::Config(format!(
            "the port list has {n} entries for {} hosts; give one port for every host, or one \
             per host",
            hosts.len()
        ))),
    };
    (0..hosts.len())
        .map(|index| Ok((hosts[index].clone(), port_of(index)?)))
        .collect()
}

fn parse_port(port: &str) -> Result<Option<u16>> {
    if port.is_empty() {
        return Ok(None);
    }
    match port.parse::<u16>() {
        Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(number)),
        _ => Err(Error::Config(format!(
            "port `{port}` is not a number from 1 to 65535"
        ))),
    }
}

/// libpq's `connect_timeout`: whole seconds; zero or less waits indefinitely; 1 is taken as 2
/// (a second is too short for a connection that is merely slow).
fn parse_connect_timeout(value: &str) -> Result<Option<Duration>> {
    let seconds: i64 = value.trim().parse().map_err(|_| {
        Error::Config(format!(
            "connect_timeout `{value}` is not a whole number of seconds"
        ))
    })?;
    Ok(match seconds {
        ..=0 => None,
        1 => Some(Duration::from_secs(2)),
        n => Some(Duration::from_secs(n.unsigned_abs())),
    })
}

/// The sqlx options for one host, made by sqlx from a one-host URL so that the password is
/// found exactly as for a single-host string (PGPASSWORD, then the passfile with this host).
fn host_options(params: &Params, name: String, port: Option<u16>) -> Result<Host> {
    // `postgres:` with everything in the query: the query's `host=` takes a socket directory
    // or a bare IPv6 address as it is, where a URL's authority would keep the brackets.
    let mut url = Url::parse("postgres:")
        .map_err(|err| Error::Config(format!("cannot build a PostgreSQL URL: {err}")))?;
    {
        let mut query = url.query_pairs_mut();
        if !name.is_empty() {
            query.append_pair("host", &name);
        }
        if let Some(port) = port {
            query.append_pair("port", &port.to_string());
        }
        let fields = [
            ("user", &params.user),
            ("password", &params.password),
            ("dbname", &params.dbname),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        for (key, value) in &params.others {
            query.append_pair(key, value);
        }
    }
    let options = PgConnectOptions::from_url(&url).map_err(|err| {
        let label = if name.is_empty() {
            "the default host"
        } else {
            &name
        };
        Error::Config(format!("cannot read the options for {label}: {err}"))
    })?;
    Ok(Host { name, options })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<HostList> {
        HostList::parse_with_env(text, &no_env)
    }

    fn labels(list: &HostList) -> Vec<String> {
        list.hosts().iter().map(Host::label).collect()
    }

    fn config_message(result: Result<HostList>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }

    #[test]
    fn a_url_lists_hosts_each_with_its_own_port_in_order() {
        let list = parse("postgres://u@h1:5433,h2:5434,h3:5435/db").unwrap();
        assert_eq!(labels(&list), ["h1:5433", "h2:5434", "h3:5435"]);
        for host in list.hosts() {
            assert_eq!(host.options().get_username(), "u");
            assert_eq!(host.options().get_database(), Some("db"));
        }
        assert!(list.is_multi_host());
    }

    #[test]
    fn a_host_without_a_port_in_a_url_gets_the_default_port() {
        let list = parse("postgresql://h1:6000,h2/db").unwrap();
        assert_eq!(labels(&list), ["h1:6000", "h2:5432"]);
    }

    #[test]
    fn a_single_port_applies_to_every_host() {
        let list = parse("host=a,b,c port=7000").unwrap();
        assert_eq!(labels(&list), ["a:7000", "b:7000", "c:7000"]);
        let list = parse("postgres:///db?host=a,b&port=7001").unwrap();
        assert_eq!(labels(&list), ["a:7001", "b:7001"]);
    }

    #[test]
    fn one_port_per_host_pairs_in_order() {
        let list = parse("host=a,b port=1,2").unwrap();
        assert_eq!(labels(&list), ["a:1", "b:2"]);
        // An empty entry is the default port, as in libpq.
        let list = parse("host=a,b port=,2").unwrap();
        assert_eq!(labels(&list), ["a:5432", "b:2"]);
    }

    #[test]
    fn a_port_list_of_another_length_is_a_config_error_naming_the_lists() {
        let message = config_message(parse("host=a,b,c port=1,2"));
        assert!(message.contains("2 entries for 3 hosts"), "{message}");
    }

    #[test]
    fn a_port_that_is_not_a_number_from_1_to_65535_is_a_config_error_naming_it() {
        for (text, port) in [
            ("postgres://h1:5432,h2:abc/db", "abc"),
            ("postgres://h1:70000/db", "70000"),
            ("host=a port=0", "0"),
            ("host=a port=+5", "+5"),
        ] {
            let message = config_message(parse(text));
            assert!(
                message.contains(&format!("port `{port}`")),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn ipv6_addresses_are_written_in_brackets_and_kept_without_them() {
        let list = parse("postgres://u@[::1]:5500,[fe80::2]/db").unwrap();
        assert_eq!(list.hosts()[0].name(), "::1");
        assert_eq!(list.hosts()[0].options().get_host(), "::1");
        assert_eq!(labels(&list), ["[::1]:5500", "[fe80::2]:5432"]);
    }

    #[test]
    fn an_unclosed_bracket_or_a_bare_ipv6_address_is_a_config_error_naming_the_host() {
        let message = config_message(parse("postgres://h1,[::1:5432/db"));
        assert!(message.contains("`[::1:5432`"), "{message}");
        let message = config_message(parse("postgres://::1:5432/db"));
        assert!(message.contains("brackets"), "{message}");
        let message = config_message(parse("postgres://[::1]x/db"));
        assert!(message.contains("`x`"), "{message}");
    }

    #[test]
    fn every_part_of_a_url_is_percent_decoded() {
        let list = parse("postgres://us%40er:p%40ss%2Fw@h%31:5432,%2Ftmp%2Fsock/my%20db").unwrap();
        let first = list.hosts()[0].options();
        assert_eq!(first.get_username(), "us@er");
        assert!(format!("{first:?}").contains("password: Some(\"p@ss/w\")"));
        assert_eq!(list.hosts()[0].name(), "h1");
        assert_eq!(first.get_database(), Some("my db"));
        // A decoded host that starts with `/` is a socket directory, as in libpq and sqlx.
        assert_eq!(
            list.hosts()[1].options().get_socket(),
            Some(&std::path::PathBuf::from("/tmp/sock"))
        );
        let url = "postgres://u:pw@h/db?application_name=a%20b";
        assert!(parse(url).is_ok());
    }

    #[test]
    fn url_parameters_override_the_authority_as_in_libpq() {
        let list = parse("postgres://h1:1/db?host=x,y&port=9&dbname=other&user=v").unwrap();
        assert_eq!(labels(&list), ["x:9", "y:9"]);
        assert_eq!(list.hosts()[0].options().get_database(), Some("other"));
        assert_eq!(list.hosts()[0].options().get_username(), "v");
    }

    #[test]
    fn a_url_parameter_without_a_value_is_a_config_error_naming_it() {
        let message = config_message(parse("postgres://h/db?sslmode"));
        assert!(message.contains("`sslmode`"), "{message}");
    }

    #[test]
    fn every_target_session_attrs_value_of_libpq_is_read_and_any_is_the_default() {
        for attrs in TargetSessionAttrs::ALL {
            let list = parse(&format!("postgres://h/db?target_session_attrs={attrs}")).unwrap();
            assert_eq!(list.target_session_attrs(), attrs);
            let list = parse(&format!("host=h target_session_attrs={attrs}")).unwrap();
            assert_eq!(list.target_session_attrs(), attrs);
        }
        assert_eq!(
            parse("postgres://h/db").unwrap().target_session_attrs(),
            TargetSessionAttrs::Any
        );
    }

    #[test]
    fn an_unknown_target_session_attrs_is_a_config_error_naming_it() {
        // libpq compares exactly: `prefer-primary` does not exist, `Read-Write` is not it.
        for value in ["prefer-primary", "Read-Write", ""] {
            let message = config_message(parse(&format!(
                "postgres://h/db?target_session_attrs={value}"
            )));
            assert!(message.contains(&format!("`{value}`")), "{message}");
        }
    }

    #[test]
    fn connect_timeout_is_whole_seconds_with_libpq_s_floor_of_two_and_none_for_zero() {
        let timeout = |value: &str| {
            parse(&format!("host=h connect_timeout={value}"))
                .unwrap()
                .connect_timeout()
        };
        assert_eq!(timeout("10"), Some(Duration::from_secs(10)));
        assert_eq!(timeout("2"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("0"), None);
        assert_eq!(timeout("-3"), None);
        assert_eq!(parse("host=h").unwrap().connect_timeout(), None);
    }

    #[test]
    fn a_connect_timeout_that_is_not_a_whole_number_is_a_config_error_naming_it() {
        let message = config_message(parse("postgres://h/db?connect_timeout=1.5"));
        assert!(message.contains("`1.5`"), "{message}");
    }

    #[test]
    fn the_key_value_form_takes_quotes_escapes_and_spaces_around_equals() {
        let list = parse(
            "host = a,b  port=1,2 dbname='my db' user=o\\'brien password='it\\'s \\\\ secret'",
        )
        .unwrap();
        assert_eq!(labels(&list), ["a:1", "b:2"]);
        let options = list.hosts()[1].options();
        assert_eq!(options.get_database(), Some("my db"));
        assert_eq!(options.get_username(), "o'brien");
        let rebuilt = format!("{options:?}");
        assert!(rebuilt.contains("it's \\\\ secret"), "{rebuilt}");
    }

    #[test]
    fn a_key_without_equals_or_an_unterminated_quote_is_a_config_error_naming_the_key() {
        let message = config_message(parse("host=a dbname"));
        assert!(message.contains("`dbname`"), "{message}");
        let message = config_message(parse("host=a password='open"));
        assert!(message.contains("`password`"), "{message}");
        let message = config_message(parse("not a connection string"));
        assert!(message.contains("postgres://"), "{message}");
    }

    #[test]
    fn a_password_in_the_string_reaches_every_host_and_never_the_debug_output() {
        let list = parse("postgres://u:hunter2@h1,h2/db?target_session_attrs=primary").unwrap();
        for host in list.hosts() {
            // sqlx's own Debug prints the password: that is what the host carries.
            assert!(format!("{:?}", host.options()).contains("hunter2"));
            assert!(!format!("{host:?}").contains("hunter2"));
        }
        let shown = format!("{list:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
        let list = parse("host=h1,h2 password=hunter2").unwrap();
        assert!(!format!("{list:?}").contains("hunter2"));
    }

    #[test]
    fn the_environment_fills_in_what_the_string_leaves_out_and_never_overrides_it() {
        let env = |name: &str| match name {
            "PGHOST" => Some("e1,e2".to_owned()),
            "PGPORT" => Some("6001,6002".to_owned()),
            "PGTARGETSESSIONATTRS" => Some("standby".to_owned()),
            "PGCONNECT_TIMEOUT" => Some("3".to_owned()),
            _ => None,
        };
        let list = HostList::parse_with_env("dbname=x", &env).unwrap();
        assert_eq!(labels(&list), ["e1:6001", "e2:6002"]);
        assert_eq!(list.target_session_attrs(), TargetSessionAttrs::Standby);
        assert_eq!(list.connect_timeout(), Some(Duration::from_secs(3)));
        let list = HostList::parse_with_env(
            "host=s port=1 target_session_attrs=primary connect_timeout=4",
            &env,
        )
        .unwrap();
        assert_eq!(labels(&list), ["s:1"]);
        assert_eq!(list.target_session_attrs(), TargetSessionAttrs::Primary);
        assert_eq!(list.connect_timeout(), Some(Duration::from_secs(4)));
    }

    #[test]
    fn a_passfile_key_or_a_hostaddr_list_is_a_config_error_saying_what_to_do() {
        let message = config_message(parse("host=a passfile=/tmp/pgpass"));
        assert!(message.contains("PGPASSFILE"), "{message}");
        let message = config_message(parse("host=a,b hostaddr=10.0.0.1,10.0.0.2"));
        assert!(message.contains("hostaddr"), "{message}");
    }

    #[test]
    fn other_parameters_reach_sqlx_for_every_host() {
        let list = parse("postgres://h1,h2/db?application_name=svc&sslmode=disable").unwrap();
        for host in list.hosts() {
            assert_eq!(host.options().get_application_name(), Some("svc"));
            assert!(matches!(
                host.options().get_ssl_mode(),
                sqlx::postgres::PgSslMode::Disable
            ));
        }
        let message = config_message(parse("postgres://h/db?sslmode=sometimes"));
        assert!(message.contains("options for h:"), "{message}");
    }

    #[test]
    fn the_passfile_is_read_per_host_by_sqlx() {
        let dir = tempfile::tempdir().unwrap();
        let passfile = dir.path().join("pgpass");
        std::fs::write(&passfile, "h1:5432:db:u:one\nh2:6000:db:u:two\n").unwrap();
        let mut permissions = std::fs::metadata(&passfile).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
        std::fs::set_permissions(&passfile, permissions).unwrap();
        let shown = run_with_passfile(&passfile, "postgres://u@h1,h2:6000/db");
        assert_eq!(shown, ["one", "two"]);
    }

    /// The passwords sqlx found for each host, read in a child process whose environment
    /// holds PGPASSFILE (setting it here would race the other tests' environment reads).
    fn run_with_passfile(passfile: &std::path::Path, text: &str) -> Vec<String> {
        if let Ok(text) = std::env::var("SQLREPO_HOSTS_CHILD") {
            return passwords_of(&text);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "conn::hosts::tests::the_passfile_is_read_per_host_by_sqlx",
                "--nocapture",
            ])
            .env("PGPASSFILE", passfile)
            .env_remove("PGPASSWORD")
            .env("SQLREPO_HOSTS_CHILD", text)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("passwords="))
            .unwrap_or_else(|| panic!("the child printed no passwords: {stdout}"))
            .split(',')
            .map(str::to_owned)
            .collect()
    }

    fn passwords_of(text: &str) -> Vec<String> {
        let list = HostList::parse(text).unwrap();
        let passwords: Vec<String> = list
            .hosts()
            .iter()
            .map(|host| {
                let shown = format!("{:?}", host.options());
                shown
                    .split("password: Some(\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("none")
                    .to_owned()
            })
            .collect();
        println!("passwords={}", passwords.join(","));
        passwords
    }
}
