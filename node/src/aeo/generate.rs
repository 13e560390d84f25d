//! Synthetic AEO registries.
