//! Tabular forms of readings and aggregate buckets, shared by the command
//! line (`biota-gateway query`) and the HTTP API: the columns, the cells
//! as text, CSV (RFC 4180 quoting), an aligned table for people, and the
//! JSON of a bucket.

use std::io::Write;

use crate::cdm::Reading;
use crate::store::Bucket;
use biota_common::time::format_rfc3339;

pub const READING_COLUMNS: [&str; 8] = [
    "device", "point", "time", "value", "unit", "quality", "seq", "source",
];
pub const BUCKET_COLUMNS: [&str; 7] = ["start", "count", "min", "max", "avg", "first", "last"];

pub fn reading_cells(r: &Reading) -> [String; 8] {
    [
        r.device.to_string(),
        r.point.to_string(),
        format_rfc3339(r.ts),
        r.value.to_string(),
        r.unit.as_deref().unwrap_or("").to_owned(),
        r.quality.as_str().to_owned(),
        r.seq.to_string(),
        r.source.to_string(),
    ]
}

pub fn bucket_cells(b: &Bucket) -> [String; 7] {
    [
        format_rfc3339(b.start),
        b.count.to_string(),
        format!("{}", b.min),
        format!("{}", b.max),
        format!("{:.6}", b.avg),
        format!("{}", b.first),
        format!("{}", b.last),
    ]
}

/// A bucket as JSON: its fields plus `time` (the start in RFC 3339).
pub fn bucket_json(b: &Bucket) -> serde_json::Value {
    let mut v = serde_json::to_value(b).unwrap_or_default();
    v["time"] = serde_json::json!(format_rfc3339(b.start));
    v
}

/// Writes a header line and rows as CSV.
pub fn write_csv<R: AsRef<[String]>>(
    out: &mut impl Write,
    header: &[&str],
    rows: impl IntoIterator<Item = R>,
) -> std::io::Result<()> {
    writeln!(out, "{}", header.join(","))?;
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            out.write_all(csv_cell(cell).as_bytes())?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn csv_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\"")).into()
    } else {
        cell.into()
    }
}

/// An aligned table: the header, then one line per row, cells padded to
/// their column's width; `(no rows)` when there are none.
pub fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    if rows.is_empty() {
        writeln!(out, "(no rows)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_only_what_needs_it() {
        let mut out = Vec::new();
        let rows = [vec!["a".to_owned(), "b,\"c\"".to_owned()]];
        super::write_csv(&mut out, &["x", "y"], rows).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "x,y\na,\"b,\"\"c\"\"\"\n");
    }
}
