//! Push-based safetensors reading: feed the file's bytes in chunks of any size (a native
//! file read loop, or a browser `ReadableStream`), get each tensor back as soon as its last
//! byte has arrived.

use super::{
    format_error, header_len_from_prefix, Dtype, Header, TensorData, HINT_CORRUPT, HINT_MEMORY,
    HINT_NON_FINITE, HINT_TRUNCATED,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Options for reading weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Reject tensors holding NaN or ±inf (on by default: such weights silently turn every
    /// output into NaN, far from the cause).
    pub check_finite: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { check_finite: true }
    }
}

/// How far a load has come. Totals are `None` until known (the header has been read, or the
/// caller gave the file length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub tensors_done: usize,
    pub tensors_total: Option<usize>,
}

impl Progress {
    /// Fraction of bytes done, in [0, 1], once the total is known.
    pub fn fraction(&self) -> Option<f64> {
        self.bytes_total.map(|t| {
            if t == 0 {
                1.0
            } else {
                (self.bytes_done as f64 / t as f64).min(1.0)
            }
        })
    }
}

/// One tensor whose bytes have all arrived.
#[derive(Debug, Clone)]
pub struct ReadyTensor {
    /// The file it came from (for error messages).
    pub file: String,
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl ReadyTensor {
    pub fn dtype(&self) -> Dtype {
        self.data.dtype()
    }

    /// A CPU tensor of the values widened to f32; upload it with `Exec::upload`.
    pub fn into_tensor(self) -> Result<Tensor> {
        Tensor::from_vec(&self.shape, self.data.into_f32())
    }

    /// The values packed two f16 per `u32` (see [`TensorData::to_f16_words`]). Values beyond
    /// f16's range are an error naming the tensor, not a silent ±inf.
    pub fn to_f16_words(&self) -> Result<Vec<u32>> {
        let (words, overflowed) = self.data.to_f16_words();
        if overflowed > 0 {
            let (first_index, first_value) = self
                .data
                .to_f32()
                .iter()
                .enumerate()
                .find(|(_, x)| x.is_finite() && x.abs() > 65504.0)
                .map_or((0, 0.0), |(i, &x)| (i, x));
            return Err(Error::NonFiniteWeights {
                file: self.file.clone(),
                tensor: self.name.clone(),
                count: overflowed,
                first_index,
                first_value,
                hint: "these values exceed float16's range (±65504); keep this tensor in float32",
            });
        }
        Ok(words)
    }
}

/// The tensor currently receiving bytes.
struct Filling {
    index: usize,
    data: TensorData,
    /// A partial element left over from the previous chunk.
    carry: [u8; 4],
    carry_len: usize,
    remaining: u64,
}

/// Reads a safetensors file from chunks pushed in order.
///
/// ```no_run
/// # fn demo(chunks: Vec<Vec<u8>>) -> webdiffusion::Result<()> {
/// use webdiffusion::weights::SafetensorsStream;
/// let mut stream = SafetensorsStream::new("unet.safetensors");
/// for chunk in chunks {
///     for t in stream.push(&chunk)? {
///         println!("{} {:?} {:?}", t.name, t.shape, stream.progress());
///     }
/// }
/// stream.finish()?; // errors if the file ended early
/// # Ok(()) }
/// ```
pub struct SafetensorsStream {
    file: String,
    opts: LoadOptions,
    file_len: Option<u64>,
    /// Length field and JSON until the header is parsed; freed afterwards.
    prefix: Vec<u8>,
    header: Option<Header>,
    /// Index (file order) of the next tensor to complete.
    next: usize,
    filling: Option<Filling>,
    /// Bytes consumed so far.
    pos: u64,
    failed: Option<String>,
}

/// A tensor's first allocation when the file length is unknown (its claimed size is not yet
/// backed by real bytes): 16 Mi elements, grown as data arrives.
const UNVERIFIED_RESERVE: usize = 1 << 24;

impl SafetensorsStream {
    /// A stream for `file` (the name shown in errors) with default options.
    pub fn new(file: impl Into<String>) -> Self {
        Self::with_options(file, LoadOptions::default())
    }

    pub fn with_options(file: impl Into<String>, opts: LoadOptions) -> Self {
        Self {
            file: file.into(),
            opts,
            file_len: None,
            prefix: Vec::new(),
            header: None,
            next: 0,
            filling: None,
            pos: 0,
            failed: None,
        }
    }

    /// Declares the file's length (its size on disk, an HTTP Content-Length) so that a header
    /// or span past the end is reported as soon as the header is in, not at [`finish`].
    ///
    /// [`finish`]: Self::finish
    pub fn set_file_len(&mut self, len: u64) -> Result<()> {
        self.file_len = Some(len);
        if len < self.pos {
            return Err(format_error(
                &self.file,
                None,
                format!("at most {len} bytes (the declared file length)"),
                format!("{} bytes already", self.pos),
                HINT_CORRUPT,
            ));
        }
        match &self.header {
            Some(h) => h.check_file_len(len),
            None => header_len_from_prefix(&self.file, &self.prefix, Some(len)).map(|_| ()),
        }
    }

    /// The header, once its bytes have arrived.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    pub fn progress(&self) -> Progress {
        Progress {
            bytes_done: self.pos,
            bytes_total: self
                .file_len
                .or_else(|| self.header.as_ref().map(Header::total_len)),
            tensors_done: self.next,
            tensors_total: self.header.as_ref().map(|h| h.tensors().len()),
        }
    }

    /// True once every tensor has been handed out.
    pub fn is_done(&self) -> bool {
        self.header
            .as_ref()
            .is_some_and(|h| self.next == h.tensors().len())
    }

    /// Feeds the next bytes of the file; returns the tensors completed by them, in file order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<ReadyTensor>> {
        let mut out = Vec::new();
        self.push_with(chunk, |t| {
            out.push(t);
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`push`](Self::push) but hands each completed tensor to `on_tensor` at once, so a
    /// caller that uploads and drops it never holds two. An error from `on_tensor` stops the
    /// stream.
    pub fn push_with(
        &mut self,
        chunk: &[u8],
        mut on_tensor: impl FnMut(ReadyTensor) -> Result<()>,
    ) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(Error::invalid(
                "safetensors stream",
                format!("an earlier error stopped reading {}: {msg}", self.file),
            ));
        }
        let r = self.push_inner(chunk, &mut on_tensor);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    /// Declares the end of the file: an error if bytes are missing, naming the first tensor
    /// that did not arrive complete.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(Error::invalid(
                "safetensors stream",
                format!("an earlier error stopped reading {}: {msg}", self.file),
            ));
        }
        let Some(header) = &self.header else {
            let needed = header_len_from_prefix(&self.file, &self.prefix, None)?.unwrap_or(8);
            return Err(format_error(
                &self.file,
                None,
                format!("at least {needed} bytes (the length field and the JSON header)"),
                format!("a file of {} bytes", self.pos),
                HINT_TRUNCATED,
            ));
        };
        if let Some(t) = header.tensors().get(self.next) {
            let missing = header.tensors().len() - self.next;
            return Err(format_error(
                &self.file,
                Some(&t.name),
                format!(
                    "{} bytes in all (this tensor ends at byte {})",
                    header.total_len(),
                    header.data_start() + t.end
                ),
                format!(
                    "a file of {} bytes; {missing} tensor(s) incomplete",
                    self.pos
                ),
                HINT_TRUNCATED,
            ));
        }
        Ok(())
    }

    fn push_inner(
        &mut self,
        mut chunk: &[u8],
        on_tensor: &mut dyn FnMut(ReadyTensor) -> Result<()>,
    ) -> Result<()> {
        loop {
            if self.header.is_none() {
                if chunk.is_empty() {
                    return Ok(());
                }
                let need =
                    header_len_from_prefix(&self.file, &self.prefix, self.file_len)?.unwrap_or(8);
                let take = ((need - self.prefix.len() as u64) as usize).min(chunk.len());
                self.prefix.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                self.pos += take as u64;
                if let Some(header) = Header::parse(&self.file, &self.prefix)? {
                    if let Some(len) = self.file_len {
                        header.check_file_len(len)?;
                    }
                    self.prefix = Vec::new();
                    self.header = Some(header);
                }
                continue;
            }
            self.emit_empty(on_tensor)?;
            if chunk.is_empty() {
                return Ok(());
            }
            let taken = self.feed(chunk, on_tensor)?;
            chunk = &chunk[taken..];
        }
    }

    /// Hands out zero-sized tensors at the current position (they need no bytes).
    fn emit_empty(&mut self, on_tensor: &mut dyn FnMut(ReadyTensor) -> Result<()>) -> Result<()> {
        let Some(header) = &self.header else {
            return Ok(());
        };
        while self.filling.is_none() {
            let Some(t) = header.tensors().get(self.next) else {
                break;
            };
            if t.begin != t.end {
                break;
            }
            let ready = ReadyTensor {
                file: self.file.clone(),
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: TensorData::empty(t.dtype),
            };
            self.next += 1;
            on_tensor(ready)?;
        }
        Ok(())
    }

    /// Feeds bytes to the current tensor; returns how many were used (at least 1).
    fn feed(
        &mut self,
        chunk: &[u8],
        on_tensor: &mut dyn FnMut(ReadyTensor) -> Result<()>,
    ) -> Result<usize> {
        let Some(header) = &self.header else {
            return Ok(0);
        };
        if self.filling.is_none() {
            let Some(t) = header.tensors().get(self.next) else {
                return Err(format_error(
                    &self.file,
                    None,
                    format!(
                        "the file to end after the last tensor, at byte {}",
                        header.total_len()
                    ),
                    "more bytes",
                    HINT_CORRUPT,
                ));
            };
            let mut data = TensorData::empty(t.dtype);
            // Only trust the claimed size once it is backed by a real file length.
            let reserve = if self.file_len.is_some() {
                t.numel()
            } else {
                t.numel().min(UNVERIFIED_RESERVE)
            };
            if !data.try_reserve(reserve) {
                return Err(format_error(
                    &self.file,
                    Some(&t.name),
                    format!("memory for {} bytes", t.byte_len()),
                    "an allocation failure",
                    HINT_MEMORY,
                ));
            }
            self.filling = Some(Filling {
                index: self.next,
                data,
                carry: [0; 4],
                carry_len: 0,
                remaining: t.byte_len(),
            });
        }
        let Some(f) = &mut self.filling else {
            return Ok(0);
        };
        let Some(info) = header.tensors().get(f.index) else {
            return Ok(0);
        };
        let size = info.dtype.size();
        let take = (f.remaining.min(chunk.len() as u64)) as usize;
        let mut bytes = &chunk[..take];
        if f.carry_len > 0 {
            let k = (size - f.carry_len).min(bytes.len());
            f.carry[f.carry_len..f.carry_len + k].copy_from_slice(&bytes[..k]);
            f.carry_len += k;
            bytes = &bytes[k..];
            if f.carry_len == size {
                f.data.extend_le(&f.carry[..size]);
                f.carry_len = 0;
            }
        }
        let whole = bytes.len() / size * size;
        if f.data.len() + whole / size > reserve_len(&f.data) {
            // Growth past the first reservation, only as the data really arrives; doubling
            // (capped at what is left) keeps the copying linear.
            let left = (f.remaining / size as u64) as usize;
            let extra = (whole / size).max(f.data.len()).min(left.max(whole / size));
            if !f.data.try_reserve(extra) {
                return Err(format_error(
                    &self.file,
                    Some(&info.name),
                    format!("memory for {} bytes", info.byte_len()),
                    "an allocation failure",
                    HINT_MEMORY,
                ));
            }
        }
        f.data.extend_le(&bytes[..whole]);
        let rest = &bytes[whole..];
        f.carry[..rest.len()].copy_from_slice(rest);
        f.carry_len += rest.len();
        f.remaining -= take as u64;
        self.pos += take as u64;

        if f.remaining == 0 {
            let Some(f) = self.filling.take() else {
                return Ok(take);
            };
            let ready = ReadyTensor {
                file: self.file.clone(),
                name: info.name.clone(),
                shape: info.shape.clone(),
                data: f.data,
            };
            if self.opts.check_finite {
                if let Some((count, first_index, first_value)) = ready.data.non_finite() {
                    return Err(Error::NonFiniteWeights {
                        file: self.file.clone(),
                        tensor: ready.name,
                        count,
                        first_index,
                        first_value,
                        hint: HINT_NON_FINITE,
                    });
                }
            }
            self.next += 1;
            on_tensor(ready)?;
        }
        Ok(take)
    }
}

fn reserve_len(d: &TensorData) -> usize {
    match d {
        TensorData::F32(v) => v.capacity(),
        TensorData::F16(v) => v.capacity(),
        TensorData::BF16(v) => v.capacity(),
    }
}
