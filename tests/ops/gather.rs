//! `GatherRows` (embedding lookup): odd row widths, repeated and consecutive ids (merged into
//! one copy on the GPU), out-of-range ids rejected.

use webdiffusion::ops::{GatherRows, Op};

use crate::common::{check_op, Rng};

#[test]
fn gather_rows_picks_the_named_rows() {
    let mut rng = Rng::new(91);
    let (num, dim) = (37, 13);
    let table = rng.tensor(&[num, dim]);
    // Runs (3, 4, 5), repeats (36, 36), the first and last row, a descending pair.
    let ids = vec![3u32, 4, 5, 36, 36, 0, 9, 8, 36, 1, 2];
    let got = check_op(
        "gather_rows",
        &GatherRows::new(ids.clone()),
        &[&table],
        0.0,
        0.0,
    );
    let t = table.cpu_data().unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| t[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn gather_rows_rejects_out_of_range_ids() {
    let op = GatherRows::new(vec![0u32, 5, 40]);
    let err = op.output_shape(&[&[40, 8]]).unwrap_err().to_string();
    assert!(err.contains("40") && err.contains("out of range"), "{err}");
    assert!(GatherRows::new(Vec::<u32>::new())
        .output_shape(&[&[40, 8]])
        .is_err());
}
