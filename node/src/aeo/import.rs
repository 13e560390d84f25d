//! Reading AEO registry files (CSV, JSON). (Placeholder until the parser lands.)
use crate::proto::v1::AeoRegistryRecord;

/// File format of a registry import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CSV.
    Csv,
    /// JSON.
    Json,
}
impl Format {
    /// By name.
    pub fn from_name(name: &str) -> Result<Format, ImportError> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(ImportError::Format(other.into())),
        }
    }
    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}
/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Format.
    #[error("unknown format {0}")]
    Format(String),
}
/// Parse.
pub fn parse(_format: Format, _bytes: &[u8]) -> Result<Vec<AeoRegistryRecord>, ImportError> {
    Err(ImportError::Format("x".into()))
}
/// Validate.
pub fn validate(_r: &AeoRegistryRecord) -> Result<(), String> {
    Ok(())
}
