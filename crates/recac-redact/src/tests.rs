use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::*;

const PW: &str = "Db-pa55word/With+Specials=";

fn r(secrets: &[&str]) -> Redactor {
    Redactor::new(secrets)
}

/// `text` with separators removed, as someone reading a split value would join it.
fn joined(text: &str) -> String {
    text.replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect()
}

/// Wraps like `base64` and `fold -w N`.
fn fold(text: &str, width: usize) -> String {
    text.as_bytes()
        .chunks(width)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn plain_values_and_short_ones() {
    let r = r(&["hunter2-secret", "ab", "  padded-value\n"]);
    assert_eq!(r.redact("pw=hunter2-secret!"), format!("pw={MASK}!"));
    assert_eq!(r.redact("x padded-value y"), format!("x {MASK} y"));
    // Too short to redact by value.
    assert_eq!(r.redact("ab cd"), "ab cd");
    assert_eq!(r.secret_count(), 3);
    assert_eq!(r.redact(""), "");
    assert_eq!(r.redact("plain text stays"), "plain text stays");
}

#[test]
fn a_value_containing_another_is_removed_whole() {
    let r = r(&["abcd-1234", "abcd-1234-efgh-5678"]);
    assert_eq!(r.redact("[abcd-1234-efgh-5678]"), format!("[{MASK}]"));
    // Overlapping occurrences of two values are both removed.
    let r = Redactor::new(["1111-2222-x", "2222-x-3333-y"]);
    assert_eq!(r.redact("<1111-2222-x-3333-y>"), format!("<{MASK}>"));
}

#[test]
fn split_across_lines() {
    let r = r(&[PW]);
    // fold -w 10
    let folded = fold(PW, 10);
    let out = r.redact(&format!("before\n{folded}\nafter"));
    assert_eq!(out, format!("before\n{MASK}\n{MASK}\n{MASK}\nafter"));
    // A \r\n in the middle, indentation, an escaped newline in JSON.
    for (a, b) in [("\r\n", ""), ("\n    ", ""), ("\\n", "\\r\\n")] {
        let text = format!("v: {}{a}{}{b}{} end", &PW[..5], &PW[5..12], &PW[12..]);
        let out = r.redact(&text);
        assert!(
            !joined(&out).contains(&joined(PW)[..8]),
            "{text:?} -> {out:?}"
        );
        assert!(
            out.starts_with("v: [REDACTED]") && out.ends_with(" end"),
            "{out:?}"
        );
    }
    // A short value is only removed whole: "ab cd" stays when the secret is "abcd".
    assert_eq!(
        Redactor::new(["abcd"]).redact("ab cd / abcd"),
        format!("ab cd / {MASK}")
    );
}

#[test]
fn encodings() {
    let r = r(&[PW]);
    let cases = [
        STANDARD.encode(PW),
        STANDARD.encode(format!("{PW}\n")),
        URL_SAFE_NO_PAD.encode(PW),
        STANDARD.encode(format!("x-access-token:{PW}")),
        // Embedded in a longer encoded text, at each offset.
        STANDARD.encode(format!("DB_PASSWORD={PW}\nOTHER=1\n")),
        STANDARD.encode(format!("a{PW}b")),
        STANDARD.encode(format!("ab{PW}")),
        PW.bytes().map(|b| format!("{b:02x}")).collect(),
        PW.bytes().map(|b| format!("{b:02X}")).collect(),
        "Db-pa55word%2FWith%2BSpecials%3D".to_string(),
        "Db-pa55word%2fWith%2bSpecials%3d".to_string(),
    ];
    for encoded in cases {
        let out = r.redact(&format!("got {encoded} ok"));
        assert_eq!(out, format!("got {MASK} ok"), "{encoded}");
    }
    // A long base64 dump wrapped at 76 columns (as `base64` prints it).
    let long = format!("{}{PW}{}", "x".repeat(100), "y".repeat(100));
    let dump = fold(&STANDARD.encode(&long), 76);
    let out = r.redact(&dump);
    assert!(out.contains(MASK), "{out}");
    assert_eq!(out.lines().count(), dump.lines().count());
    let decoded = STANDARD
        .decode(joined(&out.replace(MASK, "")))
        .unwrap_or_default();
    assert!(!String::from_utf8_lossy(&decoded).contains(PW), "{out}");
    // JSON-escaped.
    let quoted = Redactor::new([r#"pa"ss\word-123"#]);
    assert_eq!(
        quoted.redact(r#"{"pw":"pa\"ss\\word-123"}"#),
        format!(r#"{{"pw":"{MASK}"}}"#)
    );
    // Binary values: their base64 and hex forms.
    let binary = [0u8, 159, 146, 150, 255, 1, 2, 3, 4, 5];
    let b = Redactor::new([binary]);
    assert_eq!(b.redact(&STANDARD.encode(binary)), MASK);
}

#[test]
fn inside_urls() {
    let r = r(&[PW]);
    let url = format!("postgres://app:{PW}@db:5432/app");
    assert_eq!(r.redact(&url), format!("postgres://app:{MASK}@db:5432/app"));
    let encoded = "Db-pa55word%2FWith%2BSpecials%3D";
    assert_eq!(
        r.redact(&format!("https://u:{encoded}@h/x")),
        format!("https://u:{MASK}@h/x")
    );
    assert_eq!(
        r.redact(&format!("https://h/cb?token={encoded}&a=1")),
        format!("https://h/cb?token={MASK}&a=1")
    );
    // Unknown credentials in URLs are caught by shape.
    let d = Redactor::default();
    assert_eq!(
        d.redact("cloning https://bob:pa55@word@example.com/r.git"),
        format!("cloning https://bob:{MASK}@example.com/r.git")
    );
    assert_eq!(
        d.redact("https://abcdefghijklmnopqrstu@github.com/o/r"),
        format!("https://{MASK}@github.com/o/r")
    );
    for harmless in [
        "ssh://git@github.com/o/r.git",
        "http://example.com:8080/path and me@example.com",
        "git@github.com:o/r.git",
    ] {
        assert_eq!(d.redact(harmless), harmless);
    }
}

#[test]
fn multi_line_values_are_also_removed_line_by_line() {
    let value = "[default]\naws_region = eu-west-1\ncredential_blob = Q2xvdWQtc2VjcmV0LTEyMw\n";
    let r = r(&[value]);
    let out = r.redact("printed: credential_blob = Q2xvdWQtc2VjcmV0LTEyMw only");
    assert_eq!(out, format!("printed: {MASK} only"));
    assert_eq!(r.redact(value.trim()), format!("{MASK}\n{MASK}\n{MASK}"));
}

#[test]
fn token_shapes() {
    let d = Redactor::default();
    let aws_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let cases: Vec<(String, String)> = vec![
        (format!("t ghp_{} e", "a1".repeat(18)), format!("t {MASK} e")),
        (format!("gho_{}", "B2".repeat(18)), MASK.into()),
        (format!("ghs_{}", "c3".repeat(18)), MASK.into()),
        (format!("ghu_{}", "d4".repeat(18)), MASK.into()),
        (format!("ghr_{}", "e5".repeat(18)), MASK.into()),
        (format!("github_pat_11ABCDEFG0_{}", "x".repeat(59)), MASK.into()),
        ("key sk-proj-abcdefghijklmnopqrstuvwx".into(), format!("key {MASK}")),
        ("sk-abcdefghijklmnopqrstuvwxyz0123".into(), MASK.into()),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwx-yz_AA".into(), MASK.into()),
        (
            "ATATT3xFfGF0T2JvZ3VzQXRsYXNzaWFuVG9rZW5WYWx1ZQ=1A2B3C4D".into(),
            MASK.into(),
        ),
        ("id AKIAIOSFODNN7EXAMPLE.".into(), format!("id {MASK}.")),
        ("ASIAY34FZKBOKMUTVV7A".into(), MASK.into()),
        (
            format!("aws_secret_access_key = {aws_secret}"),
            format!("aws_secret_access_key = {MASK}"),
        ),
        (
            format!("AWS_SECRET_ACCESS_KEY=\"{aws_secret}\""),
            format!("AWS_SECRET_ACCESS_KEY=\"{MASK}\""),
        ),
        ("xoxb-1234567890-abcdefghij".into(), MASK.into()),
        (
            "https://hooks.slack.com/services/T000/B000/XXXXXXXX".into(),
            format!("https://hooks.slack.com/services/{MASK}"),
        ),
        ("glpat-abcdefghijklmnopqrstuv".into(), MASK.into()),
        (format!("jwt {jwt}"), format!("jwt {MASK}")),
        (
            "Authorization: Bearer abc.def-ghi".into(),
            format!("Authorization: Bearer {MASK}"),
        ),
        (
            "authorization: Basic eC1hY2Nlc3MtdG9rZW46c2VjcmV0".into(),
            format!("authorization: Basic {MASK}"),
        ),
        (
            r#""Authorization": "token abc123""#.into(),
            format!(r#""Authorization": "token {MASK}""#),
        ),
        ("curl -H 'bearer abcdefghijkl0123'".into(), format!("curl -H 'bearer {MASK}'")),
        ("x-api-key: zzz".into(), format!("x-api-key: {MASK}")),
        ("PRIVATE-TOKEN: zzz9".into(), format!("PRIVATE-TOKEN: {MASK}")),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabcdef==\n-----END RSA PRIVATE KEY-----\nnext".into(),
            format!("-----BEGIN RSA PRIVATE KEY-----\n{MASK}\n-----END RSA PRIVATE KEY-----\nnext"),
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n(cut)".into(),
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{MASK}"),
        ),
        (format!("AIza{}", "S".repeat(35)), MASK.into()),
        ("hf_abcdefghijklmnopqrstuvwxyzABCDEF".into(), MASK.into()),
    ];
    for (input, want) in cases {
        assert_eq!(d.redact(&input), want, "{input}");
    }
    for harmless in [
        "recac/task-abcdefghijklmnopqrstuvwxyz",
        "risk-assessment-for-the-new-deployment",
        "global-configuration-settings-file",
        "ordinary prose with a token and a key",
        "-----BEGIN CERTIFICATE-----",
    ] {
        assert_eq!(d.redact(harmless), harmless);
    }
}

#[test]
fn extra_patterns() {
    let r = Redactor::builder()
        .secret("known-value-1")
        .patterns([r"\bCORP-[0-9]{8}\b", r"db_pass=(?P<secret>\S+)"])
        .build()
        .unwrap();
    assert_eq!(
        r.redact("CORP-12345678 db_pass=xyz known-value-1"),
        format!("{MASK} db_pass={MASK} {MASK}")
    );
    // Extra patterns survive with_secrets.
    let more = r.with_secrets(["another-one"]);
    assert_eq!(
        more.redact("CORP-12345678 another-one"),
        format!("{MASK} {MASK}")
    );
    assert_eq!(more.secret_count(), 2);
}

#[test]
fn a_bad_pattern_is_named() {
    let err = Redactor::builder()
        .pattern("fine")
        .pattern("broken(")
        .build()
        .unwrap_err();
    let Error::InvalidPattern { index, pattern, .. } = &err;
    assert_eq!((*index, pattern.as_str()), (1, "broken("));
    let text = err.to_string();
    assert!(
        text.contains("#1 `broken(`") && text.contains("unclosed"),
        "{text}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn debug_never_shows_values() {
    let r = r(&["very-secret-value"]);
    let shown = format!(
        "{r:?} {:?}",
        Redactor::builder().secret("very-secret-value")
    );
    assert!(!shown.contains("very-secret-value"), "{shown}");
}

#[test]
fn bytes_that_are_not_utf8() {
    let r = r(&["topsecretvalue"]);
    assert_eq!(
        r.redact_bytes(b"\xff topsecretvalue"),
        format!("\u{fffd} {MASK}")
    );
}

proptest::proptest! {
    #[test]
    fn a_secret_never_survives(
        prefix in "[a-z \n]{0,20}",
        secret in "[A-Za-z0-9]{8,30}",
        suffix in "[a-z \n]{0,20}",
    ) {
        let r = Redactor::new([secret.as_str()]);
        let out = r.redact(&format!("{prefix}{secret}{suffix}"));
        proptest::prop_assert!(!out.contains(&secret));
    }

    #[test]
    fn a_split_secret_never_survives(
        secret in "[A-Za-z0-9+/=_-]{8,40}",
        cuts in proptest::collection::vec(1usize..40, 0..4),
        sep in proptest::sample::select(vec!["\n", "\r\n", " \n  ", "\\n", "\t"]),
        prefix in "[a-z]{0,10} ",
    ) {
        let mut pieces = Vec::new();
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < secret.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        for c in cuts {
            pieces.push(&secret[last..c]);
            last = c;
        }
        pieces.push(&secret[last..]);
        let text = format!("{prefix}{} end", pieces.join(sep));
        let out = Redactor::new([secret.as_str()]).redact(&text);
        proptest::prop_assert!(!joined(&out).contains(&secret), "{:?} -> {:?}", text, out);
        proptest::prop_assert!(out.ends_with(" end"));
    }

    #[test]
    fn base64_of_text_holding_a_secret_never_decodes_to_it(
        before in "[ -~]{0,40}",
        secret in "[A-Za-z0-9]{8,30}",
        after in "[ -~]{0,40}",
        width in 8usize..80,
    ) {
        let encoded = STANDARD.encode(format!("{before}{secret}{after}"));
        let out = Redactor::new([secret.as_str()]).redact(&fold(&encoded, width));
        // What is left, joined and decoded at each alignment, does not hold the secret.
        let left = joined(&out.replace(MASK, ""));
        for skip in 0..4 {
            let chunk: String = left.chars().skip(skip).collect();
            let usable = chunk.len() / 4 * 4;
            let decoded = STANDARD.decode(&chunk[..usable]).unwrap_or_default();
            proptest::prop_assert!(!String::from_utf8_lossy(&decoded).contains(&secret));
        }
    }
}
