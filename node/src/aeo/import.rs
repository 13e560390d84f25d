//! Reading AEO registry files (CSV, JSON).
