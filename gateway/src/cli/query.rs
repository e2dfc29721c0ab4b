//! `biota-gateway query`: latest values, ranges and aggregates from the
//! store, as an aligned table, CSV or JSON.

use std::io::Write;

use anyhow::Context;
use biota_gateway::Reading;

use biota_common::time::{now_ns, parse_duration, parse_time_arg};
use biota_gateway::export::{
    BUCKET_COLUMNS, READING_COLUMNS, bucket_cells, bucket_json, reading_cells, write_csv,
    write_table,
};
use biota_gateway::store::{Bucket, Cursor};
use clap::{Args, Subcommand, ValueEnum};

use super::Failure;

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    db: super::anchor::DbArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(subcommand)]
    what: What,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum What {
    /// The latest reading of every series.
    Latest {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Readings of one point in a time range, oldest first, a page at a time.
    Range {
        #[arg(long)]
        device: String,
        #[arg(long)]
        point: String,
        /// Start (inclusive): now, -15m, RFC 3339 or nanoseconds.
        #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
        from: String,
        /// End (exclusive).
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
        /// Readings per page.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Continue after this cursor (printed on stderr after a full page).
        #[arg(long)]
        cursor: Option<Cursor>,
    },
    /// min, max, avg, count, first and last of one point per time bucket.
    Aggregate {
        #[arg(long)]
        device: String,
        #[arg(long)]
        point: String,
        /// Bucket width, e.g. 1s, 1m, 1h.
        #[arg(long, default_value = "1m")]
        bucket: String,
        #[arg(long, default_value = "-24h", allow_hyphen_values = true)]
        from: String,
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
    },
}

pub fn run(args: QueryArgs) -> anyhow::Result<()> {
    let reader = args.db.reader()?;
    let now = now_ns();
    let time = |s: &str| parse_time_arg(s, now).map_err(anyhow::Error::msg);
    let mut out = std::io::stdout().lock();
    match args.what {
        What::Latest { device } => {
            let readings = reader.latest(device.as_deref()).map_err(Failure::from)?;
            print_readings(&mut out, args.format, &readings)?;
        }
        What::Range {
            device,
            point,
            from,
            to,
            limit,
            cursor,
        } => {
            let page = reader
                .range(&device, &point, time(&from)?, time(&to)?, limit, cursor)
                .map_err(Failure::from)?;
            print_readings(&mut out, args.format, &page.readings)?;
            if let Some(next) = page.next {
                eprintln!("next cursor: {next}");
            }
        }
        What::Aggregate {
            device,
            point,
            bucket,
            from,
            to,
        } => {
            let width = parse_duration(&bucket)
                .map_err(anyhow::Error::msg)
                .context("--bucket")?;
            let width = i64::try_from(width.as_nanos()).context("--bucket is too long")?;
            let buckets = reader
                .aggregate(&device, &point, time(&from)?, time(&to)?, width)
                .map_err(Failure::from)?;
            print_buckets(&mut out, args.format, &buckets)?;
        }
    }
    out.flush()?;
    Ok(())
}

pub fn print_readings(
    out: &mut impl Write,
    format: Format,
    readings: &[Reading],
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<_> = readings.iter().map(Reading::to_json).collect();
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        _ => {
            let rows: Vec<Vec<String>> =
                readings.iter().map(|r| reading_cells(r).to_vec()).collect();
            print_rows(out, format, &READING_COLUMNS, &rows)?;
        }
    }
    Ok(())
}

pub fn print_buckets(
    out: &mut impl Write,
    format: Format,
    buckets: &[Bucket],
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<_> = buckets.iter().map(bucket_json).collect();
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        _ => {
            let rows: Vec<Vec<String>> = buckets.iter().map(|b| bucket_cells(b).to_vec()).collect();
            print_rows(out, format, &BUCKET_COLUMNS, &rows)?;
        }
    }
    Ok(())
}

fn print_rows(
    out: &mut impl Write,
    format: Format,
    header: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    if format == Format::Csv {
        write_csv(out, header, rows)?;
    } else {
        write_table(out, header, rows)?;
    }
    Ok(())
}
