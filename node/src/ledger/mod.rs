//! Ledger (stub).
