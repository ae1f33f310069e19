//! The safetensors reader, shard indexes and the `Weights` container: round trips against the
//! `safetensors` crate's writer, streaming in odd chunk sizes, every bad-input case, and a
//! seeded mutation fuzz that also checks our accept/reject decisions against the crate's.
//! No GPU needed.

use std::collections::HashMap;
use std::path::PathBuf;

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use webdiffusion::weights::{
    load_file, load_file_with_progress, Dtype, LoadOptions, Progress, ReadyTensor,
    SafetensorsStream, ShardIndex, TensorData, Weights,
};
use webdiffusion::Error;

/// A small deterministic generator (64-bit LCG, top bits) for fuzzing.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("webdiffusion-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Tensors as (name, dtype, shape, little-endian bytes).
type Raw = (&'static str, safetensors::Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
}
fn bf16_bytes(v: &[bf16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
}

/// Serialises with the `safetensors` crate (an independent writer).
fn serialize(tensors: &[Raw], meta: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                TensorView::new(*d, s.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize(views, meta).expect("serialize")
}

/// Writes a file by hand from a header JSON and data, for malformed cases.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A file with f32, f16 and bf16 tensors, a scalar and an empty tensor; values chosen to
/// exercise signs, -0, subnormals and the f16 extremes.
fn sample_tensors() -> Vec<Raw> {
    let a: Vec<f32> = (0..67 * 3)
        .map(|i| (i as f32 * 0.37).sin() * 1e3 - 0.5)
        .collect();
    let h: Vec<f16> = [
        0.0f32, -0.0, 1.0, -2.5, 65504.0, -65504.0, 6.0e-8, 1.0e-5, 0.333,
    ]
    .iter()
    .map(|&x| f16::from_f32(x))
    .collect();
    let b: Vec<bf16> = (0..13)
        .map(|i| bf16::from_f32((i as f32 - 6.0) * 1.5e30))
        .collect();
    vec![
        (
            "conv_in.weight",
            safetensors::Dtype::F32,
            vec![67, 3],
            f32_bytes(&a),
        ),
        (
            "down.0.norm.bias",
            safetensors::Dtype::F16,
            vec![9],
            f16_bytes(&h),
        ),
        (
            "time.linear",
            safetensors::Dtype::BF16,
            vec![13, 1],
            bf16_bytes(&b),
        ),
        (
            "scalar",
            safetensors::Dtype::F32,
            vec![],
            f32_bytes(&[42.0]),
        ),
        ("empty", safetensors::Dtype::F16, vec![0, 5], vec![]),
    ]
}

fn expected_f32(raw: &Raw) -> Vec<f32> {
    match raw.1 {
        safetensors::Dtype::F32 => raw
            .3
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => raw
            .3
            .chunks(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => raw
            .3
            .chunks(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => unreachable!(),
    }
}

fn read_all(
    bytes: &[u8],
    chunk: usize,
    opts: LoadOptions,
) -> webdiffusion::Result<Vec<ReadyTensor>> {
    let mut s = SafetensorsStream::with_options("mem.safetensors", opts);
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        out.extend(s.push(c)?);
    }
    s.finish()?;
    Ok(out)
}

fn format_err(e: &Error) -> (&str, Option<&str>, &str, &str) {
    match e {
        Error::WeightsFormat {
            file,
            tensor,
            expected,
            got,
            ..
        } => (file, tensor.as_deref(), expected, got),
        other => panic!("expected Error::WeightsFormat, got {other:?}: {other}"),
    }
}

#[test]
fn round_trip_f32_f16_bf16_via_file() {
    let raw = sample_tensors();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = serialize(&raw, Some(meta));
    let path = temp_path("roundtrip.safetensors");
    std::fs::write(&path, &bytes).expect("write");

    let mut got = Vec::new();
    let header = load_file(&path, &LoadOptions::default(), |t| {
        got.push(t);
        Ok(())
    })
    .expect("load");
    assert_eq!(
        header.metadata().get("format").map(String::as_str),
        Some("pt")
    );
    assert_eq!(header.total_len(), bytes.len() as u64);
    assert_eq!(got.len(), raw.len());
    for r in &raw {
        let t = got.iter().find(|t| t.name == r.0).expect("tensor present");
        assert_eq!(t.shape, r.2, "{}", r.0);
        let want_dtype = match r.1 {
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::F16 => Dtype::F16,
            _ => Dtype::BF16,
        };
        assert_eq!(t.dtype(), want_dtype);
        let values = t.data.to_f32();
        let want = expected_f32(r);
        assert_eq!(values.len(), want.len());
        for (i, (x, y)) in values.iter().zip(&want).enumerate() {
            // Widening is exact: compare bits (keeps -0.0 apart from 0.0).
            assert_eq!(x.to_bits(), y.to_bits(), "{}[{i}]: {x} vs {y}", r.0);
        }
    }
    // Spot values computed by hand: f16 0x3C00 = 1.0, 6e-8 rounds to the smallest subnormal
    // 2^-24 = 5.9604645e-8; bf16 of -9e30 keeps 8 bits of mantissa.
    let h = got
        .iter()
        .find(|t| t.name == "down.0.norm.bias")
        .unwrap()
        .data
        .to_f32();
    assert_eq!(h[2], 1.0);
    assert_eq!(h[6], 2f32.powi(-24));
    assert!(h[1].is_sign_negative() && h[1] == 0.0);
    // Same answers as the crate's own reader.
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("crate reads it");
    for t in &got {
        let v = st.tensor(&t.name).expect("crate has it");
        assert_eq!(v.shape(), t.shape.as_slice());
        assert_eq!(v.data().len() as u64, t.data.byte_len());
    }

    let mut w = Weights::load_file(&path, &LoadOptions::default()).expect("weights");
    assert_eq!(w.len(), 5);
    let conv = w.take("conv_in.weight", &[67, 3]).expect("take");
    assert_eq!(conv.shape(), &[67, 3]);
    assert_eq!(conv.cpu_data().unwrap(), expected_f32(&raw[0]).as_slice());
    let s = w.take("scalar", &[]).expect("scalar");
    assert_eq!(s.cpu_data().unwrap(), &[42.0]);
    let e = w.take("empty", &[0, 5]).expect("empty");
    assert_eq!(e.numel(), 0);
    std::fs::remove_file(&path).ok();
}

#[test]
fn streaming_any_chunk_size_gives_identical_tensors_and_full_progress() {
    let raw = sample_tensors();
    let bytes = serialize(&raw, None);
    let whole = read_all(&bytes, bytes.len(), LoadOptions::default()).expect("whole");
    for chunk in [1usize, 7, 4096] {
        let mut s = SafetensorsStream::new("mem.safetensors");
        let mut got = Vec::new();
        let mut last = Progress::default();
        for c in bytes.chunks(chunk) {
            got.extend(s.push(c).expect("push"));
            let p = s.progress();
            assert!(p.bytes_done >= last.bytes_done && p.tensors_done >= last.tensors_done);
            assert!(p.tensors_done <= got.len());
            last = p;
        }
        s.finish().expect("finish");
        assert!(s.is_done());
        let p = s.progress();
        assert_eq!(p.bytes_done, bytes.len() as u64, "chunk {chunk}");
        assert_eq!(p.bytes_total, Some(bytes.len() as u64));
        assert_eq!(p.tensors_done, raw.len());
        assert_eq!(p.tensors_total, Some(raw.len()));
        assert_eq!(p.fraction(), Some(1.0));
        assert_eq!(got.len(), whole.len());
        for (a, b) in got.iter().zip(&whole) {
            assert_eq!(
                (&a.name, &a.shape, &a.data),
                (&b.name, &b.shape, &b.data),
                "chunk {chunk}"
            );
        }
    }
    // File order, and a tensor is handed out with the push that completes it.
    let names: Vec<&str> = whole.iter().map(|t| t.name.as_str()).collect();
    let header = webdiffusion::weights::Header::parse("m", &bytes)
        .unwrap()
        .unwrap();
    let order: Vec<&str> = header.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, order);
    let first = &header.tensors()[0];
    let end = (header.data_start() + first.end) as usize;
    let mut s = SafetensorsStream::new("m");
    let some = s.push(&bytes[..end - 1]).unwrap();
    assert!(some.iter().all(|t| t.name != first.name));
    let more = s.push(&bytes[end - 1..end]).unwrap();
    assert!(more.iter().any(|t| t.name == first.name));
}

#[test]
fn progress_callback_reaches_total_natively() {
    let bytes = serialize(&sample_tensors(), None);
    let path = temp_path("progress.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let mut seen = Vec::new();
    load_file_with_progress(&path, &LoadOptions::default(), |_| Ok(()), |p| seen.push(p)).unwrap();
    let last = seen.last().copied().unwrap();
    assert_eq!(last.bytes_done, bytes.len() as u64);
    assert_eq!(last.bytes_total, Some(bytes.len() as u64));
    assert_eq!(last.tensors_done, 5);
    std::fs::remove_file(&path).ok();
}

#[test]
fn f16_words_pack_low_half_first() {
    // f16 bits, by hand: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, 0.5 = 0x3800, 3 = 0x4200.
    let d = TensorData::F32(vec![1.0, -2.0, 65504.0, 0.5, 3.0]);
    let (words, overflow) = d.to_f16_words();
    assert_eq!(words, vec![0xC000_3C00, 0x3800_7BFF, 0x0000_4200]);
    assert_eq!(overflow, 0);
    let t = ReadyTensor {
        file: "f".into(),
        name: "big".into(),
        shape: vec![2],
        data: TensorData::F32(vec![1.0, 70000.0]),
    };
    match t.to_f16_words() {
        Err(Error::NonFiniteWeights {
            tensor,
            count,
            first_index,
            ..
        }) => assert_eq!((tensor.as_str(), count, first_index), ("big", 1, 1)),
        other => panic!("{other:?}"),
    }
    // bf16 goes through f32; f16 data is passed through bit-exact.
    let h = TensorData::F16(vec![f16::from_bits(0x1234), f16::from_bits(0xFBFF)]);
    assert_eq!(h.to_f16_words().0, vec![0xFBFF_1234]);
}

#[test]
fn truncated_files() {
    let bytes = serialize(&sample_tensors(), None);
    // Cut inside the data: with the length known up front (a file, Content-Length) the
    // header check names the first tensor past the end.
    let cut = &bytes[..bytes.len() - 3];
    let path = temp_path("truncated.safetensors");
    std::fs::write(&path, cut).unwrap();
    let e = load_file(&path, &LoadOptions::default(), |_| Ok(())).unwrap_err();
    let (file, tensor, expected, _) = format_err(&e);
    assert!(file.ends_with("truncated.safetensors"));
    assert!(tensor.is_some(), "{e}");
    assert!(expected.contains("data section"), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    std::fs::remove_file(&path).ok();
    // Streaming without a known length: finish() reports the missing bytes and the tensor.
    let e = read_all(cut, 100, LoadOptions::default()).unwrap_err();
    let (_, tensor, expected, got) = format_err(&e);
    let header = webdiffusion::weights::Header::parse("m", &bytes)
        .unwrap()
        .unwrap();
    let last = header
        .tensors()
        .iter()
        .rev()
        .find(|t| t.begin != t.end)
        .unwrap();
    assert_eq!(tensor, Some(last.name.as_str()));
    assert!(expected.contains(&bytes.len().to_string()), "{e}");
    assert!(got.contains(&cut.len().to_string()), "{e}");
    // Shorter than the length field, and cut inside the header.
    for n in [0, 5, 8, 20] {
        let e = read_all(&bytes[..n], 3, LoadOptions::default()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{n}: {e}");
    }
}

#[test]
fn header_length_past_the_end_and_absurd() {
    let mut bytes = serialize(&sample_tensors(), None);
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&(len + 10).to_le_bytes());
    let path = temp_path("past.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let e = load_file(&path, &LoadOptions::default(), |_| Ok(())).unwrap_err();
    let (_, _, _, got) = format_err(&e);
    assert!(got.contains("past the end"), "{e}");
    std::fs::remove_file(&path).ok();
    // With a declared length in a stream too.
    let mut s = SafetensorsStream::new("s");
    s.set_file_len(len).unwrap();
    assert!(s.push(&bytes[..16]).is_err());
    // More than 100 MB: a zip-based PyTorch checkpoint starts with "PK\x03\x04".
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00".to_vec();
    zip.extend_from_slice(&[0u8; 64]);
    let e = read_all(&zip, 64, LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("safetensors"), "{e}");
}

#[test]
fn malformed_headers_name_the_problem() {
    let d8 = [0u8; 8];
    let cases: &[(&str, &[u8], Option<&str>, &str)] = &[
        (
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]"#,
            &d8,
            None,
            "invalid JSON",
        ),
        (r#"[1, 2]"#, &[], None, "invalid JSON"),
        (
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            &d8,
            Some("b"),
            "overlapping tensor `a`",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            &d8,
            Some("a"),
            "unused",
        ),
        (
            r#"{"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}"#,
            &d8,
            Some("a"),
            "dtype I64",
        ),
        (
            r#"{"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 8]}}"#,
            &d8,
            Some("a"),
            "unknown dtype",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
            &d8,
            Some("a"),
            "8 bytes",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#,
            &d8,
            Some("a"),
            "[8, 0]",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 8]}}"#,
            &d8,
            Some("a"),
            "shape",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
            &d8,
            Some("a"),
            "second entry",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [2]}}"#,
            &d8,
            Some("a"),
            "data_offsets",
        ),
        (r#"{"__metadata__": {"k": 1}}"#, &[], None, "`k`"),
        (r#"{"__metadata__": [1]}"#, &[], None, "[1]"),
    ];
    for (header, data, tensor, needle) in cases {
        let bytes = raw_file(header, data);
        let e = read_all(&bytes, 5, LoadOptions::default()).unwrap_err();
        let (file, t, _, _) = format_err(&e);
        assert_eq!(file, "mem.safetensors");
        assert_eq!(t, *tensor, "{header}: {e}");
        assert!(e.to_string().contains(needle), "{header}: {e}");
    }
    // Invalid UTF-8 in the header.
    let mut bytes = raw_file(r#"{"x": 1}"#, &[]);
    bytes[10] = 0xFF;
    let e = read_all(&bytes, 4, LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
    // Padded headers (the Python writer pads with spaces) and null metadata are fine.
    let ok = raw_file(
        r#"{"__metadata__": null, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}      "#,
        &d8,
    );
    assert_eq!(read_all(&ok, 3, LoadOptions::default()).unwrap().len(), 1);
}

#[test]
fn out_of_file_spans_and_trailing_bytes() {
    let header = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]}}"#;
    // The file holds 12 of the 16 data bytes: `b` is out of the file.
    let bytes = raw_file(header, &[0u8; 12]);
    let path = temp_path("outside.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let e = load_file(&path, &LoadOptions::default(), |_| Ok(())).unwrap_err();
    let (_, tensor, expected, got) = format_err(&e);
    assert_eq!(tensor, Some("b"));
    assert!(expected.contains("12-byte data section"), "{e}");
    assert!(got.contains("[8, 16]"), "{e}");
    // Bytes after the last tensor.
    let bytes = raw_file(header, &[0u8; 20]);
    std::fs::write(&path, &bytes).unwrap();
    let e = load_file(&path, &LoadOptions::default(), |_| Ok(())).unwrap_err();
    assert!(
        e.to_string().contains("4 bytes after the last tensor"),
        "{e}"
    );
    let e = read_all(&bytes, 7, LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("more bytes"), "{e}");
    std::fs::remove_file(&path).ok();
    // A stream that failed stays failed.
    let mut s = SafetensorsStream::new("s");
    assert!(s.push(&bytes).is_err());
    assert!(s.push(&[0]).is_err());
    assert!(s.finish().is_err());
}

#[test]
fn nan_and_inf_are_reported_with_count_and_first_index() {
    let mut v = vec![0.5f32; 10];
    v[3] = f32::NAN;
    v[7] = f32::INFINITY;
    let h = vec![f16::from_f32(1.0), f16::NEG_INFINITY];
    let raw = vec![
        (
            "ok",
            safetensors::Dtype::F32,
            vec![2],
            f32_bytes(&[1.0, 2.0]),
        ),
        ("bad", safetensors::Dtype::F32, vec![2, 5], f32_bytes(&v)),
        ("bad16", safetensors::Dtype::F16, vec![2], f16_bytes(&h)),
    ];
    let bytes = serialize(&raw, None);
    let e = read_all(&bytes, 3, LoadOptions::default()).unwrap_err();
    match &e {
        Error::NonFiniteWeights {
            tensor,
            count,
            first_index,
            first_value,
            ..
        } => {
            assert_eq!(
                (tensor.as_str(), *count, *first_index),
                ("bad", 2, 3),
                "{e}"
            );
            assert!(first_value.is_nan());
        }
        other => panic!("{other:?}"),
    }
    // The check can be turned off.
    let all = read_all(
        &bytes,
        3,
        LoadOptions {
            check_finite: false,
        },
    )
    .unwrap();
    assert_eq!(all.len(), 3);
    let one = vec![raw[2].clone()];
    let e = read_all(&serialize(&one, None), 64, LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::NonFiniteWeights { tensor, first_index: 1, count: 1, .. } if tensor == "bad16"),
        "{e}"
    );
}

#[test]
fn weights_missing_extra_and_shape_errors() {
    let bytes = serialize(&sample_tensors(), None);
    let path = temp_path("set.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let mut w = Weights::load_file(&path, &LoadOptions::default()).unwrap();

    match w.take("conv_in.weight", &[3, 67]) {
        Err(Error::WeightShape {
            tensor,
            expected,
            got,
            ..
        }) => {
            assert_eq!(tensor, "conv_in.weight");
            assert_eq!(expected.0, vec![3, 67]);
            assert_eq!(got.0, vec![67, 3]);
        }
        other => panic!("{other:?}"),
    }
    let e = w.take("nope", &[1]).unwrap_err();
    assert!(
        matches!(&e, Error::MissingTensors { names, count: 1, .. } if names == &["nope"]),
        "{e}"
    );

    // A manifest with many missing names lists the first few and the count.
    let mut manifest: Vec<(String, Vec<usize>)> =
        (0..20).map(|i| (format!("missing.{i}"), vec![1])).collect();
    manifest.push(("conv_in.weight".into(), vec![67, 3]));
    match w.check_expected(&manifest) {
        Err(Error::MissingTensors { names, count, .. }) => {
            assert_eq!(count, 20);
            assert_eq!(names.len(), webdiffusion::error::LISTED_NAMES);
            let msg = w.check_expected(&manifest).unwrap_err().to_string();
            assert!(msg.contains("and 12 more"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let bad_shape = vec![("conv_in.weight".to_string(), vec![1usize])];
    assert!(matches!(
        w.check_expected(&bad_shape),
        Err(Error::WeightShape { .. })
    ));

    // Leftovers are an error unless allowed.
    w.take("conv_in.weight", &[67, 3]).unwrap();
    let e = w.finish_unused(false).unwrap_err();
    match &e {
        Error::UnexpectedTensors { names, count, .. } => {
            assert_eq!(*count, 4);
            assert!(names.contains(&"scalar".to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.finish_unused(true).unwrap().len(), 4);
    // Taking twice is a bug in the caller, reported as such.
    assert!(matches!(
        w.take("conv_in.weight", &[67, 3]),
        Err(Error::InvalidArgument { .. })
    ));
    std::fs::remove_file(&path).ok();
}

fn write_shards(dir: &std::path::Path, index: &str, shards: &[(&str, Vec<Raw>)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (name, tensors) in shards {
        std::fs::write(dir.join(name), serialize(tensors, None)).unwrap();
    }
    let p = dir.join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(&p, index).unwrap();
    p
}

#[test]
fn sharded_checkpoints() {
    let t = sample_tensors();
    let s1 = "diffusion_pytorch_model-00001-of-00002.safetensors";
    let s2 = "diffusion_pytorch_model-00002-of-00002.safetensors";
    let index = format!(
        r#"{{"metadata": {{"total_size": 1234}}, "weight_map": {{
            "conv_in.weight": "{s1}", "down.0.norm.bias": "{s1}",
            "time.linear": "{s2}", "scalar": "{s2}", "empty": "{s2}"}}}}"#
    );
    let dir = temp_path("shards-ok");
    let p = write_shards(
        &dir,
        &index,
        &[(s1, t[..2].to_vec()), (s2, t[2..].to_vec())],
    );
    let mut progress = Vec::new();
    let mut w = Weights::load_sharded(&p, &LoadOptions::default(), |pr| progress.push(pr)).unwrap();
    assert_eq!(w.len(), 5);
    let total: u64 = [s1, s2]
        .iter()
        .map(|s| std::fs::metadata(dir.join(s)).unwrap().len())
        .sum();
    let last = progress.last().unwrap();
    assert_eq!((last.bytes_done, last.bytes_total), (total, Some(total)));
    assert_eq!((last.tensors_done, last.tensors_total), (5, Some(5)));
    assert!(progress
        .windows(2)
        .all(|p| p[0].bytes_done <= p[1].bytes_done));
    w.take("time.linear", &[13, 1]).unwrap();
    // load_model_dir finds the index.
    let w2 = Weights::load_model_dir(&dir, &LoadOptions::default(), |_| {}).unwrap();
    assert_eq!(w2.len(), 5);

    // A tensor listed in the index but missing in its shard.
    let dir = temp_path("shards-missing");
    let p = write_shards(
        &dir,
        &index,
        &[(s1, t[..1].to_vec()), (s2, t[2..].to_vec())],
    );
    let e = Weights::load_sharded(&p, &LoadOptions::default(), |_| {}).unwrap_err();
    assert!(
        matches!(&e, Error::MissingTensors { names, file, .. } if names == &["down.0.norm.bias"] && file.ends_with(s1)),
        "{e}"
    );
    // A tensor present in two shards.
    let dir = temp_path("shards-dup");
    let mut second = t[2..].to_vec();
    second.push(t[0].clone());
    let p = write_shards(&dir, &index, &[(s1, t[..2].to_vec()), (s2, second)]);
    let e = Weights::load_sharded(&p, &LoadOptions::default(), |_| {}).unwrap_err();
    let (file, tensor, _, _) = format_err(&e);
    assert_eq!(tensor, Some("conv_in.weight"));
    assert!(file.ends_with(s2), "{e}");
    // A shard that is not there.
    let dir = temp_path("shards-absent");
    let p = write_shards(&dir, &index, &[(s1, t[..2].to_vec())]);
    let e = Weights::load_sharded(&p, &LoadOptions::default(), |_| {}).unwrap_err();
    assert!(
        matches!(&e, Error::Io { file, .. } if file.ends_with(s2)),
        "{e}"
    );
    // Index entries must be plain file names.
    for bad in ["../x.safetensors", "sub/x.safetensors", "x.bin", ""] {
        let text = format!(r#"{{"weight_map": {{"a": "{bad}"}}}}"#);
        let e = ShardIndex::parse("i.json", &text).unwrap_err();
        assert_eq!(format_err(&e).1, Some("a"), "{bad}");
    }
    assert!(ShardIndex::parse("i.json", "{\"metadata\": {}}").is_err());
    // Only this test's folders: other tests run in parallel in the same temp directory.
    for d in ["shards-ok", "shards-missing", "shards-dup", "shards-absent"] {
        std::fs::remove_dir_all(temp_path(d)).ok();
    }
}

#[test]
fn model_dir_without_safetensors_says_what_to_do() {
    let dir = temp_path("no-weights");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("diffusion_pytorch_model.bin"), b"x").unwrap();
    let e = Weights::load_model_dir(&dir, &LoadOptions::default(), |_| {}).unwrap_err();
    assert!(e.to_string().contains("safe_serialization"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Our decision on a complete buffer vs the `safetensors` crate's: we accept exactly what it
/// accepts, except that we also refuse dtypes other than F32/F16/BF16 and duplicate names
/// (which the crate's HashMap silently collapses).
fn check_agreement(bytes: &[u8], chunk: usize) -> bool {
    let ours = read_all(
        bytes,
        chunk,
        LoadOptions {
            check_finite: false,
        },
    );
    let theirs = safetensors::SafeTensors::deserialize(bytes);
    match (&ours, &theirs) {
        (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("we accepted what the crate rejects ({e}): {bytes:?}"),
        (Err(e), Ok(st)) => {
            let unsupported = st.tensors().iter().any(|(_, v)| {
                !matches!(
                    v.dtype(),
                    safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
                )
            });
            let duplicate = e.to_string().contains("second entry");
            assert!(
                unsupported || duplicate,
                "we rejected what the crate accepts: {e}"
            );
        }
    }
    ours.is_ok()
}

#[test]
fn fuzz_mutations_never_panic_and_agree_with_the_crate() {
    let base = serialize(&sample_tensors(), None);
    let header_end = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let mut rng = Lcg(0x5eed_0001);
    let mut accepted = 0;
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(3) {
            // Mostly the length field and header, where the parsing is.
            let at = if rng.below(4) == 0 {
                rng.below(b.len())
            } else {
                rng.below(header_end.min(b.len()))
            };
            match rng.below(6) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = b"{}[],:\"0123456789-eE. FBI"[rng.below(25)],
                2 => {
                    b.remove(at);
                }
                3 => b.insert(at, b"0 \"}9"[rng.below(5)]),
                4 => b.truncate(at),
                _ => {
                    let v = rng.next() as u8;
                    let n = b.len();
                    b[rng.below(8).min(n.saturating_sub(1))] = v;
                }
            }
            if b.is_empty() {
                break;
            }
        }
        accepted += check_agreement(&b, 1 + rng.below(50)) as usize;
    }
    // Both outcomes must be exercised for the comparison to mean anything.
    println!("mutations accepted: {accepted} of 3000");
    assert!(accepted > 50 && accepted < 2900, "{accepted}");
}

/// Random JSON headers from a small grammar around the real keys, with consistent lengths.
#[test]
fn fuzz_random_json_headers() {
    let mut rng = Lcg(0xC0FFEE);
    let mut accepted = 0;
    let atoms = [
        "0",
        "1",
        "2",
        "8",
        "-1",
        "1.5",
        "1e3",
        "null",
        "true",
        "\"F32\"",
        "\"F16\"",
        "\"BF16\"",
        "\"I64\"",
        "\"x\"",
        "[]",
        "{}",
        "18446744073709551615",
    ];
    fn value(rng: &mut Lcg, atoms: &[&str], depth: usize) -> String {
        match if depth > 2 { 0 } else { rng.below(4) } {
            0 => atoms[rng.below(atoms.len())].to_string(),
            1 => {
                let n = rng.below(4);
                let items: Vec<String> = (0..n).map(|_| value(rng, atoms, depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let keys = ["dtype", "shape", "data_offsets", "a", "__metadata__"];
                let n = rng.below(4);
                let items: Vec<String> = (0..n)
                    .map(|_| {
                        format!(
                            "\"{}\":{}",
                            keys[rng.below(keys.len())],
                            value(rng, atoms, depth + 1)
                        )
                    })
                    .collect();
                format!("{{{}}}", items.join(","))
            }
        }
    }
    for _ in 0..3000 {
        let n = rng.below(4);
        let mut offset = 0u64;
        let mut entries = Vec::new();
        for i in 0..n {
            if rng.below(3) == 0 {
                entries.push(format!("\"t{i}\":{}", value(&mut rng, &atoms, 1)));
            } else {
                let dims = rng.below(3);
                let shape: Vec<u64> = (0..dims).map(|_| rng.below(4) as u64).collect();
                let numel: u64 = shape.iter().product();
                let (dt, size) = [("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8)][rng.below(4)];
                let len = numel * size + if rng.below(8) == 0 { 1 } else { 0 };
                let begin = offset.saturating_sub(if rng.below(8) == 0 { 2 } else { 0 });
                entries.push(format!(
                    "\"t{}\":{{\"dtype\":\"{dt}\",\"shape\":{shape:?},\"data_offsets\":[{begin},{}]}}",
                    if rng.below(10) == 0 { 0 } else { i },
                    begin + len
                ));
                offset = begin + len;
            }
        }
        let header = format!("{{{}}}", entries.join(","));
        let data = vec![0u8; offset as usize + if rng.below(6) == 0 { 3 } else { 0 }];
        accepted += check_agreement(&raw_file(&header, &data), 1 + rng.below(40)) as usize;
    }
    println!("random headers accepted: {accepted} of 3000");
    assert!(accepted > 100 && accepted < 2900, "{accepted}");
}
