//! Identities (stub).
