//! The kube client every component shares, with API requests counted in one place.

use kube::client::ClientBuilder;
use kube::{Client, Config};

use crate::metrics::{ApiRequestCounter, CountRequestsLayer};

/// A client for `config` whose every request is counted by `counter`.
pub fn counted_client(config: Config, counter: ApiRequestCounter) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountRequestsLayer(counter))
        .build())
}

/// Reads the kubeconfig (or the in-cluster config) and builds a counted client.
pub async fn default_counted_client(counter: ApiRequestCounter) -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    counted_client(config, counter)
}
