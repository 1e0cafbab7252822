//! Drawing tokens on the GPU (`Backend::sample_rows`, kernels/sample.cu) against the host
//! reference (`realizar_model::draw`) on fresh random rows: greedy exactly, sampled tokens where
//! the host's cumulative distribution puts the draw. And the top-k selection with the rows'
//! log-sum-exps (`top_k_rows`) against the host's `TopK::of_row`. Skips (saying why) without a
//! CUDA device.

mod common;

use common::{gpu, normal, rng};
use rand::Rng;
use realizar_model::backend::Backend;
use realizar_model::draw::{draw_row, Draw};

/// Whether token `id` of `row` is where the cumulative weight (f64, vocabulary order) reaches
/// `d.u` of the total, within `tol` of the total (the GPU and the host may round a weight
/// differently).
fn in_cdf(row: &[f32], d: &Draw, banned: &[u32], id: u32, tol: f64) -> bool {
    let ok = |i: usize, l: f32| l > f32::NEG_INFINITY && !(d.ban && banned.contains(&(i as u32)));
    let max = row
        .iter()
        .enumerate()
        .filter(|&(i, &l)| ok(i, l))
        .fold(f32::NEG_INFINITY, |m, (_, &l)| m.max(l));
    let w = |l: f32| f64::from(((l - max) * d.inv_temp).exp());
    let total: f64 = row
        .iter()
        .enumerate()
        .filter(|&(i, &l)| ok(i, l))
        .map(|(_, &l)| w(l))
        .sum();
    let target = d.u * total;
    let i = id as usize;
    if i >= row.len() || !ok(i, row[i]) {
        return false;
    }
    let before: f64 = row[..i]
        .iter()
        .enumerate()
        .filter(|&(j, &l)| ok(j, l))
        .map(|(_, &l)| w(l))
        .sum();
    before - tol * total <= target && target <= before + w(row[i]) + tol * total
}

#[test]
fn sample_rows_matches_the_host_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = rng("sample_rows");
    let mut mismatches = 0;
    let mut checked = 0;
    for cols in [1usize, 37, 1000, 49_155, 128_256] {
        let rows = 24;
        let mut x = normal(&mut rng, rows * cols, 3.0);
        let banned: Vec<u32> = (0..3).map(|_| rng.gen_range(0..cols as u32)).collect();
        for r in 0..rows {
            let row = &mut x[r * cols..(r + 1) * cols];
            if cols > 10 {
                row[5] = f32::NAN;
                row[6] = f32::NEG_INFINITY;
                // A banned id with by far the largest logit: only rows that ban may skip it.
                row[banned[0] as usize] = 40.0;
            }
        }
        // Row 0 has nothing to draw.
        x[..cols].fill(f32::NAN);
        let draws: Vec<Draw> = (0..rows)
            .map(|r| Draw {
                inv_temp: [0.0, 1.0, 1.25, 0.5, 2.0, 0.05][r % 6],
                u: match r {
                    1 => 0.0,
                    2 => 0.999_999_9,
                    _ => rng.gen::<f64>(),
                },
                ban: r % 2 == 1 || r % 5 == 0,
            })
            .collect();
        let gx = g.buf_from_host(rows, cols, &x).unwrap();
        let got = g.sample_rows(&gx, &draws, &banned).unwrap();
        for (r, d) in draws.iter().enumerate() {
            let row = &x[r * cols..(r + 1) * cols];
            let want = draw_row(row, d, &banned).unwrap_or(u32::MAX);
            let id = got[r];
            checked += 1;
            if id == want {
                continue;
            }
            // Only a draw on the edge between two tokens may land on either side.
            let edge = d.inv_temp > 0.0 && in_cdf(row, d, &banned, id, 1e-6);
            println!(
                "{} cols {cols} row {r} {d:?}: GPU {id}, host {want}",
                if edge { "EDGE" } else { "FAIL" }
            );
            if !edge {
                mismatches += 1;
            }
        }
        assert_eq!(
            got[0],
            u32::MAX,
            "cols {cols}: an all-NaN row draws nothing"
        );
    }
    println!("PASS sample_rows: {checked} rows, {mismatches} mismatches");
    assert_eq!(mismatches, 0, "GPU draws differ from the host reference");
}

#[test]
fn top_k_matches_host_selection() {
    let Some(g) = gpu() else { return };
    let mut rng = rng("top_k");
    let mut ok = true;
    let mut cases = Vec::new();
    for (rows, cols) in [(1, 1), (3, 37), (2, 1000), (2, 49155), (1, 128_256)] {
        let mut x = normal(&mut rng, rows * cols, 3.0);
        // Ties, NaN and -inf, which the order must handle as the host does.
        for r in 0..rows {
            let row = &mut x[r * cols..(r + 1) * cols];
            if cols > 10 {
                row[7] = row[3];
                row[cols - 1] = row[3];
                row[5] = f32::NAN;
                row[6] = f32::NEG_INFINITY;
                row[9] = 50.0;
                row[cols / 2] = 50.0;
            }
        }
        cases.push((rows, cols, x));
    }
    // Rows whose log-sum-exp is their maximum: two +inf entries; only NaN and one -inf; all
    // -inf.
    let cols = 3000;
    let mut x = normal(&mut rng, 3 * cols, 3.0);
    x[10] = f32::INFINITY;
    x[2500] = f32::INFINITY;
    x[cols..2 * cols].fill(f32::NAN);
    x[cols + 1700] = f32::NEG_INFINITY;
    x[2 * cols..].fill(f32::NEG_INFINITY);
    cases.push((3, cols, x));
    for (rows, cols, x) in cases {
        let gx = g.buf_from_host(rows, cols, &x).unwrap();
        for k in [1usize, 2, 8, 40] {
            let got = g.top_k(&gx, rows, k).unwrap();
            for r in 0..rows {
                let want = realizar_model::TopK::of_row(&x[r * cols..(r + 1) * cols], k);
                let lse_ok = got[r].lse == want.lse
                    || (got[r].lse - want.lse).abs() <= 1e-4 * want.lse.abs().max(1.0);
                let same = got[r].ids == want.ids && got[r].logits == want.logits && lse_ok;
                println!(
                    "{} top_k {rows}x{cols} k={k} row {r}: ids {:?}.. lse {} vs {}",
                    if same { "PASS" } else { "FAIL" },
                    &got[r].ids[..got[r].ids.len().min(4)],
                    got[r].lse,
                    want.lse
                );
                ok &= same;
            }
        }
    }
    assert!(ok, "GPU top-k differs from the host selection");
}
