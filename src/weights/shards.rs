//! Sharded checkpoints: `*.safetensors.index.json` maps each tensor name to the shard file
//! holding it (`{"metadata": {"total_size": N}, "weight_map": {name: file}}`, as written by
//! diffusers/transformers `save_pretrained(max_shard_size=...)`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{format_error, Header, HINT_CORRUPT};
use crate::error::{Error, Result, LISTED_NAMES};

const HINT_INDEX: &str =
    "the shard files and the index disagree; download the model again so they come from the same save";

/// A parsed shard index.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    /// The index file name (for errors).
    pub file: String,
    /// Tensor name → shard file name (relative to the index's folder).
    pub weight_map: BTreeMap<String, String>,
    /// `metadata.total_size`, the bytes of tensor data, where given.
    pub total_size: Option<u64>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<RawMeta>,
    weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawMeta {
    #[serde(default)]
    total_size: Option<serde_json::Value>,
}

impl ShardIndex {
    /// Parses index JSON. Shard names must be plain file names ending in `.safetensors`: the
    /// index comes from the network as often as from disk and must not point elsewhere.
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let raw: RawIndex = serde_json::from_str(text).map_err(|e| {
            format_error(
                file,
                None,
                "a shard index {\"weight_map\": {tensor: file}}",
                format!("{e}"),
                HINT_CORRUPT,
            )
        })?;
        for (name, shard) in &raw.weight_map {
            let plain = !shard.is_empty()
                && !shard.contains(['/', '\\', ':'])
                && shard != ".."
                && shard.ends_with(".safetensors");
            if !plain {
                return Err(format_error(
                    file,
                    Some(name),
                    "a shard file name in the same folder ending in `.safetensors`",
                    format!("{shard:?}"),
                    HINT_CORRUPT,
                ));
            }
        }
        // Older writers store total_size as a float; it is informational only.
        let total_size = raw
            .metadata
            .and_then(|m| m.total_size)
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
        Ok(Self {
            file: file.to_string(),
            weight_map: raw.weight_map,
            total_size,
        })
    }

    /// The distinct shard files, sorted (the `-00001-of-0000N` names sort in order).
    pub fn shard_files(&self) -> Vec<String> {
        self.weight_map
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Tensor names the index places in `shard`.
    pub fn tensors_in<'a>(&'a self, shard: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.weight_map
            .iter()
            .filter(move |(_, f)| f.as_str() == shard)
            .map(|(n, _)| n.as_str())
    }
}

/// Checks shard headers against the index as each shard is opened: every tensor the index
/// puts in a shard is there, no shard holds a tensor the index puts elsewhere (or omits), and
/// no tensor is in two shards. Works the same natively and for shards fetched in a browser.
#[derive(Debug, Clone)]
pub struct ShardTracker {
    index: ShardIndex,
    /// Tensor → shard it was found in.
    seen: BTreeMap<String, String>,
    shards_done: BTreeSet<String>,
}

impl ShardTracker {
    pub fn new(index: ShardIndex) -> Self {
        Self {
            index,
            seen: BTreeMap::new(),
            shards_done: BTreeSet::new(),
        }
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Checks the header of shard `shard` (its name as written in the index).
    pub fn check_header(&mut self, shard: &str, header: &Header) -> Result<()> {
        if !self.index.weight_map.values().any(|f| f == shard) {
            return Err(format_error(
                &self.index.file,
                None,
                format!("one of the shards it lists: {:?}", self.index.shard_files()),
                format!("a header for {shard:?}"),
                HINT_INDEX,
            ));
        }
        if !self.shards_done.insert(shard.to_string()) {
            return Err(format_error(
                &self.index.file,
                None,
                "each shard read once",
                format!("{shard:?} a second time"),
                HINT_INDEX,
            ));
        }
        let missing: Vec<&str> = self
            .index
            .tensors_in(shard)
            .filter(|n| header.get(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingTensors {
                file: header.file().to_string(),
                names: missing
                    .iter()
                    .take(LISTED_NAMES)
                    .map(|s| s.to_string())
                    .collect(),
                count: missing.len(),
                hint: "the index lists these tensors in this shard but the shard lacks them; download the model again",
            });
        }
        for t in header.tensors() {
            if let Some(other) = self.seen.get(&t.name) {
                return Err(format_error(
                    header.file(),
                    Some(&t.name),
                    "each tensor in one shard",
                    format!("it in both {other:?} and {shard:?}"),
                    HINT_INDEX,
                ));
            }
            match self.index.weight_map.get(&t.name) {
                Some(f) if f == shard => {}
                Some(f) => {
                    return Err(format_error(
                        header.file(),
                        Some(&t.name),
                        format!("it only in {f:?}, as the index says"),
                        format!("it also in {shard:?}"),
                        HINT_INDEX,
                    ))
                }
                None => {
                    return Err(format_error(
                        header.file(),
                        Some(&t.name),
                        format!("only tensors listed in {}", self.index.file),
                        "a tensor the index does not list",
                        HINT_INDEX,
                    ))
                }
            }
            self.seen.insert(t.name.clone(), shard.to_string());
        }
        Ok(())
    }

    /// After all shards: every shard of the index was read.
    pub fn finish(&self) -> Result<()> {
        let unread: Vec<String> = self
            .index
            .shard_files()
            .into_iter()
            .filter(|f| !self.shards_done.contains(f))
            .collect();
        if unread.is_empty() {
            Ok(())
        } else {
            Err(format_error(
                &self.index.file,
                None,
                "every shard it lists to be read",
                format!("{unread:?} not read"),
                HINT_INDEX,
            ))
        }
    }
}
