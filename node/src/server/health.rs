//! gRPC health (`grpc.health.v1.Health`, tonic-health) and reflection (tonic-reflection, so
//! `grpcurl` can list and call the services with only a client certificate).
//!
//! Health reports `SERVING` for the node (service `""`) and for `dccf.v1.Exchange`,
//! `dccf.v1.Gateway` and `dccf.v1.Audit` while the ledger accepts writes, and `NOT_SERVING`
//! once it does not (a failed commit: disk full, I/O error — nothing can be acknowledged then)
//! and while the node shuts down.

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::ledger::Store;

/// The services whose health is reported, besides the node as a whole (`""`).
pub const SERVICES: &[&str] = &["dccf.v1.Exchange", "dccf.v1.Gateway", "dccf.v1.Audit"];

/// How often the ledger's state is checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Whether the node can serve now (its ledger `store` accepts writes), and why not.
pub fn serving(store: &Store) -> Result<(), String> {
    match store.failure() {
        None => Ok(()),
        Some(cause) => Err(format!("ledger unavailable: {cause}")),
    }
}

/// Sets every reported service to `status`.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in SERVICES {
        reporter.set_service_status(*s, status).await;
    }
}

/// Keeps `reporter` in line with [`serving`] until `stop`, then reports `NOT_SERVING`.
pub async fn watch(
    store: Store,
    reporter: HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let now = serving(&store);
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => set_all(&reporter, ServingStatus::Serving).await,
                Err(why) => {
                    tracing::error!(why, "health: NOT_SERVING");
                    set_all(&reporter, ServingStatus::NotServing).await;
                }
            }
            last = Some(now);
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

/// The reflection service over the node's own descriptor set and the health protocol's.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;

    use super::*;

    async fn status(service: &impl Health, name: &str) -> i32 {
        service
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.to_owned(),
            }))
            .await
            .map_or(-1, |r| r.into_inner().status)
    }

    /// Polls until `name` reports `want` (the watcher checks every 500 ms).
    async fn wait_for(service: &impl Health, name: &str, want: ServingStatus) {
        for _ in 0..100 {
            if status(service, name).await == want as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name:?} never reported {want:?}");
    }

    #[tokio::test]
    async fn a_failed_ledger_commit_turns_every_service_not_serving() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open ledger");
        let reporter = tonic_health::server::HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch(store.clone(), reporter, stop));
        for s in [""].iter().chain(SERVICES) {
            wait_for(&service, s, ServingStatus::Serving).await;
        }

        store.fail_next_sync();
        let mut txn = store.begin();
        txn.append(b"entry".to_vec());
        assert!(
            txn.commit().durable().await.is_err(),
            "the injected sync failure"
        );
        assert!(serving(&store).unwrap_err().contains("ledger unavailable"));
        for s in [""].iter().chain(SERVICES) {
            wait_for(&service, s, ServingStatus::NotServing).await;
        }

        let _ = stop_tx.send(true);
        watcher.await.expect("watcher stops");
    }

    #[tokio::test]
    async fn shutdown_reports_not_serving() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open ledger");
        let reporter = tonic_health::server::HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch(store, reporter, stop));
        wait_for(&service, "dccf.v1.Gateway", ServingStatus::Serving).await;
        let _ = stop_tx.send(true);
        watcher.await.expect("watcher stops");
        assert_eq!(
            status(&service, "dccf.v1.Gateway").await,
            ServingStatus::NotServing as i32
        );
    }
}
