//! Query strings and the list-valued parameters Jira reads from them.

/// A parsed query string: every pair, in order, percent-decoded.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(raw: &str) -> Params {
        Params {
            pairs: raw
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        }
    }

    /// The first value of a single-valued parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.get(name).and_then(|v| v.trim().parse().ok())
    }

    /// An array-valued parameter. Jira reads both encodings and their mix:
    /// one parameter per value (`fields=a&fields=b`, OpenAPI's `form` +
    /// `explode`) and comma-separated values (`fields=a,b`). `None` when the
    /// parameter is absent; `Some(vec![])` when present but empty.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        let mut found = false;
        let mut out = Vec::new();
        for (_, v) in self.pairs.iter().filter(|(k, _)| k == name) {
            found = true;
            out.extend(split_list(v));
        }
        found.then_some(out)
    }
}

/// Splits a comma-separated list, trimming items and dropping empty ones.
pub(crate) fn split_list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Percent-decoding with `+` as a space (form encoding, which clients use in queries).
pub(crate) fn decode(s: &str) -> String {
    percent_decode(s, true)
}

/// Percent-decoding of a path segment (`+` stays a plus).
pub(crate) fn decode_path(s: &str) -> String {
    percent_decode(s, false)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_both_encodings() {
        let p = Params::parse("fields=summary&fields=labels%2Cstatus&fields=+status+,&jql=a%3Db");
        assert_eq!(
            p.list("fields").unwrap(),
            ["summary", "labels", "status", "status"]
        );
        assert_eq!(p.get("fields"), Some("summary"));
        assert_eq!(p.get("jql"), Some("a=b"));
        assert_eq!(p.list("expand"), None);
        assert_eq!(Params::parse("fields=").list("fields"), Some(vec![]));
    }

    #[test]
    fn decodes() {
        assert_eq!(decode("a+b%20c%zz%4"), "a b c%zz%4");
        assert_eq!(decode("%C3%A9"), "é");
        assert_eq!(decode_path("a+b%2Fc"), "a+b/c");
    }
}
