//! Stop strings over the detokenized stream, stop tokens, and the length limit.

use realizar_engine::sampler::{StopOutput, StopReason};
use realizar_engine::StopChecker;

/// Feed (id, text) pairs; return the emitted text and the stop reason.
fn run(stop: &mut StopChecker, steps: &[(u32, &str)]) -> (String, Option<StopReason>) {
    let mut text = String::new();
    for &(id, piece) in steps {
        let StopOutput { text: t, stop: s } = stop.push(id, piece);
        text.push_str(&t);
        if s.is_some() {
            return (text, s);
        }
    }
    text.push_str(&stop.finish());
    (text, None)
}

#[test]
fn stop_string_spanning_tokens_is_never_emitted() {
    let mut s = StopChecker::new(vec!["\nUser:".into()], vec![], None);
    let steps = [(1, "Hello"), (2, " there.\n"), (3, "Us"), (4, "er: more")];
    let outs: Vec<StopOutput> = steps.iter().map(|&(i, t)| s.push(i, t)).collect();
    // "\n" is held back from step 2, "Us" too, until step 4 completes the stop string.
    assert_eq!(outs[0].text, "Hello");
    assert_eq!(outs[1].text, " there.");
    assert_eq!(outs[2].text, "");
    assert_eq!(outs[3].text, "");
    assert_eq!(outs[3].stop, Some(StopReason::String(0)));
    assert_eq!(s.stopped(), Some(&StopReason::String(0)));
    // After the stop nothing more comes out.
    assert_eq!(s.push(5, "x"), StopOutput::default());
}

#[test]
fn held_text_is_released_when_it_stops_matching() {
    let mut s = StopChecker::new(vec!["bcd".into()], vec![], None);
    assert_eq!(s.push(1, "ab").text, "a");
    assert_eq!(s.push(2, "c").text, "");
    assert_eq!(s.push(3, "x").text, "bcx");
    assert_eq!(run(&mut s, &[(4, "b")]), ("b".into(), None));
}

#[test]
fn earliest_stop_string_wins_and_text_before_it_is_kept() {
    let mut s = StopChecker::new(vec!["END".into(), "!".into(), String::new()], vec![], None);
    assert_eq!(
        run(&mut s, &[(1, "yes END now!")]),
        ("yes ".into(), Some(StopReason::String(0)))
    );
    let mut s = StopChecker::new(vec!["END".into(), "!".into()], vec![], None);
    assert_eq!(
        run(&mut s, &[(1, "wow! END")]),
        ("wow".into(), Some(StopReason::String(1)))
    );
    let mut s = StopChecker::new(vec!["END".into()], vec![], None);
    assert_eq!(
        run(&mut s, &[(1, "EN"), (2, "D")]),
        ("".into(), Some(StopReason::String(0)))
    );
}

#[test]
fn multibyte_stop_strings() {
    let mut s = StopChecker::new(vec!["。\n".into()], vec![], None);
    let out = run(&mut s, &[(1, "你好"), (2, "。"), (3, "\n再见")]);
    assert_eq!(out, ("你好".into(), Some(StopReason::String(0))));
}

#[test]
fn stop_tokens_flush_held_text_and_are_not_emitted() {
    let mut s = StopChecker::new(vec!["###".into()], vec![2, 7], None);
    // "#" is held (could start "###") until the stop token ends the stream.
    let out = run(&mut s, &[(1, "done #"), (7, "<|im_end|>")]);
    assert_eq!(out, ("done #".into(), Some(StopReason::Token(7))));
}

#[test]
fn max_tokens_stops_and_flushes() {
    let mut s = StopChecker::new(vec!["xyz".into()], vec![], Some(3));
    let out = run(&mut s, &[(1, "a"), (2, "b"), (3, "cx"), (4, "yz")]);
    assert_eq!(out, ("abcx".into(), Some(StopReason::MaxTokens)));
    assert_eq!(s.n_tokens(), 3);
    // A stop string completed by the last allowed token is still a stop string.
    let mut s = StopChecker::new(vec!["xyz".into()], vec![], Some(2));
    let out = run(&mut s, &[(1, "ax"), (2, "yz")]);
    assert_eq!(out, ("a".into(), Some(StopReason::String(0))));
}

#[test]
fn no_stops_passes_everything_through() {
    let mut s = StopChecker::new(vec![], vec![], None);
    assert_eq!(s.push(1, "any text").text, "any text");
    assert_eq!(s.push_text("more").text, "more");
    assert_eq!(s.finish(), "");
}
