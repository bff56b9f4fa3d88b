//! A planted token must not appear in logs, errors or Debug output.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use recac_jira::{AuthConfig, Flavor, JiraClient, JiraConfig};
use recac_jira_sim::{Fault, UserDef};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const PLANTED: &str = "PLANTED-s3cr3t-TOKEN-8c1f";

#[tokio::test]
async fn planted_token_never_leaks() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut outputs: Vec<String> = Vec::new();
    for flavor in common::FLAVORS {
        let sim = common::sim(flavor).await;
        sim.add_user(UserDef {
            account_id: "planted-1".into(),
            name: "planted".into(),
            display_name: "Planted".into(),
            email: "planted@example.com".into(),
            token: Some(PLANTED.into()),
            pat: Some(PLANTED.into()),
            permissions: None,
        });
        sim.add_issues("OPS", "x", &[], 2);
        // Credentials come from a mounted-Secret-like file, as in production.
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{PLANTED}\n")).unwrap();
        let auth = match flavor {
            Flavor::Cloud => AuthConfig::Basic {
                email: Some("planted@example.com".into()),
                email_env: None,
                email_file: None,
                token_env: None,
                token_file: Some(token_file.clone()),
            },
            Flavor::Datacenter => AuthConfig::Bearer {
                token_env: None,
                token_file: Some(token_file.clone()),
            },
        };
        let cfg = JiraConfig {
            url: sim.url().into(),
            flavor,
            auth,
            max_retries: 2,
            ..JiraConfig::default()
        };
        let creds = cfg.credentials().unwrap();
        let client = JiraClient::new(&cfg)
            .unwrap()
            .with_retry_policy(common::fast_policy());
        outputs.push(format!("{cfg:?} {creds:?} {client:?}"));

        // Successful calls, retried calls and failing calls all log.
        client.myself().await.unwrap();
        sim.inject(Fault::status(503).times(2));
        client.get_issue("OPS-1", &[]).await.unwrap();
        sim.inject(Fault::status(503).always());
        let e = client.get_issue("OPS-2", &[]).await.unwrap_err();
        outputs.push(format!("{e} {e:?}"));
        sim.clear_faults();
        for e in [
            client.get_issue("OPS-404", &[]).await.unwrap_err(),
            client.transition("OPS-1", "nope").await.unwrap_err(),
            client.search_all("bogus = 1", &[]).await.unwrap_err(),
        ] {
            outputs.push(format!("{e} {e:?}"));
        }
        // The simulator's call log holds no credentials either.
        outputs.push(format!("{:?}", sim.calls()));
    }
    // A config error from a token file that is missing names the path, not a token.
    let cfg = JiraConfig {
        url: "https://x.example".into(),
        auth: AuthConfig::Bearer {
            token_env: None,
            token_file: Some("/nonexistent/token".into()),
        },
        ..JiraConfig::default()
    };
    outputs.push(JiraClient::new(&cfg).unwrap_err().to_string());

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("jira request"),
        "the test captured the client's logs: {logs}"
    );
    assert!(logs.contains("retrying"), "{logs}");
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(format!("planted@example.com:{PLANTED}"));
    let all = format!("{logs}\n{}", outputs.join("\n"));
    for needle in [PLANTED, b64.as_str(), &b64[..16]] {
        assert!(!all.contains(needle), "secret {needle:?} leaked");
    }
}
