//! The versioned prompt template and the validation of what comes back.

use crate::trends::records::TrendRecord;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The template pulse ships; `--llm-prompt-file` replaces it.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../prompts/trend-summary.toml");

const PLACEHOLDERS: [&str; 8] = [
    "brand",
    "size",
    "growth",
    "first_seen",
    "last_seen",
    "sources",
    "keywords",
    "representatives",
];

const SENTIMENTS: [&str; 4] = ["positive", "negative", "neutral", "mixed"];
const MAX_TITLE_CHARS: usize = 120;
const MAX_SUMMARY_CHARS: usize = 2000;
/// Representative texts are clipped so one long post cannot fill the prompt.
const MAX_REPRESENTATIVE_CHARS: usize = 400;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the prompt template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the prompt template is not valid TOML with version, system and user: {0}")]
    Format(String),
    #[error("the prompt template uses unknown placeholder {{{0}}}; known: {known}", known = PLACEHOLDERS.join(", "))]
    UnknownPlaceholder(String),
    #[error("the prompt template's version is empty")]
    NoVersion,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    pub version: String,
    system: String,
    user: String,
}

impl PromptTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let template: Self =
            toml::from_str(text).map_err(|e| TemplateError::Format(e.message().to_string()))?;
        if template.version.trim().is_empty() {
            return Err(TemplateError::NoVersion);
        }
        for part in [&template.system, &template.user] {
            for name in placeholders(part) {
                if !PLACEHOLDERS.contains(&name) {
                    return Err(TemplateError::UnknownPlaceholder(name.to_string()));
                }
            }
        }
        Ok(template)
    }

    pub fn load(path: Option<&Path>) -> Result<Self, TemplateError> {
        match path {
            None => Self::parse(DEFAULT_TEMPLATE),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text)
            }
        }
    }

    /// The system and user messages for one trend.
    pub fn render(&self, trend: &TrendRecord) -> (String, String) {
        let values = values(trend);
        let fill = |part: &str| {
            let mut out = String::with_capacity(part.len() * 2);
            let mut rest = part;
            while let Some(open) = rest.find('{') {
                out.push_str(&rest[..open]);
                let after = &rest[open + 1..];
                match after.find('}').map(|close| (&after[..close], close)) {
                    Some((name, close)) if PLACEHOLDERS.contains(&name) => {
                        let value = values.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
                        out.push_str(value.map_or("", String::as_str));
                        rest = &after[close + 1..];
                    }
                    _ => {
                        out.push('{');
                        rest = after;
                    }
                }
            }
            out.push_str(rest);
            out.trim().to_string()
        };
        (fill(&self.system), fill(&self.user))
    }
}

/// `{name}` spans that look like placeholders (an identifier in braces);
/// other braces, such as a JSON example, are left alone.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices('{').filter_map(move |(open, _)| {
        let after = &text[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then_some(name)
    })
}

fn timestamp(ms: i64) -> String {
    let secs = u64::try_from(ms.div_euclid(1000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn values(trend: &TrendRecord) -> Vec<(&'static str, String)> {
    let sources = trend
        .sources
        .iter()
        .map(|(source, count)| format!("{source} ({count})"))
        .collect::<Vec<_>>()
        .join(", ");
    let keywords = trend
        .keywords
        .iter()
        .map(|(term, _)| term.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let representatives = trend
        .representatives
        .iter()
        .map(|r| format!("- {}", clip(r.text.trim(), MAX_REPRESENTATIVE_CHARS)))
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        ("brand", trend.brand.clone()),
        ("size", trend.size.to_string()),
        ("growth", format!("{:.2}", trend.growth)),
        ("first_seen", timestamp(trend.first_seen)),
        ("last_seen", timestamp(trend.last_seen)),
        ("sources", sources),
        ("keywords", keywords),
        ("representatives", representatives),
    ]
}

/// A validated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub title: String,
    pub summary: String,
    pub sentiment: String,
    pub suggested_action: String,
}

/// Reads the JSON object out of a model's answer (bare, or wrapped in a
/// code fence or a sentence) and checks every field.
pub fn parse_answer(text: &str) -> Result<Answer, String> {
    let start = text.find('{').ok_or("the answer holds no JSON object")?;
    let end = text
        .rfind('}')
        .ok_or("the answer's JSON object is not closed")?;
    if end < start {
        return Err("the answer holds no JSON object".into());
    }
    let value: Value = serde_json::from_str(&text[start..=end])
        .map_err(|e| format!("the answer's JSON does not parse: {e}"))?;
    let field = |name: &str, most: usize| -> Result<String, String> {
        let value = value
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .ok_or_else(|| format!("the answer has no string field \"{name}\""))?;
        if value.is_empty() {
            return Err(format!("the answer's \"{name}\" is empty"));
        }
        if value.chars().count() > most {
            return Err(format!(
                "the answer's \"{name}\" is longer than {most} characters"
            ));
        }
        Ok(value.to_string())
    };
    let title = field("title", MAX_TITLE_CHARS)?;
    let summary = field("summary", MAX_SUMMARY_CHARS)?;
    let sentiment = field("sentiment", 20)?.to_lowercase();
    if !SENTIMENTS.contains(&sentiment.as_str()) {
        return Err(format!(
            "the answer's sentiment \"{sentiment}\" is not one of {}",
            SENTIMENTS.join(", ")
        ));
    }
    Ok(Answer {
        title,
        summary,
        sentiment,
        suggested_action: field("suggested_action", MAX_SUMMARY_CHARS)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trends::records::RepresentativeRecord;

    fn trend() -> TrendRecord {
        TrendRecord {
            trend_id: 7,
            brand: "acme".into(),
            model: "m".into(),
            run_id: "r".into(),
            size: 42,
            assigned: 0,
            representatives: vec![RepresentativeRecord {
                signal_id: "s1".into(),
                point_id: uuid::Uuid::nil(),
                text: "The battery dies before lunch".into(),
                probability: 1.0,
                similarity: 0.9,
            }],
            keywords: vec![("battery".into(), 0.5), ("dies".into(), 0.2)],
            sources: vec![("x".into(), 40), ("reddit".into(), 2)],
            first_seen: 1_763_000_000_000,
            last_seen: 1_763_003_600_000,
            buckets: vec![],
            bucket_width_ms: 0,
            growth: 1.5,
            origin: "new".into(),
            parents: vec![],
            centroid: vec![],
            llm: None,
        }
    }

    #[test]
    fn the_shipped_template_renders_every_fact() {
        let template = PromptTemplate::load(None).unwrap();
        assert_eq!(template.version, "trend-summary/1");
        let (system, user) = template.render(&trend());
        assert!(system.contains("JSON"));
        for fact in [
            "Brand: acme",
            "42",
            "1.50",
            "2025-11-13T02:13:20Z",
            "x (40), reddit (2)",
            "battery, dies",
            "- The battery dies before lunch",
        ] {
            assert!(user.contains(fact), "{fact} missing from:\n{user}");
        }
        assert!(!user.contains("{keywords}"));
    }

    #[test]
    fn templates_are_checked_when_loaded() {
        let ok = "version = \"v2\"\nsystem = \"Answer in JSON like {\\\"title\\\": 1}\"\nuser = \"{keywords}\"";
        let template = PromptTemplate::parse(ok).unwrap();
        let (system, user) = template.render(&trend());
        assert!(system.contains("{\"title\": 1}"));
        assert_eq!(user, "battery, dies");
        let unknown = "version = \"v2\"\nsystem = \"\"\nuser = \"{colour}\"";
        assert!(matches!(
            PromptTemplate::parse(unknown),
            Err(TemplateError::UnknownPlaceholder(name)) if name == "colour"
        ));
        assert!(matches!(
            PromptTemplate::parse("version = \" \"\nsystem = \"\"\nuser = \"\""),
            Err(TemplateError::NoVersion)
        ));
        assert!(matches!(
            PromptTemplate::parse("system = \"\""),
            Err(TemplateError::Format(_))
        ));
        assert!(matches!(
            PromptTemplate::load(Some(Path::new("/nonexistent/prompt.toml"))),
            Err(TemplateError::Read { .. })
        ));
    }

    #[test]
    fn answers_are_validated() {
        let good = r#"Here you go: ```json
{"title": "Battery complaints", "summary": "People say the battery dies.", "sentiment": "Negative", "suggested_action": "Publish charging tips."}
```"#;
        let answer = parse_answer(good).unwrap();
        assert_eq!(answer.title, "Battery complaints");
        assert_eq!(answer.sentiment, "negative");
        for (bad, why) in [
            ("no json here", "no JSON object"),
            ("{\"title\": ", "not closed"),
            ("{\"title\": 1}", "no string field \"title\""),
            (
                r#"{"title": "t", "summary": "s", "sentiment": "angry", "suggested_action": "a"}"#,
                "not one of",
            ),
            (
                r#"{"title": " ", "summary": "s", "sentiment": "mixed", "suggested_action": "a"}"#,
                "\"title\" is empty",
            ),
        ] {
            let err = parse_answer(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!(
            r#"{{"title": "{}", "summary": "s", "sentiment": "mixed", "suggested_action": "a"}}"#,
            "t".repeat(200)
        );
        assert!(parse_answer(&long).unwrap_err().contains("longer than"));
    }
}
