//! `realizar chat`: an interactive conversation in the terminal, using the model's template.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Result;
use realizar_engine::{ChatMessage, ChatTemplate, GenRequest, Generator};
use realizar_model::Backend;

use crate::load::{self, Device};
use crate::run::SamplingArgs;

pub fn run(
    model: &Path,
    system: Option<&str>,
    sampling: &SamplingArgs,
    n: usize,
    ctx: usize,
    device: Device,
) -> Result<()> {
    match device {
        Device::Cpu => converse(load::generator(model, ctx)?, system, sampling, n),
        Device::Cuda => converse(load::cuda_generator(model, ctx)?, system, sampling, n),
    }
}

fn converse<B: Backend>(
    mut gen: Generator<B>,
    system: Option<&str>,
    sampling: &SamplingArgs,
    n: usize,
) -> Result<()> {
    let template = ChatTemplate::for_tokenizer(&gen.tokenizer)?;
    let mut messages: Vec<ChatMessage> = system
        .map(|s| ChatMessage::new("system", s))
        .into_iter()
        .collect();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if interactive {
        eprintln!(
            "realizar chat: type a message; /reset clears the conversation, /exit or Ctrl-D quits."
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                gen.reset();
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", text));
        let rendered = template.render(&messages, true)?;
        let prompt = gen.tokenizer.encode(&rendered, false, true)?;
        let room = gen.context_size().saturating_sub(prompt.len());
        if room == 0 {
            eprintln!(
                "realizar: the conversation fills the context of {} tokens; /reset to start over",
                gen.context_size()
            );
            messages.pop();
            continue;
        }
        let req = GenRequest {
            prompt,
            params: sampling.params(),
            max_tokens: n.min(room),
            stop: Vec::new(),
            top_logprobs: 0,
            ignore_eos: false,
        };
        let mut reply = String::new();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let summary = gen.generate(&req, |ev| {
            reply.push_str(&ev.text);
            write!(out, "{}", ev.text).and_then(|_| out.flush()).is_ok()
        })?;
        reply.push_str(&summary.tail);
        writeln!(out, "{}", summary.tail)?;
        messages.push(ChatMessage::new("assistant", reply.trim_end()));
    }
    Ok(())
}
