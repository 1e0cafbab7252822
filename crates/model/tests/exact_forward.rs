//! The forward pass against an independent exact evaluation: `exact_forward.py` dequantizes the
//! default model with the `gguf` Python package and runs the transformer in numpy (f64). Our CPU
//! backend in reference mode (f32 activations, no activation quantization) must agree closely
//! at every position, through prefill and through token-by-token decode.

use std::process::Command;

use realizar_model::{load_cpu, Backend, LoadOptions, LogitsWanted, SeqChunk};

fn numpy_logprobs(model: &std::path::Path, ids: &[u32]) -> Vec<Vec<f64>> {
    realizar_testkit::ensure_python_packages(&["gguf", "numpy"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/exact_forward.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .args(ids.iter().map(u32::to_string))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "exact_forward.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from exact_forward.py")
}

#[test]
fn reference_mode_matches_exact_numpy_evaluation() {
    let path = realizar_testkit::default_model();
    // A prompt with special tokens, then a few continuation tokens decoded one at a time.
    let ids: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 504, 3575, 282, 4649, 314, 7042, 30, 198,
    ];
    let n_prompt = 10;
    let expected = numpy_logprobs(&path, &ids);
    let (_file, mut model) = load_cpu(
        &path,
        &LoadOptions {
            kv_tokens: 256,
            ..LoadOptions::default()
        },
    )
    .expect("load");
    model.backend.set_exact(true);
    assert_eq!(model.backend.name(), "cpu");
    let table: Vec<u32> = (0..model.n_blocks() as u32).collect();
    let mut ours = model
        .forward(&[SeqChunk {
            tokens: &ids[..n_prompt],
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::All,
        }])
        .expect("prefill");
    for (i, tok) in ids.iter().enumerate().skip(n_prompt) {
        let step = SeqChunk {
            tokens: std::slice::from_ref(tok),
            start_pos: i,
            block_table: &table,
            logits: LogitsWanted::Last,
        };
        ours.extend(model.forward(&[step]).expect("decode"));
    }
    assert_eq!(ours.len(), ids.len());
    let mut worst = 0.0f64;
    for (p, (row, exp)) in ours.iter().zip(&expected).enumerate() {
        let lp = realizar_testkit::log_softmax(row);
        let best = |v: &[f64]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|x| x.0)
        };
        assert_eq!(best(&lp), best(exp), "argmax differs at position {p}");
        // Compare the 20 most likely tokens of the exact evaluation.
        let mut order: Vec<usize> = (0..exp.len()).collect();
        order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]));
        for &id in &order[..20] {
            let d = (lp[id] - exp[id]).abs();
            worst = worst.max(d);
            assert!(
                d < 0.03,
                "position {p}, token {id}: {} vs exact {}",
                lp[id],
                exp[id]
            );
        }
    }
    eprintln!("worst log-probability difference against the exact f64 evaluation: {worst:.5}");
}
