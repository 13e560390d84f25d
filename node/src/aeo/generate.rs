//! Synthetic AEO registries for the demo, tests and benchmarks: fictitious operators only, never
//! real operator data. Deterministic: the same country, count and seed give the same registry,
//! and [`operator_id`] names the i-th operator without generating the others.

use crate::proto::v1::{Address, AeoProgramme, AeoRegistryRecord, AeoStatus};

const WORDS: &[&str] = &[
    "Synthetic",
    "Example",
    "Sample",
    "Placeholder",
    "Fictional",
    "Imaginary",
    "Notional",
    "Model",
];
const TRADES: &[&str] = &[
    "Freight",
    "Logistics",
    "Trading",
    "Shipping",
    "Imports",
    "Exports",
    "Forwarding",
    "Cargo",
];
const CITIES: &[&str] = &[
    "Exampletown",
    "Sampleville",
    "Testport",
    "Demo City",
    "Mockbury",
    "Fictionham",
];

/// SplitMix64: a tiny, well-known mixing function; enough for synthetic data.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Programme of the i-th operator (mostly AEOF, some AEOS and AEOC), from `i` alone so that
/// [`operator_id`] can name it.
fn programme(i: u64) -> (AeoProgramme, char) {
    match mix(i) % 10 {
        0 => (AeoProgramme::Aeoc, 'C'),
        1 | 2 => (AeoProgramme::Aeos, 'S'),
        _ => (AeoProgramme::Aeof, 'F'),
    }
}

/// The operator id of the i-th generated operator (0-based), e.g. `BRAEOF0000000001`.
pub fn operator_id(country: &str, i: u64) -> String {
    format!("{country}AEO{}{:010}", programme(i).1, i + 1)
}

/// Deterministic synthetic registry of `count` operators of `country` (two letters) from `seed`:
/// about 95 % valid, 3 % suspended, 2 % revoked, authorised between 2015 and 2025.
pub fn generate(country: &str, count: u64, seed: u64) -> impl Iterator<Item = AeoRegistryRecord> {
    let country = country.to_owned();
    (0..count).map(move |i| {
        let r = mix(seed ^ mix(i));
        let status = match r % 100 {
            0..=2 => AeoStatus::Suspended,
            3..=4 => AeoStatus::Revoked,
            _ => AeoStatus::Valid,
        };
        // 2015-01-01 .. 2025-01-01, whole days.
        const START: i64 = 1_420_070_400_000;
        const DAY: i64 = 86_400_000;
        let valid_from = START + ((r >> 8) % 3653) as i64 * DAY;
        let last_change = if status == AeoStatus::Valid {
            valid_from
        } else {
            valid_from + ((r >> 24) % 365) as i64 * DAY
        };
        let valid_until = if (r >> 40).is_multiple_of(10) {
            valid_from + 5 * 365 * DAY
        } else {
            0
        };
        let pick =
            |list: &[&'static str], shift: u32| list[((r >> shift) % list.len() as u64) as usize];
        AeoRegistryRecord {
            operator_id: operator_id(&country, i),
            tin: format!("{:014}", 10_000_000_000 + i),
            name: format!("{} {} {:07} Ltd", pick(WORDS, 12), pick(TRADES, 16), i + 1),
            address: Some(Address {
                street: format!("Example street {}", (r >> 20) % 999 + 1),
                city: pick(CITIES, 28).to_owned(),
                postcode: format!("{:05}", (r >> 32) % 100_000),
                country: country.clone(),
            }),
            status: status as i32,
            programme: programme(i).0 as i32,
            valid_from_ms: valid_from,
            valid_until_ms: valid_until,
            last_change_ms: last_change,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_unique_and_named_by_operator_id() {
        let a: Vec<_> = generate("BR", 2000, 1).collect();
        let b: Vec<_> = generate("BR", 2000, 1).collect();
        assert_eq!(a, b);
        let c: Vec<_> = generate("BR", 2000, 2).collect();
        assert_ne!(
            a.iter().map(|r| r.status).collect::<Vec<_>>(),
            c.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        let ids: std::collections::HashSet<_> = a.iter().map(|r| r.operator_id.clone()).collect();
        let tins: std::collections::HashSet<_> = a.iter().map(|r| r.tin.clone()).collect();
        assert_eq!((ids.len(), tins.len()), (2000, 2000));
        for (i, r) in a.iter().enumerate() {
            assert_eq!(r.operator_id, operator_id("BR", i as u64));
            assert!(crate::aeo::import::validate(r).is_ok(), "{r:?}");
        }
        let suspended = a
            .iter()
            .filter(|r| r.status == AeoStatus::Suspended as i32)
            .count();
        assert!(
            (20..=120).contains(&suspended),
            "{suspended} suspended of 2000"
        );
    }
}
