//! Egress allow-list entries: one syntax for the operator's configuration, a task's
//! `spec.egress`, the annotation on an agent pod and the egress proxy that enforces it.
//!
//! Why the rules look the way they do:
//!
//! - **Names are matched as names.** The proxy decides on the name the client asked for (the
//!   `CONNECT` target or the absolute URI), before any DNS lookup. Matching on resolved
//!   addresses would make the decision depend on DNS answers that whoever controls a name
//!   chooses, and on CDN addresses that many unrelated names share.
//! - **`*.example.com` means any subdomain at any depth, but not `example.com`.** Whoever
//!   controls `example.com` controls every name under it, so stopping at one level would protect
//!   nothing. The apex is often a different service (a website rather than an API or a package
//!   mirror), so it is granted only when written: write both entries to get both.
//! - **An IP address only matches network rules** (`10.0.0.0/8`, `10.1.2.3/32`): a rule for a
//!   name says nothing about which addresses a client may dial directly, and a network rule
//!   does not grant names that happen to resolve into it.
//! - **No port list means 80 and 443** ([`DEFAULT_PORTS`]), the ports of the web; anything
//!   else (a database, SSH) is written explicitly.
//! - **Parsing is strict and every error quotes the entry and says what is wrong**: these
//!   entries are written by people in YAML, and a typo must be a clear refusal rather than a
//!   rule that silently matches nothing (or too much). Names whose last label is numeric
//!   (`10.1.2`, `2130706433`) are refused because resolvers read them as IP addresses.
//!
//! [`permits`] and [`covered`] are the two questions asked of a list: may this connection be
//! made, and does this list already allow everything that entry asks for (a task may ask only
//! for what its source permits).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The ports an entry without a port list allows: plain HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Annotation on an agent pod (set by the operator in the Job's pod template): the pod's
/// allow-list, a JSON array of rule strings. The proxy reads it; nothing in the pod can change
/// it.
pub const ALLOW_ANNOTATION: &str = "recac.io/egress-allow";

/// Path on the proxy that answers, for the calling pod only, what was blocked (JSON array of
/// [`BlockedHost`]).
pub const BLOCKED_PATH: &str = "/blocked";

/// Longest host name DNS carries (without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// Longest label of a host name.
const MAX_LABEL_LEN: usize = 63;

/// One allow-list entry as people write it in the operator's config and in a task's spec:
/// "github.com" (exact host), "*.pypi.org" (any subdomain at any depth, NOT the apex),
/// "files.example.com:443", "example.com:80,443", "10.0.0.0/8" (a CIDR: matches IP-literal
/// destinations in it), "10.1.2.3/32:5432", "[fd00::/8]:443" or "fd00::/8" for IPv6.
/// No port list means ports 80 and 443 ([`DEFAULT_PORTS`]). Host names are ASCII, lower-cased
/// on parse, a trailing dot stripped; labels per RFC 1123 (letters, digits, '-'), "*" only as
/// a whole first label. A bare IP address ("10.1.2.3", "fd00::1") is the network of that one
/// address ("10.1.2.3/32"). Anything else is an error that quotes the text and says what is
/// wrong.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressRule {
    pub target: EgressTarget,
    /// Sorted, without duplicates, never empty after parsing.
    pub ports: Vec<u16>,
}

/// What an [`EgressRule`] names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EgressTarget {
    /// Exactly this host name (lower case, no trailing dot).
    Host(String),
    /// Any name strictly below this domain, at any depth; not the domain itself.
    AnySubdomainOf(String),
    /// IP-literal destinations in this network (host bits zero).
    Network(IpNet),
}

/// An allow-list entry that cannot be parsed: the text as written and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress rule {text:?}: {reason}")]
pub struct InvalidEgressRule {
    pub text: String,
    pub reason: String,
}

/// A destination the proxy refused, with how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedHost {
    /// The name or IP address the client asked for (as the proxy saw it).
    pub host: String,
    pub port: u16,
    /// How many connections or requests to it were refused.
    pub count: u64,
}

impl EgressRule {
    /// Whether a connection to `host:port` is allowed by this rule. `host` is what the client
    /// asked for (a name or an IP literal, IPv6 possibly in brackets); names are compared
    /// case-insensitively without a trailing dot; an IP literal matches only Network rules
    /// (and a Host rule whose text is that same IP). A `host` that is neither a valid host
    /// name nor an IP literal matches nothing.
    pub fn permits(&self, host: &str, port: u16) -> bool {
        if !self.ports.contains(&port) {
            return false;
        }
        match Destination::of(host) {
            Some(destination) => self.target.matches(&destination),
            None => false,
        }
    }

    /// Whether everything `other` allows is also allowed by `self` (used to check that a
    /// task asks only for what its source permits): same-or-narrower target and a subset of
    /// ports.
    pub fn covers(&self, other: &EgressRule) -> bool {
        other.ports.iter().all(|port| self.ports.contains(port))
            && self.target.covers(&other.target)
    }
}

impl EgressTarget {
    /// Whether every destination `other` names is also named by `self`.
    pub fn covers(&self, other: &EgressTarget) -> bool {
        match (self, other) {
            (EgressTarget::Host(own), EgressTarget::Host(theirs)) => {
                match (Destination::of(own), Destination::of(theirs)) {
                    (Some(own), Some(theirs)) => own == theirs,
                    _ => false,
                }
            }
            (EgressTarget::Host(own), EgressTarget::Network(net)) => {
                net.prefix_len() == net.max_prefix_len()
                    && Destination::of(own) == Some(Destination::Ip(canonical_ip(net.addr())))
            }
            (EgressTarget::AnySubdomainOf(domain), EgressTarget::Host(name)) => {
                matches!(Destination::of(name), Some(Destination::Name(name)) if is_strictly_below(&name, domain))
            }
            (EgressTarget::AnySubdomainOf(domain), EgressTarget::AnySubdomainOf(narrower)) => {
                narrower == domain || is_strictly_below(narrower, domain)
            }
            (EgressTarget::Network(net), EgressTarget::Network(narrower)) => net.contains(narrower),
            (EgressTarget::Network(_), EgressTarget::Host(text)) => {
                matches!(Destination::of(text), Some(ip @ Destination::Ip(_)) if self.matches(&ip))
            }
            (EgressTarget::AnySubdomainOf(_), EgressTarget::Network(_))
            | (EgressTarget::Network(_), EgressTarget::AnySubdomainOf(_))
            | (EgressTarget::Host(_), EgressTarget::AnySubdomainOf(_)) => false,
        }
    }

    fn matches(&self, destination: &Destination) -> bool {
        match (self, destination) {
            (EgressTarget::Network(net), Destination::Ip(ip)) => net.contains(ip),
            (EgressTarget::Host(own), destination) => {
                Destination::of(own).as_ref() == Some(destination)
            }
            (EgressTarget::AnySubdomainOf(domain), Destination::Name(name)) => {
                is_strictly_below(name, domain)
            }
            (EgressTarget::Network(_), Destination::Name(_))
            | (EgressTarget::AnySubdomainOf(_), Destination::Ip(_)) => false,
        }
    }
}

/// Whether any rule permits a connection to `host:port` (see [`EgressRule::permits`]).
pub fn permits(rules: &[EgressRule], host: &str, port: u16) -> bool {
    rules.iter().any(|rule| rule.permits(host, port))
}

/// Whether `rules` allow everything `wanted` allows: for each of its ports, some rule covers
/// its target on that port (so `example.com:80` and `example.com:443` together cover
/// `example.com`, which neither covers alone).
pub fn covered(rules: &[EgressRule], wanted: &EgressRule) -> bool {
    wanted.ports.iter().all(|port| {
        rules
            .iter()
            .any(|rule| rule.ports.contains(port) && rule.target.covers(&wanted.target))
    })
}

/// The [`ALLOW_ANNOTATION`] value for `rules`: a JSON array of their canonical texts.
pub fn allow_annotation(rules: &[EgressRule]) -> String {
    serde_json::Value::Array(
        rules
            .iter()
            .map(|rule| serde_json::Value::String(rule.to_string()))
            .collect(),
    )
    .to_string()
}

/// The rules of an [`ALLOW_ANNOTATION`] value; the first entry that does not parse (or a value
/// that is not a JSON array of strings) is the error.
pub fn parse_allow_annotation(text: &str) -> Result<Vec<EgressRule>, InvalidEgressRule> {
    let entries: Vec<String> = serde_json::from_str(text).map_err(|e| InvalidEgressRule {
        text: text.to_string(),
        reason: format!("the {ALLOW_ANNOTATION} annotation is not a JSON array of strings: {e}"),
    })?;
    entries.iter().map(|entry| entry.parse()).collect()
}

/// A destination as a client names it, normalised for comparison.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// An IP literal; IPv4-mapped IPv6 addresses are their IPv4 address.
    Ip(IpAddr),
    /// A valid host name, lower case, without a trailing dot.
    Name(String),
}

impl Destination {
    fn of(host: &str) -> Option<Destination> {
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            return match inner.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V6(_)) => Some(Destination::Ip(canonical_ip(ip))),
                _ => None,
            };
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Destination::Ip(canonical_ip(ip)));
        }
        let lower = host.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        check_host_name(name).ok()?;
        Some(Destination::Name(name.to_string()))
    }
}

/// `ip`, with an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it reaches.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether `name` is a subdomain of `domain` (at any depth), not `domain` itself.
fn is_strictly_below(name: &str, domain: &str) -> bool {
    name.len() > domain.len() + 1
        && name.ends_with(domain)
        && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
}

impl FromStr for EgressRule {
    type Err = InvalidEgressRule;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_rule(text.trim()).map_err(|reason| InvalidEgressRule {
            text: text.to_string(),
            reason,
        })
    }
}

fn parse_rule(text: &str) -> Result<EgressRule, String> {
    if text.is_empty() {
        return Err("is empty".to_string());
    }
    let (target, ports) = if let Some(after_bracket) = text.strip_prefix('[') {
        let (inside, rest) = after_bracket
            .split_once(']')
            .ok_or_else(|| "has '[' without a closing ']'".to_string())?;
        let ports = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or_else(|| {
                format!("has {rest:?} after ']' where a ':' and a port list belong")
            })?),
        };
        (parse_ipv6_target(inside, true)?, ports)
    } else if text.matches(':').count() >= 2 {
        (parse_ipv6_target(text, false)?, None)
    } else {
        let (target, ports) = match text.split_once(':') {
            Some((target, ports)) => (target, Some(ports)),
            None => (text, None),
        };
        (parse_name_or_ipv4_target(target)?, ports)
    };
    let ports = match ports {
        Some(list) => parse_ports(list)?,
        None => DEFAULT_PORTS.to_vec(),
    };
    Ok(EgressRule { target, ports })
}

/// An IPv6 address or network, written in brackets (`bracketed`) or bare.
fn parse_ipv6_target(text: &str, bracketed: bool) -> Result<EgressTarget, String> {
    let network = parse_network(text).map_err(|reason| {
        if bracketed {
            format!("{text:?} in brackets is not an IPv6 address or network: {reason}")
        } else {
            format!(
                "is not an IPv6 address or network ({reason}); an IPv6 entry with ports is \
                 written in brackets, as in [fd00::/8]:443"
            )
        }
    })?;
    match network {
        IpNet::V6(_) => Ok(EgressTarget::Network(network)),
        IpNet::V4(_) => Err(format!(
            "brackets are only for IPv6; write {text} without them"
        )),
    }
}

fn parse_name_or_ipv4_target(text: &str) -> Result<EgressTarget, String> {
    if text.is_empty() {
        return Err("has a port list but no host or network before it".to_string());
    }
    if text.contains('/') || text.parse::<IpAddr>().is_ok() {
        return parse_network(text).map(EgressTarget::Network);
    }
    if !text.is_ascii() {
        return Err(
            "host names must be ASCII (write an internationalised name in its xn-- form)"
                .to_string(),
        );
    }
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    match name.strip_prefix("*.") {
        Some(domain) => {
            check_host_name(domain)?;
            Ok(EgressTarget::AnySubdomainOf(domain.to_string()))
        }
        None => {
            check_host_name(name)?;
            Ok(EgressTarget::Host(name.to_string()))
        }
    }
}

/// A CIDR network with its host bits zero, or a bare address as the network of that address.
fn parse_network(text: &str) -> Result<IpNet, String> {
    let network = if text.contains('/') {
        let network: IpNet = text
            .parse()
            .map_err(|_| format!("{text:?} is not a network such as 10.0.0.0/8 or fd00::/8"))?;
        if network.trunc() != network {
            return Err(format!(
                "{text} has bits set after its /{} prefix; the network is {}",
                network.prefix_len(),
                network.trunc()
            ));
        }
        network
    } else {
        let address: IpAddr = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address"))?;
        IpNet::from(address)
    };
    if let IpNet::V6(v6) = network
        && v6.prefix_len() >= 96
        && v6.network().to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{text} is an IPv4-mapped IPv6 network; write its IPv4 form"
        ));
    }
    Ok(network)
}

/// Checks a host name (lower case, no trailing dot) against RFC 1123, with the reason it fails.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("has no host name".to_string());
    }
    if name.contains('*') {
        return Err("'*' may only be the whole first label, as in *.example.com".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "host name is {} characters long; the most is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (a leading dot or two dots in a row)".to_string());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} is {} characters long; the most is {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(format!(
                "label {label:?} has {bad:?}; host names have only letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            "is not an IP address, and a host name cannot end in a numeric label".to_string(),
        );
    }
    Ok(())
}

fn parse_ports(list: &str) -> Result<Vec<u16>, String> {
    if list.is_empty() {
        return Err("has ':' but no port after it".to_string());
    }
    let mut ports = Vec::new();
    for entry in list.split(',') {
        if entry.is_empty() {
            return Err("has an empty entry in its port list".to_string());
        }
        if !entry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("port {entry:?} is not a number"));
        }
        match entry.parse::<u16>() {
            Ok(port) if port != 0 => ports.push(port),
            _ => return Err(format!("port {entry} is not between 1 and 65535")),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

impl fmt::Display for EgressRule {
    /// The canonical text: parsing it gives this rule back; the port list is left out when it
    /// is [`DEFAULT_PORTS`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_ports = self.ports != DEFAULT_PORTS;
        match &self.target {
            EgressTarget::Host(name) => f.write_str(name)?,
            EgressTarget::AnySubdomainOf(domain) => write!(f, "*.{domain}")?,
            EgressTarget::Network(net @ IpNet::V6(_)) if with_ports => write!(f, "[{net}]")?,
            EgressTarget::Network(net) => write!(f, "{net}")?,
        }
        if with_ports {
            let mut separator = ':';
            for port in &self.ports {
                write!(f, "{separator}{port}")?;
                separator = ',';
            }
        }
        Ok(())
    }
}

impl Serialize for EgressRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for EgressRule {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "EgressRule".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An egress allow-list entry: a host (`github.com`), any subdomain \
                (`*.pypi.org`, not the apex), or a network (`10.0.0.0/8`, `[fd00::/8]`), with an \
                optional port list (`:443`, `:80,443`; none means 80 and 443)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(text: &str) -> EgressRule {
        match text.parse() {
            Ok(rule) => rule,
            Err(e) => panic!("{e}"),
        }
    }

    fn error(text: &str) -> String {
        match text.parse::<EgressRule>() {
            Ok(rule) => panic!("{text:?} parsed as {rule:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn net(text: &str) -> EgressTarget {
        EgressTarget::Network(text.parse().expect("test network"))
    }

    #[test]
    fn egress_parses_the_documented_forms() {
        let host = |name: &str| EgressTarget::Host(name.to_string());
        let cases: [(&str, EgressTarget, &[u16]); 11] = [
            ("github.com", host("github.com"), &[80, 443]),
            (
                "*.pypi.org",
                EgressTarget::AnySubdomainOf("pypi.org".into()),
                &[80, 443],
            ),
            ("files.example.com:443", host("files.example.com"), &[443]),
            ("example.com:443,80,443", host("example.com"), &[80, 443]),
            ("GitHub.COM.", host("github.com"), &[80, 443]),
            ("10.0.0.0/8", net("10.0.0.0/8"), &[80, 443]),
            ("10.1.2.3/32:5432", net("10.1.2.3/32"), &[5432]),
            ("10.1.2.3", net("10.1.2.3/32"), &[80, 443]),
            ("[fd00::/8]:443", net("fd00::/8"), &[443]),
            ("fd00::/8", net("fd00::/8"), &[80, 443]),
            ("[::1]", net("::1/128"), &[80, 443]),
        ];
        for (text, target, ports) in cases {
            assert_eq!(
                rule(text),
                EgressRule {
                    target,
                    ports: ports.to_vec()
                },
                "{text}"
            );
        }
        assert_eq!(
            rule("  xn--bcher-kva.example \n"),
            rule("xn--bcher-kva.example")
        );
    }

    #[test]
    fn egress_refuses_bad_entries_and_says_why() {
        let cases = [
            ("", "is empty"),
            ("*", "'*' may only be the whole first label"),
            ("*.", "'*' may only be the whole first label"),
            ("*..", "has no host name"),
            ("a.*.com", "'*' may only be the whole first label"),
            ("*foo.com", "'*' may only be the whole first label"),
            ("**.foo.com", "'*' may only be the whole first label"),
            ("foo..com", "has an empty label"),
            (".foo.com", "has an empty label"),
            ("foo_bar.com", "label \"foo_bar\" has '_'"),
            ("-foo.com", "starts or ends with '-'"),
            ("bücher.example", "must be ASCII"),
            ("10.1.2", "cannot end in a numeric label"),
            ("2130706433", "cannot end in a numeric label"),
            ("1.2.3.256", "cannot end in a numeric label"),
            ("example.com:", "has ':' but no port after it"),
            ("example.com:0", "port 0 is not between 1 and 65535"),
            ("example.com:65536", "port 65536 is not between 1 and 65535"),
            ("example.com:+1", "port \"+1\" is not a number"),
            ("example.com:80,,443", "has an empty entry in its port list"),
            ("example.com:http", "port \"http\" is not a number"),
            (":443", "has a port list but no host or network before it"),
            (
                "10.1.2.3/8",
                "has bits set after its /8 prefix; the network is 10.0.0.0/8",
            ),
            ("10.0.0.0/33", "is not a network such as 10.0.0.0/8"),
            ("fd00::/8:443", "is not an IPv6 address or network"),
            ("fd00::/8:443", "written in brackets, as in [fd00::/8]:443"),
            ("[fd00::/8", "has '[' without a closing ']'"),
            ("[fd00::/8]443", "has \"443\" after ']'"),
            ("[10.0.0.0/8]:443", "brackets are only for IPv6"),
            (
                "[example.com]:443",
                "in brackets is not an IPv6 address or network",
            ),
            ("::ffff:10.0.0.1", "IPv4-mapped IPv6 network"),
            (
                "http://example.com",
                "port \"//example.com\" is not a number",
            ),
            ("example.com/path", "is not a network such as"),
        ];
        for (text, reason) in cases {
            let message = error(text);
            assert!(
                message.starts_with(&format!("egress rule {text:?}: ")),
                "{text}: {message}"
            );
            assert!(message.contains(reason), "{text}: {message}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(error(&long_label).contains("is 64 characters long; the most is 63"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(error(&long_name).contains("the most is 253"));
    }

    #[test]
    fn egress_display_is_canonical() {
        for (text, canonical) in [
            ("GitHub.com.", "github.com"),
            ("example.com:443,80", "example.com"),
            ("example.com:8443,443,8443", "example.com:443,8443"),
            ("*.PyPI.org:443", "*.pypi.org:443"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("[fd00::/8]", "fd00::/8"),
            ("[fd00::/8]:80,443", "fd00::/8"),
            ("fd00::/8", "fd00::/8"),
            ("[fd00::1]:22", "[fd00::1/128]:22"),
        ] {
            assert_eq!(rule(text).to_string(), canonical, "{text}");
            assert_eq!(rule(canonical), rule(text), "{text}");
        }
    }

    #[test]
    fn egress_serde_is_the_string_and_schema_a_string() {
        let rules = vec![rule("*.pypi.org"), rule("[fd00::/8]:443")];
        let json = serde_json::to_string(&rules).expect("serialize");
        assert_eq!(json, r#"["*.pypi.org","[fd00::/8]:443"]"#);
        let back: Vec<EgressRule> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, rules);
        let bad = serde_json::from_str::<EgressRule>(r#""a.*.com""#)
            .expect_err("a wildcard in the middle")
            .to_string();
        assert!(
            bad.contains(r#"egress rule "a.*.com": '*' may only be"#),
            "{bad}"
        );
        let schema = serde_json::to_value(schemars::schema_for!(EgressRule)).expect("schema");
        assert_eq!(schema["type"], "string");
        assert!(
            schema["description"]
                .as_str()
                .is_some_and(|d| d.contains("*.pypi.org"))
        );
    }

    #[test]
    fn egress_annotation_round_trips_and_reports_bad_values() {
        let rules = vec![
            rule("github.com"),
            rule("*.pypi.org:443"),
            rule("10.0.0.0/8:5432"),
        ];
        let annotation = allow_annotation(&rules);
        assert_eq!(
            annotation,
            r#"["github.com","*.pypi.org:443","10.0.0.0/8:5432"]"#
        );
        assert_eq!(parse_allow_annotation(&annotation), Ok(rules));
        assert_eq!(allow_annotation(&[]), "[]");
        assert_eq!(parse_allow_annotation("[]"), Ok(vec![]));

        let not_json = parse_allow_annotation("github.com").expect_err("not JSON");
        assert!(
            not_json.reason.contains("is not a JSON array of strings"),
            "{not_json}"
        );
        let bad_entry = parse_allow_annotation(r#"["github.com","a..b"]"#).expect_err("bad entry");
        assert_eq!(bad_entry.text, "a..b");
    }

    #[test]
    fn egress_permits_exact_hosts_case_and_trailing_dot() {
        let github = [rule("github.com")];
        assert!(permits(&github, "github.com", 443));
        assert!(permits(&github, "GitHub.Com", 80));
        assert!(permits(&github, "github.com.", 443));
        assert!(!permits(&github, "github.com", 22));
        assert!(!permits(&github, "api.github.com", 443));
        assert!(!permits(&github, "github.com.evil.org", 443));
        assert!(!permits(&github, "evilgithub.com", 443));
        assert!(!permits(&github, "github.com..", 443));
        assert!(!permits(&github, "", 443));
        assert!(!permits(&[], "github.com", 443));
    }

    #[test]
    fn egress_wildcards_match_any_depth_but_not_the_apex() {
        let pypi = rule("*.pypi.org:443");
        assert!(pypi.permits("files.pypi.org", 443));
        assert!(pypi.permits("a.b.c.pypi.org", 443));
        assert!(pypi.permits("FILES.PyPI.org.", 443));
        assert!(!pypi.permits("pypi.org", 443));
        assert!(!pypi.permits("files.pypi.org", 80));
        assert!(!pypi.permits("notpypi.org", 443));
        assert!(!pypi.permits(".pypi.org", 443));
        assert!(!pypi.permits("files.pypi.org.evil.com", 443));
        assert!(!pypi.permits("bad_label.pypi.org", 443));
    }

    #[test]
    fn egress_ip_literals_match_networks_only() {
        let rules = [
            rule("10.0.0.0/8:5432"),
            rule("fd00::/8"),
            rule("github.com"),
        ];
        assert!(permits(&rules, "10.200.3.4", 5432));
        assert!(!permits(&rules, "10.200.3.4", 443));
        assert!(!permits(&rules, "11.0.0.1", 5432));
        assert!(
            permits(&rules, "::ffff:10.1.1.1", 5432),
            "IPv4-mapped IPv6 is its IPv4"
        );
        assert!(permits(&rules, "[fd12::1]", 443));
        assert!(permits(&rules, "fd12::1", 80));
        assert!(!permits(&rules, "[fe80::1]", 443));
        assert!(
            !permits(&rules, "[10.1.1.1]", 5432),
            "brackets hold IPv6 only"
        );
        assert!(!permits(&rules, "fd12::1%eth0", 443));
        // Names never match network rules, even when they look numeric.
        assert!(!permits(&[rule("0.0.0.0/0:5432")], "db.internal", 5432));
        assert!(!permits(&[rule("0.0.0.0/0")], "2130706433", 80));
        assert!(!permits(&[rule("0.0.0.0/0")], "127.1", 80));
        // An IP literal never matches a name rule or a wildcard.
        assert!(!permits(&[rule("*.example.com")], "10.0.0.1", 443));
        // ... except a Host rule whose text is that very address.
        let by_text = EgressRule {
            target: EgressTarget::Host("fd00::1".into()),
            ports: vec![443],
        };
        assert!(by_text.permits("[fd00:0::1]", 443));
        assert!(!by_text.permits("[fd00::2]", 443));
    }

    #[test]
    fn egress_covers_narrower_targets_and_port_subsets() {
        let covers = |wide: &str, narrow: &str| rule(wide).covers(&rule(narrow));
        assert!(covers("github.com", "github.com:443"));
        assert!(covers("GitHub.com", "github.com."));
        assert!(!covers("github.com:443", "github.com"));
        assert!(!covers("github.com", "api.github.com"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(covers("*.example.com", "a.b.example.com:80"));
        assert!(covers("*.example.com", "*.example.com:443"));
        assert!(covers("*.example.com", "*.api.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.api.example.com", "*.example.com"));
        assert!(!covers("api.example.com", "*.api.example.com"));
        assert!(!covers("*.example.com", "*.badexample.com"));
        assert!(covers("10.0.0.0/8", "10.1.0.0/16:443"));
        assert!(covers("10.0.0.0/8:5432,443", "10.1.2.3:5432"));
        assert!(!covers("10.1.0.0/16", "10.0.0.0/8"));
        assert!(!covers("10.0.0.0/8", "fd00::/8"));
        assert!(!covers("0.0.0.0/0", "github.com"));
        assert!(!covers("*.example.com", "10.0.0.0/8"));
        assert!(covers("fd00::/8", "[fd00:1::/32]:443"));

        let split = [rule("example.com:80"), rule("example.com:443")];
        assert!(covered(&split, &rule("example.com")));
        assert!(!covered(&split, &rule("example.com:8080")));
        assert!(!covered(&split, &rule("*.example.com")));
        assert!(covered(
            &[rule("*.example.com")],
            &rule("a.example.com:443")
        ));
        assert!(!covered(&[], &rule("a.example.com")));
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    fn host_name() -> impl Strategy<Value = String> {
        (proptest::collection::vec(label(), 0..3), "[a-z]{1,6}").prop_map(|(mut labels, top)| {
            labels.push(top);
            labels.join(".")
        })
    }

    fn arbitrary_rule() -> impl Strategy<Value = EgressRule> {
        let target = prop_oneof![
            host_name().prop_map(EgressTarget::Host),
            host_name().prop_map(EgressTarget::AnySubdomainOf),
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(octets, prefix)| {
                let net = ipnet::Ipv4Net::new(octets.into(), prefix).expect("prefix <= 32");
                EgressTarget::Network(IpNet::V4(net.trunc()))
            }),
            (any::<[u8; 16]>(), 0u8..=95).prop_map(|(octets, prefix)| {
                let net = ipnet::Ipv6Net::new(octets.into(), prefix).expect("prefix <= 128");
                EgressTarget::Network(IpNet::V6(net.trunc()))
            }),
        ];
        let ports = prop_oneof![
            Just(DEFAULT_PORTS.to_vec()),
            proptest::collection::btree_set(1u16..=u16::MAX, 1..4)
                .prop_map(|set| set.into_iter().collect()),
        ];
        (target, ports).prop_map(|(target, ports)| EgressRule { target, ports })
    }

    proptest! {
        #[test]
        fn egress_display_round_trips(rule in arbitrary_rule()) {
            let text = rule.to_string();
            prop_assert_eq!(text.parse::<EgressRule>(), Ok(rule.clone()), "{}", text);
            prop_assert!(rule.covers(&rule));
        }

        #[test]
        fn egress_a_covering_rule_permits_what_the_covered_one_does(
            name in host_name(),
            prefix in proptest::collection::vec(label(), 0..3),
            port in prop_oneof![Just(80u16), Just(443u16), 1u16..=u16::MAX],
        ) {
            let mut labels = prefix;
            labels.push(name.clone());
            let destination = labels.join(".");
            let wanted = EgressRule {
                target: EgressTarget::Host(destination.clone()),
                ports: vec![port],
            };
            for wide in [
                EgressRule { target: EgressTarget::AnySubdomainOf(name.clone()), ports: vec![port] },
                EgressRule { target: EgressTarget::Host(name.clone()), ports: DEFAULT_PORTS.to_vec() },
            ] {
                if wide.covers(&wanted) {
                    prop_assert!(wide.permits(&destination, port));
                }
                prop_assert_eq!(
                    wide.permits(&destination, port),
                    wide.covers(&wanted),
                    "{} vs {}", wide, wanted
                );
            }
        }
    }
}
