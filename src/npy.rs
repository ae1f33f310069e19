//! NumPy `.npy` files (format versions 1, 2 and 3; see numpy's `numpy/lib/format.py`
//! docstring): a magic string, a version, a little-endian header length (u16 in v1, u32
//! after), then a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape':
//! (2, 3), }` padded with spaces to a 64-byte boundary, then the raw C-order data.
//!
//! Reading gives f32: `<f4` as is, `<f2` and `<f8` converted, `<i4`/`<i8`/`|u1`/`|i1`
//! converted (exact up to 2²⁴). Fortran order, big-endian data, object or structured arrays
//! and other dtypes are rejected naming the file, what was found and what is expected.
//! Writing produces `<f4` in C order, version 1 (version 2 only for huge headers).

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

/// An array read from a `.npy` file, as f32 in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The file's dtype descriptor (e.g. `<f4`), for messages.
    pub descr: String,
}

impl Npy {
    pub fn into_tensor(self) -> Result<Tensor> {
        Tensor::from_vec(&self.shape, self.data)
    }
}

fn bad(file: &str, message: impl Into<String>) -> Error {
    Error::Io {
        file: file.to_string(),
        message: message.into(),
        hint: "write it with numpy: np.save(path, np.ascontiguousarray(x, dtype=np.float32))",
    }
}

/// Reads a `.npy` file.
pub fn read(path: impl AsRef<Path>) -> Result<Npy> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        file: file.clone(),
        message: format!("cannot read: {e}"),
        hint: "check the path",
    })?;
    parse(&file, &bytes)
}

/// Reads a `.npy` file into a CPU tensor.
pub fn read_tensor(path: impl AsRef<Path>) -> Result<Tensor> {
    read(path)?.into_tensor()
}

/// Parses the bytes of a `.npy` file; `file` names it in errors.
pub fn parse(file: &str, bytes: &[u8]) -> Result<Npy> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(
            file,
            "not a NumPy .npy file: expected the magic bytes \\x93NUMPY at the start",
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => {
            return Err(bad(
                file,
                format!(".npy format version {major}.{minor}: expected 1.0, 2.0 or 3.0"),
            ))
        }
    };
    let data_start = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(
                file,
                format!(
                    "the header claims {header_len} bytes but the file has {} after it is announced",
                    bytes.len() - start
                ),
            )
        })?;
    // v3 allows UTF-8 in the header; the keys and values used here are ASCII either way.
    let header = std::str::from_utf8(&bytes[start..data_start])
        .map_err(|_| bad(file, "the header is not text"))?;
    let descr = dict_value(header, "descr")
        .and_then(|v| v.strip_prefix('\'').and_then(|v| v.split('\'').next()))
        .ok_or_else(|| {
            bad(
                file,
                format!("header {:?}: expected a string 'descr' (simple dtype); object and structured arrays are not supported", header.trim()),
            )
        })?
        .to_string();
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| {
        bad(
            file,
            format!("header {:?} has no 'fortran_order'", header.trim()),
        )
    })?;
    if fortran.starts_with("True") {
        return Err(bad(
            file,
            "fortran_order is True: expected C order (np.ascontiguousarray before saving)",
        ));
    }
    if !fortran.starts_with("False") {
        return Err(bad(
            file,
            format!("fortran_order {fortran:?}: expected False"),
        ));
    }
    let shape = parse_shape(file, header)?;

    let (size, convert): (usize, fn(&[u8]) -> f32) = match descr.as_str() {
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f2" => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        "<i8" => (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "|u1" => (1, |b| b[0] as f32),
        "|i1" => (1, |b| b[0] as i8 as f32),
        other => {
            let why = if other.starts_with('>') {
                "big-endian data is not supported"
            } else if other.contains('O') {
                "object arrays are not supported"
            } else {
                "unsupported dtype"
            };
            return Err(bad(
                file,
                format!("dtype '{other}' ({why}): expected little-endian '<f4' (float32), or '<f2', '<f8', '<i4', '<i8', '|u1', '|i1' to convert"),
            ));
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(file, format!("shape {shape:?} overflows")))?;
    let need = count
        .checked_mul(size)
        .ok_or_else(|| bad(file, format!("shape {shape:?} overflows")))?;
    let body = &bytes[data_start..];
    if body.len() != need {
        return Err(bad(
            file,
            format!(
                "shape {shape:?} of '{descr}' needs {need} data bytes, the file has {}",
                body.len()
            ),
        ));
    }
    let data = body.chunks_exact(size).map(convert).collect();
    Ok(Npy { shape, data, descr })
}

/// The text after `'key':` in a header dict, trimmed at the start.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

fn parse_shape(file: &str, header: &str) -> Result<Vec<usize>> {
    let err = || {
        bad(
            file,
            format!("header {:?}: expected 'shape': (d0, d1, …)", header.trim()),
        )
    };
    let v = dict_value(header, "shape").ok_or_else(err)?;
    let inner = v
        .strip_prefix('(')
        .and_then(|v| v.split(')').next())
        .ok_or_else(err)?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| err()))
        .collect()
}

/// The bytes of a `.npy` file holding `data` (C order, `<f4`) with `shape`.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let count: usize = shape.iter().product();
    if count != data.len() {
        return Err(Error::shape(
            "npy",
            "data",
            format!("{count} values for shape {shape:?}"),
            &[data.len()],
        ));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic + version + length, header, '\n', padded with spaces to a multiple of 64.
    let (version, prefix) = if dict.len() + 11 < 65536 {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes `data` with `shape` as a float32 `.npy` file (replacing any file there).
pub fn write(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_bytes(shape, data)?;
    std::fs::write(path, bytes).map_err(|e| Error::Io {
        file: path.display().to_string(),
        message: format!("cannot write: {e}"),
        hint: "check that the directory exists and is writable",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.save(f, np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, -7.0]], dtype=np.float32))`
    /// with numpy 2.3.5 (`bytes(f.getbuffer())`).
    fn numpy_f32() -> Vec<u8> {
        let mut b =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
                .to_vec();
        b.resize(127, b' ');
        b.push(b'\n');
        for v in [1.5f32, -2.0, 3.25, 0.0, 1e-3, -7.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_numpy_made_bytes_and_writes_them_back_identically() {
        let bytes = numpy_f32();
        let a = parse("a.npy", &bytes).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, [1.5, -2.0, 3.25, 0.0, 1e-3, -7.0]);
        assert_eq!(to_bytes(&a.shape, &a.data).unwrap(), bytes);
    }

    #[test]
    fn round_trips_shapes_including_scalars_and_vectors() {
        for shape in [vec![], vec![3], vec![1, 2, 1, 2]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let bytes = to_bytes(&shape, &data).unwrap();
            assert_eq!(bytes.iter().position(|&b| b == b'\n').unwrap() % 64, 63);
            let back = parse("x.npy", &bytes).unwrap();
            assert_eq!((back.shape, back.data), (shape, data));
        }
    }

    fn with_header(dict: &str, body: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        let len = (10 + dict.len() + 1).div_ceil(64) * 64 - 10;
        b.extend_from_slice(&(len as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.resize(10 + len - 1, b' ');
        b.push(b'\n');
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn converts_other_dtypes() {
        let f16: Vec<u8> = [1.0f32, -0.5]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let a = parse(
            "h.npy",
            &with_header(
                "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                &f16,
            ),
        )
        .unwrap();
        assert_eq!(a.data, [1.0, -0.5]);
        let f64s: Vec<u8> = [0.1f64, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(
            "d.npy",
            &with_header(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }",
                &f64s,
            ),
        )
        .unwrap();
        assert_eq!(a.data, [0.1f64 as f32, 3.0]);
        let i64s: Vec<u8> = [3i64, -7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(
            "l.npy",
            &with_header(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                &i64s,
            ),
        )
        .unwrap();
        assert_eq!((a.data, a.descr.as_str()), (vec![3.0, -7.0], "<i8"));
        let i32s: Vec<u8> = [5i32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(
            "i.npy",
            &with_header(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
                &i32s,
            ),
        )
        .unwrap();
        assert_eq!(a.data, [5.0]);
    }

    #[test]
    fn rejects_what_it_cannot_read_naming_the_file_and_the_problem() {
        let four = [0u8; 16];
        let cases = [
            (
                with_header(
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                    &four,
                ),
                "fortran_order",
            ),
            (
                with_header(
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }",
                    &four,
                ),
                "big-endian",
            ),
            (
                with_header(
                    "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
                    &four,
                ),
                "object",
            ),
            (
                with_header(
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }",
                    &four,
                ),
                "structured",
            ),
            (
                with_header(
                    "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }",
                    &four,
                ),
                "'<c8'",
            ),
            (
                with_header(
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
                    &four,
                ),
                "needs 20 data bytes",
            ),
            (b"PK\x03\x04 not numpy".to_vec(), "magic"),
            (b"\x93NUMPY\x01\x00\xff\x00{".to_vec(), "header claims"),
            (b"\x93NUMPY\x09\x00\x10\x00".to_vec(), "version 9"),
        ];
        for (bytes, want) in cases {
            let err = parse("in.npy", &bytes).expect_err(want);
            let msg = err.to_string();
            assert!(
                msg.contains("in.npy") && msg.contains(want),
                "{want}: {msg}"
            );
        }
    }

    #[test]
    fn write_checks_the_count() {
        assert!(to_bytes(&[2, 2], &[1.0; 3]).is_err());
    }
}
