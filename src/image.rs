//! Samples to pixels: the [-1, 1] → 8-bit mapping diffusers pipelines use
//! (`(x / 2 + 0.5).clamp(0, 1)`, `* 255`, rounded), batch grids, and PNG files written so
//! that nothing the user has is overwritten without `--force` and a failed run leaves no
//! partial file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An 8-bit image: `channels` is 1 (grey), 3 (RGB) or 4 (RGBA), row-major, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

/// One value of a sample in [-1, 1] to a byte, exactly as diffusers' `numpy_to_pil` path
/// does it (`round(clamp(x/2 + 0.5, 0, 1) · 255)`, computed in f32). NaN maps to 0.
pub fn to_byte(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    // `as` saturates and maps NaN to 0; round-half-even as numpy's `round`.
    v.round_ties_even() as u8
}

/// The images of a batch (N, C, H, W) of host data. C = 1 gives grey, C = 3 RGB, any other C
/// shows its first three channels (C = 2: the first channel as grey).
pub fn batch_to_images(shape: &[usize], data: &[f32]) -> Result<Vec<Image>> {
    if shape.len() != 4 || shape.contains(&0) || shape.iter().product::<usize>() != data.len() {
        return Err(Error::shape("image", "sample", "(N, C, H, W)", shape));
    }
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let shown = if c >= 3 { 3 } else { 1 };
    let plane = h * w;
    Ok((0..n)
        .map(|i| {
            let base = i * c * plane;
            let mut pixels = vec![0u8; plane * shown];
            for p in 0..plane {
                for ch in 0..shown {
                    pixels[p * shown + ch] = to_byte(data[base + ch * plane + p]);
                }
            }
            Image {
                width: w,
                height: h,
                channels: shown,
                pixels,
            }
        })
        .collect())
}

/// Columns of the near-square grid for `n` tiles.
pub fn grid_columns(n: usize) -> usize {
    (1..=n.max(1)).find(|c| c * c >= n).unwrap_or(1)
}

/// Tiles equal-sized images into a near-square grid with `gap` pixels of `background`
/// between them.
pub fn grid(images: &[Image], gap: usize, background: u8) -> Result<Image> {
    let first = images
        .first()
        .ok_or_else(|| Error::invalid("image grid", "no images to tile"))?;
    if images.iter().any(|im| {
        im.width != first.width || im.height != first.height || im.channels != first.channels
    }) {
        return Err(Error::invalid("image grid", "images differ in size"));
    }
    let cols = grid_columns(images.len());
    let rows = images.len().div_ceil(cols);
    let (tw, th, ch) = (first.width, first.height, first.channels);
    let width = cols * tw + (cols - 1) * gap;
    let height = rows * th + (rows - 1) * gap;
    let mut pixels = vec![background; width * height * ch];
    for (k, im) in images.iter().enumerate() {
        let (x0, y0) = ((k % cols) * (tw + gap), (k / cols) * (th + gap));
        for y in 0..th {
            let dst = ((y0 + y) * width + x0) * ch;
            pixels[dst..dst + tw * ch].copy_from_slice(&im.pixels[y * tw * ch..(y + 1) * tw * ch]);
        }
    }
    Ok(Image {
        width,
        height,
        channels: ch,
        pixels,
    })
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        file: path.display().to_string(),
        message: format!("{what}: {e}"),
        hint: "check that the folder exists or can be created and is writable",
    }
}

/// Errors if `path` exists and `force` is not set: checked before a run starts, so a long
/// sampling run never ends in a refusal.
pub fn check_writable(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(Error::Io {
            file: path.display().to_string(),
            message: "already exists".into(),
            hint: "choose another --out, or pass --force to overwrite it",
        });
    }
    if path.is_dir() {
        return Err(Error::Io {
            file: path.display().to_string(),
            message: "is a folder".into(),
            hint: "give a file name",
        });
    }
    Ok(())
}

/// [`check_writable`], then creates the missing folders above `path`: called before a run
/// starts so that a bad output path fails in a second, not after the sampling.
pub fn prepare_output(path: &Path, force: bool) -> Result<()> {
    check_writable(path, force)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "cannot create folder", e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so the
/// file appears whole or not at all. Creates missing folders.
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    prepare_output(path, force)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = std::fs::write(&tmp, bytes)
        .map_err(|e| io_err(&tmp, "cannot write", e))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| io_err(path, "cannot write", e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// PNG bytes of an image.
pub fn encode_png(im: &Image) -> Result<Vec<u8>> {
    let color = match im.channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => {
            return Err(Error::invalid(
                "png",
                format!("{c} channels (1, 3 or 4 can be written)"),
            ))
        }
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, im.width as u32, im.height as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::invalid("png", e.to_string()))?;
        w.write_image_data(&im.pixels)
            .map_err(|e| Error::invalid("png", e.to_string()))?;
    }
    Ok(out)
}

/// Decodes an 8-bit grey/RGB/RGBA PNG (for tests and tools).
pub fn decode_png(bytes: &[u8]) -> Result<Image> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec
        .read_info()
        .map_err(|e| Error::invalid("png", e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::invalid("png", "image too large"))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::invalid("png", e.to_string()))?;
    let channels = match (info.color_type, info.bit_depth) {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => 1,
        (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
        (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
        other => {
            return Err(Error::invalid(
                "png",
                format!("unsupported PNG format {other:?}"),
            ))
        }
    };
    buf.truncate(info.buffer_size());
    Ok(Image {
        width: info.width as usize,
        height: info.height as usize,
        channels,
        pixels: buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_matches_diffusers() {
        // numpy: np.round(np.clip(x/2+0.5, 0, 1)*255).astype(np.uint8) for these x.
        let xs = [-1.5, -1.0, -0.5, 0.0, 0.00196, 0.5, 1.0, 2.0];
        let want = [0u8, 0, 64, 128, 128, 191, 255, 255];
        for (x, w) in xs.iter().zip(want) {
            assert_eq!(to_byte(*x), w, "x = {x}");
        }
        assert_eq!(to_byte(f32::NAN), 0);
    }

    #[test]
    fn grid_places_tiles() {
        let tile = |v: u8| Image {
            width: 2,
            height: 1,
            channels: 1,
            pixels: vec![v, v],
        };
        let g = grid(&[tile(1), tile(2), tile(3)], 1, 0).unwrap();
        assert_eq!((g.width, g.height), (5, 3));
        assert_eq!(g.pixels, vec![1, 1, 0, 2, 2, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0]);
        assert_eq!(grid_columns(10), 4);
        assert_eq!(grid_columns(1), 1);
    }

    #[test]
    fn png_round_trip_and_no_clobber() {
        let dir = std::env::temp_dir().join(format!("wd-image-{}", std::process::id()));
        let path = dir.join("sub/a.png");
        let im = batch_to_images(&[1, 3, 2, 2], &[0.0; 12])
            .unwrap()
            .remove(0);
        write_atomic(&path, &encode_png(&im).unwrap(), false).unwrap();
        assert_eq!(decode_png(&std::fs::read(&path).unwrap()).unwrap(), im);
        let err = write_atomic(&path, b"x", false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        write_atomic(&path, &encode_png(&im).unwrap(), true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
