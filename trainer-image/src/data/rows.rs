//! Dataset files as rows of named values, whatever the format: JSON lines (blank lines skipped)
//! or Parquet (through the parquet crate's row reader; no Arrow). Each row carries where it came
//! from (`file:line` or `file: row N`) for error messages.
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use rlhf_spec::DatasetFormat;
use serde_json::Value;

use crate::error::{Error, Result};

/// One example's fields as a JSON object, and where it is in the file.
pub struct Row {
    pub at: String,
    pub value: Value,
}

pub fn read(path: &Path, format: DatasetFormat) -> Result<Vec<Row>> {
    match format {
        DatasetFormat::Jsonl => read_jsonl(path),
        DatasetFormat::Parquet => read_parquet(path),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let at = format!("{}:{}", path.display(), i + 1);
            match serde_json::from_str(line) {
                Ok(value) => Ok(Row { at, value }),
                Err(e) => Err(Error::invalid(at, format!("not JSON: {e}"))),
            }
        })
        .collect()
}

/// Parquet rows, numbered from 1. A file parquet cannot read (not Parquet, a compression this
/// build lacks) is bad input naming the file.
fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let bad = |e: parquet::errors::ParquetError| Error::invalid(path, format!("parquet: {e}"));
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let rows = reader.get_row_iter(None).map_err(bad)?;
    rows.enumerate()
        .map(|(i, row)| {
            Ok(Row {
                at: format!("{}: row {}", path.display(), i + 1),
                value: row.map_err(bad)?.to_json_value(),
            })
        })
        .collect()
}
