//! Reading weights from the file system: one safetensors file or a sharded checkpoint,
//! streamed in fixed-size chunks so a file is never held in memory twice. (On wasm32 the
//! browser front end feeds [`SafetensorsStream`] from fetch instead; these functions compile
//! there but have no file system to read.)

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{
    Header, LoadOptions, Progress, ReadyTensor, SafetensorsStream, ShardIndex, ShardTracker,
};
use crate::error::{Error, Result};

/// Bytes read per `read` call: large enough for few syscalls, small next to any model.
const CHUNK: usize = 1 << 20;

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        file: path.display().to_string(),
        message: e.to_string(),
        hint: if e.kind() == std::io::ErrorKind::NotFound {
            "check the path"
        } else {
            "check that the file is readable"
        },
    }
}

/// Reads `path`, calling `on_tensor` for each tensor in file order as soon as it is read.
/// Returns the header.
pub fn load_file(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
    on_tensor: impl FnMut(ReadyTensor) -> Result<()>,
) -> Result<Header> {
    load_file_with_progress(path, opts, on_tensor, |_| {})
}

/// [`load_file`] that also reports progress after every chunk.
pub fn load_file_with_progress(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
    mut on_tensor: impl FnMut(ReadyTensor) -> Result<()>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Header> {
    stream_file(
        path.as_ref(),
        opts,
        &mut |_| Ok(()),
        &mut on_tensor,
        &mut on_progress,
    )
}

/// Streams one file: the header first (so `on_header` can reject it before any data is
/// read), then the data in [`CHUNK`]s.
fn stream_file(
    path: &Path,
    opts: &LoadOptions,
    on_header: &mut dyn FnMut(&Header) -> Result<()>,
    on_tensor: &mut dyn FnMut(ReadyTensor) -> Result<()>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Header> {
    let mut f = File::open(path).map_err(|e| io_error(path, e))?;
    let len = f.metadata().map_err(|e| io_error(path, e))?.len();
    let mut stream = SafetensorsStream::with_options(stream_name(path), opts.clone());
    stream.set_file_len(len)?;
    // The length field and the header first, read exactly, so the header can be checked
    // before any tensor is handed out.
    let mut head = [0u8; 8];
    let n = read_up_to(&mut f, &mut head, path)?;
    stream.push_with(&head[..n], &mut *on_tensor)?;
    if n == 8 {
        let needed =
            super::header_len_from_prefix(&stream_name(path), &head, Some(len))?.unwrap_or(8);
        let mut json = vec![0u8; (needed - 8) as usize];
        let n = read_up_to(&mut f, &mut json, path)?;
        stream.push_with(&json[..n], &mut *on_tensor)?;
    }
    if let Some(h) = stream.header() {
        on_header(h)?;
    }
    on_progress(stream.progress());
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_up_to(&mut f, &mut buf, path)?;
        if n == 0 {
            break;
        }
        stream.push_with(&buf[..n], &mut *on_tensor)?;
        on_progress(stream.progress());
    }
    stream.finish()?;
    stream
        .header()
        .cloned()
        .ok_or_else(|| Error::invalid("safetensors stream", "no header after finish"))
}

fn stream_name(path: &Path) -> String {
    path.display().to_string()
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, e)),
        }
    }
    Ok(n)
}

/// Reads a sharded checkpoint from its `*.safetensors.index.json`, shard by shard, checking
/// each shard's header against the index before reading its data. Progress counts bytes over
/// all shards.
pub fn load_sharded(
    index_path: impl AsRef<Path>,
    opts: &LoadOptions,
    mut on_tensor: impl FnMut(ReadyTensor) -> Result<()>,
    mut on_progress: impl FnMut(Progress),
) -> Result<ShardIndex> {
    let index_path = index_path.as_ref();
    let text = std::fs::read_to_string(index_path).map_err(|e| io_error(index_path, e))?;
    let index = ShardIndex::parse(&index_path.display().to_string(), &text)?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let shards = index.shard_files();
    let mut total = 0u64;
    for s in &shards {
        let p = dir.join(s);
        total += std::fs::metadata(&p).map_err(|e| io_error(&p, e))?.len();
    }
    let tensors_total = index.weight_map.len();
    let mut tracker = ShardTracker::new(index);
    let mut done_bytes = 0u64;
    let mut done_tensors = 0usize;
    for s in &shards {
        let p = dir.join(s);
        let header = stream_file(
            &p,
            opts,
            &mut |h| tracker.check_header(s, h),
            &mut on_tensor,
            &mut |pr| {
                on_progress(Progress {
                    bytes_done: done_bytes + pr.bytes_done,
                    bytes_total: Some(total),
                    tensors_done: done_tensors + pr.tensors_done,
                    tensors_total: Some(tensors_total),
                });
            },
        )?;
        done_bytes += header.total_len();
        done_tensors += header.tensors().len();
    }
    tracker.finish()?;
    Ok(tracker.index().clone())
}

/// The weights file(s) found in a diffusers model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelWeightsFile {
    Single(PathBuf),
    Sharded(PathBuf),
}

/// Finds the weights in a diffusers model folder: `diffusion_pytorch_model.safetensors`, its
/// sharded `.safetensors.index.json`, or their `.fp16` variants, in that order (diffusers'
/// own preference: a single file before an index, the plain variant before fp16).
pub fn find_model_weights(dir: impl AsRef<Path>) -> Result<ModelWeightsFile> {
    let dir = dir.as_ref();
    for variant in ["", ".fp16"] {
        let single = dir.join(format!("diffusion_pytorch_model{variant}.safetensors"));
        if single.is_file() {
            return Ok(ModelWeightsFile::Single(single));
        }
        let index = dir.join(format!(
            "diffusion_pytorch_model{variant}.safetensors.index.json"
        ));
        if index.is_file() {
            return Ok(ModelWeightsFile::Sharded(index));
        }
    }
    let has_bin = dir.join("diffusion_pytorch_model.bin").is_file();
    Err(Error::Io {
        file: dir.display().to_string(),
        message:
            "no diffusion_pytorch_model.safetensors (or .safetensors.index.json) in this folder"
                .into(),
        hint: if has_bin {
            "only a PyTorch pickle (.bin) is there; convert it with `UNet2DModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
        } else {
            "point --model at a diffusers model folder (the one holding config.json)"
        },
    })
}
