//! docs/NATS_SUBJECTS.md cannot drift from the service: every `→ request` line on it is sent to a
//! fresh kv-service, and the `← reply` line under it must be exactly what comes back, byte for
//! byte. A `→` line names its subject (`→ rosey.db.kv.get {…}`) or takes it from the
//! `### rosey.db.kv.<op>` section it is in; `(empty body)` and `(the bytes FF FE)` stand for
//! bodies a line cannot show. The sections' examples build on each other as a reader would run
//! them: every set, then the gets, the lists, the deletes, then the error examples.

mod common;

use bytes::Bytes;
use common::{Backend, Harness};

const DOC: &str = include_str!("../../docs/NATS_SUBJECTS.md");

#[derive(Debug)]
struct Example {
    line: usize,
    subject: String,
    body: Bytes,
    reply: String,
}

fn examples() -> Vec<Example> {
    let mut section_subject: Option<String> = None;
    let mut examples = Vec::new();
    let mut lines = DOC.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        if let Some(heading) = line.strip_prefix("### ") {
            section_subject = heading
                .split_whitespace()
                .next()
                .filter(|word| word.starts_with("rosey.db.kv."))
                .map(str::to_owned);
            continue;
        }
        if line.starts_with("## ") {
            section_subject = None;
            continue;
        }
        let Some(request) = line.strip_prefix("→ ") else {
            continue;
        };
        let (subject, body) = match request.strip_prefix("rosey.db.kv.") {
            Some(rest) => {
                let (op, body) = rest.split_once(' ').unwrap_or((rest, ""));
                (format!("rosey.db.kv.{op}"), body)
            }
            None => (
                section_subject.clone().unwrap_or_else(|| {
                    panic!("line {}: `→` outside a subject's section", index + 1)
                }),
                request,
            ),
        };
        let body = match body.trim_end() {
            "(empty body)" => Bytes::new(),
            "(the bytes FF FE)" => Bytes::from_static(&[0xFF, 0xFE]),
            text => Bytes::from(text.to_owned()),
        };
        let reply = match lines.next() {
            Some((_, reply)) if reply.starts_with("← ") => reply["← ".len()..].to_owned(),
            _ => panic!(
                "line {}: a `→` request without a `←` reply under it",
                index + 1
            ),
        };
        examples.push(Example {
            line: index + 1,
            subject,
            body,
            reply,
        });
    }
    examples
}

#[test]
fn the_page_has_examples_for_every_operation_and_the_error_codes() {
    let examples = examples();
    for op in ["set", "get", "delete", "list"] {
        assert!(
            examples
                .iter()
                .any(|e| e.subject == format!("rosey.db.kv.{op}")
                    && e.reply.contains("\"success\":true")),
            "no success example for {op}"
        );
    }
    for code in ["INVALID_JSON", "VALIDATION_ERROR", "MISSING_FIELD"] {
        assert!(
            examples.iter().any(|e| e.reply.contains(code)),
            "no example of {code}"
        );
    }
}

#[tokio::test]
async fn every_documented_reply_is_what_the_service_sends() {
    let kv = Harness::start(Backend::Sqlite).await;
    let order = |example: &Example| -> usize {
        let success = example.reply.starts_with(r#"{"success":true"#);
        match (example.subject.rsplit('.').next(), success) {
            (Some("set"), true) => 0,
            (Some("get"), true) => 1,
            (Some("list"), true) => 2,
            (Some("delete"), true) => 3,
            _ => 4,
        }
    };
    let mut examples = examples();
    examples.sort_by_key(|example| (order(example), example.line));
    assert!(examples.len() >= 15, "{examples:?}");
    for example in examples {
        let got = kv.raw_payload(&example.subject, example.body.clone()).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            example.reply,
            "docs/NATS_SUBJECTS.md line {}: {} {:?}",
            example.line,
            example.subject,
            example.body
        );
    }
}
