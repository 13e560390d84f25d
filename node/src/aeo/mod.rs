//! AEO mutual recognition (DESIGN §8): the administration's own AEO registry, mirrors of partner
//! registries kept current by signed snapshots and sequenced signed deltas, and signed lookups.

pub mod generate;
pub mod import;
