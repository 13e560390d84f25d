//! Synthetic sample messages of the standard customs payloads (`proto/dccf/v1/customs.proto`), for
//! the demo, the tests and the benchmarks.
//!
//! Everything here is invented: operators are clearly fictitious ("Example Trading B.V.", "Exemplo
//! Importadora Ltda."), their identifiers are made-up numbers that are not taken from any register,
//! vessels are called "EXAMPLE …", and no real person, company, shipment or administration's data
//! appears. The *shapes* are realistic — a Rotterdam → Santos container shipment with plausible
//! commodity codes, masses, values, UN/LOCODEs, ISO 6346 container numbers and IMO ship numbers with
//! correct check digits — so that policy checks, sizes and timings behave as they would with real
//! traffic.
//!
//! Every function is deterministic: the same arguments give the same message, byte for byte. Times
//! derive from a fixed base ([`BASE_TIME_MS`]) plus the sequence number, never from the clock.
//!
//! ```
//! use dccf_node::samples;
//! use prost::Message;
//!
//! let declaration = samples::pre_arrival_declaration(7);
//! assert_eq!(declaration, samples::pre_arrival_declaration(7));
//! assert!((900..=1200).contains(&declaration.encoded_len()));
//! ```

use crate::proto::v1::{
    Address, AeoProgramme, AeoStatus, AeoStatusQuery, AeoStatusResponse, Conveyance, GoodsItem,
    MonetaryAmount, OperatorIdentifierKind, Party, PreArrivalDeclaration, RiskAlert, RiskCategory,
    RiskSeverity, TransportMode,
};

/// The fixed time all sample timestamps derive from: 2026-03-02T08:00:00Z, in Unix milliseconds.
pub const BASE_TIME_MS: i64 = 1_772_438_400_000;

const SECOND_MS: i64 = 1_000;
const HOUR_MS: i64 = 3_600 * SECOND_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Fully qualified protobuf names of the customs message types this module produces.
/// The fully qualified protobuf names of the sample message types, e.g.
/// `"dccf.v1.PreArrivalDeclaration"`, as used in `EnvelopeHeader.message_type` and agreement flows.
#[must_use]
pub fn all_types() -> &'static [&'static str] {
    crate::proto::MESSAGE_TYPES
}

/// A serialized sample of the message type `message_type` (one of [`all_types`]) for sequence
/// number `seq`, or `None` if the type is not one of them. The AEO query asks about the consignor
/// of [`pre_arrival_declaration`]`(seq)`, and the response answers it with status VALID.
#[must_use]
pub fn sample_payload(message_type: &str, seq: u64) -> Option<Vec<u8>> {
    use prost::Message;
    let query = || aeo_status_query(consignor(seq).aeo, seq);
    match message_type {
        "dccf.v1.PreArrivalDeclaration" => Some(pre_arrival_declaration(seq).encode_to_vec()),
        "dccf.v1.AeoStatusQuery" => Some(query().encode_to_vec()),
        "dccf.v1.AeoStatusResponse" => {
            Some(aeo_status_response(&query(), AeoStatus::Valid).encode_to_vec())
        }
        "dccf.v1.RiskAlert" => Some(risk_alert(seq).encode_to_vec()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Pre-arrival declaration
// ---------------------------------------------------------------------------------------------

/// One line of the goods catalogue the sample shipments draw from.
struct Article {
    /// Commodity code (Mercosur NCM style, 8 digits).
    hs_code: &'static str,
    description: &'static str,
    /// UNECE Rec 21 package kind.
    package_kind: &'static str,
    /// Net mass per package, grams.
    net_grams_per_package: i64,
    /// Packaging mass per package, grams.
    tare_grams_per_package: i64,
    /// Invoice value per package, euro cents.
    value_cents_per_package: i64,
    country_of_origin: &'static str,
}

const CATALOGUE: &[Article] = &[
    Article {
        hs_code: "84818099",
        description: "Stainless steel ball valves DN50 PN40, flanged, 4 per case",
        package_kind: "CS",
        net_grams_per_package: 38_400,
        tare_grams_per_package: 4_100,
        value_cents_per_package: 118_000,
        country_of_origin: "IT",
    },
    Article {
        hs_code: "84137090",
        description: "Centrifugal water pumps, single stage, 7.5 kW, on pallet",
        package_kind: "PX",
        net_grams_per_package: 212_000,
        tare_grams_per_package: 22_500,
        value_cents_per_package: 364_000,
        country_of_origin: "NL",
    },
    Article {
        hs_code: "39041090",
        description: "Polyvinyl chloride resin, suspension grade, 25 kg bags",
        package_kind: "BG",
        net_grams_per_package: 25_000,
        tare_grams_per_package: 180,
        value_cents_per_package: 2_450,
        country_of_origin: "DE",
    },
    Article {
        hs_code: "90261019",
        description: "Electromagnetic flow meters DN80 with remote transmitter",
        package_kind: "CT",
        net_grams_per_package: 14_600,
        tare_grams_per_package: 1_900,
        value_cents_per_package: 186_500,
        country_of_origin: "NL",
    },
    Article {
        hs_code: "85044090",
        description: "Static frequency converters, 400 V three-phase, 11 kW",
        package_kind: "CT",
        net_grams_per_package: 9_800,
        tare_grams_per_package: 1_200,
        value_cents_per_package: 97_500,
        country_of_origin: "DE",
    },
    Article {
        hs_code: "73181500",
        description: "Hexagon bolts of stainless steel M16 x 80 with nuts",
        package_kind: "CT",
        net_grams_per_package: 21_000,
        tare_grams_per_package: 600,
        value_cents_per_package: 16_800,
        country_of_origin: "BE",
    },
    Article {
        hs_code: "84212100",
        description: "Water filtering units, cartridge type, for industrial use",
        package_kind: "PX",
        net_grams_per_package: 148_000,
        tare_grams_per_package: 22_500,
        value_cents_per_package: 241_000,
        country_of_origin: "NL",
    },
    Article {
        hs_code: "34039900",
        description: "Synthetic lubricating preparations in 20 litre drums",
        package_kind: "DR",
        net_grams_per_package: 18_200,
        tare_grams_per_package: 1_400,
        value_cents_per_package: 9_600,
        country_of_origin: "NL",
    },
];

/// Number of goods items per sample declaration (sized for ~1 KiB encoded).
const ITEMS_PER_DECLARATION: usize = 4;
/// Number of containers per sample declaration.
const CONTAINERS_PER_DECLARATION: u64 = 2;

/// A fictitious operator.
#[derive(Clone, Copy)]
struct Operator {
    name: &'static str,
    id: &'static str,
    kind: OperatorIdentifierKind,
    /// AEO authorisation number; empty if none.
    aeo: &'static str,
    street: &'static str,
    city: &'static str,
    postcode: &'static str,
    country: &'static str,
}

impl Operator {
    fn party(&self) -> Party {
        Party {
            name: self.name.to_owned(),
            identifier: self.id.to_owned(),
            identifier_kind: self.kind as i32,
            aeo_authorisation_number: (!self.aeo.is_empty()).then(|| self.aeo.to_owned()),
            address: Some(self.address()),
        }
    }

    fn address(&self) -> Address {
        Address {
            street: self.street.to_owned(),
            city: self.city.to_owned(),
            postcode: self.postcode.to_owned(),
            country: self.country.to_owned(),
        }
    }
}

const DECLARANT: Operator = Operator {
    name: "Example Forwarding B.V.",
    id: "NL000000101",
    kind: OperatorIdentifierKind::Eori,
    aeo: "NLAEOF00000101",
    street: "Examplekade 12",
    city: "Rotterdam",
    postcode: "3011 AA",
    country: "NL",
};

const CONSIGNORS: &[Operator] = &[
    Operator {
        name: "Example Trading B.V.",
        id: "NL000000102",
        kind: OperatorIdentifierKind::Eori,
        aeo: "NLAEOF00000102",
        street: "Voorbeeldweg 7",
        city: "Dordrecht",
        postcode: "3300 AB",
        country: "NL",
    },
    Operator {
        name: "Sample Valves Europe B.V.",
        id: "NL000000103",
        kind: OperatorIdentifierKind::Eori,
        aeo: "NLAEOS00000103",
        street: "Proefstraat 3",
        city: "Eindhoven",
        postcode: "5600 AC",
        country: "NL",
    },
    Operator {
        name: "Demo Process Equipment B.V.",
        id: "NL000000104",
        kind: OperatorIdentifierKind::Eori,
        aeo: "NLAEOC00000104",
        street: "Testlaan 21",
        city: "Zwolle",
        postcode: "8000 AD",
        country: "NL",
    },
];

const CONSIGNEE: Operator = Operator {
    name: "Exemplo Importadora Ltda.",
    id: "00000101000100",
    kind: OperatorIdentifierKind::Tin,
    aeo: "",
    street: "Rua Exemplo, 100",
    city: "São Paulo",
    postcode: "01000-000",
    country: "BR",
};

const NOTIFY_PARTY: Operator = Operator {
    name: "Exemplo Despachos Ltda.",
    id: "00000102000100",
    kind: OperatorIdentifierKind::Tin,
    aeo: "",
    street: "Avenida Exemplo, 200",
    city: "Santos",
    postcode: "11010-000",
    country: "BR",
};

/// Fictitious vessels of the weekly Rotterdam → Santos service: (name, IMO stem, flag).
const VESSELS: &[(&str, u32, &str)] = &[
    ("EXAMPLE EXPRESS", 900_001, "NL"),
    ("EXAMPLE HORIZON", 900_002, "PT"),
    ("EXAMPLE MERIDIAN", 900_003, "MT"),
];

fn consignor(seq: u64) -> &'static Operator {
    &CONSIGNORS[(seq % CONSIGNORS.len() as u64) as usize]
}

fn conveyance(seq: u64) -> Conveyance {
    let (name, stem, flag) = VESSELS[(seq % VESSELS.len() as u64) as usize];
    Conveyance {
        identifier: format!("IMO{}", imo_number(stem)),
        name: name.to_owned(),
        nationality: flag.to_owned(),
    }
}

fn master_bill_of_lading(seq: u64) -> String {
    format!("XMPL26{seq:08}")
}

fn house_bill_of_lading(seq: u64) -> String {
    format!("EXFW26{seq:08}")
}

fn containers(seq: u64) -> Vec<String> {
    (0..CONTAINERS_PER_DECLARATION)
        .map(|k| {
            iso6346_container_id(
                "XMP",
                seq.wrapping_mul(CONTAINERS_PER_DECLARATION).wrapping_add(k),
            )
        })
        .collect()
}

/// Creation time of declaration `seq`: one second per sequence number, repeating after 10^9
/// (about 31.7 years) so that times stay plausible and arithmetic never overflows.
fn declaration_created_at(seq: u64) -> i64 {
    BASE_TIME_MS + (seq % 1_000_000_000) as i64 * SECOND_MS
}

/// A synthetic pre-arrival declaration for sequence number `seq`: a sea container shipment from
/// Rotterdam (NLRTM) to Santos (BRSSZ) by a fictitious Dutch consignor to a fictitious Brazilian
/// consignee, with four goods items in two containers. Deterministic in `seq`; different `seq`
/// give different references, goods mixes, quantities and times (created at [`BASE_TIME_MS`] +
/// `seq` seconds, arriving about 16 days later). Encoded size is about 1 KiB (900–1,200 bytes).
#[must_use]
pub fn pre_arrival_declaration(seq: u64) -> PreArrivalDeclaration {
    let containers = containers(seq);
    let first = (seq % CATALOGUE.len() as u64) as usize;
    let goods_items: Vec<GoodsItem> = (0..ITEMS_PER_DECLARATION)
        .map(|i| {
            let article = &CATALOGUE[(first + i) % CATALOGUE.len()];
            let packages = 4 + (seq.wrapping_mul(7).wrapping_add(i as u64 * 13) % 29) as u32;
            let net = article.net_grams_per_package * i64::from(packages);
            let gross = net + article.tare_grams_per_package * i64::from(packages);
            // The first item is spread over both containers; the others sit in one each.
            let container_ids = if i == 0 {
                containers.clone()
            } else {
                vec![containers[i % containers.len()].clone()]
            };
            GoodsItem {
                sequence_number: i as u32 + 1,
                hs_code: article.hs_code.to_owned(),
                description: article.description.to_owned(),
                gross_mass_grams: gross,
                net_mass_grams: net,
                package_count: packages,
                package_kind: article.package_kind.to_owned(),
                customs_value: Some(MonetaryAmount {
                    currency: "EUR".to_owned(),
                    amount_minor: article.value_cents_per_package * i64::from(packages),
                }),
                country_of_origin: article.country_of_origin.to_owned(),
                container_ids,
            }
        })
        .collect();
    let created_at_ms = declaration_created_at(seq);
    PreArrivalDeclaration {
        declaration_reference: format!("PAD-NL-{seq:010}"),
        ucr: format!("6{}-{seq:08}", consignor(seq).id),
        master_transport_document: master_bill_of_lading(seq),
        house_transport_document: house_bill_of_lading(seq),
        created_at_ms,
        declarant: Some(DECLARANT.party()),
        consignor: Some(consignor(seq).party()),
        consignee: Some(CONSIGNEE.party()),
        notify_party: Some(NOTIFY_PARTY.party()),
        transport_mode: TransportMode::Sea as i32,
        conveyance: Some(conveyance(seq)),
        place_of_loading: "NLRTM".to_owned(),
        place_of_discharge: "BRSSZ".to_owned(),
        eta_ms: created_at_ms + 16 * DAY_MS + (seq % 24) as i64 * HOUR_MS,
        total_gross_mass_grams: goods_items.iter().map(|g| g.gross_mass_grams).sum(),
        total_packages: goods_items.iter().map(|g| g.package_count).sum(),
        goods_items,
    }
}

// ---------------------------------------------------------------------------------------------
// AEO status
// ---------------------------------------------------------------------------------------------

/// Fictitious AEO holders an AEO status response names: the one whose identifier was queried, or
/// else one chosen by a hash of the identifier.
const AEO_HOLDERS: &[Operator] = &[CONSIGNORS[0], CONSIGNORS[1], CONSIGNORS[2], DECLARANT];

/// Guesses the identifier scheme from its format: `CCAEO…` is an AEO authorisation number,
/// two letters + alphanumerics an EORI, digits only a TIN.
fn identifier_kind(operator_id: &str) -> OperatorIdentifierKind {
    let b = operator_id.as_bytes();
    let country_prefix = b.len() > 2 && b[..2].iter().all(u8::is_ascii_uppercase);
    if country_prefix && operator_id[2..].starts_with("AEO") {
        OperatorIdentifierKind::AeoAuthorisation
    } else if country_prefix && b[2..].iter().all(u8::is_ascii_alphanumeric) {
        OperatorIdentifierKind::Eori
    } else if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        OperatorIdentifierKind::Tin
    } else {
        OperatorIdentifierKind::Unspecified
    }
}

/// A synthetic AEO status query about `operator_id` (an AEO authorisation number such as
/// `"NLAEOF00000102"`, an EORI such as `"NL000000102"`, or a digits-only TIN), for sequence
/// number `seq`. The identifier kind and issuing country are derived from the identifier's format
/// (the country is empty for a TIN). Created at [`BASE_TIME_MS`] + `seq` seconds + 1 minute.
#[must_use]
pub fn aeo_status_query(operator_id: &str, seq: u64) -> AeoStatusQuery {
    let kind = identifier_kind(operator_id);
    let issuing_country = match kind {
        OperatorIdentifierKind::AeoAuthorisation | OperatorIdentifierKind::Eori => {
            operator_id[..2].to_owned()
        }
        _ => String::new(),
    };
    AeoStatusQuery {
        query_reference: format!("AEOQ-{seq:010}"),
        operator_identifier: operator_id.to_owned(),
        identifier_kind: kind as i32,
        issuing_country,
        purpose: "MRA: confirm AEO status of the consignor of an announced consignment before \
                  granting reduced controls"
            .to_owned(),
        created_at_ms: declaration_created_at(seq) + 60 * SECOND_MS,
    }
}

/// A synthetic answer to `query` with the given `status`, as the issuing administration would
/// send it, answered 1.5 s after the query was created. The query reference, operator identifier
/// and identifier kind are echoed. For VALID, SUSPENDED and REVOKED it also carries the
/// programme (taken from an `AEOC`/`AEOS`/`AEOF` authorisation number, else AEOF), the
/// authorisation number, validity and last status change, and a fictitious operator name and
/// address (fields an agreement may exclude); for NOT_FOUND and UNSPECIFIED only the echoed
/// fields, `status` and `as_of_ms` are set.
#[must_use]
pub fn aeo_status_response(query: &AeoStatusQuery, status: AeoStatus) -> AeoStatusResponse {
    let as_of_ms = query.created_at_ms + 1_500;
    let mut response = AeoStatusResponse {
        query_reference: query.query_reference.clone(),
        operator_identifier: query.operator_identifier.clone(),
        identifier_kind: query.identifier_kind,
        status: status as i32,
        as_of_ms,
        ..Default::default()
    };
    if matches!(status, AeoStatus::Unspecified | AeoStatus::NotFound) {
        return response;
    }
    let id = &query.operator_identifier;
    let hash = fnv1a(id.as_bytes());
    let programme = if id.contains("AEOC") {
        AeoProgramme::Aeoc
    } else if id.contains("AEOS") {
        AeoProgramme::Aeos
    } else {
        AeoProgramme::Aeof
    };
    let authorisation_number = if identifier_kind(id) == OperatorIdentifierKind::AeoAuthorisation {
        id.clone()
    } else {
        let country = if query.issuing_country.is_empty() {
            "XX"
        } else {
            &query.issuing_country
        };
        format!("{country}AEOF{:08}", hash % 100_000_000)
    };
    // Granted on a fixed date in 2016–2021, picked by the identifier's hash.
    let valid_from_ms = 1_451_606_400_000 + (hash % (6 * 365)) as i64 * DAY_MS;
    let (valid_until_ms, status_changed_at_ms) = match status {
        AeoStatus::Suspended => (0, as_of_ms - 20 * DAY_MS),
        AeoStatus::Revoked => (as_of_ms - 45 * DAY_MS, as_of_ms - 45 * DAY_MS),
        _ => (0, valid_from_ms),
    };
    // The fictitious operator with this identifier, else one picked by the hash.
    let holder = AEO_HOLDERS
        .iter()
        .find(|o| o.aeo == id.as_str() || o.id == id.as_str())
        .unwrap_or(&AEO_HOLDERS[(hash % AEO_HOLDERS.len() as u64) as usize]);
    response.programme = programme as i32;
    response.aeo_authorisation_number = authorisation_number;
    response.valid_from_ms = valid_from_ms;
    response.valid_until_ms = valid_until_ms;
    response.status_changed_at_ms = status_changed_at_ms;
    response.operator_name = Some(holder.name.to_owned());
    response.operator_address = Some(holder.address());
    response
}

// ---------------------------------------------------------------------------------------------
// Risk alerts
// ---------------------------------------------------------------------------------------------

/// A risk scenario: (category, severity, description, HS codes, recommended action, validity days).
type Scenario = (
    RiskCategory,
    RiskSeverity,
    &'static str,
    &'static [&'static str],
    &'static str,
    i64,
);

const SCENARIOS: &[Scenario] = &[
    (
        RiskCategory::Revenue,
        RiskSeverity::Medium,
        "Declared unit values of stainless steel ball valves from this consignor are about 60% \
         below the median of comparable exports over the last 90 days.",
        &["848180"],
        "Request the commercial invoice and proof of payment; verify the customs value before \
         release.",
        30,
    ),
    (
        RiskCategory::Drugs,
        RiskSeverity::High,
        "Booking matches concealment indicators: late change of consignee, first shipment of a \
         newly registered importer, goods inconsistent with the consignor's usual trade.",
        &[],
        "Scan the containers (NII) on discharge and examine them if the image shows anomalies.",
        14,
    ),
    (
        RiskCategory::Ipr,
        RiskSeverity::Medium,
        "Flow meters in this consignment may bear counterfeit trade marks; an application for \
         action by the right holder is on file.",
        &["902610"],
        "Detain the goods concerned and ask the right holder to verify samples.",
        60,
    ),
    (
        RiskCategory::Security,
        RiskSeverity::Critical,
        "Drums declared as lubricating preparations may contain an undeclared flammable liquid \
         (dangerous goods, UN 1993).",
        &["340399"],
        "Do not open without hazardous-materials precautions; examine on discharge.",
        7,
    ),
    (
        RiskCategory::HealthSps,
        RiskSeverity::Low,
        "Wood packaging from this consignor was found without ISPM 15 marks in earlier \
         shipments.",
        &[],
        "Check ISPM 15 marks on pallets and crates on discharge.",
        90,
    ),
    (
        RiskCategory::StrategicGoods,
        RiskSeverity::High,
        "Frequency converters may meet dual-use control parameters; the end user has not been \
         confirmed to the exporting administration.",
        &["850440"],
        "Verify the end-use statement and any licence before release.",
        30,
    ),
    (
        RiskCategory::Cites,
        RiskSeverity::Low,
        "Hardwood crates of this consignor were reported as made of CITES-listed rosewood \
         (Dalbergia spp.).",
        &["441510"],
        "Check the timber species of crates; seize if no CITES permit is presented.",
        90,
    ),
    (
        RiskCategory::Weapons,
        RiskSeverity::High,
        "Export X-ray image shows dense elongated objects in cases declared as valve bodies.",
        &["848180", "930510"],
        "Examine the cases physically on discharge; keep the container under customs control.",
        14,
    ),
];

/// A synthetic risk alert for sequence number `seq`, issued one hour after
/// [`pre_arrival_declaration`]`(seq)` was created and naming that declaration's shipment as its
/// subject (master and house bills of lading, containers, vessel, consignor and consignee). The
/// risk scenario (category, severity, text, HS codes, validity) cycles with `seq` through revenue,
/// drugs, IPR, security, health/SPS, strategic goods, CITES and weapons.
#[must_use]
pub fn risk_alert(seq: u64) -> RiskAlert {
    let (category, severity, description, hs_codes, action, valid_days) =
        SCENARIOS[(seq % SCENARIOS.len() as u64) as usize];
    let issued_at_ms = declaration_created_at(seq) + HOUR_MS;
    RiskAlert {
        alert_id: format!("RA-NL-{seq:010}"),
        issued_at_ms,
        severity: severity as i32,
        category: category as i32,
        description: description.to_owned(),
        transport_documents: vec![master_bill_of_lading(seq), house_bill_of_lading(seq)],
        container_ids: containers(seq),
        conveyance_identifier: conveyance(seq).identifier,
        hs_codes: hs_codes.iter().map(|&c| c.to_owned()).collect(),
        party_identifiers: vec![consignor(seq).id.to_owned(), CONSIGNEE.id.to_owned()],
        valid_until_ms: issued_at_ms + valid_days * DAY_MS,
        recommended_action: action.to_owned(),
        originating_unit: "NL Risk Analysis Unit RAU-01, Rotterdam".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Identifier helpers
// ---------------------------------------------------------------------------------------------

/// ISO 6346 container number: 3-letter owner code + `U` (freight container) + 6-digit serial +
/// check digit. `serial` is taken modulo 10^6.
fn iso6346_container_id(owner: &str, serial: u64) -> String {
    let body = format!("{owner}U{:06}", serial % 1_000_000);
    format!("{body}{}", iso6346_check_digit(&body))
}

/// The ISO 6346 check digit of the first 10 characters (owner code, category, serial).
fn iso6346_check_digit(body: &str) -> u32 {
    let sum: u32 = body
        .bytes()
        .take(10)
        .enumerate()
        .map(|(i, c)| {
            let value = if c.is_ascii_digit() {
                u32::from(c - b'0')
            } else {
                // A = 10 upwards, skipping the multiples of 11 (11, 22, 33).
                let v = 10 + u32::from(c.to_ascii_uppercase() - b'A');
                v + (v - 1) / 10
            };
            value << i
        })
        .sum();
    sum % 11 % 10
}

/// A 7-digit IMO ship number from a 6-digit stem: the check digit is the sum of the stem's digits
/// weighted 7, 6, 5, 4, 3, 2, modulo 10.
fn imo_number(stem: u32) -> String {
    let digits = format!("{:06}", stem % 1_000_000);
    let check: u32 = digits
        .bytes()
        .zip([7, 6, 5, 4, 3, 2])
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum::<u32>()
        % 10;
    format!("{digits}{check}")
}

/// 64-bit FNV-1a: a small, stable hash for deterministic choices.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn declaration_is_about_one_kib() {
        let seqs = (0..2_000).chain([99_999, 1_000_000, 99_999_999, u64::MAX]);
        for seq in seqs {
            let len = pre_arrival_declaration(seq).encoded_len();
            assert!((900..=1200).contains(&len), "seq {seq}: {len} bytes");
        }
    }

    #[test]
    fn samples_are_deterministic() {
        for seq in [0, 1, 42, 123_456] {
            assert_eq!(pre_arrival_declaration(seq), pre_arrival_declaration(seq));
            assert_eq!(risk_alert(seq), risk_alert(seq));
            let q = aeo_status_query("NLAEOF00000102", seq);
            assert_eq!(q, aeo_status_query("NLAEOF00000102", seq));
            assert_eq!(
                aeo_status_response(&q, AeoStatus::Valid),
                aeo_status_response(&q, AeoStatus::Valid)
            );
            for t in all_types() {
                assert_eq!(sample_payload(t, seq), sample_payload(t, seq));
            }
        }
        assert_ne!(pre_arrival_declaration(1), pre_arrival_declaration(2));
        assert_ne!(risk_alert(1), risk_alert(2));
    }

    #[test]
    fn declaration_is_consistent() {
        for seq in 0..100 {
            let d = pre_arrival_declaration(seq);
            assert_eq!(d.goods_items.len(), ITEMS_PER_DECLARATION);
            assert_eq!(
                d.total_gross_mass_grams,
                d.goods_items
                    .iter()
                    .map(|g| g.gross_mass_grams)
                    .sum::<i64>()
            );
            assert_eq!(
                d.total_packages,
                d.goods_items.iter().map(|g| g.package_count).sum::<u32>()
            );
            assert!(d.eta_ms > d.created_at_ms);
            assert_eq!(d.transport_mode(), TransportMode::Sea);
            for (i, g) in d.goods_items.iter().enumerate() {
                assert_eq!(g.sequence_number as usize, i + 1);
                assert!((6..=10).contains(&g.hs_code.len()));
                assert!(g.hs_code.bytes().all(|b| b.is_ascii_digit()));
                assert!(0 < g.net_mass_grams && g.net_mass_grams < g.gross_mass_grams);
                assert!(g.customs_value.as_ref().is_some_and(|v| v.amount_minor > 0));
                for c in &g.container_ids {
                    assert_eq!(c.len(), 11);
                    assert_eq!(iso6346_check_digit(c), u32::from(c.as_bytes()[10] - b'0'));
                }
            }
        }
        // Different sequence numbers never share a container or a bill of lading.
        let a = pre_arrival_declaration(3);
        let b = pre_arrival_declaration(4);
        assert_ne!(
            a.goods_items[0].container_ids,
            b.goods_items[0].container_ids
        );
        assert_ne!(a.master_transport_document, b.master_transport_document);
    }

    #[test]
    fn check_digits_match_published_examples() {
        // ISO 6346's well-known example, and an IMO number from the IMO scheme's description.
        assert_eq!(iso6346_check_digit("CSQU305438"), 3);
        assert_eq!(imo_number(907_472), "9074729");
        assert_eq!(iso6346_container_id("CSQ", 305_438), "CSQU3054383");
    }

    #[test]
    fn aeo_query_infers_identifier_kind_and_country() {
        let q = aeo_status_query("NLAEOF00000102", 5);
        assert_eq!(
            q.identifier_kind(),
            OperatorIdentifierKind::AeoAuthorisation
        );
        assert_eq!(q.issuing_country, "NL");
        let q = aeo_status_query("NL000000102", 5);
        assert_eq!(q.identifier_kind(), OperatorIdentifierKind::Eori);
        assert_eq!(q.issuing_country, "NL");
        let q = aeo_status_query("00000101000100", 5);
        assert_eq!(q.identifier_kind(), OperatorIdentifierKind::Tin);
        assert_eq!(q.issuing_country, "");
        let q = aeo_status_query("", 5);
        assert_eq!(q.identifier_kind(), OperatorIdentifierKind::Unspecified);
        assert_ne!(
            aeo_status_query("NL000000102", 1),
            aeo_status_query("NL000000102", 2)
        );
    }

    #[test]
    fn aeo_response_echoes_query_and_discloses_by_status() {
        let q = aeo_status_query("NLAEOS00000103", 9);
        let valid = aeo_status_response(&q, AeoStatus::Valid);
        assert_eq!(valid.query_reference, q.query_reference);
        assert_eq!(valid.operator_identifier, q.operator_identifier);
        assert_eq!(valid.identifier_kind, q.identifier_kind);
        assert_eq!(valid.status(), AeoStatus::Valid);
        assert_eq!(valid.programme(), AeoProgramme::Aeos);
        assert_eq!(valid.aeo_authorisation_number, "NLAEOS00000103");
        assert!(valid.valid_from_ms > 0 && valid.valid_from_ms < valid.as_of_ms);
        assert_eq!(valid.valid_until_ms, 0);
        assert_eq!(valid.operator_name.as_deref(), Some(CONSIGNORS[1].name));
        assert!(valid.operator_address.is_some());
        assert!(valid.as_of_ms > q.created_at_ms);

        let revoked = aeo_status_response(&q, AeoStatus::Revoked);
        assert!(revoked.valid_until_ms > 0 && revoked.valid_until_ms <= revoked.as_of_ms);
        assert_eq!(revoked.status_changed_at_ms, revoked.valid_until_ms);
        let suspended = aeo_status_response(&q, AeoStatus::Suspended);
        assert!(suspended.status_changed_at_ms > suspended.valid_from_ms);

        // Queried by EORI: the response supplies the authorisation number.
        let by_eori = aeo_status_response(&aeo_status_query("NL000000102", 9), AeoStatus::Valid);
        assert!(by_eori.aeo_authorisation_number.starts_with("NLAEOF"));
        assert_eq!(by_eori.programme(), AeoProgramme::Aeof);

        let missing = aeo_status_response(&q, AeoStatus::NotFound);
        assert_eq!(missing.status(), AeoStatus::NotFound);
        assert_eq!(missing.programme(), AeoProgramme::Unspecified);
        assert!(missing.aeo_authorisation_number.is_empty());
        assert!(missing.operator_name.is_none() && missing.operator_address.is_none());
        assert_eq!(
            (missing.valid_from_ms, missing.status_changed_at_ms),
            (0, 0)
        );
        assert_eq!(missing.query_reference, q.query_reference);
    }

    #[test]
    fn risk_alert_names_the_declared_shipment() {
        for seq in 0..SCENARIOS.len() as u64 * 2 {
            let alert = risk_alert(seq);
            let d = pre_arrival_declaration(seq);
            assert!(
                alert
                    .transport_documents
                    .contains(&d.master_transport_document)
            );
            assert_eq!(alert.container_ids, d.goods_items[0].container_ids);
            assert_eq!(
                alert.conveyance_identifier,
                d.conveyance.unwrap().identifier
            );
            assert!(
                alert
                    .party_identifiers
                    .contains(&d.consignor.unwrap().identifier)
            );
            assert_ne!(alert.category(), RiskCategory::Unspecified);
            assert_ne!(alert.severity(), RiskSeverity::Unspecified);
            assert!(alert.valid_until_ms > alert.issued_at_ms);
            assert!(alert.hs_codes.iter().all(|c| c.len() >= 6));
        }
        let categories: std::collections::HashSet<i32> = (0..SCENARIOS.len() as u64)
            .map(|s| risk_alert(s).category)
            .collect();
        assert_eq!(categories.len(), SCENARIOS.len());
    }

    #[test]
    fn every_type_resolves_and_its_sample_decodes() {
        let pool = crate::proto::descriptor_pool();
        assert_eq!(all_types().len(), 4);
        for &name in all_types() {
            let descriptor = pool
                .get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} missing from the descriptor pool"));
            let bytes = sample_payload(name, 3).expect("sample for every listed type");
            let dynamic = prost_reflect::DynamicMessage::decode(descriptor, bytes.as_slice())
                .expect("sample decodes under its descriptor");
            // Every field the sample sets is known to the descriptor, and nothing is lost.
            assert_eq!(dynamic.unknown_fields().count(), 0, "{name}");
            assert_eq!(dynamic.encode_to_vec(), bytes, "{name}");
        }
        assert_eq!(sample_payload("dccf.v1.Envelope", 3), None);
    }
}
