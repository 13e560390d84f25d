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

/// Programme of the i-th operator (mostly AEOF, some AEOS and AEOC) and its letter in the id,
/// from `i` alone so that [`operator_id`] can name it.
fn programme(i: u64) -> (AeoProgramme, &'static str) {
    match mix(i) % 10 {
        0 => (AeoProgramme::Aeoc, "C"),
        1 | 2 => (AeoProgramme::Aeos, "S"),
        _ => (AeoProgramme::Aeof, "F"),
    }
}

/// The operator id of the i-th generated operator (0-based), e.g. `BRAEOF0000000001`.
pub fn operator_id(country: &str, i: u64) -> String {
    numbered(&[country, "AEO", programme(i).1], i + 1, 10, "")
}

/// `head`, `n` zero-padded to `width` digits, then `tail`, in one string allocated at its final
/// size (cheaper than `format!`, which costs more than the rest of a record).
fn numbered(head: &[&str], n: u64, width: usize, tail: &str) -> String {
    let digits = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    let len = head.iter().map(|h| h.len()).sum::<usize>() + digits.max(width) + tail.len();
    let mut s = String::with_capacity(len);
    head.iter().for_each(|h| s.push_str(h));
    s.extend(std::iter::repeat_n('0', width.saturating_sub(digits)));
    let mut buf = [0u8; 20];
    let mut rest = n;
    for d in buf[..digits].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    s.extend(buf[..digits].iter().map(|&d| char::from(d)));
    s.push_str(tail);
    s
}

/// Deterministic synthetic registry of `count` operators of `country` (two letters) from `seed`:
/// about 95 % valid, 3 % suspended, 2 % revoked, authorised between 2015 and 2025.
pub fn generate(country: &str, count: u64, seed: u64) -> impl Iterator<Item = AeoRegistryRecord> {
    // 2015-01-01, and ten years of days from there.
    const START: i64 = 1_420_070_400_000;
    const DAY: i64 = 86_400_000;
    const DAYS: u64 = 3653;
    let country = country.to_owned();
    (0..count).map(move |i| {
        let r = mix(seed ^ mix(i));
        let status = match r % 100 {
            0..=2 => AeoStatus::Suspended,
            3..=4 => AeoStatus::Revoked,
            _ => AeoStatus::Valid,
        };
        let valid_from = START + ((r >> 8) % DAYS) as i64 * DAY;
        // A suspension or revocation is a later change than the authorisation.
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
        let (programme, _) = programme(i);
        AeoRegistryRecord {
            operator_id: operator_id(&country, i),
            // Unique per i, digits only: a TIN no real register issues (leading zeros).
            tin: numbered(&[], 10_000_000_000 + i, 14, ""),
            name: numbered(
                &[pick(WORDS, 12), " ", pick(TRADES, 16), " "],
                i + 1,
                7,
                " Ltd",
            ),
            address: Some(Address {
                street: numbered(&["Example street "], (r >> 20) % 999 + 1, 1, ""),
                city: pick(CITIES, 28).to_owned(),
                postcode: numbered(&[], (r >> 32) % 100_000, 5, ""),
                country: country.clone(),
            }),
            status: status as i32,
            programme: programme as i32,
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
    fn the_same_seed_gives_the_same_registry_another_seed_other_statuses() {
        let a: Vec<_> = generate("BR", 2000, 1).collect();
        assert_eq!(a, generate("BR", 2000, 1).collect::<Vec<_>>());
        let statuses = |seed| {
            generate("BR", 2000, seed)
                .map(|r| r.status)
                .collect::<Vec<_>>()
        };
        assert_ne!(statuses(1), statuses(2));
        // Ids do not depend on the seed: benchmarks name operators without the registry.
        let ids = |seed| {
            generate("BR", 50, seed)
                .map(|r| r.operator_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(1), ids(2));
    }

    #[test]
    fn operator_id_names_the_ith_operator_and_its_programme() {
        for (i, r) in generate("NL", 3000, 9).enumerate() {
            let id = operator_id("NL", i as u64);
            assert_eq!(r.operator_id, id);
            let letter = match AeoProgramme::try_from(r.programme).unwrap() {
                AeoProgramme::Aeoc => "C",
                AeoProgramme::Aeos => "S",
                AeoProgramme::Aeof => "F",
                AeoProgramme::Unspecified => panic!("{r:?}"),
            };
            assert_eq!(id, format!("NLAEO{letter}{:010}", i + 1));
        }
    }

    #[test]
    fn every_record_is_valid_unique_and_fictitious() {
        let records: Vec<_> = generate("BR", 20_000, 3).collect();
        let ids: std::collections::HashSet<_> = records.iter().map(|r| &r.operator_id).collect();
        let tins: std::collections::HashSet<_> = records.iter().map(|r| &r.tin).collect();
        assert_eq!((ids.len(), tins.len()), (20_000, 20_000));
        for r in &records {
            assert_eq!(crate::aeo::import::validate(r), Ok(()), "{r:?}");
            let a = r.address.as_ref().unwrap();
            assert_eq!(a.country, "BR");
            assert!(CITIES.contains(&a.city.as_str()) && a.street.starts_with("Example street "));
            assert!(WORDS.iter().any(|w| r.name.starts_with(w)) && r.name.ends_with(" Ltd"));
            assert!(r.tin.bytes().all(|b| b.is_ascii_digit()) && r.tin.starts_with('0'));
        }
    }

    #[test]
    fn statuses_programmes_and_dates_are_mixed_as_documented() {
        let records: Vec<_> = generate("BR", 20_000, 4).collect();
        let share = |f: &dyn Fn(&AeoRegistryRecord) -> bool| {
            records.iter().filter(|r| f(r)).count() * 1000 / records.len()
        };
        let status = |s: AeoStatus| move |r: &AeoRegistryRecord| r.status == s as i32;
        assert!((930..=970).contains(&share(&status(AeoStatus::Valid))));
        assert!((20..=40).contains(&share(&status(AeoStatus::Suspended))));
        assert!((12..=28).contains(&share(&status(AeoStatus::Revoked))));
        assert!(share(&|r| r.programme == AeoProgramme::Aeof as i32) > 600);
        assert!(share(&|r| r.programme == AeoProgramme::Aeoc as i32) > 50);
        assert!(share(&|r| r.valid_until_ms == 0) > 800);
        let (y2015, y2026) = (1_420_070_400_000, 1_767_225_600_000);
        for r in &records {
            assert!((y2015..y2026).contains(&r.valid_from_ms), "{r:?}");
            assert!(
                r.last_change_ms >= r.valid_from_ms && r.last_change_ms < y2026,
                "{r:?}"
            );
            assert!(
                r.valid_until_ms == 0 || r.valid_until_ms > r.valid_from_ms,
                "{r:?}"
            );
        }
    }

    #[test]
    fn numbered_pads_like_format() {
        for n in [0, 7, 10, 99_999, 123_456, 10_000_000_000, u64::MAX] {
            for width in [1, 5, 10, 14, 25] {
                let s = numbered(&["A", "b "], n, width, " z");
                assert_eq!(s, format!("Ab {n:0width$} z"));
                assert_eq!(s.capacity(), s.len(), "{s}");
            }
        }
    }
}
