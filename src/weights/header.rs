//! The safetensors header: the 8-byte length, the JSON table of tensors, and every check
//! that can be made before the data arrives.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use super::{format_error, Dtype, HINT_CORRUPT, HINT_DTYPE, HINT_NOT_SAFETENSORS, HINT_TRUNCATED};
use crate::error::Result;

/// Largest JSON header accepted, in bytes: the `safetensors` crate's limit. A larger value in
/// the first 8 bytes almost always means the file is something else (a zip-based PyTorch
/// checkpoint starts with `PK\x03\x04`, which reads as a huge length).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor entry of the header. Offsets count from the first byte after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of data.
    pub fn byte_len(&self) -> u64 {
        self.end - self.begin
    }
}

/// A validated header: tensors in file order, with spans that tile the data section.
#[derive(Debug, Clone)]
pub struct Header {
    file: String,
    json_len: u64,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    data_len: u64,
}

/// The number of bytes the length field plus the JSON header occupy, read from the first 8
/// bytes of a file; `Ok(None)` while fewer than 8 bytes are available. `file_len`, where
/// known (a file's size, an HTTP Content-Length), lets a header that runs past the end of the
/// file be reported before any more bytes are read.
pub fn header_len_from_prefix(
    file: &str,
    prefix: &[u8],
    file_len: Option<u64>,
) -> Result<Option<u64>> {
    let Some(len_bytes) = prefix.get(..8) else {
        if let Some(total) = file_len {
            if total < 8 {
                return Err(format_error(
                    file,
                    None,
                    "at least 8 bytes (the header length)",
                    format!("a file of {total} bytes"),
                    HINT_TRUNCATED,
                ));
            }
        }
        return Ok(None);
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(arr);
    if n > MAX_HEADER_BYTES {
        return Err(format_error(
            file,
            None,
            format!("a header length of at most {MAX_HEADER_BYTES} bytes"),
            format!("{n} bytes (first 8 bytes {arr:02x?})"),
            HINT_NOT_SAFETENSORS,
        ));
    }
    let needed = 8 + n;
    if let Some(total) = file_len {
        if needed > total {
            return Err(format_error(
                file,
                None,
                format!(
                    "a header of at most {} bytes (the file has {total} bytes)",
                    total.saturating_sub(8)
                ),
                format!("a header length of {n} bytes, past the end of the file"),
                HINT_TRUNCATED,
            ));
        }
    }
    Ok(Some(needed))
}

/// The header's top-level object, in file order, keeping duplicate keys so they can be
/// reported (serde_json's `Map` would silently keep the last one).
struct OrderedEntries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(OrderedEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(DeriveDeserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

impl Header {
    /// Parses and validates the header from the first bytes of a file. Returns `Ok(None)`
    /// while `prefix` is shorter than the length field plus the header; bytes past the header
    /// are ignored.
    pub fn parse(file: &str, prefix: &[u8]) -> Result<Option<Header>> {
        let Some(needed) = header_len_from_prefix(file, prefix, None)? else {
            return Ok(None);
        };
        let Some(json_bytes) = prefix.get(8..needed as usize) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(json_bytes).map_err(|e| {
            format_error(
                file,
                None,
                "a UTF-8 JSON header",
                format!("invalid UTF-8 at byte {}", 8 + e.valid_up_to()),
                HINT_CORRUPT,
            )
        })?;
        let entries: OrderedEntries = serde_json::from_str(text).map_err(|e| {
            format_error(
                file,
                None,
                "a JSON object header",
                format!("invalid JSON: {e}"),
                HINT_CORRUPT,
            )
        })?;

        let mut metadata = BTreeMap::new();
        let mut seen_metadata = false;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(entries.0.len());
        let mut by_name: HashMap<String, usize> = HashMap::with_capacity(entries.0.len());
        for (name, value) in entries.0 {
            if name == "__metadata__" {
                if seen_metadata {
                    return Err(format_error(
                        file,
                        None,
                        "one `__metadata__` entry",
                        "two",
                        HINT_CORRUPT,
                    ));
                }
                seen_metadata = true;
                metadata = parse_metadata(file, value)?;
                continue;
            }
            if by_name.contains_key(&name) {
                return Err(format_error(
                    file,
                    Some(&name),
                    "each tensor name once",
                    "a second entry with the same name",
                    HINT_CORRUPT,
                ));
            }
            let info = parse_entry(file, &name, value)?;
            by_name.insert(name, tensors.len());
            tensors.push(info);
        }

        // File order: the data is read front to back, so tensors are handed out in it.
        tensors.sort_by_key(|t| (t.begin, t.end));
        let mut pos = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            if t.begin < pos {
                let prev = i
                    .checked_sub(1)
                    .map(|p| tensors[p].name.as_str())
                    .unwrap_or("");
                return Err(format_error(
                    file,
                    Some(&t.name),
                    format!("data starting at offset {pos} or later (after tensor `{prev}`)"),
                    format!(
                        "data_offsets [{}, {}], overlapping tensor `{prev}`",
                        t.begin, t.end
                    ),
                    HINT_CORRUPT,
                ));
            }
            if t.begin > pos {
                return Err(format_error(
                    file,
                    Some(&t.name),
                    format!(
                        "data starting at offset {pos} (safetensors files have no gaps between tensors)"
                    ),
                    format!(
                        "data_offsets [{}, {}], leaving bytes {pos}..{} unused",
                        t.begin, t.end, t.begin
                    ),
                    HINT_CORRUPT,
                ));
            }
            pos = t.end;
        }
        if pos > u64::MAX - needed {
            return Err(format_error(
                file,
                None,
                "a data section whose end fits in a 64-bit file offset",
                format!("{pos} bytes of data"),
                HINT_CORRUPT,
            ));
        }
        for (i, t) in tensors.iter().enumerate() {
            by_name.insert(t.name.clone(), i);
        }
        Ok(Some(Header {
            file: file.to_string(),
            json_len: needed - 8,
            tensors,
            by_name,
            metadata,
            data_len: pos,
        }))
    }

    /// Checks the header against the real file length: every span must lie inside the data
    /// section and the file must end where the last tensor ends.
    pub fn check_file_len(&self, file_len: u64) -> Result<()> {
        let total = self.total_len();
        if file_len < total {
            let avail = file_len.saturating_sub(self.data_start());
            let culprit = self.tensors.iter().find(|t| t.end > avail);
            return Err(format_error(
                &self.file,
                culprit.map(|t| t.name.as_str()),
                format!(
                    "data_offsets within the {avail}-byte data section (the file has {file_len} bytes)"
                ),
                match culprit {
                    Some(t) => format!("data_offsets [{}, {}]", t.begin, t.end),
                    None => format!("a header that needs {total} bytes"),
                },
                HINT_TRUNCATED,
            ));
        }
        if file_len > total {
            return Err(format_error(
                &self.file,
                None,
                format!(
                    "a file of {total} bytes (8 + {}-byte header + {}-byte data)",
                    self.json_len, self.data_len
                ),
                format!(
                    "{file_len} bytes: {} bytes after the last tensor",
                    file_len - total
                ),
                HINT_CORRUPT,
            ));
        }
        Ok(())
    }

    /// The file name used in errors.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Bytes of JSON (not counting the 8-byte length).
    pub fn json_len(&self) -> u64 {
        self.json_len
    }

    /// Offset of the first data byte in the file.
    pub fn data_start(&self) -> u64 {
        8 + self.json_len
    }

    /// Bytes of tensor data.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The length the file must have.
    pub fn total_len(&self) -> u64 {
        self.data_start() + self.data_len
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The free-form `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

fn parse_metadata(file: &str, value: serde_json::Value) -> Result<BTreeMap<String, String>> {
    match value {
        serde_json::Value::Null => Ok(BTreeMap::new()),
        serde_json::Value::Object(map) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) => {
                        out.insert(k, s);
                    }
                    other => {
                        return Err(format_error(
                            file,
                            None,
                            "`__metadata__` values that are strings",
                            format!("`{k}`: {}", short_json(&other)),
                            HINT_CORRUPT,
                        ))
                    }
                }
            }
            Ok(out)
        }
        other => Err(format_error(
            file,
            None,
            "`__metadata__` to be an object of strings",
            short_json(&other),
            HINT_CORRUPT,
        )),
    }
}

fn parse_entry(file: &str, name: &str, value: serde_json::Value) -> Result<TensorInfo> {
    let raw: RawEntry = serde_json::from_value(value).map_err(|e| {
        format_error(
            file,
            Some(name),
            "an entry {\"dtype\": str, \"shape\": [int], \"data_offsets\": [begin, end]}",
            e.to_string(),
            HINT_CORRUPT,
        )
    })?;
    let Some(dtype) = Dtype::parse(&raw.dtype) else {
        // Tell a real-but-unsupported dtype (I64, F64, F8_E4M3, ...) from garbage.
        let known = serde_json::from_value::<safetensors::Dtype>(serde_json::Value::String(
            raw.dtype.clone(),
        ))
        .is_ok();
        return Err(format_error(
            file,
            Some(name),
            "dtype F32, F16 or BF16",
            if known {
                format!("dtype {}", raw.dtype)
            } else {
                format!("unknown dtype {:?}", raw.dtype)
            },
            if known { HINT_DTYPE } else { HINT_CORRUPT },
        ));
    };
    let [begin, end] = raw.data_offsets;
    let overflow = || {
        format_error(
            file,
            Some(name),
            "a shape whose byte size fits in memory",
            format!("shape {:?}", raw.shape),
            HINT_CORRUPT,
        )
    };
    let mut shape = Vec::with_capacity(raw.shape.len());
    let mut numel: u64 = 1;
    for &d in &raw.shape {
        shape.push(usize::try_from(d).map_err(|_| overflow())?);
        numel = numel.checked_mul(d).ok_or_else(overflow)?;
    }
    usize::try_from(numel).map_err(|_| overflow())?;
    let bytes = numel
        .checked_mul(dtype.size() as u64)
        .ok_or_else(overflow)?;
    if end < begin {
        return Err(format_error(
            file,
            Some(name),
            "data_offsets [begin, end] with begin <= end",
            format!("[{begin}, {end}]"),
            HINT_CORRUPT,
        ));
    }
    if end - begin != bytes {
        return Err(format_error(
            file,
            Some(name),
            format!(
                "{bytes} bytes of data ({numel} x {dtype} for shape {:?})",
                raw.shape
            ),
            format!("data_offsets [{begin}, {end}] ({} bytes)", end - begin),
            HINT_CORRUPT,
        ));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

fn short_json(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}
