//! # DCCF node
//!
//! The software a customs administration runs to exchange data with partner administrations,
//! peer to peer: every message is signed (Ed25519), encrypted end to end (HPKE), checked against
//! a signed data-sharing agreement on both sides, and recorded in an append-only ledger.
//!
//! ## Layout
//!
//! - [`config`]: `node.toml`, every field documented and validated.
//! - [`identity`]: the administration's keys, private CA, certificates and party card.
//! - [`envelope`]: signed header + HPKE-sealed payload; receipts. Keys and bytes only.
//! - [`agreement`]: agreement files, signatures, revocations, versions in force; the
//!   `agreement new|sign|verify|show|revoke` commands and templates.
//! - [`policy`]: what an agreement allows (flow, fields, consent, rate); called by sender and
//!   receiver alike.
//! - [`ledger`]: the append-only log in sled, group-committed and fdatasync'd; its RFC 9162
//!   Merkle tree and proofs, C2SP checkpoints and cosignatures, tlog-tiles export, offline
//!   verification, reconciliation and tlog-proofs.
//! - [`checkpoints`]: publishing signed checkpoints; storing the cosignatures partners return.
//! - [`witness`]: witnessing partners' ledgers (consistency, cosigning, fork alarms).
//! - [`delivery`]: the send pipeline into the durable outbox, background delivery (courier,
//!   retries, dead letters), the receive pipeline, the durable inbox, retention sweep,
//!   onward-transfer records, partner connections.
//! - [`aeo`]: AEO mutual recognition: the own registry (import, updates), partner mirrors kept
//!   current by signed snapshots and sequenced deltas, signed lookups from the mirror or online,
//!   disclosure limited by the agreement; stored in redb (`aeo.redb`).
//! - [`server`]: the `Exchange` (partners), `Gateway` (back office) and `Audit` (auditors)
//!   services, their TLS, per-peer limits and load shedding, gRPC health and reflection.
//! - [`telemetry`]: Prometheus metrics (names, labels, the exporter).
//! - [`service_manager`]: readiness, stop and watchdog notifications to systemd.
//! - [`state`]: what the services of a running node share.
//! - [`report`]: the effectiveness report (volumes, refusals, latency, pre-arrival lead time,
//!   AEO hit rates) as a table, CSV or SVG chart.
//! - [`doctor`] (diagnosis with a fix per problem), [`status`] (one-screen summary),
//!   [`cert_commands`] (issue, rotate without downtime, list), [`ping`] (signed time for the
//!   clock-skew check).
//! - [`cli`], [`ledger_commands`], [`outbox_commands`], [`aeo_commands`], [`demo`], [`bench`]
//!   (and [`bench_ledger`], [`bench_delivery`], [`bench_aeo`]): the `dccf-node` commands.
//! - [`proto`]: generated code for the wire contract in `proto/dccf/v1/`.
//! - [`samples`]: synthetic customs messages for the demo, tests and benchmarks.
//!
//! A message's path: `Gateway.Send`/`SendStream` → [`delivery::outbound`] → [`delivery::outbox`]
//! → [`delivery::courier`] → partner's `Exchange.DeliverStream` → [`delivery::inbound`] →
//! [`delivery::inbox`] → partner's `Gateway.Inbox`.

pub mod aeo;
pub mod aeo_commands;
pub mod agreement;
pub mod bench;
pub mod bench_aeo;
pub mod bench_delivery;
pub mod bench_ledger;
pub mod cert_commands;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod doctor;
pub mod envelope;
pub mod identity;
pub mod ledger;
pub mod ledger_commands;
#[cfg(test)]
mod malformed_tests;
pub mod outbox_commands;
pub mod ping;
pub mod policy;
pub mod proto;
pub mod report;
pub mod samples;
pub mod server;
pub mod service_manager;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod witness;
