//! The sampling chain: greedy, seeds, penalties, logit bias, top-k, top-p, min-p, temperature,
//! and log-probabilities of the unmodified distribution.

use realizar_engine::sampler::{argmax, token_logprob, top_logprobs};
use realizar_engine::{EngineError, Sampler, SamplingParams};

/// Deterministic pseudo-random logits (xorshift), in [-8, 8).
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 16.0 - 8.0
        })
        .collect()
}

fn sampler(p: SamplingParams, n: usize) -> Sampler {
    Sampler::new(p, n).expect("valid params")
}

fn softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = l.iter().map(|&x| f64::from(x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Frequencies of each token over `n` draws.
fn histogram(s: &mut Sampler, l: &[f32], n: usize) -> Vec<f64> {
    let mut h = vec![0.0; l.len()];
    for _ in 0..n {
        h[s.sample(l, &[]).unwrap() as usize] += 1.0 / n as f64;
    }
    h
}

#[test]
fn greedy_is_argmax_and_ties_take_the_lowest_id() {
    let l = logits(1000, 1);
    let mut s = sampler(SamplingParams::greedy(), l.len());
    let best = argmax(&l).unwrap();
    assert_eq!(s.sample(&l, &[]).unwrap(), best);
    assert_eq!(l[best as usize], l.iter().cloned().fold(f32::MIN, f32::max));
    let mut s = sampler(SamplingParams::greedy(), 4);
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]).unwrap(), 1);
    // NaN never wins; all-impossible logits are an error, not a panic.
    assert_eq!(s.sample(&[f32::NAN, 0.5, f32::NAN, 0.0], &[]).unwrap(), 1);
    assert!(s.sample(&[f32::NEG_INFINITY; 4], &[]).is_err());
    assert!(s.sample(&[], &[]).is_err());
}

#[test]
fn top_k_one_equals_greedy() {
    for seed in 0..20 {
        let l = logits(5000, seed);
        let p = SamplingParams {
            temperature: 1.5,
            top_k: 1,
            seed: Some(seed),
            ..Default::default()
        };
        assert_eq!(
            sampler(p, l.len()).sample(&l, &[]).unwrap(),
            argmax(&l).unwrap()
        );
    }
}

#[test]
fn same_seed_same_tokens() {
    let p = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        seed: Some(seed),
        ..Default::default()
    };
    let run = |seed| {
        let mut s = sampler(p(seed), 3000);
        (0..64)
            .map(|i| s.sample(&logits(3000, i), &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn repetition_penalty_changes_the_choice() {
    let l = [2.0, 1.9, -1.0, -1.2];
    let greedy = SamplingParams::greedy();
    assert_eq!(sampler(greedy.clone(), 4).sample(&l, &[0]).unwrap(), 0);
    let rep = SamplingParams {
        repetition_penalty: 1.5,
        ..greedy.clone()
    };
    // 2.0 / 1.5 = 1.33 < 1.9
    assert_eq!(sampler(rep.clone(), 4).sample(&l, &[0]).unwrap(), 1);
    // Negative logits are multiplied: -1.0 * 1.5 = -1.5 < -1.2.
    let neg = [-1.0, -1.2];
    assert_eq!(sampler(rep.clone(), 2).sample(&neg, &[]).unwrap(), 0);
    assert_eq!(sampler(rep.clone(), 2).sample(&neg, &[0]).unwrap(), 1);
    // Only the last `penalty_last_n` tokens count.
    let windowed = SamplingParams {
        penalty_last_n: 2,
        ..rep
    };
    assert_eq!(
        sampler(windowed.clone(), 4).sample(&l, &[0, 3, 3]).unwrap(),
        0
    );
    assert_eq!(sampler(windowed, 4).sample(&l, &[3, 0, 3]).unwrap(), 1);
}

#[test]
fn presence_and_frequency_penalties() {
    let l = [2.0, 1.5, 0.0];
    let presence = SamplingParams {
        presence_penalty: 0.6,
        ..SamplingParams::greedy()
    };
    assert_eq!(sampler(presence.clone(), 3).sample(&l, &[0]).unwrap(), 1);
    // Presence counts once however often the token appeared...
    assert_eq!(sampler(presence, 3).sample(&l, &[0, 0, 0, 1]).unwrap(), 0);
    // ...frequency per occurrence: 2.0 - 3*0.2 = 1.4 still beats 1.5 - 0.2 = 1.3...
    let freq = SamplingParams {
        frequency_penalty: 0.2,
        ..SamplingParams::greedy()
    };
    assert_eq!(
        sampler(freq.clone(), 3).sample(&l, &[0, 0, 0, 1]).unwrap(),
        0
    );
    // ...but 2.0 - 4*0.2 = 1.2 does not.
    assert_eq!(sampler(freq, 3).sample(&l, &[0, 0, 0, 0, 1]).unwrap(), 1);
}

#[test]
fn logit_bias_bans_and_forces() {
    let l = logits(100, 7);
    let best = argmax(&l).unwrap();
    let ban = SamplingParams {
        logit_bias: vec![(best, f32::NEG_INFINITY)],
        temperature: 2.0,
        seed: Some(1),
        ..Default::default()
    };
    let mut s = sampler(ban, l.len());
    for _ in 0..2000 {
        assert_ne!(s.sample(&l, &[]).unwrap(), best);
    }
    let force = SamplingParams {
        logit_bias: vec![(5, 100.0)],
        ..SamplingParams::greedy()
    };
    assert_eq!(sampler(force, l.len()).sample(&l, &[]).unwrap(), 5);
}

#[test]
fn top_k_keeps_only_the_k_best() {
    let l = logits(2000, 3);
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
    let allowed = &order[..10];
    let mut s = sampler(
        SamplingParams {
            top_k: 10,
            temperature: 5.0,
            seed: Some(9),
            ..Default::default()
        },
        l.len(),
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3000 {
        let t = s.sample(&l, &[]).unwrap();
        assert!(allowed.contains(&t));
        seen.insert(t);
    }
    assert_eq!(seen.len(), 10, "at temperature 5 all ten should appear");
}

/// The smallest prefix of tokens sorted by probability whose mass reaches `p`.
fn nucleus(l: &[f32], p: f64) -> Vec<u32> {
    let probs = softmax(l);
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
    let mut cum = 0.0;
    let mut keep = Vec::new();
    for t in order {
        keep.push(t);
        cum += probs[t as usize];
        if cum >= p {
            break;
        }
    }
    keep
}

#[test]
fn top_p_keeps_the_nucleus() {
    // Small: probabilities 0.5, 0.3, 0.2.
    let l: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
    let only_first = SamplingParams {
        top_p: 0.5,
        seed: Some(1),
        ..Default::default()
    };
    let h = histogram(&mut sampler(only_first, 3), &l, 500);
    assert_eq!(h[1] + h[2], 0.0, "{h:?}");
    let two = SamplingParams {
        top_p: 0.6,
        seed: Some(1),
        ..Default::default()
    };
    let h = histogram(&mut sampler(two, 3), &l, 4000);
    assert_eq!(h[2], 0.0);
    assert!((h[0] - 0.625).abs() < 0.03, "{h:?}"); // 0.5 / 0.8 after renormalising
                                                   // Large vocabulary with a flat tail: the nucleus spans thousands of tokens (exercises the
                                                   // partial sort growing past its first 256 entries).
    for seed in 0..3 {
        let l: Vec<f32> = logits(50_000, seed).iter().map(|x| x / 8.0).collect();
        let allowed: std::collections::HashSet<u32> = nucleus(&l, 0.9).into_iter().collect();
        assert!(allowed.len() > 1000, "{}", allowed.len());
        let mut s = sampler(
            SamplingParams {
                top_p: 0.9,
                seed: Some(seed),
                ..Default::default()
            },
            l.len(),
        );
        for _ in 0..100 {
            assert!(allowed.contains(&s.sample(&l, &[]).unwrap()));
        }
    }
}

#[test]
fn min_p_drops_unlikely_tokens() {
    // Probabilities proportional to 1, 0.6, 0.3, 0.05.
    let l: Vec<f32> = [1.0f32, 0.6, 0.3, 0.05].iter().map(|p| p.ln()).collect();
    let p = SamplingParams {
        min_p: 0.5,
        seed: Some(3),
        ..Default::default()
    };
    let h = histogram(&mut sampler(p, 4), &l, 4000);
    assert_eq!(h[2] + h[3], 0.0);
    assert!((h[0] - 1.0 / 1.6).abs() < 0.03, "{h:?}");
}

#[test]
fn temperature_shapes_the_distribution() {
    let l = [1.0, 0.0, -1.0];
    for (t, n) in [(1.0f32, 20_000), (0.5, 20_000), (2.0, 20_000)] {
        let p = SamplingParams {
            temperature: t,
            seed: Some(11),
            ..Default::default()
        };
        let h = histogram(&mut sampler(p, 3), &l, n);
        let want = softmax(&l.iter().map(|x| x / t).collect::<Vec<_>>());
        for (a, b) in h.iter().zip(&want) {
            assert!((a - b).abs() < 0.015, "T={t}: {h:?} vs {want:?}");
        }
    }
}

#[test]
fn plain_sampling_over_a_large_vocabulary() {
    // Three live tokens spread over 5000 (the rest impossible), one more banned by bias.
    let mut l = vec![f32::NEG_INFINITY; 5000];
    l[100] = 1.0;
    l[2500] = 0.0;
    l[4999] = -1.0;
    l[3000] = 5.0;
    let p = SamplingParams {
        seed: Some(5),
        logit_bias: vec![(3000, f32::NEG_INFINITY)],
        ..Default::default()
    };
    let h = histogram(&mut sampler(p, l.len()), &l, 20_000);
    let want = softmax(&[1.0, 0.0, -1.0]);
    for (&id, w) in [100usize, 2500, 4999].iter().zip(&want) {
        assert!((h[id] - w).abs() < 0.015, "{id}: {} vs {w}", h[id]);
    }
    assert_eq!(h[3000], 0.0);
}

#[test]
fn logprobs_are_of_the_raw_distribution() {
    let l = logits(1000, 5);
    let top = top_logprobs(&l, 5);
    assert_eq!(top.len(), 5);
    let probs = softmax(&l);
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    for (i, &(id, lp)) in top.iter().enumerate() {
        assert_eq!(id as usize, order[i]);
        assert!((f64::from(lp) - probs[order[i]].ln()).abs() < 1e-4);
        assert_eq!(token_logprob(&l, id), Some(lp));
    }
    let total: f64 = (0..l.len() as u32)
        .map(|i| f64::from(token_logprob(&l, i).unwrap()).exp())
        .sum();
    assert!((total - 1.0).abs() < 1e-4);
    assert_eq!(top_logprobs(&[0.0, 0.0], 10).len(), 2);
    assert_eq!(token_logprob(&l, 5000), None);
    // Penalties and filters in the sampler do not change what the logits say.
    let mut s = sampler(
        SamplingParams {
            repetition_penalty: 2.0,
            top_k: 3,
            ..SamplingParams::greedy()
        },
        l.len(),
    );
    let _ = s.sample(&l, &[order[0] as u32]).unwrap();
    assert_eq!(top_logprobs(&l, 5), top);
}

#[test]
fn bad_parameters_are_rejected() {
    let bad = [
        SamplingParams {
            temperature: -0.1,
            ..Default::default()
        },
        SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        SamplingParams {
            min_p: -0.5,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
        SamplingParams {
            presence_penalty: f32::INFINITY,
            ..Default::default()
        },
        SamplingParams {
            logit_bias: vec![(100, 1.0)],
            ..Default::default()
        },
        SamplingParams {
            logit_bias: vec![(1, f32::NAN)],
            ..Default::default()
        },
    ];
    for p in bad {
        assert!(
            matches!(Sampler::new(p.clone(), 100), Err(EngineError::Sampling(_))),
            "{p:?}"
        );
    }
    assert!(Sampler::new(SamplingParams::default(), 100).is_ok());
}
