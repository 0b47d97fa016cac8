//! Reading multi-document YAML manifests with their positions, for messages that name
//! `file:line`. serde_yaml parses the values; saphyr's marked nodes find the line of a field
//! only when a message needs one, so valid input is parsed once.
//!
//! Input is bounded before it is parsed, since `validate` runs on pull requests: a file is read up
//! to [`MAX_FILE_BYTES`], a document up to [`MAX_DOCUMENT_BYTES`] and [`MAX_DEPTH`] levels of
//! nesting (see [`nesting`]), and directories are walked without following links to directories.

mod nesting;

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::Value;

/// The deepest nesting a document may have. The deepest Callguard field is 6 levels down, and
/// Kubernetes manifests of other kinds (a Deployment's probes, say) stay under 20: 64 is far from
/// any manifest, and close enough to the root that no parser spends time on what is refused.
pub const MAX_DEPTH: usize = 64;

/// The largest document: the API server refuses a request body over 3 MiB (and etcd stores no
/// object over 1.5 MiB), so no larger object can be applied. A List is one document.
pub const MAX_DOCUMENT_BYTES: usize = 3 << 20;

/// The largest file: three times a 30,000-phone namespace written as one file (about 21 MiB, the
/// largest `callguard bench validate` measures), and a bound on what is read into memory from
/// anything that is not a regular file (`/dev/zero`, a pipe).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// One YAML document of a manifest file, or one item of a List in it.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: Arc<Path>,
    /// 1-based line of the document's first line in the file.
    pub first_line: usize,
    /// The document's own text.
    pub text: Arc<str>,
    /// Where the object stands in `text`: nowhere for a document of its own, `items[i]` (and so on
    /// down nested Lists) for an item of a List.
    pub within: Vec<PathSegment>,
    pub value: Value,
    /// The lines of `text`'s nodes, read on first need and shared by the items of a List.
    lines: Arc<OnceLock<Option<(usize, Lines)>>>,
}

/// Input that cannot be read or parsed: `validate` exits 2 on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// One step of a path into a document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Parses a dotted field path such as `spec.nodes[0].hostname`.
pub fn parse_field_path(path: &str) -> Vec<PathSegment> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segments.push(PathSegment::Key(key.to_string()));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                segments.push(PathSegment::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    segments
}

/// Every `.yaml`, `.yml` and `.json` file under the given paths, in a stable order, each once. A path
/// that is a file is taken whatever its name, and a path that is a link is followed.
///
/// Below the given paths, a link to a directory is not followed, as `kubectl apply -R` does not
/// follow one (kubernetes/kubectl#1603): what is checked is what it applies, and no link can make a
/// loop. A link to a file is read as the file. A directory reached twice (a bind mount of an
/// ancestor) is walked once.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    let mut seen = Seen::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
        if meta.is_dir() {
            walk(path, &meta, &mut files, &mut seen)?;
        } else if seen.first(&meta) {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Files and directories already taken, by device and inode.
#[derive(Default)]
struct Seen(HashSet<(u64, u64)>);

impl Seen {
    /// Whether this is the first time `meta`'s file is met.
    #[cfg(unix)]
    fn first(&mut self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.0.insert((meta.dev(), meta.ino()))
    }

    #[cfg(not(unix))]
    fn first(&mut self, _meta: &std::fs::Metadata) -> bool {
        true
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

fn walk(dir: &Path, meta: &std::fs::Metadata, files: &mut Vec<PathBuf>, seen: &mut Seen) -> Result<(), LoadError> {
    if !seen.first(meta) {
        return Ok(());
    }
    let mut entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))?.collect::<Result<_, _>>().map_err(|e| io_error(dir, &e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_name().to_str().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        let kind = entry.file_type().map_err(|e| io_error(&path, &e))?;
        if kind.is_dir() {
            let meta = entry.metadata().map_err(|e| io_error(&path, &e))?;
            walk(&path, &meta, files, seen)?;
            continue;
        }
        if !is_manifest(&path) {
            continue;
        }
        // A link is followed to what it names; one that names nothing fails when it is read.
        match std::fs::metadata(&path) {
            Ok(target) if target.is_dir() => {}
            Ok(target) if target.is_file() => {
                if seen.first(&target) {
                    files.push(path);
                }
            }
            Ok(_) => {
                return Err(LoadError {
                    file: path,
                    line: 0,
                    column: 0,
                    message: "not a regular file; name a pipe or device on the command line to read it".into(),
                });
            }
            Err(_) => files.push(path),
        }
    }
    Ok(())
}

fn io_error(path: &Path, e: &std::io::Error) -> LoadError {
    LoadError { file: path.to_path_buf(), line: 0, column: 0, message: format!("cannot read: {e}") }
}

/// Reads and parses one file into its documents.
/// Every document of every file under `paths`, and every file that could not be read or parsed.
pub fn load_paths(paths: &[PathBuf]) -> (Vec<Document>, Vec<LoadError>) {
    let files = match collect_files(paths) {
        Ok(files) => files,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(docs) => documents.extend(docs),
            Err(e) => errors.push(e),
        }
    }
    (documents, errors)
}

pub fn load_file(path: &Path) -> Result<Vec<Document>, LoadError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)).map_err(|e| io_error(path, &e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(LoadError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("larger than {} MiB: split it into several files", MAX_FILE_BYTES >> 20),
        });
    }
    parse_documents(path, &bytes)
}

/// Parses the bytes of one file into its non-empty documents.
pub fn parse_documents(path: &Path, bytes: &[u8]) -> Result<Vec<Document>, LoadError> {
    let file: Arc<Path> = Arc::from(path);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(bytes, e.valid_up_to());
        LoadError { file: path.to_path_buf(), line, column, message: "not UTF-8 text".into() }
    })?;
    let chunks: Vec<(usize, &str)> = split_documents(text).into_iter().filter(|(_, chunk)| !is_blank(chunk)).collect();
    // Documents parse independently: spread a large file over the cores.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let per_worker = chunks.len().div_ceil(workers).max(64);
    let parsed: Vec<Result<Vec<Document>, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .chunks(per_worker)
            .map(|part| scope.spawn(|| part.iter().map(|&(offset, chunk)| parse_document(path, &file, offset, chunk)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a parser thread panicked")).collect()
    });
    let mut documents = Vec::new();
    for result in parsed {
        documents.extend(result?);
    }
    Ok(documents)
}

/// Parses one document: its objects, one, or each item of a List, or none when it is empty.
fn parse_document(path: &Path, file: &Arc<Path>, offset: usize, chunk: &str) -> Result<Vec<Document>, LoadError> {
    let refuse = |at: usize, message: String| {
        let (line, column) = line_column(chunk.as_bytes(), at);
        LoadError { file: path.to_path_buf(), line: offset + line, column, message }
    };
    if chunk.len() > MAX_DOCUMENT_BYTES {
        let message = format!(
            "document larger than {} MiB ({} bytes): the API server accepts no object that large; split it",
            MAX_DOCUMENT_BYTES >> 20,
            chunk.len()
        );
        return Err(refuse(0, message));
    }
    nesting::check_depth(chunk, MAX_DEPTH)
        .map_err(|deep| refuse(deep.offset, format!("nested deeper than {MAX_DEPTH} levels; no manifest nests that deep")))?;
    let value = serde_yaml::from_str::<StrictValue>(chunk).map(|v| v.0).map_err(|e| {
        let (mut line, mut column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        // serde places a duplicate key at its mapping; saphyr's loader knows the key itself.
        if e.to_string().starts_with("duplicate key")
            && let Err(scan) = MarkedYaml::load_from_str(chunk)
        {
            (line, column) = (scan.marker().line(), scan.marker().col() + 1);
        }
        LoadError { file: path.to_path_buf(), line: offset + line, column, message: yaml_message(&e) }
    })?;
    if value.is_null() {
        return Ok(Vec::new());
    }
    let document =
        Document { file: file.clone(), first_line: offset + 1, text: Arc::from(chunk), within: Vec::new(), value, lines: Arc::default() };
    let mut documents = Vec::new();
    expand_lists(document, &mut documents);
    Ok(documents)
}

/// Whether `value` is a List, which kubectl applies item by item: a `kind` ending in `List` (`v1`
/// `List`, `PhoneList`, ...) with `items`.
fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) && value.get("items").is_some_and(Value::is_array)
}

/// The objects of a document: the document itself, or the items of a List, down nested Lists.
fn expand_lists(mut document: Document, out: &mut Vec<Document>) {
    if !is_list(&document.value) {
        out.push(document);
        return;
    }
    let Some(Value::Array(items)) = document.value.get_mut("items").map(Value::take) else { return };
    for (i, item) in items.into_iter().enumerate() {
        let mut within = document.within.clone();
        within.extend([PathSegment::Key("items".into()), PathSegment::Index(i)]);
        expand_lists(Document { within, value: item, ..document.clone() }, out);
    }
}

/// A JSON value read from YAML that refuses duplicate mapping keys, which YAML forbids and the
/// API server rejects; serde_json's own `Value` would silently keep the last one.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value with string keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// serde_yaml's message without the positions it writes into it (" at line L column C" of the
/// problem, and of its context), which count from the document's first line: the caller prints
/// the one position that counts, from the file's.
fn yaml_message(e: &serde_yaml::Error) -> String {
    static POSITION: OnceLock<regex::Regex> = OnceLock::new();
    let position = POSITION.get_or_init(|| regex::Regex::new(r" at (?:line \d+ column \d+|position \d+)").expect("valid regex"));
    position.replace_all(&e.to_string(), "").into_owned()
}

fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset - before.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Splits a YAML stream at its document markers. A line starting with `---` or `...` at column 0
/// ends a document wherever it stands (YAML 1.2 §9.1), so splitting by lines is exact. Returns each
/// document's 0-based first line and text; a `---` line stays with the document it opens.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut chunks = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 0;
    let mut byte = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let marker = is_marker(line, "---");
        let end = is_marker(line, "...");
        if marker && byte > start_byte {
            chunks.push((start_line, &text[start_byte..byte]));
            start_byte = byte;
            start_line = line_no;
        }
        byte += line.len();
        if end {
            // "..." ends the document; what follows starts a new one.
            chunks.push((start_line, &text[start_byte..byte]));
            start_byte = byte;
            start_line = line_no + 1;
        }
    }
    if byte > start_byte {
        chunks.push((start_line, &text[start_byte..byte]));
    }
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn is_blank(chunk: &str) -> bool {
    chunk.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || is_marker(l, "---") && l[3..].trim_start().starts_with('#') || l == "---" || l == "..."
    })
}

/// The line of each node of a document's text: of a mapping's keys and a sequence's items, and
/// what is below them.
#[derive(Debug)]
enum Lines {
    Mapping(Vec<(String, usize, Lines)>),
    Sequence(Vec<(usize, Lines)>),
    Scalar,
}

impl Lines {
    fn of(node: &MarkedYaml<'_>) -> Lines {
        match &node.data {
            YamlData::Mapping(map) => Lines::Mapping(
                map.iter()
                    .filter_map(|(k, v)| match &k.data {
                        YamlData::Value(Scalar::String(key)) => Some((key.to_string(), k.span.start.line(), Lines::of(v))),
                        _ => None,
                    })
                    .collect(),
            ),
            YamlData::Sequence(items) => Lines::Sequence(items.iter().map(|v| (v.span.start.line(), Lines::of(v))).collect()),
            _ => Lines::Scalar,
        }
    }
}

impl Document {
    /// A document of its own, for objects read from elsewhere than a file (the API).
    pub fn new(file: Arc<Path>, first_line: usize, text: Arc<str>, value: Value) -> Self {
        Document { file, first_line, text, within: Vec::new(), value, lines: Arc::default() }
    }

    /// The 1-based file line of the field at `path` of the object, or of its nearest ancestor that
    /// exists.
    pub fn line_of(&self, path: &[PathSegment]) -> usize {
        let root = self.lines.get_or_init(|| {
            let docs = MarkedYaml::load_from_str(&self.text).ok()?;
            docs.first().map(|node| (node.span.start.line(), Lines::of(node)))
        });
        let Some((mut line, mut node)) = root.as_ref().map(|(line, node)| (*line, node)) else {
            return self.first_line;
        };
        for segment in self.within.iter().chain(path) {
            let child = match (node, segment) {
                (Lines::Mapping(entries), PathSegment::Key(key)) => entries.iter().find(|(k, _, _)| k == key).map(|(_, l, n)| (*l, n)),
                (Lines::Sequence(items), PathSegment::Index(i)) => items.get(*i).map(|(l, n)| (*l, n)),
                _ => None,
            };
            match child {
                Some((child_line, child)) => {
                    line = child_line;
                    node = child;
                }
                None => break,
            }
        }
        self.first_line + line.saturating_sub(1)
    }

    /// `kind`, `metadata.name` and `metadata.namespace` as written.
    pub fn identity(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        let kind = self.value.get("kind").and_then(Value::as_str);
        let meta = self.value.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
        let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str);
        (kind, name, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_at_markers_with_their_lines() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: 3\n...\nd: 4\n";
        let chunks = split_documents(text);
        assert_eq!(chunks, vec![(0, "a: 1\n"), (1, "---\nb: 2\n"), (3, "--- # c\nc: 3\n...\n"), (6, "d: 4\n")]);
    }

    #[test]
    fn a_marker_needs_a_separator_after_it() {
        assert_eq!(split_documents("a: ---x\n----\n").len(), 1);
    }

    #[test]
    fn finds_the_line_of_nested_fields() {
        let docs = parse_documents(Path::new("f.yaml"), b"# head\n---\nkind: Phone\nspec:\n  list:\n    - a: 1\n    - b: 2\n      c: 3\n")
            .unwrap();
        let doc = &docs[0];
        assert_eq!(doc.first_line, 2);
        assert_eq!(doc.line_of(&parse_field_path("spec.list[1].c")), 8);
        assert_eq!(doc.line_of(&parse_field_path("spec.list[1]")), 7);
        assert_eq!(doc.line_of(&parse_field_path("spec.missing")), 4);
        assert_eq!(doc.line_of(&[]), 3);
    }

    #[test]
    fn parse_errors_carry_file_positions() {
        let err = parse_documents(Path::new("f.yaml"), b"a: 1\n---\nb: [1,\n").unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        let err = parse_documents(Path::new("f.yaml"), b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 4));
    }

    #[test]
    fn parses_field_paths() {
        assert_eq!(
            parse_field_path("spec.nodes[2].services"),
            vec![
                PathSegment::Key("spec".into()),
                PathSegment::Key("nodes".into()),
                PathSegment::Index(2),
                PathSegment::Key("services".into())
            ]
        );
    }
}
