//! [`Weights`]: the tensors of a checkpoint by name, taken one by one by the model code with
//! the shape its config implies, then checked for leftovers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{
    find_model_weights, format_error, load_file_with_progress, load_sharded, Dtype, LoadOptions,
    ModelWeightsFile, Progress, ReadyTensor, TensorData, WeightDtype, HINT_CORRUPT,
};
use crate::error::{Error, Result, ShapeText, LISTED_NAMES};
use crate::tensor::Tensor;

const HINT_MISMATCH: &str =
    "the weights do not belong to this config.json; use the config and weights of the same model";

struct Entry {
    file: String,
    shape: Vec<usize>,
    data: TensorData,
    /// The tensor already on a device (see [`Weights::insert_device`]); `data` is then empty
    /// and only records the stored dtype.
    device: Option<Tensor>,
    /// The device tensor holds packed f16 words (see [`Weights::insert_device_packed`]).
    packed: bool,
}

/// A tensor as [`Weights::take_stored`] hands it out.
pub(crate) enum Stored {
    Device {
        tensor: Tensor,
        /// Packed f16 words.
        packed: bool,
    },
    Host(ReadyTensor),
}

impl Entry {
    fn numel(&self) -> u64 {
        match &self.device {
            Some(t) => t.numel() as u64,
            None => self.data.len() as u64,
        }
    }

    fn byte_len(&self) -> u64 {
        match &self.device {
            Some(t) => t.numel() as u64 * self.data.dtype().size() as u64,
            None => self.data.byte_len(),
        }
    }
}

/// Tensors by name, kept in their stored dtype (an f16 checkpoint stays half the size in
/// memory until each tensor is taken and widened).
pub struct Weights {
    /// What the weights were loaded from, for errors about the whole set.
    source: String,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    weight_dtype: WeightDtype,
    /// Bytes the layers put on their executor from this set, as stored (see `device_bytes`).
    device_bytes: u64,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Weights({}: {} tensors, {} taken)",
            self.source,
            self.entries.len(),
            self.taken.len()
        )
    }
}

impl Weights {
    /// An empty set; fill it with [`insert`](Self::insert) (e.g. from a browser stream).
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            entries: BTreeMap::new(),
            taken: BTreeSet::new(),
            weight_dtype: WeightDtype::F32,
            device_bytes: 0,
        }
    }

    /// How layers store their big weights (Linear and Conv2d matrices and filters) on the
    /// GPU; set it before the model takes its tensors. [`WeightDtype::F32`] by default.
    pub fn set_weight_dtype(&mut self, dtype: WeightDtype) {
        self.weight_dtype = dtype;
    }

    /// The storage chosen with [`set_weight_dtype`](Self::set_weight_dtype).
    pub fn weight_dtype(&self) -> WeightDtype {
        self.weight_dtype
    }

    /// Bytes of the tensors that layers (`nn::Linear`, `nn::Conv2d`, norms, ...) took from this
    /// set and put on their executor, as stored there: 4 per f32 value, 4 per pair of packed
    /// f16 values (what [`WeightDtype::F16Packed`] saves).
    pub fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    pub(crate) fn add_device_bytes(&mut self, bytes: u64) {
        self.device_bytes = self.device_bytes.saturating_add(bytes);
    }

    /// Loads one safetensors file.
    pub fn load_file(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        Self::load_file_with_progress(path, opts, |_| {})
    }

    pub fn load_file_with_progress(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        on_progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let path = path.as_ref();
        let mut w = Self::new(path.display().to_string());
        load_file_with_progress(path, opts, |t| w.insert(t), on_progress)?;
        Ok(w)
    }

    /// Loads a sharded checkpoint from its `*.safetensors.index.json`.
    pub fn load_sharded(
        index_path: impl AsRef<Path>,
        opts: &LoadOptions,
        on_progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let path = index_path.as_ref();
        let mut w = Self::new(path.display().to_string());
        load_sharded(path, opts, |t| w.insert(t), on_progress)?;
        Ok(w)
    }

    /// Loads the weights of a diffusers model folder (see [`find_model_weights`]).
    pub fn load_model_dir(
        dir: impl AsRef<Path>,
        opts: &LoadOptions,
        on_progress: impl FnMut(Progress),
    ) -> Result<Self> {
        match find_model_weights(dir)? {
            ModelWeightsFile::Single(p) => Self::load_file_with_progress(p, opts, on_progress),
            ModelWeightsFile::Sharded(p) => Self::load_sharded(p, opts, on_progress),
        }
    }

    /// Reads a whole safetensors file already in memory (an embedded model, a `Blob` read at
    /// once); `file` names it in errors.
    pub fn from_bytes(file: &str, bytes: &[u8], opts: &LoadOptions) -> Result<Self> {
        let mut w = Self::new(file);
        let mut stream = super::SafetensorsStream::with_options(file, opts.clone());
        stream.set_file_len(bytes.len() as u64)?;
        stream.push_with(bytes, |t| w.insert(t))?;
        stream.finish()?;
        Ok(w)
    }

    /// Adds a tensor; a name already present is an error naming both files.
    pub fn insert(&mut self, t: ReadyTensor) -> Result<()> {
        self.check_new(&t.file, &t.name)?;
        self.entries.insert(
            t.name,
            Entry {
                file: t.file,
                shape: t.shape,
                data: t.data,
                device: None,
                packed: false,
            },
        );
        Ok(())
    }

    /// Adds a tensor that is already on the GPU (uploaded as soon as its bytes arrived, while
    /// the rest of the file was still downloading); [`take`](Self::take) hands it out as it
    /// is. `dtype` is the dtype it was stored in.
    pub fn insert_device(
        &mut self,
        file: String,
        name: String,
        dtype: Dtype,
        tensor: Tensor,
    ) -> Result<()> {
        self.insert_on_device(file, name, dtype, tensor, false)
    }

    /// Adds a Linear/Conv2d weight already on the GPU as packed f16 words (two per `u32`,
    /// see [`pack_f16`](super::pack_f16)); `tensor` has the logical shape. Only
    /// [`take_stored`](Self::take_stored) hands it out (the layers that read packed
    /// weights); [`take`](Self::take) refuses it.
    pub fn insert_device_packed(
        &mut self,
        file: String,
        name: String,
        dtype: Dtype,
        tensor: Tensor,
    ) -> Result<()> {
        self.insert_on_device(file, name, dtype, tensor, true)
    }

    fn insert_on_device(
        &mut self,
        file: String,
        name: String,
        dtype: Dtype,
        tensor: Tensor,
        packed: bool,
    ) -> Result<()> {
        self.check_new(&file, &name)?;
        self.entries.insert(
            name,
            Entry {
                file,
                shape: tensor.shape().to_vec(),
                data: TensorData::empty(dtype),
                device: Some(tensor),
                packed,
            },
        );
        Ok(())
    }

    fn check_new(&self, file: &str, name: &str) -> Result<()> {
        match self.entries.get(name) {
            Some(prev) => Err(format_error(
                file,
                Some(name),
                "each tensor once across all files",
                format!("a second copy (the first is in {})", prev.file),
                HINT_CORRUPT,
            )),
            None => Ok(()),
        }
    }

    /// What the weights were loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Tensors not yet taken.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Renames every tensor not yet taken that does not start with `prefix` to
    /// `prefix + name` (e.g. `text_model.` for a CLIP text model saved by transformers 5,
    /// which drops it). A clash with a tensor already named so is an error naming both.
    pub fn add_prefix(&mut self, prefix: &str) -> Result<()> {
        let names: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !n.starts_with(prefix))
            .cloned()
            .collect();
        for name in names {
            let to = format!("{prefix}{name}");
            if self.entries.contains_key(&to) {
                return Err(Error::invalid(
                    "weights",
                    format!(
                        "{}: both `{name}` and `{to}` are present; remove one of them",
                        self.source
                    ),
                ));
            }
            if let Some(e) = self.entries.remove(&name) {
                self.entries.insert(to, e);
            }
        }
        Ok(())
    }

    /// Names not yet taken, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.data.dtype())
    }

    /// Bytes held (as stored) by the tensors not yet taken.
    pub fn byte_len(&self) -> u64 {
        self.entries.values().map(Entry::byte_len).sum()
    }

    /// Elements held by the tensors not yet taken (the parameter count of a fresh set).
    pub fn numel(&self) -> u64 {
        self.entries.values().map(Entry::numel).sum()
    }

    fn take_entry(&mut self, name: &str, expected_shape: &[usize]) -> Result<Entry> {
        let Some(entry) = self.entries.get(name) else {
            if self.taken.contains(name) {
                return Err(Error::invalid(
                    "weights",
                    format!("tensor `{name}` was taken twice (a bug in the model code)"),
                ));
            }
            return Err(Error::MissingTensors {
                file: self.source.clone(),
                names: vec![name.to_string()],
                count: 1,
                hint: HINT_MISMATCH,
            });
        };
        if entry.shape != expected_shape {
            return Err(Error::WeightShape {
                file: entry.file.clone(),
                tensor: name.to_string(),
                expected: ShapeText(expected_shape.to_vec()),
                got: ShapeText(entry.shape.clone()),
                hint: HINT_MISMATCH,
            });
        }
        let entry = self.entries.remove(name).ok_or_else(|| {
            Error::invalid("weights", format!("tensor `{name}` vanished while taken"))
        })?;
        self.taken.insert(name.to_string());
        Ok(entry)
    }

    /// Removes `name` and returns it widened to f32 as a CPU tensor (upload it with
    /// `Exec::upload`), or as the GPU tensor given to [`insert_device`](Self::insert_device).
    /// Errors: missing (naming it), shape mismatch (name, expected, got).
    pub fn take(&mut self, name: &str, expected_shape: &[usize]) -> Result<Tensor> {
        Ok(self.take_with_dtype(name, expected_shape)?.0)
    }

    /// [`take`](Self::take), also saying which dtype the checkpoint stored it in.
    pub fn take_with_dtype(
        &mut self,
        name: &str,
        expected_shape: &[usize],
    ) -> Result<(Tensor, Dtype)> {
        if self.entries.get(name).is_some_and(|e| e.packed) {
            return Err(Error::invalid(
                "weights",
                format!(
                    "tensor `{name}` was uploaded as packed float16 while loading, but the model reads it as float32 (a bug in the loader's choice of packed tensors); load with the weight storage `f32`"
                ),
            ));
        }
        let e = self.take_entry(name, expected_shape)?;
        let dtype = e.data.dtype();
        if let Some(t) = e.device {
            return Ok((t, dtype));
        }
        Ok((Tensor::from_vec(&e.shape, e.data.into_f32())?, dtype))
    }

    /// Removes `name` as it is held: on a device (packed or not) or as stored bytes on the
    /// host, for the layers that choose the weight storage ([`WeightDtype`]).
    pub(crate) fn take_stored(&mut self, name: &str, expected_shape: &[usize]) -> Result<Stored> {
        let e = self.take_entry(name, expected_shape)?;
        Ok(match e.device {
            Some(tensor) => Stored::Device {
                tensor,
                packed: e.packed,
            },
            None => Stored::Host(ReadyTensor {
                file: e.file,
                name: name.to_string(),
                shape: e.shape,
                data: e.data,
            }),
        })
    }

    /// Checks a whole manifest of `(name, shape)` at once, before any is taken, so one error
    /// lists every missing tensor (the first few and a count) rather than the first only;
    /// then the first shape mismatch.
    pub fn check_expected<S: AsRef<str>>(&self, expected: &[(S, Vec<usize>)]) -> Result<()> {
        let missing: Vec<&str> = expected
            .iter()
            .map(|(n, _)| n.as_ref())
            .filter(|n| !self.entries.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingTensors {
                file: self.source.clone(),
                names: missing
                    .iter()
                    .take(LISTED_NAMES)
                    .map(|s| s.to_string())
                    .collect(),
                count: missing.len(),
                hint: HINT_MISMATCH,
            });
        }
        for (name, shape) in expected {
            let name = name.as_ref();
            if let Some(e) = self.entries.get(name) {
                if &e.shape != shape {
                    return Err(Error::WeightShape {
                        file: e.file.clone(),
                        tensor: name.to_string(),
                        expected: ShapeText(shape.clone()),
                        got: ShapeText(e.shape.clone()),
                        hint: HINT_MISMATCH,
                    });
                }
            }
        }
        Ok(())
    }

    /// After the model has taken what it needs: an error listing the tensors left over (the
    /// first few and a count) unless `allow_extra`; returns the leftover names either way.
    pub fn finish_unused(&self, allow_extra: bool) -> Result<Vec<String>> {
        let left: Vec<String> = self.entries.keys().cloned().collect();
        if !left.is_empty() && !allow_extra {
            return Err(Error::UnexpectedTensors {
                file: self.source.clone(),
                names: left.iter().take(LISTED_NAMES).cloned().collect(),
                count: left.len(),
                hint: "the weights hold more than this config.json describes; use the matching config, or allow extra tensors explicitly",
            });
        }
        Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(name: &str, shape: &[usize], values: &[f32]) -> ReadyTensor {
        let mut data = TensorData::empty(Dtype::F32);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.extend_le(&bytes);
        ReadyTensor {
            file: "a.safetensors".into(),
            name: name.into(),
            shape: shape.to_vec(),
            data,
        }
    }

    #[test]
    fn add_prefix_renames_the_unprefixed_and_refuses_a_clash() {
        let mut w = Weights::new("a.safetensors");
        w.insert(ready("embeddings.w", &[1], &[1.0])).unwrap();
        w.insert(ready("text_model.b", &[1], &[2.0])).unwrap();
        w.add_prefix("text_model.").unwrap();
        let names: Vec<&str> = w.names().collect();
        assert_eq!(names, ["text_model.b", "text_model.embeddings.w"]);
        assert_eq!(
            w.take("text_model.embeddings.w", &[1])
                .unwrap()
                .cpu_data()
                .unwrap(),
            &[1.0]
        );
        let mut w = Weights::new("a.safetensors");
        w.insert(ready("x", &[1], &[1.0])).unwrap();
        w.insert(ready("p.x", &[1], &[2.0])).unwrap();
        let e = w.add_prefix("p.").unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("`p.x`"), "{e}");
    }

    #[test]
    fn device_entries_are_handed_out_as_they_are_and_counted() {
        let mut w = Weights::new("a.safetensors");
        w.insert(ready("host", &[2], &[1.0, 2.0])).unwrap();
        let dev = Tensor::from_vec(&[3], vec![4.0, 5.0, 6.0]).unwrap();
        w.insert_device("a.safetensors".into(), "dev".into(), Dtype::F16, dev)
            .unwrap();
        // Counted with their stored dtype: 2 f32 + 3 f16.
        assert_eq!(w.numel(), 5);
        assert_eq!(w.byte_len(), 2 * 4 + 3 * 2);
        assert_eq!(w.dtype("dev"), Some(Dtype::F16));
        // A second copy of a name is refused whichever way it comes.
        let again = Tensor::from_vec(&[2], vec![0.0, 0.0]).unwrap();
        assert!(w
            .insert_device("b.safetensors".into(), "host".into(), Dtype::F32, again)
            .is_err());
        assert!(w.take("dev", &[2]).is_err(), "shape is still checked");
        assert_eq!(
            w.take("dev", &[3]).unwrap().cpu_data(),
            Some(&[4.0, 5.0, 6.0][..])
        );
        assert!(matches!(w.take_stored("host", &[2]), Ok(Stored::Host(_))));
        // A packed entry goes only to the layers that read packed weights.
        let words = Tensor::from_vec(&[2, 2], vec![0.0; 4]).unwrap();
        w.insert_device_packed("a.safetensors".into(), "packed".into(), Dtype::F16, words)
            .unwrap();
        let e = w.take("packed", &[2, 2]).unwrap_err().to_string();
        assert!(e.contains("packed float16"), "{e}");
        assert!(matches!(
            w.take_stored("packed", &[2, 2]),
            Ok(Stored::Device { packed: true, .. })
        ));
        assert!(w.finish_unused(false).is_ok());
    }
}
