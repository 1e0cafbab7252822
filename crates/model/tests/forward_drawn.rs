//! `Model::forward_drawn` on the CPU (the default `Backend::sample_rows`): rows asked whole come
//! back as `forward` gives them, and drawn rows as `draw::draw_row` draws from those rows, in
//! batch order, across a batch that the step size splits.

use realizar_model::draw::{draw_row, Draw};
use realizar_model::{load_cpu, LoadOptions, LogitsWanted, RowOrToken, SeqChunk};
use realizar_testkit::tiny_fixture;

fn chunk<'a>(tokens: &'a [u32], table: &'a [u32]) -> SeqChunk<'a> {
    SeqChunk {
        tokens,
        start_pos: 0,
        block_table: table,
        logits: LogitsWanted::All,
    }
}

#[test]
fn forward_drawn_gives_rows_and_the_reference_draws() {
    let path = tiny_fixture("llama").join("model-f32.gguf");
    let opts = LoadOptions {
        kv_tokens: 128,
        max_batch_tokens: 8,
        ..LoadOptions::default()
    };
    let (_f, mut model) = load_cpu(&path, &opts).unwrap();
    let vocab = model.cfg.vocab_size as u32;
    let table: Vec<u32> = (0..model.n_blocks() as u32).collect();
    // 12 prompt tokens, all logits wanted: the step size of 8 splits the batch in two steps.
    let tokens: Vec<u32> = (0..12u32).map(|i| (i * 7 + 3) % vocab).collect();
    let rows = model.forward(&[chunk(&tokens, &table)]).unwrap();
    let banned = [rows[3]
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &l)| if l > b.1 { (i, l) } else { b })
        .0 as u32];
    let draws: Vec<Option<Draw>> = (0..tokens.len())
        .map(|i| match i % 4 {
            0 => None,
            1 => Some(Draw::greedy(false)),
            2 => Some(Draw {
                inv_temp: 1.0 / 0.8,
                u: (i as f64 * 0.137) % 1.0,
                ban: false,
            }),
            _ => Some(Draw::greedy(true)),
        })
        .collect();
    let got = model
        .forward_drawn(&[chunk(&tokens, &table)], &draws, &banned)
        .unwrap();
    assert_eq!(got.len(), tokens.len());
    for (i, (g, d)) in got.iter().zip(&draws).enumerate() {
        match (g, d) {
            (RowOrToken::Row(r), None) => assert_eq!(r, &rows[i], "row {i}"),
            (RowOrToken::Token(t), Some(d)) => {
                let want = draw_row(&rows[i], d, &banned).unwrap();
                assert_eq!(*t, want, "row {i}: {d:?}");
                if d.ban {
                    assert_ne!(*t, banned[0], "row {i}: a banned id was drawn");
                }
            }
            other => panic!("row {i}: {other:?}"),
        }
    }
    // The banned id is row 3's greedy choice, so the banning draw there picks another token.
    assert_ne!(got[3], RowOrToken::Token(banned[0]));
    // Fewer draws than wanted rows is an error, not a short answer.
    assert!(model
        .forward_drawn(&[chunk(&tokens, &table)], &draws[..5], &banned)
        .is_err());
}
