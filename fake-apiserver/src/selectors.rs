//! Label and field selectors of list and watch requests (API concepts: "Label selectors", "Field selectors").

use serde_json::Value;

use crate::status::ApiError;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum LabelRequirement {
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for clause in split_top_level(text) {
            let clause = clause.trim();
            if clause.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(clause)?);
        }
        Ok(LabelSelector(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|labels| labels.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::Absent(key) => label(key).is_none(),
            LabelRequirement::In(key, values) => label(key).is_some_and(|value| values.iter().any(|wanted| wanted == value)),
            // `notin` also matches objects without the label, as in Kubernetes.
            LabelRequirement::NotIn(key, values) => !label(key).is_some_and(|value| values.iter().any(|wanted| wanted == value)),
        })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b` is two clauses).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut clauses = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                clauses.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    clauses.push(&text[start..]);
    clauses
}

fn parse_requirement(clause: &str) -> Result<LabelRequirement, ApiError> {
    let invalid = || ApiError::bad_request(format!("unable to parse requirement: invalid label selector clause {clause:?}"));
    if let Some(key) = clause.strip_prefix('!') {
        return Ok(LabelRequirement::Absent(key.trim().to_string()));
    }
    if let Some((key, value)) = clause.split_once("!=") {
        return Ok(LabelRequirement::NotIn(key.trim().to_string(), vec![value.trim().to_string()]));
    }
    if let Some((key, value)) = clause.split_once("==").or_else(|| clause.split_once('=')) {
        return Ok(LabelRequirement::In(key.trim().to_string(), vec![value.trim().to_string()]));
    }
    let words: Vec<&str> = clause.splitn(3, char::is_whitespace).filter(|word| !word.is_empty()).collect();
    match words.as_slice() {
        [key] => Ok(LabelRequirement::Exists(key.to_string())),
        [key, operator, values] => {
            let values = values.trim().strip_prefix('(').and_then(|rest| rest.strip_suffix(')')).ok_or_else(invalid)?;
            let values = values.split(',').map(|value| value.trim().to_string()).filter(|value| !value.is_empty()).collect();
            match *operator {
                "in" => Ok(LabelRequirement::In(key.to_string(), values)),
                "notin" => Ok(LabelRequirement::NotIn(key.to_string(), values)),
                _ => Err(invalid()),
            }
        }
        _ => Err(invalid()),
    }
}

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Clone, Debug, PartialEq)]
struct FieldRequirement {
    /// JSON pointer of the field (`metadata.name` becomes `/metadata/name`).
    pointer: String,
    value: String,
    equal: bool,
}

/// A parsed `fieldSelector`. Any dotted field path is accepted (the real server accepts only
/// `metadata.name`, `metadata.namespace` and a few per-kind fields).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<FieldRequirement>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, ApiError> {
        let mut requirements = Vec::new();
        for clause in text.split(',').map(str::trim).filter(|clause| !clause.is_empty()) {
            let (field, value, equal) = if let Some((field, value)) = clause.split_once("!=") {
                (field, value, false)
            } else if let Some((field, value)) = clause.split_once("==").or_else(|| clause.split_once('=')) {
                (field, value, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector clause {clause:?}: expected field=value or field!=value"
                )));
            };
            let pointer = format!("/{}", field.trim().replace('.', "/"));
            requirements.push(FieldRequirement { pointer, value: value.trim().to_string(), equal });
        }
        Ok(FieldSelector(requirements))
    }

    /// The value a `field=value` (or `field==value`) term requires, if the selector has one: the first such
    /// term, as `fields.Selector.RequiresExactMatch` finds it (the authorizer reads a list's object name
    /// from `metadata.name` this way).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        let pointer = format!("/{}", field.replace('.', "/"));
        self.0.iter().find(|requirement| requirement.equal && requirement.pointer == pointer).map(|requirement| requirement.value.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|requirement| {
            let actual = match object.pointer(&requirement.pointer) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == requirement.value) == requirement.equal
        })
    }
}

/// Which objects of a resource a list or watch selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selection {
    pub fn matches(&self, object: &Value) -> bool {
        let namespace_matches = match &self.namespace {
            None => true,
            Some(namespace) => object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default() == namespace,
        };
        namespace_matches && self.labels.matches(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selector_grammar() {
        let object = json!({"metadata": {"labels": {"app": "phone", "tier": "edge"}}});
        let matches = |text: &str| LabelSelector::parse(text).unwrap().matches(&object);
        assert!(matches(""));
        assert!(matches("app=phone"));
        assert!(matches("app==phone,tier"));
        assert!(!matches("app!=phone"));
        assert!(matches("app in (trunk, phone),tier notin (core)"));
        assert!(!matches("app notin (phone)"));
        assert!(matches("!missing"));
        assert!(!matches("!app"));
        assert!(matches("missing notin (x)"));
        assert!(LabelSelector::parse("app ~ x").is_err());
    }

    #[test]
    fn field_selector_on_metadata() {
        let object = json!({"metadata": {"name": "sep1", "namespace": "voice"}});
        assert!(FieldSelector::parse("metadata.name=sep1").unwrap().matches(&object));
        assert!(!FieldSelector::parse("metadata.name=sep2").unwrap().matches(&object));
        assert!(FieldSelector::parse("metadata.namespace!=default").unwrap().matches(&object));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn exact_match_of_a_field() {
        let name = |text: &str| FieldSelector::parse(text).unwrap().requires_exact_match("metadata.name").map(str::to_string);
        assert_eq!(name("metadata.name=a").as_deref(), Some("a"));
        assert_eq!(name("metadata.namespace=voice, metadata.name==b").as_deref(), Some("b"));
        assert_eq!(name("metadata.name!=a"), None);
        assert_eq!(name("metadata.namespace=voice"), None);
        assert_eq!(name(""), None);
    }
}
