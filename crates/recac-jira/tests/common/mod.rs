//! Helpers shared by the client-vs-simulator tests.
#![allow(dead_code)]

use std::time::Duration;

use recac_jira::retry::RetryPolicy;
use recac_jira::{Credentials, Flavor, JiraClient, JiraConfig, Secret};
use recac_jira_sim::{BOT_EMAIL, BOT_NAME, BOT_PAT, BOT_TOKEN, JiraSim, Seed, SimFlavor};

pub const FLAVORS: [Flavor; 2] = [Flavor::Cloud, Flavor::Datacenter];

pub fn sim_flavor(f: Flavor) -> SimFlavor {
    match f {
        Flavor::Cloud => SimFlavor::Cloud,
        Flavor::Datacenter => SimFlavor::Datacenter,
    }
}

pub async fn sim(f: Flavor) -> JiraSim {
    JiraSim::start(Seed {
        flavor: sim_flavor(f),
        ..Seed::default()
    })
    .await
    .expect("simulator starts")
}

/// Fast retries so tests stay quick; Retry-After is still honoured in full.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(30),
    }
}

pub fn config(sim: &JiraSim, f: Flavor) -> JiraConfig {
    JiraConfig {
        url: sim.url().to_string(),
        flavor: f,
        request_timeout_seconds: 5,
        ..JiraConfig::default()
    }
}

/// Cloud: basic e-mail + API token. Data Center: bearer PAT.
pub fn client(sim: &JiraSim, f: Flavor) -> JiraClient {
    let creds = match f {
        Flavor::Cloud => Credentials::Basic {
            user: BOT_EMAIL.into(),
            token: Secret::new(BOT_TOKEN),
        },
        Flavor::Datacenter => Credentials::Bearer {
            token: Secret::new(BOT_PAT),
        },
    };
    JiraClient::with_credentials(&config(sim, f), creds)
        .expect("client builds")
        .with_retry_policy(fast_policy())
}

/// Data Center with basic auth (user name + password).
pub fn dc_basic_client(sim: &JiraSim) -> JiraClient {
    let creds = Credentials::Basic {
        user: BOT_NAME.into(),
        token: Secret::new(BOT_TOKEN),
    };
    JiraClient::with_credentials(&config(sim, Flavor::Datacenter), creds)
        .expect("client builds")
        .with_retry_policy(fast_policy())
}
