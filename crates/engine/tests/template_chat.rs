//! Chat templates: the default model's own template, the ChatML fallback, template errors,
//! and the limits that keep an untrusted template from running away.

use realizar_testkit::default_model;

use realizar_engine::chat_template::CHATML_TEMPLATE;
use realizar_engine::{ChatMessage, ChatTemplate, EngineError, Tokenizer};
use realizar_formats::GgufFile;

fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
    list.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

#[test]
fn default_model_template_renders_chatml() {
    let gguf = GgufFile::open(&default_model()).expect("open GGUF");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let tmpl = ChatTemplate::for_tokenizer(&tok).expect("template");
    let prompt = tmpl
        .render(&msgs(&[("system", SYSTEM), ("user", "What is 2+2?")]), true)
        .unwrap();
    // Exactly the reference prompt of the golden tests.
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // Without a system message the template supplies its own; without the generation prompt
    // the assistant header is left out.
    let no_system = tmpl.render(&msgs(&[("user", "hi")]), false).unwrap();
    assert_eq!(
        no_system,
        format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    );
}

#[test]
fn chatml_fallback() {
    let t = ChatTemplate::chatml("", "<|im_end|>");
    let out = t
        .render(
            &msgs(&[
                ("system", "S"),
                ("user", "U"),
                ("assistant", "A"),
                ("user", "V"),
            ]),
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n\
         <|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(ChatTemplate::new(CHATML_TEMPLATE, "", "").is_ok());
}

#[test]
fn python_methods_globals_and_whitespace_control() {
    let src = "{{ bos_token }}{% for m in messages %}\n\
               {% if m.content.strip().startswith('#') %}{% continue %}{% endif %}\n\
               [{{ m.role.upper() }}:{{ m.content.strip().split(' ') | join('|') }}]\n\
               {% endfor %}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}";
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    let out = t
        .render(
            &msgs(&[("user", "  a b  "), ("assistant", "# skip"), ("user", "c")]),
            true,
        )
        .unwrap();
    // trim_blocks/lstrip_blocks remove the newlines after block tags, as in transformers.
    assert_eq!(out, "<s>[USER:a|b]\n[USER:c]\n></s>");
}

#[test]
fn raise_exception_is_a_clear_error() {
    let src = "{% for m in messages %}{% if m.role == 'system' %}\
               {{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(t.render(&msgs(&[("user", "ok")]), false).unwrap(), "ok");
    match t.render(&msgs(&[("system", "x")]), false) {
        Err(EngineError::TemplateException(msg)) => assert_eq!(msg, "System role not supported"),
        other => panic!("expected TemplateException, got {other:?}"),
    }
}

#[test]
fn runaway_templates_are_stopped() {
    let m = msgs(&[("user", "hi")]);
    // Ten billion iterations: stopped by the fuel budget.
    let looping =
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}";
    let err = ChatTemplate::new(looping, "", "")
        .unwrap()
        .render(&m, false)
        .unwrap_err();
    assert!(matches!(err, EngineError::Template(_)), "{err:?}");
    assert!(err.to_string().contains("budget"), "{err}");

    // Huge output: stopped by the output cap.
    let huge = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
    let t = ChatTemplate::new(huge, "", "")
        .unwrap()
        .with_limits(u64::MAX, 1 << 20);
    let err = t.render(&m, false).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");

    // Unbounded recursion: an error, not a stack overflow.
    let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    let err = ChatTemplate::new(recursive, "", "")
        .unwrap()
        .render(&m, false)
        .unwrap_err();
    assert!(matches!(err, EngineError::Template(_)), "{err:?}");

    // No file access: includes find nothing.
    let include = "{% include '/etc/passwd' %}";
    let err = ChatTemplate::new(include, "", "")
        .unwrap()
        .render(&m, false)
        .unwrap_err();
    assert!(matches!(err, EngineError::Template(_)), "{err:?}");
}

#[test]
fn long_conversations_fit_the_default_limits() {
    // 200 messages of 40 KB (8 MB of text, ~2M tokens): far beyond any context window.
    let big = "word ".repeat(8_000);
    let conv: Vec<ChatMessage> = (0..200)
        .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, big.clone()))
        .collect();
    let out = ChatTemplate::chatml("", "").render(&conv, true).unwrap();
    assert!(out.len() > 200 * big.len());
}

#[test]
fn syntax_errors_are_reported_at_compile_time() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
    assert!(matches!(err, EngineError::Template(_)), "{err:?}");
}

#[test]
fn extra_variables_and_a_llama3_style_template() {
    let src = "{{- bos_token }}{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}\
               {%- for message in messages %}\
               {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\
               {%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}\
               {%- if tools %}{{ tools | tojson }}{% endif %}[{{ date_string }}]";
    let t = ChatTemplate::new(src, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let mut extra = serde_json::Map::new();
    extra.insert("date_string".into(), "26 Jul 2024".into());
    extra.insert("tools".into(), serde_json::json!([{"name": "f"}]));
    let out = t
        .render_with(&msgs(&[("user", " hi ")]), true, &extra)
        .unwrap();
    // tojson separates like Python's json.dumps (", " and ": "), as transformers does.
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n[{\"name\": \"f\"}][26 Jul 2024]"
    );
    // Without date_string the template asks strftime_now for today's date.
    let out = t.render(&msgs(&[("user", "hi")]), false).unwrap();
    let date = out.rsplit('[').next().unwrap().trim_end_matches(']');
    assert_eq!(date.len(), 11, "{out}");
}
