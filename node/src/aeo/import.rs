//! Reading AEO registry files: CSV or JSON with the documented columns ([`COLUMNS`]), validated
//! as a whole. Either every record is good or the first error (in file order) names the line and
//! field; nothing is half-imported.
//!
//! Columns: `operator_id` (AEO authorisation number, 1–64 of `A-Z0-9`), `tin` (optional, 1–32
//! of `A-Za-z0-9`), `name`, `street` (optional), `city`, `postcode` (optional), `country`
//! (ISO 3166 alpha-2), `status` (`valid` / `suspended` / `revoked`), `programme` (`AEOC` /
//! `AEOS` / `AEOF`), `valid_from`, `valid_to` (optional: open-ended), `last_change`. Dates are
//! `YYYY-MM-DD` (midnight UTC) or RFC 3339 date-times. JSON files hold an array of objects with
//! exactly these keys (string values; optional ones may be null).

use std::collections::HashMap;

use crate::proto::v1::{Address, AeoProgramme, AeoRegistryRecord, AeoStatus};

/// The documented columns, in order.
pub const COLUMNS: &[&str] = &[
    "operator_id",
    "tin",
    "name",
    "street",
    "city",
    "postcode",
    "country",
    "status",
    "programme",
    "valid_from",
    "valid_to",
    "last_change",
];

/// Columns that may be empty.
const OPTIONAL: &[&str] = &["tin", "street", "postcode", "valid_to"];

/// Longest free-text field (name, street, city, postcode).
const MAX_TEXT: usize = 200;

/// File format of a registry import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of flat objects.
    Json,
}

impl Format {
    /// `"csv"` or `"json"` (any case).
    pub fn from_name(name: &str) -> Result<Format, ImportError> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(ImportError::Format(format!(
                "unknown registry format {name:?}: expected csv or json"
            ))),
        }
    }

    /// From a file extension (`.csv`, `.json`).
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?;
        Format::from_name(ext).ok()
    }

    /// `"csv"` / `"json"`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// Why a registry file was refused; one line, naming line and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// A field is invalid.
    #[error("line {line}, field {field}: {detail}")]
    Field {
        /// 1-based line of the record.
        line: u64,
        /// The column.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// The same operator id or TIN twice.
    #[error("line {line}: {what} {id} already appears on line {first_line}")]
    Duplicate {
        /// The second occurrence.
        line: u64,
        /// The first.
        first_line: u64,
        /// "operator_id" or "tin".
        what: &'static str,
        /// The duplicated value.
        id: String,
    },
    /// The file does not parse.
    #[error("line {line}: {detail}")]
    Syntax {
        /// 1-based line.
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// The CSV header is wrong.
    #[error("header: {detail}")]
    Header {
        /// What is wrong.
        detail: String,
    },
    /// Unknown format.
    #[error("{0}")]
    Format(String),
    /// No records.
    #[error("the file holds no records")]
    Empty,
}

/// Parses and validates a whole file.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Vec<AeoRegistryRecord>, ImportError> {
    let rows = match format {
        Format::Csv => csv_rows(bytes)?,
        Format::Json => json_rows(bytes)?,
    };
    if rows.is_empty() {
        return Err(ImportError::Empty);
    }
    let mut ids: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    let mut tins: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let record = record_of(&row).map_err(|(field, detail)| field_error(line, field, detail))?;
        validate_fields(&record).map_err(|(field, detail)| field_error(line, field, detail))?;
        if let Some(first) = ids.insert(record.operator_id.clone(), line) {
            return Err(duplicate(line, first, "operator_id", &record.operator_id));
        }
        if !record.tin.is_empty()
            && let Some(first) = tins.insert(record.tin.clone(), line)
        {
            return Err(duplicate(line, first, "tin", &record.tin));
        }
        out.push(record);
    }
    Ok(out)
}

/// Validates one record (Gateway single-operator updates too); the error is `field: problem`.
pub fn validate(record: &AeoRegistryRecord) -> Result<(), String> {
    validate_fields(record).map_err(|(field, detail)| format!("{field}: {detail}"))
}

/// Writes records so that [`parse`] reads them back exactly.
pub fn write(
    format: Format,
    records: &[AeoRegistryRecord],
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(COLUMNS)?;
            for r in records {
                w.write_record(row_of(r))?;
            }
            w.flush()
        }
        Format::Json => {
            writeln!(out, "[")?;
            for (i, r) in records.iter().enumerate() {
                let object: serde_json::Map<String, serde_json::Value> = COLUMNS
                    .iter()
                    .zip(row_of(r))
                    .map(|(k, v)| {
                        let value = if v.is_empty() && OPTIONAL.contains(k) {
                            serde_json::Value::Null
                        } else {
                            serde_json::Value::String(v)
                        };
                        ((*k).to_owned(), value)
                    })
                    .collect();
                let comma = if i + 1 < records.len() { "," } else { "" };
                writeln!(out, "  {}{comma}", serde_json::Value::Object(object))?;
            }
            writeln!(out, "]")
        }
    }
}

/// Import requests carrying `data` in chunks of at most 1 MiB (well under the Gateway's message
/// limit), the format named on the first.
pub fn requests(format: Format, data: &[u8]) -> Vec<crate::proto::v1::ImportAeoRequest> {
    let mut chunks: Vec<crate::proto::v1::ImportAeoRequest> = data
        .chunks(1 << 20)
        .map(|c| crate::proto::v1::ImportAeoRequest {
            format: String::new(),
            data: c.to_vec(),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(Default::default());
    }
    chunks[0].format = format.name().to_owned();
    chunks
}

// ---- rows -------------------------------------------------------------------------------------

/// One record's cells by column, with its line.
type Row = HashMap<&'static str, String>;

fn field_error(line: u64, field: &str, detail: String) -> ImportError {
    ImportError::Field {
        line,
        field: field.to_owned(),
        detail,
    }
}

fn duplicate(line: u64, first_line: u64, what: &'static str, id: &str) -> ImportError {
    ImportError::Duplicate {
        line,
        first_line,
        what,
        id: id.to_owned(),
    }
}

fn column(name: &str) -> Option<&'static str> {
    COLUMNS.iter().copied().find(|c| *c == name)
}

fn csv_rows(bytes: &[u8]) -> Result<Vec<(u64, Row)>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(bytes);
    let header = reader.headers().map_err(|e| csv_error(&e, 1))?.clone();
    let mut order = Vec::with_capacity(header.len());
    for name in header.iter() {
        let c = column(name).ok_or_else(|| ImportError::Header {
            detail: format!("unknown column {name:?} (expected {})", COLUMNS.join(",")),
        })?;
        if order.contains(&c) {
            return Err(ImportError::Header {
                detail: format!("column {c} appears twice"),
            });
        }
        order.push(c);
    }
    if let Some(missing) = COLUMNS.iter().find(|c| !order.contains(c)) {
        return Err(ImportError::Header {
            detail: format!("column {missing} is missing"),
        });
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&e, 0))?;
        let line = record.position().map_or(0, |p| p.line());
        let row = order
            .iter()
            .zip(record.iter())
            .map(|(c, v)| (*c, v.to_owned()))
            .collect();
        rows.push((line, row));
    }
    Ok(rows)
}

fn csv_error(e: &csv::Error, default_line: u64) -> ImportError {
    let line = e.position().map_or(default_line, |p| p.line());
    let detail = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_owned(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields, the header has {expected_len}"),
        _ => e.to_string(),
    };
    ImportError::Syntax { line, detail }
}

fn json_rows(bytes: &[u8]) -> Result<Vec<(u64, Row)>, ImportError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ImportError::Syntax {
        line: line_at(bytes, e.valid_up_to()),
        detail: "not valid UTF-8".into(),
    })?;
    let values: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| ImportError::Syntax {
            line: e.line() as u64,
            detail: format!("not a JSON array of registry records: {e}"),
        })?;
    let lines = element_lines(bytes);
    let mut rows = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(0);
        let serde_json::Value::Object(object) = value else {
            return Err(ImportError::Syntax {
                line,
                detail: format!("record {} is not an object", i + 1),
            });
        };
        let mut row = Row::new();
        for (key, v) in object {
            let c = column(&key).ok_or_else(|| {
                field_error(
                    line,
                    &key,
                    format!("unknown field (expected {})", COLUMNS.join(", ")),
                )
            })?;
            let text = match v {
                serde_json::Value::String(s) => s.trim().to_owned(),
                serde_json::Value::Null => String::new(),
                other => {
                    return Err(field_error(
                        line,
                        c,
                        format!("a string expected, got {}", json_kind(&other)),
                    ));
                }
            };
            row.insert(c, text);
        }
        if let Some(missing) = COLUMNS.iter().find(|c| !row.contains_key(*c)) {
            return Err(field_error(line, missing, "missing".into()));
        }
        rows.push((line, row));
    }
    Ok(rows)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
        _ => "something else",
    }
}

/// 1-based line of byte offset `at`.
fn line_at(bytes: &[u8], at: usize) -> u64 {
    bytes[..at.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64
        + 1
}

/// The 1-based line on which each element of the top-level JSON array starts (a small scanner
/// over strings, escapes and nesting; the file already parsed, so it is well-formed).
fn element_lines(bytes: &[u8]) -> Vec<u64> {
    let (mut line, mut depth, mut in_string, mut escaped) = (1u64, 0usize, false, false);
    let mut expecting = false;
    let mut out = Vec::new();
    for &b in bytes {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expecting && !b.is_ascii_whitespace() && b != b']' {
            out.push(line);
            expecting = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth == 1 {
                    expecting = true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    out
}

// ---- fields -----------------------------------------------------------------------------------

type FieldError = (&'static str, String);

fn cell<'a>(row: &'a Row, c: &'static str) -> &'a str {
    row.get(c).map_or("", String::as_str)
}

fn record_of(row: &Row) -> Result<AeoRegistryRecord, FieldError> {
    for c in COLUMNS {
        if !OPTIONAL.contains(c) && cell(row, c).is_empty() {
            return Err((c, "required, but empty".into()));
        }
    }
    let status = match cell(row, "status").to_ascii_lowercase().as_str() {
        "valid" => AeoStatus::Valid,
        "suspended" => AeoStatus::Suspended,
        "revoked" => AeoStatus::Revoked,
        other => {
            return Err((
                "status",
                format!("{other:?} is not one of valid, suspended, revoked"),
            ));
        }
    };
    let programme = match cell(row, "programme").to_ascii_uppercase().as_str() {
        "AEOC" => AeoProgramme::Aeoc,
        "AEOS" => AeoProgramme::Aeos,
        "AEOF" => AeoProgramme::Aeof,
        _ => {
            return Err((
                "programme",
                format!(
                    "{:?} is not one of AEOC, AEOS, AEOF",
                    cell(row, "programme")
                ),
            ));
        }
    };
    let date = |c: &'static str| -> Result<i64, FieldError> {
        let v = cell(row, c);
        if v.is_empty() {
            return Ok(0);
        }
        parse_date(v).ok_or_else(|| {
            (
                c,
                format!("{v:?} is not a date (YYYY-MM-DD or RFC 3339 date-time)"),
            )
        })
    };
    Ok(AeoRegistryRecord {
        operator_id: cell(row, "operator_id").to_owned(),
        tin: cell(row, "tin").to_owned(),
        name: cell(row, "name").to_owned(),
        address: Some(Address {
            street: cell(row, "street").to_owned(),
            city: cell(row, "city").to_owned(),
            postcode: cell(row, "postcode").to_owned(),
            country: cell(row, "country").to_owned(),
        }),
        status: status as i32,
        programme: programme as i32,
        valid_from_ms: date("valid_from")?,
        valid_until_ms: date("valid_to")?,
        last_change_ms: date("last_change")?,
    })
}

fn parse_date(v: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let dt = time::OffsetDateTime::parse(v, &Rfc3339).ok().or_else(|| {
        let d =
            time::Date::parse(v, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
        Some(d.midnight().assume_utc())
    })?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

fn format_date(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn row_of(r: &AeoRegistryRecord) -> Vec<String> {
    let a = r.address.clone().unwrap_or_default();
    let status = match AeoStatus::try_from(r.status).unwrap_or_default() {
        AeoStatus::Suspended => "suspended",
        AeoStatus::Revoked => "revoked",
        _ => "valid",
    };
    let programme = match AeoProgramme::try_from(r.programme).unwrap_or_default() {
        AeoProgramme::Aeoc => "AEOC",
        AeoProgramme::Aeos => "AEOS",
        _ => "AEOF",
    };
    vec![
        r.operator_id.clone(),
        r.tin.clone(),
        r.name.clone(),
        a.street,
        a.city,
        a.postcode,
        a.country,
        status.into(),
        programme.into(),
        format_date(r.valid_from_ms),
        if r.valid_until_ms == 0 {
            String::new()
        } else {
            format_date(r.valid_until_ms)
        },
        format_date(r.last_change_ms),
    ]
}

fn text_ok(field: &'static str, v: &str, required: bool) -> Result<(), FieldError> {
    if required && v.is_empty() {
        return Err((field, "required, but empty".into()));
    }
    if v.chars().count() > MAX_TEXT {
        return Err((field, format!("longer than {MAX_TEXT} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err((field, "contains a control character".into()));
    }
    Ok(())
}

fn validate_fields(r: &AeoRegistryRecord) -> Result<(), FieldError> {
    let id = &r.operator_id;
    if id.is_empty() || id.len() > 64 {
        return Err(("operator_id", "must be 1 to 64 characters".into()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit()))
    {
        let hint = if c.is_ascii_lowercase() {
            " (use uppercase letters)"
        } else {
            ""
        };
        return Err((
            "operator_id",
            format!("{id:?}: only A-Z and 0-9 are allowed, found {c:?}{hint}"),
        ));
    }
    if r.tin.len() > 32 || !r.tin.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(("tin", format!("{:?}: up to 32 letters and digits", r.tin)));
    }
    text_ok("name", &r.name, true)?;
    let a = r.address.clone().unwrap_or_default();
    text_ok("street", &a.street, false)?;
    text_ok("city", &a.city, true)?;
    text_ok("postcode", &a.postcode, false)?;
    if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err((
            "country",
            format!(
                "{:?}: two uppercase letters (ISO 3166 alpha-2) expected",
                a.country
            ),
        ));
    }
    let status = AeoStatus::try_from(r.status).unwrap_or_default();
    if !matches!(
        status,
        AeoStatus::Valid | AeoStatus::Suspended | AeoStatus::Revoked
    ) {
        return Err(("status", "must be valid, suspended or revoked".into()));
    }
    if AeoProgramme::try_from(r.programme).unwrap_or_default() == AeoProgramme::Unspecified {
        return Err(("programme", "must be AEOC, AEOS or AEOF".into()));
    }
    if r.valid_from_ms <= 0 {
        return Err(("valid_from", "required".into()));
    }
    if r.valid_until_ms != 0 && r.valid_until_ms < r.valid_from_ms {
        return Err(("valid_to", "is before valid_from".into()));
    }
    let tomorrow = crate::envelope::now_ms() + 86_400_000;
    if r.last_change_ms <= 0 || r.last_change_ms > tomorrow {
        return Err((
            "last_change",
            "must be after 1970 and not in the future".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "operator_id,tin,name,street,city,postcode,country,status,programme,valid_from,valid_to,last_change\n";

    fn good(i: u32) -> String {
        format!(
            "BRAEOF{i:010},{i:08},Synthetic Freight {i} Ltd,Example street 1,Exampletown,12345,BR,valid,AEOF,2020-01-01,,2020-01-01T00:00:00Z\n"
        )
    }

    fn csv(lines: &[String]) -> Vec<u8> {
        format!("{HEADER}{}", lines.concat()).into_bytes()
    }

    fn field_of(e: ImportError) -> (u64, String) {
        match e {
            ImportError::Field { line, field, .. } => (line, field),
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn a_good_file_parses() {
        let r = parse(Format::Csv, &csv(&[good(1), good(2)])).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].operator_id, "BRAEOF0000000001");
        assert_eq!(r[0].status, AeoStatus::Valid as i32);
        assert_eq!(r[0].valid_from_ms, 1_577_836_800_000);
        assert_eq!(r[0].valid_until_ms, 0);
    }

    #[test]
    fn each_bad_field_names_its_line_and_field() {
        let cases = [
            ("BRAEOF0000000009", "braeof1", "operator_id"),
            (",valid,", ",valid?,", "status"),
            (",AEOF,", ",AEOX,", "programme"),
            (",BR,", ",Brazil,", "country"),
            ("2020-01-01,,", "2020-13-01,,", "valid_from"),
            (",,2020-01-01T", ",2019-01-01,2020-01-01T", "valid_to"),
            ("Exampletown", "", "city"),
            (",00000009,", ",0000-0009,", "tin"),
            ("2020-01-01T00:00:00Z", "2999-01-01", "last_change"),
        ];
        for (from, to, field) in cases {
            let bad = good(9).replacen(from, to, 1);
            assert_ne!(bad, good(9), "case {field} changes nothing");
            let e = parse(Format::Csv, &csv(&[good(1), good(2), bad])).unwrap_err();
            assert!(e.to_string().contains(&format!("field {field}")), "{e}");
            assert_eq!(field_of(e), (4, field.to_owned()));
        }
    }

    #[test]
    fn duplicates_name_both_lines() {
        let e = parse(Format::Csv, &csv(&[good(1), good(2), good(1)])).unwrap_err();
        assert_eq!(
            e,
            ImportError::Duplicate {
                line: 4,
                first_line: 2,
                what: "operator_id",
                id: "BRAEOF0000000001".into()
            }
        );
        let same_tin = good(3).replace(",00000003,", ",00000001,");
        let e = parse(Format::Csv, &csv(&[good(1), same_tin])).unwrap_err();
        assert!(
            matches!(
                e,
                ImportError::Duplicate {
                    what: "tin",
                    line: 3,
                    first_line: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn header_problems_are_named() {
        let no_city = HEADER.replace(",city", "");
        let e = parse(Format::Csv, no_city.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("column city is missing"), "{e}");
        let extra = HEADER.replace("last_change", "last_change,colour");
        let e = parse(Format::Csv, extra.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("unknown column \"colour\""), "{e}");
        assert_eq!(
            parse(Format::Csv, HEADER.as_bytes()),
            Err(ImportError::Empty)
        );
    }

    #[test]
    fn malformed_files_report_a_line() {
        let short = csv(&[good(1), "BRAEOF1,1\n".into()]);
        assert!(matches!(
            parse(Format::Csv, &short),
            Err(ImportError::Syntax { line: 3, .. })
        ));
        let mut bad_utf8 = csv(&[good(1)]);
        bad_utf8.extend_from_slice(b"BRAEOF2,\xff\xfe,x\n");
        assert!(matches!(
            parse(Format::Csv, &bad_utf8),
            Err(ImportError::Syntax { .. })
        ));
        let e = parse(Format::Json, b"[\n {\"operator_id\": \n").unwrap_err();
        assert!(matches!(e, ImportError::Syntax { .. }), "{e}");
        assert!(matches!(
            parse(Format::Json, b"[\n\xff]"),
            Err(ImportError::Syntax { line: 2, .. })
        ));
    }

    #[test]
    fn json_errors_name_the_record_line() {
        let records: Vec<_> = crate::aeo::generate::generate("BR", 3, 1).collect();
        let mut out = Vec::new();
        write(Format::Json, &records, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let bad = text.replacen("\"AEOF\"", "\"AEOX\"", 1);
        let bad = if bad == text {
            text.replacen("\"AEOS\"", "\"AEOX\"", 1)
        } else {
            bad
        };
        let e = parse(Format::Json, bad.as_bytes()).unwrap_err();
        let (line, field) = field_of(e);
        assert_eq!(field, "programme");
        assert!((2..=4).contains(&line));
        let unknown = text.replacen("\"tin\"", "\"taxid\"", 1);
        let (line, field) = field_of(parse(Format::Json, unknown.as_bytes()).unwrap_err());
        assert_eq!((line, field.as_str()), (2, "taxid"));
        let number = text.replacen("\"valid\"", "7", 1);
        let e = parse(Format::Json, number.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("a string expected"), "{e}");
    }

    #[test]
    fn written_files_read_back_exactly() {
        let mut records: Vec<_> = crate::aeo::generate::generate("NL", 300, 5).collect();
        records[0].last_change_ms += 123; // milliseconds survive
        for format in [Format::Csv, Format::Json] {
            let mut out = Vec::new();
            write(format, &records, &mut out).unwrap();
            assert_eq!(parse(format, &out).unwrap(), records, "{format:?}");
        }
    }

    #[test]
    fn formats_by_name_and_extension() {
        assert_eq!(Format::from_name("CSV").unwrap(), Format::Csv);
        assert!(
            Format::from_name("xml")
                .unwrap_err()
                .to_string()
                .contains("csv or json")
        );
        assert_eq!(
            Format::from_path(std::path::Path::new("r.json")),
            Some(Format::Json)
        );
        assert_eq!(Format::from_path(std::path::Path::new("r.txt")), None);
    }
}
