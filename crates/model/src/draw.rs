//! One token drawn from a logit row where the logits are (`Backend::sample_rows`): greedy, or
//! plain sampling at a temperature by inverse CDF with a uniform number the caller drew, so
//! that only a token id per row leaves a GPU. This is the host reference the device kernels are
//! tested against, and what a backend without such a kernel runs.

/// How to draw from one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// 1 / temperature; 0 or less draws greedily (the first largest logit).
    pub inv_temp: f32,
    /// A uniform number in [0, 1): the token is the first whose cumulative probability (in
    /// vocabulary order) reaches `u`.
    pub u: f64,
    /// Whether the banned ids (`sample_rows`' list) are removed from this row first.
    pub ban: bool,
}

impl Draw {
    pub fn greedy(ban: bool) -> Draw {
        Draw {
            inv_temp: 0.0,
            u: 0.0,
            ban,
        }
    }
}

/// The token `d` draws from `row`; `None` when every logit is NaN, -inf or banned. Each weight
/// is exp((l - max) * inv_temp) in f32, summed in f64 in vocabulary order.
pub fn draw_row(row: &[f32], d: &Draw, banned: &[u32]) -> Option<u32> {
    let ok = |i: usize, l: f32| l > f32::NEG_INFINITY && !(d.ban && banned.contains(&(i as u32)));
    let mut max = f32::NEG_INFINITY;
    let mut first = None;
    for (i, &l) in row.iter().enumerate() {
        if ok(i, l) && l > max {
            max = l;
            first = Some(i as u32);
        }
    }
    let first = first?;
    if d.inv_temp <= 0.0 {
        return Some(first);
    }
    let weight = |l: f32| f64::from(((l - max) * d.inv_temp).exp());
    let total: f64 = row
        .iter()
        .enumerate()
        .filter(|&(i, &l)| ok(i, l))
        .map(|(_, &l)| weight(l))
        .sum();
    let mut r = d.u * total;
    let mut last = first;
    for (i, &l) in row.iter().enumerate() {
        if ok(i, l) {
            r -= weight(l);
            last = i as u32;
            if r <= 0.0 {
                return Some(last);
            }
        }
    }
    // Rounding left a sliver past the last weight.
    Some(last)
}

/// One token per row of `flat` (rows of `flat.len() / draws.len()` logits) as `draws` say,
/// `u32::MAX` for a row with nothing to draw: the host's `Backend::sample_rows`.
pub fn draw_rows(flat: &[f32], draws: &[Draw], banned: &[u32]) -> Vec<u32> {
    if draws.is_empty() {
        return Vec::new();
    }
    flat.chunks_exact(flat.len() / draws.len())
        .zip(draws)
        .map(|(row, d)| draw_row(row, d, banned).unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_allowed_logit() {
        let row = [1.0, 5.0, f32::NAN, 5.0, 7.0, f32::NEG_INFINITY];
        assert_eq!(draw_row(&row, &Draw::greedy(false), &[]), Some(4));
        assert_eq!(draw_row(&row, &Draw::greedy(true), &[4]), Some(1));
        assert_eq!(draw_row(&row, &Draw::greedy(false), &[4]), Some(4));
        assert_eq!(
            draw_row(&[f32::NAN, f32::NEG_INFINITY], &Draw::greedy(false), &[]),
            None
        );
        assert_eq!(draw_row(&[3.0], &Draw::greedy(true), &[0]), None);
    }

    #[test]
    fn sampling_follows_the_cumulative_distribution() {
        // Weights at temperature 1: e^0 = 1 for both 0.0 logits, so tokens 0 and 2 split the
        // mass evenly; token 1 is banned and token 3 is -inf.
        let row = [0.0, 9.0, 0.0, f32::NEG_INFINITY];
        let d = |u| Draw {
            inv_temp: 1.0,
            u,
            ban: true,
        };
        assert_eq!(draw_row(&row, &d(0.0), &[1]), Some(0));
        assert_eq!(draw_row(&row, &d(0.49), &[1]), Some(0));
        assert_eq!(draw_row(&row, &d(0.51), &[1]), Some(2));
        assert_eq!(draw_row(&row, &d(0.999_999), &[1]), Some(2));
        // Without the ban, token 1 holds almost all the mass.
        let free = Draw {
            ban: false,
            ..d(0.5)
        };
        assert_eq!(draw_row(&row, &free, &[1]), Some(1));
        // A high temperature flattens it: at inv_temp 0.001 the three finite logits weigh
        // about the same.
        let flat = Draw {
            inv_temp: 0.001,
            u: 0.9,
            ban: false,
        };
        assert_eq!(draw_row(&row, &flat, &[]), Some(2));
    }
}
