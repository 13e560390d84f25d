//! # DCCF node
//!
//! placeholder crate doc (layout section written at the end).

pub mod identity;
pub mod ledger;
pub mod proto;
