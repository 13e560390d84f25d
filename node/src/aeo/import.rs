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

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;

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

/// Number of columns.
const N: usize = COLUMNS.len();

/// Columns that may be empty.
const OPTIONAL: &[&str] = &["tin", "street", "postcode", "valid_to"];

/// Longest free-text field (name, street, city, postcode).
const MAX_TEXT: usize = 200;

/// Longest part of an offending value quoted in an error message.
const MAX_QUOTED: usize = 64;

/// A day in milliseconds: how far in the future `last_change` may be (clock skew).
const DAY_MS: i64 = 86_400_000;

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
                "unknown registry format {}: expected csv or json",
                quoted(name)
            ))),
        }
    }

    /// From a file extension (`.csv`, `.json`, any case); `None` for anything else.
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
        /// 1-based line of the record (JSON: where its object starts).
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

/// Parses and validates a whole file: every record, or the first error in file order (JSON:
/// syntax errors first, as the document is parsed before its records are checked).
pub fn parse(format: Format, bytes: &[u8]) -> Result<Vec<AeoRegistryRecord>, ImportError> {
    let mut records = Records {
        now_ms: crate::envelope::now_ms(),
        ..Records::default()
    };
    match format {
        Format::Csv => read_csv(bytes, &mut records)?,
        Format::Json => read_json(bytes, &mut records)?,
    }
    if records.out.is_empty() {
        return Err(ImportError::Empty);
    }
    Ok(records.out)
}

/// Validates one record (Gateway single-operator updates too); the error is `field: problem`.
pub fn validate(record: &AeoRegistryRecord) -> Result<(), String> {
    validate_fields(record, crate::envelope::now_ms())
        .map_err(|(field, detail)| format!("{field}: {detail}"))
}

/// Writes records so that [`parse`] reads them back exactly: CSV with the header in [`COLUMNS`]
/// order, or a JSON array with one object per line (so a JSON error's line is its record's).
/// Dates are RFC 3339 in UTC, with milliseconds when there are any.
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
                w.write_record(row_of(r).iter().map(|c| c.as_bytes()))?;
            }
            w.flush()
        }
        Format::Json => {
            // Many small writes: buffer them whatever `out` is.
            let mut w = std::io::BufWriter::new(out);
            w.write_all(b"[")?;
            for (i, r) in records.iter().enumerate() {
                w.write_all(if i == 0 { b"\n  {" } else { b",\n  {" })?;
                for (j, (key, v)) in COLUMNS.iter().zip(row_of(r)).enumerate() {
                    let sep = if j == 0 { "" } else { ", " };
                    if v.is_empty() && OPTIONAL.contains(key) {
                        write!(w, "{sep}\"{key}\": null")?;
                    } else {
                        write!(w, "{sep}\"{key}\": {}", serde_json::Value::from(v))?;
                    }
                }
                w.write_all(b"}")?;
            }
            w.write_all(b"\n]\n")?;
            w.flush()
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

// ---- records ----------------------------------------------------------------------------------

/// One record's cells, trimmed, in [`COLUMNS`] order.
type Cells<'a> = [&'a str; N];

/// The records read so far, and where each operator id and TIN first appeared.
#[derive(Default)]
struct Records {
    out: Vec<AeoRegistryRecord>,
    ids: HashMap<String, u64>,
    tins: HashMap<String, u64>,
    now_ms: i64,
}

impl Records {
    /// Checks the record on `line` and keeps it.
    fn add(&mut self, line: u64, cells: &Cells) -> Result<(), ImportError> {
        let at = |(field, detail): FieldError| field_error(line, field, detail);
        let record = record_of(cells).map_err(at)?;
        validate_fields(&record, self.now_ms).map_err(at)?;
        if let Some(first) = self.ids.insert(record.operator_id.clone(), line) {
            return Err(duplicate(line, first, "operator_id", &record.operator_id));
        }
        if !record.tin.is_empty()
            && let Some(first) = self.tins.insert(record.tin.clone(), line)
        {
            return Err(duplicate(line, first, "tin", &record.tin));
        }
        self.out.push(record);
        Ok(())
    }
}

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

/// `v` as quoted in an error message: escaped, so the message stays on one line, and cut short,
/// so a huge cell does not make a huge message.
fn quoted(v: &str) -> String {
    match v.char_indices().nth(MAX_QUOTED) {
        None => format!("{v:?}"),
        Some((end, _)) => format!("{:?}…", &v[..end]),
    }
}

fn column_index(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == name)
}

// ---- CSV --------------------------------------------------------------------------------------

fn read_csv(bytes: &[u8], records: &mut Records) -> Result<(), ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = reader.headers().map_err(|e| csv_error(&e, 1))?;
    let order = header_order(header)?;
    // One reused record: no allocation per row beyond the record's own strings.
    let mut row = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut row);
        let line = reader.position().line();
        if !more.map_err(|e| csv_error(&e, line))? {
            break;
        }
        let mut cells = [""; N];
        for (&column, value) in order.iter().zip(row.iter()) {
            cells[column] = value;
        }
        records.add(row.position().map_or(line, |p| p.line()), &cells)?;
    }
    // csv reads an unclosed quote to the end of the file without complaint; when what it
    // swallowed still makes a valid last record, only this finds it.
    if let Some(line) = unclosed_quote(bytes) {
        return Err(ImportError::Syntax {
            line,
            detail: "a quoted field is never closed".into(),
        });
    }
    Ok(())
}

/// The column of each header cell; every column exactly once, in any order.
fn header_order(header: &csv::StringRecord) -> Result<Vec<usize>, ImportError> {
    let header_error = |detail| Err(ImportError::Header { detail });
    if header.iter().all(str::is_empty) {
        return header_error(format!(
            "missing: the first line must name the columns {}",
            COLUMNS.join(",")
        ));
    }
    let unknown: Vec<String> = header
        .iter()
        .filter(|name| column_index(name).is_none())
        .map(quoted)
        .collect();
    if !unknown.is_empty() {
        return header_error(format!(
            "unknown column {} (the columns are {})",
            unknown.join(", "),
            COLUMNS.join(",")
        ));
    }
    let order: Vec<usize> = header.iter().filter_map(column_index).collect();
    if let Some(twice) = COLUMNS
        .iter()
        .enumerate()
        .find(|(i, _)| order.iter().filter(|c| *c == i).count() > 1)
    {
        return header_error(format!("column {} appears more than once", twice.1));
    }
    let missing: Vec<&str> = COLUMNS
        .iter()
        .enumerate()
        .filter(|(i, _)| !order.contains(i))
        .map(|(_, c)| *c)
        .collect();
    if !missing.is_empty() {
        return header_error(format!("missing column {}", missing.join(", ")));
    }
    Ok(order)
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

/// The line on which a quoted field opens that is still open at the end of the file, if any.
/// Follows csv's reading: a quote opens a quoted field only at the start of a field, a doubled
/// quote inside one is a quote, and after the closing quote the field goes on unquoted.
fn unclosed_quote(bytes: &[u8]) -> Option<u64> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let (mut state, mut line, mut opened) = (State::FieldStart, 1u64, 0u64);
    for &b in bytes {
        let ends_field = matches!(b, b',' | b'\n' | b'\r');
        state = match (state, b) {
            (State::FieldStart, b'"') => {
                opened = line;
                State::Quoted
            }
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) | (State::QuoteInQuoted, b'"') => State::Quoted,
            _ if ends_field => State::FieldStart,
            _ => State::Unquoted,
        };
        if b == b'\n' {
            line += 1;
        }
    }
    (state == State::Quoted).then_some(opened)
}

// ---- JSON -------------------------------------------------------------------------------------

fn read_json(bytes: &[u8], records: &mut Records) -> Result<(), ImportError> {
    // A UTF-8 byte order mark (as some Windows tools write) is allowed, as csv allows it.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| ImportError::Syntax {
        line: line_at(bytes, e.valid_up_to()),
        detail: "not valid UTF-8".into(),
    })?;
    let objects: Vec<JsonObject> = serde_json::from_str(text).map_err(|e| ImportError::Syntax {
        line: e.line() as u64,
        detail: format!("not a JSON array of registry records: {e}"),
    })?;
    let lines = element_lines(bytes);
    for (i, object) in objects.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(0);
        let mut cells: [Option<&str>; N] = [None; N];
        for (key, value) in &object.0 {
            let column = match key {
                JsonKey::Column(c) => *c,
                JsonKey::Unknown(key) => {
                    return Err(field_error(
                        line,
                        &quoted(key),
                        format!("unknown field (the fields are {})", COLUMNS.join(", ")),
                    ));
                }
            };
            if cells[column].is_some() {
                return Err(field_error(line, COLUMNS[column], "appears twice".into()));
            }
            cells[column] = Some(match value {
                JsonValue::Text(s) => s.trim(),
                JsonValue::Null => "",
                JsonValue::Other(kind) => {
                    let detail = format!("a string expected, got {kind}");
                    return Err(field_error(line, COLUMNS[column], detail));
                }
            });
        }
        if let Some(missing) = cells.iter().position(Option::is_none) {
            return Err(field_error(line, COLUMNS[missing], "missing".into()));
        }
        records.add(line, &cells.map(Option::unwrap_or_default))?;
    }
    Ok(())
}

/// One JSON record as written: its entries in order, repeated keys kept (so they are refused,
/// where a JSON map would silently keep the last).
struct JsonObject(Vec<(JsonKey, JsonValue)>);

/// A key of a JSON record: a column (no allocation), or an unknown key to name in the error.
enum JsonKey {
    Column(usize),
    Unknown(String),
}

/// A value of a JSON record: the only kinds allowed, or the kind found instead.
enum JsonValue {
    Text(String),
    Null,
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a registry record (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                let mut entries = Vec::with_capacity(N);
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(JsonObject(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl<'de> serde::Deserialize<'de> for JsonKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = JsonKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, key: &str) -> Result<JsonKey, E> {
                Ok(column_index(key)
                    .map_or_else(|| JsonKey::Unknown(key.to_owned()), JsonKey::Column))
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<JsonValue, E> {
                Ok(JsonValue::Text(v))
            }
            fn visit_unit<E>(self) -> Result<JsonValue, E> {
                Ok(JsonValue::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<JsonValue, E> {
                Ok(JsonValue::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<JsonValue, E> {
                Ok(JsonValue::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<JsonValue, E> {
                Ok(JsonValue::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<JsonValue, E> {
                Ok(JsonValue::Other("a number"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<JsonValue, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(JsonValue::Other("an array"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonValue, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonValue::Other("an object"))
            }
        }
        d.deserialize_any(Visitor)
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

/// The column and what is wrong with it.
type FieldError = (&'static str, String);

fn record_of(cells: &Cells) -> Result<AeoRegistryRecord, FieldError> {
    for (column, cell) in COLUMNS.iter().zip(cells) {
        if cell.is_empty() && !OPTIONAL.contains(column) {
            return Err((column, "required, but empty".into()));
        }
    }
    let [
        operator_id,
        tin,
        name,
        street,
        city,
        postcode,
        country,
        status,
        programme,
        valid_from,
        valid_to,
        last_change,
    ] = *cells;
    let status = match status.to_ascii_lowercase().as_str() {
        "valid" => AeoStatus::Valid,
        "suspended" => AeoStatus::Suspended,
        "revoked" => AeoStatus::Revoked,
        _ => {
            let detail = format!("{} is not one of valid, suspended, revoked", quoted(status));
            return Err(("status", detail));
        }
    };
    let programme = match programme.to_ascii_uppercase().as_str() {
        "AEOC" => AeoProgramme::Aeoc,
        "AEOS" => AeoProgramme::Aeos,
        "AEOF" => AeoProgramme::Aeof,
        _ => {
            let detail = format!("{} is not one of AEOC, AEOS, AEOF", quoted(programme));
            return Err(("programme", detail));
        }
    };
    Ok(AeoRegistryRecord {
        operator_id: operator_id.to_owned(),
        tin: tin.to_owned(),
        name: name.to_owned(),
        address: Some(Address {
            street: street.to_owned(),
            city: city.to_owned(),
            postcode: postcode.to_owned(),
            country: country.to_owned(),
        }),
        status: status as i32,
        programme: programme as i32,
        valid_from_ms: date("valid_from", valid_from)?,
        valid_until_ms: date("valid_to", valid_to)?,
        last_change_ms: date("last_change", last_change)?,
    })
}

/// A date cell as Unix milliseconds; empty is 0 (unset). A date must be after 1970-01-01:
/// 0 would read as "unset" (an open-ended `valid_to`).
fn date(column: &'static str, v: &str) -> Result<i64, FieldError> {
    if v.is_empty() {
        return Ok(0);
    }
    match parse_date(v) {
        Some(ms) if ms > 0 => Ok(ms),
        Some(_) => Err((column, format!("{} is not after 1970-01-01", quoted(v)))),
        None => Err((
            column,
            format!("{} is not a date (YYYY-MM-DD or RFC 3339)", quoted(v)),
        )),
    }
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

/// RFC 3339 in UTC; `time` writes fractional seconds only when there are any, so whole-second
/// dates stay `2024-03-01T00:00:00Z`.
fn format_date(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A record's cells in [`COLUMNS`] order, as [`write`] writes them.
fn row_of(r: &AeoRegistryRecord) -> [Cow<'_, str>; N] {
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
    let a = r.address.as_ref();
    let text = |f: fn(&Address) -> &String| Cow::Borrowed(a.map_or("", |a| f(a).as_str()));
    [
        Cow::Borrowed(r.operator_id.as_str()),
        Cow::Borrowed(r.tin.as_str()),
        Cow::Borrowed(r.name.as_str()),
        text(|a| &a.street),
        text(|a| &a.city),
        text(|a| &a.postcode),
        text(|a| &a.country),
        Cow::Borrowed(status),
        Cow::Borrowed(programme),
        Cow::Owned(format_date(r.valid_from_ms)),
        match r.valid_until_ms {
            0 => Cow::Borrowed(""),
            ms => Cow::Owned(format_date(ms)),
        },
        Cow::Owned(format_date(r.last_change_ms)),
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

fn validate_fields(r: &AeoRegistryRecord, now_ms: i64) -> Result<(), FieldError> {
    let id = &r.operator_id;
    if id.is_empty() {
        return Err(("operator_id", "required, but empty".into()));
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
        let detail = format!(
            "{}: only A-Z and 0-9 are allowed, found {c:?}{hint}",
            quoted(id)
        );
        return Err(("operator_id", detail));
    }
    if id.len() > 64 {
        return Err((
            "operator_id",
            format!("{} characters, at most 64", id.len()),
        ));
    }
    if let Some(c) = r.tin.chars().find(|c| !c.is_ascii_alphanumeric()) {
        let detail = format!(
            "{}: only letters and digits are allowed, found {c:?}",
            quoted(&r.tin)
        );
        return Err(("tin", detail));
    }
    if r.tin.len() > 32 {
        return Err(("tin", format!("{} characters, at most 32", r.tin.len())));
    }
    text_ok("name", &r.name, true)?;
    let none = Address::default();
    let a = r.address.as_ref().unwrap_or(&none);
    text_ok("street", &a.street, false)?;
    text_ok("city", &a.city, true)?;
    text_ok("postcode", &a.postcode, false)?;
    if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
        let detail = format!(
            "{}: two uppercase letters (ISO 3166 alpha-2) expected",
            quoted(&a.country)
        );
        return Err(("country", detail));
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
        return Err(("valid_from", "required, after 1970-01-01".into()));
    }
    if r.valid_until_ms != 0 && r.valid_until_ms < r.valid_from_ms {
        let detail = format!("{} is before valid_from", format_date(r.valid_until_ms));
        return Err(("valid_to", detail));
    }
    if r.last_change_ms <= 0 {
        return Err(("last_change", "required, after 1970-01-01".into()));
    }
    if r.last_change_ms > now_ms + DAY_MS {
        let detail = format!(
            "{} is more than a day in the future",
            format_date(r.last_change_ms)
        );
        return Err(("last_change", detail));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMATS: [Format; 2] = [Format::Csv, Format::Json];

    /// Test record `i`: a good one, with its own operator id and TIN.
    fn row(i: u32) -> [String; N] {
        [
            &format!("BRAEOF{i:010}"),
            &format!("{i:08}"),
            &format!("Synthetic Freight {i} Ltd"),
            "Example street 1",
            "Exampletown",
            "12345",
            "BR",
            "valid",
            "AEOF",
            "2020-01-01",
            "",
            "2020-01-01T00:00:00Z",
        ]
        .map(|s| s.to_owned())
    }

    fn set(mut row: [String; N], column: &str, value: &str) -> [String; N] {
        row[column_index(column).unwrap()] = value.to_owned();
        row
    }

    /// `rows` as a file: CSV with a header, or JSON with one object per line, so record `k`
    /// (0-based) starts on line `k + 2` in both.
    fn file(format: Format, rows: &[[String; N]]) -> Vec<u8> {
        match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(COLUMNS).unwrap();
                for r in rows {
                    w.write_record(r).unwrap();
                }
                w.into_inner().unwrap()
            }
            Format::Json => {
                let objects: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let map: serde_json::Map<_, _> = COLUMNS
                            .iter()
                            .zip(r)
                            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                            .collect();
                        serde_json::Value::Object(map).to_string()
                    })
                    .collect();
                format!("[\n{}\n]\n", objects.join(",\n")).into_bytes()
            }
        }
    }

    fn field_error_of(e: ImportError) -> (u64, String, String) {
        match e {
            ImportError::Field {
                line,
                field,
                detail,
            } => (line, field, detail),
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn a_good_file_parses_in_both_formats() {
        for format in FORMATS {
            let r = parse(format, &file(format, &[row(1), row(2)])).unwrap();
            assert_eq!(r.len(), 2);
            assert_eq!(r[0].operator_id, "BRAEOF0000000001");
            assert_eq!(r[0].tin, "00000001");
            assert_eq!(r[0].address.as_ref().unwrap().city, "Exampletown");
            assert_eq!(r[0].status, AeoStatus::Valid as i32);
            assert_eq!(r[0].programme, AeoProgramme::Aeof as i32);
            assert_eq!(r[0].valid_from_ms, 1_577_836_800_000);
            assert_eq!(r[0].valid_until_ms, 0);
            assert_eq!(r[0].last_change_ms, 1_577_836_800_000);
        }
    }

    #[test]
    fn each_bad_field_names_its_line_field_and_problem() {
        let long = |n: usize, c: &str| c.repeat(n);
        let cases: &[(&str, &str, &str)] = &[
            ("operator_id", "", "required"),
            ("operator_id", "braeof1", "(use uppercase letters)"),
            ("operator_id", "BR-AEO1", "only A-Z and 0-9"),
            ("operator_id", &long(65, "A"), "at most 64"),
            ("tin", "0000-0009", "only letters and digits"),
            ("tin", &long(33, "1"), "at most 32"),
            ("name", "", "required"),
            ("name", &long(201, "x"), "longer than 200"),
            ("name", "Bad\u{7}Name", "control character"),
            ("street", &long(201, "x"), "longer than 200"),
            ("street", "Bad\u{7}street", "control character"),
            ("city", "", "required"),
            ("city", &long(201, "x"), "longer than 200"),
            ("postcode", "12\u{7}34", "control character"),
            ("country", "", "required"),
            ("country", "Brazil", "two uppercase letters"),
            ("country", "br", "two uppercase letters"),
            ("status", "", "required"),
            (
                "status",
                "valid?",
                r#""valid?" is not one of valid, suspended, revoked"#,
            ),
            (
                "programme",
                "AEOX",
                r#""AEOX" is not one of AEOC, AEOS, AEOF"#,
            ),
            ("valid_from", "", "required"),
            ("valid_from", "2020-13-01", "not a date"),
            ("valid_from", "1969-12-31", "not after 1970-01-01"),
            ("valid_to", "soon", "not a date"),
            (
                "valid_to",
                "2019-12-31",
                "2019-12-31T00:00:00Z is before valid_from",
            ),
            ("valid_to", "1970-01-01", "not after 1970-01-01"),
            ("last_change", "", "required"),
            ("last_change", "2999-01-01", "more than a day in the future"),
            ("last_change", "1960-01-01", "not after 1970-01-01"),
        ];
        for format in FORMATS {
            for (column, value, problem) in cases {
                let bad = set(row(9), column, value);
                let e = parse(format, &file(format, &[row(1), row(2), bad])).unwrap_err();
                let message = e.to_string();
                assert!(!message.contains('\n'), "{format:?} {column}: {message}");
                assert!(
                    message.starts_with(&format!("line 4, field {column}: ")),
                    "{message}"
                );
                let (line, field, detail) = field_error_of(e);
                assert_eq!((line, field.as_str()), (4, *column), "{format:?} {message}");
                assert!(detail.contains(problem), "{format:?} {column}: {message}");
            }
        }
    }

    #[test]
    fn what_the_rules_allow_parses() {
        let now = crate::envelope::now_ms();
        let in_12_hours = format_date(now + DAY_MS / 2);
        let cases: &[(&str, &str)] = &[
            ("operator_id", &"A".repeat(64)),
            ("tin", ""),
            ("tin", "Ab12"),
            ("name", &"é".repeat(200)),
            ("street", ""),
            ("postcode", ""),
            ("status", "SUSPENDED"),
            ("programme", "aeos"),
            ("valid_from", "2020-01-01T12:00:00+02:00"),
            ("valid_to", "2020-01-01"),
            ("last_change", &in_12_hours),
            ("name", "  padded  "),
        ];
        for format in FORMATS {
            for (column, value) in cases {
                let rows = [row(1), set(row(2), column, value)];
                let r = parse(format, &file(format, &rows));
                assert!(r.is_ok(), "{format:?} {column}={value:?}: {r:?}");
            }
        }
        for format in FORMATS {
            let padded = set(row(1), "name", "  padded  ");
            let offset = set(row(2), "valid_from", "2020-01-01T12:00:00+02:00");
            let r = parse(format, &file(format, &[padded, offset])).unwrap();
            assert_eq!(r[0].name, "padded", "{format:?}");
            assert_eq!(r[1].valid_from_ms, 1_577_872_800_000, "{format:?}");
        }
    }

    #[test]
    fn duplicates_name_both_lines() {
        for format in FORMATS {
            let e = parse(format, &file(format, &[row(1), row(2), row(1)])).unwrap_err();
            assert_eq!(
                e.to_string(),
                "line 4: operator_id BRAEOF0000000001 already appears on line 2"
            );
            assert_eq!(
                e,
                ImportError::Duplicate {
                    line: 4,
                    first_line: 2,
                    what: "operator_id",
                    id: "BRAEOF0000000001".into()
                }
            );
            let same_tin = set(row(3), "tin", "00000001");
            let e = parse(format, &file(format, &[row(1), same_tin])).unwrap_err();
            assert_eq!(
                e.to_string(),
                "line 3: tin 00000001 already appears on line 2"
            );
            // Unknown TINs are not duplicates of each other.
            let no_tin = [set(row(1), "tin", ""), set(row(2), "tin", "")];
            assert_eq!(parse(format, &file(format, &no_tin)).unwrap().len(), 2);
        }
    }

    #[test]
    fn the_header_needs_every_column_once_in_any_order() {
        let good = String::from_utf8(file(Format::Csv, &[row(1)])).unwrap();
        let (header, body) = good.split_once('\n').unwrap();
        let mut shuffled: Vec<&str> = header.split(',').collect();
        shuffled.reverse();
        let mut reversed_body: Vec<&str> = body.trim_end().split(',').collect();
        reversed_body.reverse();
        let reordered = format!("{}\n{}\n", shuffled.join(","), reversed_body.join(","));
        assert_eq!(
            parse(Format::Csv, reordered.as_bytes()),
            parse(Format::Csv, good.as_bytes())
        );

        let header_error = |text: String| match parse(Format::Csv, text.as_bytes()) {
            Err(ImportError::Header { detail }) => detail,
            other => panic!("expected a header error, got {other:?}"),
        };
        let no_city = good
            .replacen(",city", "", 1)
            .replacen(",Exampletown", "", 1);
        assert_eq!(header_error(no_city), "missing column city");
        let extra = good.replacen("last_change", "last_change,colour,size", 1);
        let detail = header_error(extra);
        assert!(
            detail.starts_with(r#"unknown column "colour", "size" (the columns are operator_id,"#),
            "{detail}"
        );
        let twice = good.replacen("tin,", "status,", 1);
        assert_eq!(header_error(twice), "column status appears more than once");
        assert!(header_error(String::new()).starts_with("missing: the first line"));
        assert!(header_error("\n\n".into()).starts_with("missing: the first line"));
        assert_eq!(
            parse(Format::Csv, header.as_bytes()),
            Err(ImportError::Empty)
        );
        assert_eq!(parse(Format::Json, b"[]"), Err(ImportError::Empty));
    }

    fn syntax_line(format: Format, bytes: &[u8]) -> (u64, String) {
        match parse(format, bytes) {
            Err(ImportError::Syntax { line, detail }) => (line, detail),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_csv_reports_a_line() {
        let good = String::from_utf8(file(Format::Csv, &[row(1), row(2), row(3)])).unwrap();
        // The open quote swallows the rest of the file into one field of record 2.
        let open_mid = good.replacen(",Synthetic Freight 2", ",\"Synthetic Freight 2", 1);
        assert_eq!(
            syntax_line(Format::Csv, open_mid.as_bytes()),
            (3, "3 fields, the header has 12".into())
        );
        // In the last field of the last record, csv would take the rest as the field's value.
        let open_last = format!(
            "{}\"2020-01-01",
            good.rsplit_once("2020-01-01T00:00:00Z").unwrap().0
        );
        let (line, detail) = syntax_line(Format::Csv, open_last.as_bytes());
        assert_eq!(
            (line, detail.as_str()),
            (4, "a quoted field is never closed")
        );
        let short = good.replacen(",Example street 1,Exampletown", "", 1);
        assert_eq!(syntax_line(Format::Csv, short.as_bytes()).0, 2);
    }

    #[test]
    fn an_unclosed_quote_is_found_as_csv_reads_quotes() {
        assert_eq!(unclosed_quote(b"a,\"b\"\"c,\nd\",e\n"), None);
        assert_eq!(unclosed_quote(b"a,b\"c\nd\n"), None); // a quote inside a field is a quote
        assert_eq!(unclosed_quote(b"a,\"b\"c\"d\n"), None); // after the closing quote: unquoted
        assert_eq!(unclosed_quote(b"a,\"b\nc"), Some(1));
        assert_eq!(unclosed_quote(b"x\n\"ab\",\"c\n\nd"), Some(2));
    }

    #[test]
    fn non_utf8_input_names_the_line() {
        let mut csv = file(Format::Csv, &[row(1)]);
        let mut bad = file(Format::Csv, &[row(2)]).split_off(COLUMNS.join(",").len() + 1);
        bad[20] = 0xff;
        csv.extend(bad);
        let (line, detail) = syntax_line(Format::Csv, &csv);
        assert_eq!((line, detail.as_str()), (3, "not valid UTF-8"));
        let header = b"operator_id,t\xffin\n".to_vec();
        assert_eq!(
            syntax_line(Format::Csv, &header),
            (1, "not valid UTF-8".into())
        );
        let mut json = file(Format::Json, &[row(1), row(2)]);
        let at = json.len() - 20;
        json[at] = 0xff;
        assert_eq!(
            syntax_line(Format::Json, &json),
            (3, "not valid UTF-8".into())
        );
    }

    #[test]
    fn a_byte_order_mark_is_allowed() {
        for format in FORMATS {
            let mut bytes = b"\xEF\xBB\xBF".to_vec();
            bytes.extend(file(format, &[row(1)]));
            assert_eq!(parse(format, &bytes).unwrap().len(), 1, "{format:?}");
        }
    }

    #[test]
    fn malformed_json_reports_a_line() {
        let good = String::from_utf8(file(Format::Json, &[row(1), row(2)])).unwrap();
        let (line, detail) = syntax_line(
            Format::Json,
            good.replacen("\"tin\":", "\"tin\"", 2).as_bytes(),
        );
        assert_eq!(line, 2, "{detail}");
        let trailing_comma = good.replace("}\n]", "},\n]");
        assert_eq!(syntax_line(Format::Json, trailing_comma.as_bytes()).0, 4);
        assert_eq!(syntax_line(Format::Json, b"[\n{},\n\"x\"]").0, 3);
        assert!(
            syntax_line(Format::Json, b"{\"a\": 1}")
                .1
                .contains("expected a sequence")
        );
        let truncated = &good.as_bytes()[..good.len() - 40];
        assert_eq!(syntax_line(Format::Json, truncated).0, 3);
    }

    #[test]
    fn json_records_have_exactly_the_columns_as_strings() {
        let good = String::from_utf8(file(Format::Json, &[row(1), row(2)])).unwrap();
        let error = |text: String| {
            let e = parse(Format::Json, text.as_bytes()).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
            field_error_of(e)
        };
        let number = good
            .replacen("\"valid\"", "7", 2)
            .replacen("7", "\"valid\"", 1);
        assert_eq!(
            error(number),
            (3, "status".into(), "a string expected, got a number".into())
        );
        let object = good.replacen("\"AEOF\"", "{\"a\": [1]}", 1);
        assert_eq!(error(object).2, "a string expected, got an object");
        let null = good.replacen("\"Exampletown\"", "null", 1);
        assert_eq!(
            error(null),
            (2, "city".into(), "required, but empty".into())
        );
        let missing = good.replacen("\"tin\": \"00000002\", ", "", 1).replacen(
            "\"tin\":\"00000002\",",
            "",
            1,
        );
        assert_eq!(error(missing), (3, "tin".into(), "missing".into()));
        let twice = good.replacen(
            "\"status\":\"valid\"",
            "\"status\":\"revoked\",\"status\":\"valid\"",
            1,
        );
        assert_eq!(error(twice), (2, "status".into(), "appears twice".into()));
        let unknown = good
            .replacen("\"tin\"", "\"taxid\"", 2)
            .replacen("\"taxid\"", "\"tin\"", 1);
        let (line, field, detail) = error(unknown);
        assert_eq!((line, field.as_str()), (3, "\"taxid\""));
        assert!(detail.starts_with("unknown field"), "{detail}");
        let newline_key = good.replacen("\"tin\"", "\"t\\nin\"", 1);
        assert_eq!(error(newline_key).1, "\"t\\nin\"");
        let optional_null =
            good.replacen("\"00000001\"", "null", 1)
                .replacen("\"12345\"", "null", 1);
        assert!(parse(Format::Json, optional_null.as_bytes()).is_ok());
    }

    #[test]
    fn json_errors_name_the_line_where_the_record_starts() {
        let rows: Vec<_> = (1..=3).map(row).collect();
        let pretty: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                COLUMNS
                    .iter()
                    .zip(r)
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                    .collect()
            })
            .collect();
        let text = serde_json::to_string_pretty(&pretty).unwrap();
        // Each object takes 14 lines after the opening "[": record k starts on line 2 + 14 k.
        let bad = text
            .replacen("\"AEOF\"", "\"AEOX\"", 3)
            .replacen("\"AEOX\"", "\"AEOF\"", 2);
        let (line, field, _) = field_error_of(parse(Format::Json, bad.as_bytes()).unwrap_err());
        assert_eq!((line, field.as_str()), (30, "programme"));
        assert_eq!(
            element_lines(
                br#"[ {"a": "]}[,\"{"}, [1, 2],
  "x" , 3 ]"#
            ),
            vec![1, 1, 2, 2]
        );
    }

    #[test]
    fn error_messages_quote_at_most_the_start_of_a_value() {
        let e = parse(
            Format::Csv,
            &file(Format::Csv, &[set(row(1), "status", &"v".repeat(10_000))]),
        )
        .unwrap_err();
        let message = e.to_string();
        assert!(
            message.len() < 150 && message.contains("vvv\"… is not one of"),
            "{message}"
        );
        assert_eq!(quoted("a\nb"), r#""a\nb""#);
    }

    #[test]
    fn written_files_read_back_exactly() {
        let mut records: Vec<_> = crate::aeo::generate::generate("NL", 300, 5).collect();
        records[0].last_change_ms += 123; // milliseconds survive
        records[1].valid_until_ms = records[1].valid_from_ms + 1;
        records[2].name = "Quote \"and\", comma; Ünïcödé".into();
        records[3].tin.clear();
        let a = records[4].address.as_mut().unwrap();
        a.street.clear();
        a.postcode.clear();
        for format in FORMATS {
            let mut out = Vec::new();
            write(format, &records, &mut out).unwrap();
            assert_eq!(parse(format, &out).unwrap(), records, "{format:?}");
        }
        let mut out = Vec::new();
        write(Format::Csv, &records[..1], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(&format!("{}\n", COLUMNS.join(","))),
            "{text}"
        );
        assert!(
            text.contains(".123Z\n") && text.contains("T00:00:00Z,"),
            "{text}"
        );
    }

    #[test]
    fn validate_checks_a_record_on_its_own() {
        let good = parse(Format::Csv, &file(Format::Csv, &[row(1)]))
            .unwrap()
            .remove(0);
        assert_eq!(validate(&good), Ok(()));
        let check = |f: fn(&mut AeoRegistryRecord)| {
            let mut r = good.clone();
            f(&mut r);
            validate(&r).unwrap_err()
        };
        assert_eq!(
            check(|r| r.status = AeoStatus::NotFound as i32),
            "status: must be valid, suspended or revoked"
        );
        assert_eq!(
            check(|r| r.programme = 0),
            "programme: must be AEOC, AEOS or AEOF"
        );
        assert_eq!(check(|r| r.address = None), "city: required, but empty");
        assert_eq!(
            check(|r| r.valid_from_ms = 0),
            "valid_from: required, after 1970-01-01"
        );
        assert_eq!(
            check(|r| r.valid_until_ms = -5),
            "valid_to: 1969-12-31T23:59:59.995Z is before valid_from"
        );
        assert_eq!(
            check(|r| r.last_change_ms = 0),
            "last_change: required, after 1970-01-01"
        );
        assert!(
            check(|r| r.operator_id = "nl1".into()).starts_with("operator_id: \"nl1\": only A-Z")
        );
    }

    #[test]
    fn formats_by_name_and_extension() {
        assert_eq!(Format::from_name("CSV"), Ok(Format::Csv));
        assert_eq!(Format::from_name("json"), Ok(Format::Json));
        assert_eq!(
            Format::from_name("xml").unwrap_err().to_string(),
            "unknown registry format \"xml\": expected csv or json"
        );
        assert_eq!(
            Format::from_path(std::path::Path::new("r.JSON")),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_path(std::path::Path::new("dir/r.csv")),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_path(std::path::Path::new("r.txt")), None);
        assert_eq!(Format::from_path(std::path::Path::new("csv")), None);
        assert_eq!((Format::Csv.name(), Format::Json.name()), ("csv", "json"));
    }
}
