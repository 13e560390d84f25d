//! Agreement templates ("utility blocks"): `dccf-node agreement new` fills one with the parties'
//! cards and writes a file every party can then review, sign and verify.

use std::path::Path;

use super::{AgreementDoc, Flow};
use crate::identity::card::PartyCard;

/// The templates `agreement new` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// Bilateral AEO mutual recognition: each side may query the other's AEO status and gets an
    /// answer limited to status and validity (no operator name or address).
    AeoMra,
    /// Multilateral pre-arrival exchange: every party may send pre-arrival declarations to every
    /// other party.
    PreArrival,
    /// Risk-alert network: every party may send risk alerts to every other party.
    RiskAlerts,
}

/// Fields an AEO answer may carry under the MRA template: status and validity, never identity.
pub const AEO_STATUS_FIELDS: &[&str] = &[
    "query_reference",
    "operator_identifier",
    "identifier_kind",
    "status",
    "programme",
    "aeo_authorisation_number",
    "valid_from_ms",
    "valid_until_ms",
    "status_changed_at_ms",
    "as_of_ms",
];

/// A declaration's header-level fields (everything but the goods items), for allowlists that
/// then list goods-item fields one by one.
pub const PRE_ARRIVAL_HEADER_FIELDS: &[&str] = &[
    "declaration_reference",
    "ucr",
    "master_transport_document",
    "house_transport_document",
    "created_at_ms",
    "declarant",
    "consignor",
    "consignee",
    "notify_party",
    "transport_mode",
    "conveyance",
    "place_of_loading",
    "place_of_discharge",
    "eta_ms",
    "total_gross_mass_grams",
    "total_packages",
];

/// Errors filling a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A party card could not be read or is invalid.
    #[error("party card {path}: {detail}")]
    Card {
        /// The card file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The parties do not fit the template.
    #[error("template {template:?}: {detail}")]
    Parties {
        /// The template.
        template: Template,
        /// What is wrong.
        detail: String,
    },
}

fn spanned(items: &[&str]) -> Vec<toml::Spanned<String>> {
    items
        .iter()
        .map(|f| toml::Spanned::new(0..0, (*f).to_owned()))
        .collect()
}

fn flow(message_type: &str, from: &str, to: &str, fields: &[&str]) -> Flow {
    Flow {
        message_type: message_type.into(),
        from: from.into(),
        to: to.into(),
        fields: spanned(fields),
        rate_limit_per_minute: None,
        consent_required: false,
        retention_days: None,
        onward_transfer: false,
        allow: Default::default(),
    }
}

/// Reads party cards from files.
pub fn read_cards(paths: &[std::path::PathBuf]) -> Result<Vec<PartyCard>, TemplateError> {
    paths
        .iter()
        .map(|p| {
            let card_error = |detail: String| TemplateError::Card {
                path: p.clone(),
                detail,
            };
            let text = std::fs::read_to_string(p).map_err(|e| card_error(e.to_string()))?;
            PartyCard::from_toml(&text).map_err(|e| card_error(e.to_string()))
        })
        .collect()
}

/// Fills `template` for `parties`, valid over `[valid_from, valid_until)`.
pub fn fill(
    template: Template,
    id: &str,
    parties: Vec<PartyCard>,
    valid_from: toml::value::Datetime,
    valid_until: toml::value::Datetime,
) -> Result<AgreementDoc, TemplateError> {
    let admins: Vec<String> = parties.iter().map(|p| p.admin.clone()).collect();
    let wrong = |detail: String| TemplateError::Parties { template, detail };
    let mut unique = admins.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != admins.len() {
        return Err(wrong(format!(
            "an administration is listed twice ({})",
            admins.join(", ")
        )));
    }
    let pairs = || {
        admins.iter().flat_map(|a| {
            admins
                .iter()
                .filter(move |b| *b != a)
                .map(move |b| (a.as_str(), b.as_str()))
        })
    };
    let (title, purposes, flows): (String, Vec<String>, Vec<Flow>) = match template {
        Template::AeoMra => {
            if admins.len() != 2 {
                return Err(wrong(format!(
                    "an MRA is bilateral: give exactly 2 parties, not {}",
                    admins.len()
                )));
            }
            (
                format!("AEO mutual recognition {}", admins.join("-")),
                vec!["granting MRA benefits to the partner's authorised economic operators".into()],
                pairs()
                    .flat_map(|(a, b)| {
                        [
                            flow("dccf.v1.AeoStatusQuery", a, b, &["*"]),
                            flow("dccf.v1.AeoStatusResponse", b, a, AEO_STATUS_FIELDS),
                        ]
                    })
                    .collect(),
            )
        }
        Template::PreArrival | Template::RiskAlerts => {
            if admins.len() < 2 {
                return Err(wrong("needs at least 2 parties".into()));
            }
            let (title, purpose, message_type) = if template == Template::PreArrival {
                (
                    "Pre-arrival data exchange",
                    "risk assessment of goods before arrival",
                    "dccf.v1.PreArrivalDeclaration",
                )
            } else {
                (
                    "Risk-alert network",
                    "customs risk management and enforcement",
                    "dccf.v1.RiskAlert",
                )
            };
            (
                format!("{title} {}", admins.join("-")),
                vec![purpose.into()],
                pairs()
                    .map(|(a, b)| flow(message_type, a, b, &["*"]))
                    .collect(),
            )
        }
    };
    Ok(AgreementDoc {
        id: id.into(),
        version: 1,
        title,
        legal_basis: "TO BE COMPLETED: the legal instrument the exchange rests on".into(),
        purposes,
        valid_from,
        valid_until,
        parties,
        flows,
    })
}

/// Writes `doc` to `out` (refusing to overwrite) and checks that the written file loads.
pub fn write(doc: &AgreementDoc, out: &Path) -> Result<(), super::AgreementError> {
    let io = |source| super::AgreementError::Io {
        path: out.to_owned(),
        source,
    };
    let text = toml::to_string(doc).map_err(|e| super::AgreementError::Invalid {
        path: out.to_owned(),
        detail: e.to_string(),
    })?;
    let header =
        "# Review every line with your legal and data-protection officers before signing.\n";
    let bytes = format!("{header}{text}");
    super::Agreement::parse(out, bytes.as_bytes())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io)?;
    std::io::Write::write_all(&mut file, bytes.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::test_party;

    fn window() -> (toml::value::Datetime, toml::value::Datetime) {
        (
            "2026-01-01T00:00:00Z".parse().unwrap(),
            "2027-01-01T00:00:00Z".parse().unwrap(),
        )
    }

    #[test]
    fn the_mra_template_limits_answers_to_status_fields_both_ways() {
        let (from, until) = window();
        let doc = fill(
            Template::AeoMra,
            "mra",
            vec![test_party("NL").card, test_party("BR").card],
            from,
            until,
        )
        .unwrap();
        assert_eq!(doc.flows.len(), 4);
        let answers: Vec<_> = doc
            .flows
            .iter()
            .filter(|f| f.message_type.ends_with("Response"))
            .collect();
        assert_eq!(answers.len(), 2);
        assert!(
            answers
                .iter()
                .all(|f| !f.allows_field("operator_name") && f.allows_field("status"))
        );
    }

    #[test]
    fn multilateral_templates_connect_every_pair() {
        let (from, until) = window();
        let cards = vec![
            test_party("NL").card,
            test_party("BR").card,
            test_party("DE").card,
        ];
        let doc = fill(Template::PreArrival, "pa", cards, from, until).unwrap();
        assert_eq!(doc.flows.len(), 6);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pa.toml");
        write(&doc, &out).unwrap();
        assert!(write(&doc, &out).is_err(), "never overwrites");
        let loaded = crate::agreement::Agreement::load(&out).unwrap();
        assert_eq!(loaded.unsigned_by, ["BR", "DE", "NL"]);
    }

    #[test]
    fn wrong_party_counts_are_refused() {
        let (from, until) = window();
        let three = vec![
            test_party("NL").card,
            test_party("BR").card,
            test_party("DE").card,
        ];
        let err = fill(Template::AeoMra, "mra", three, from, until)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly 2 parties"), "{err}");
        let nl = test_party("NL").card;
        let err = fill(
            Template::RiskAlerts,
            "ra",
            vec![nl.clone(), nl],
            from,
            until,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }
}
