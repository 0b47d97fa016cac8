//! How deep a YAML document nests, found in one pass over its text before any parser sees it.
//!
//! Parsers pay for depth: libyaml (under serde_yaml) keeps a possible simple key per open flow
//! collection and checks them all at every token, so 100,000 nested `[` took close to a minute
//! before serde_yaml's own recursion limit could refuse the result. This scan follows the tokens
//! that open collections (flow `[` and `{`, block sequences and mappings by their columns) as
//! libyaml reads them: inside quoted scalars, block scalars, plain scalars and comments nothing
//! opens. Where it cannot tell, it counts a level rather than miss one, so it may refuse a
//! pathological document at a few levels under the limit, never let a deeper one through to the
//! parser.

/// Where a document first nests deeper than the limit: byte offset into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sequence,
    Mapping,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Between tokens in block context.
    Block,
    /// Inside flow collections; `token_start` when the next character begins a token.
    Flow { token_start: bool },
    /// Inside a quoted scalar; `flow` when it stands in a flow collection.
    Quoted { double: bool, flow: bool },
    /// Inside a block scalar (`|` or `>`): lines indented at least `indent` (once known) are text.
    BlockScalar { parent: isize, indent: Option<usize> },
    /// Inside a plain scalar of block context that may go on over lines more indented than its
    /// collection.
    Plain,
}

struct Scan {
    limit: usize,
    /// Open block collections: the column of their entries and their kind.
    block: Vec<(usize, Kind)>,
    flow: usize,
    mode: Mode,
}

/// Checks that no collection of `text` (one YAML document) opens deeper than `limit` levels.
pub fn check_depth(text: &str, limit: usize) -> Result<(), TooDeep> {
    let mut scan = Scan { limit, block: Vec::new(), flow: 0, mode: Mode::Block };
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']).as_bytes();
        scan.line(content).map_err(|at| TooDeep { offset: start + at })?;
        start += line.len();
    }
    Ok(())
}

fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether position `p` of `line` is followed by a blank or the end of the line.
fn blank_after(line: &[u8], p: usize) -> bool {
    line.get(p + 1).is_none_or(|&b| blank(b))
}

impl Scan {
    fn top_column(&self) -> isize {
        self.block.last().map_or(-1, |&(column, _)| column as isize)
    }

    fn depth_ok(&self, at: usize) -> Result<(), usize> {
        if self.block.len() + self.flow > self.limit { Err(at) } else { Ok(()) }
    }

    /// A block collection of `kind` whose entries stand at `column`: the one open there, or a new one.
    fn block_level(&mut self, column: usize, kind: Kind, at: usize) -> Result<(), usize> {
        loop {
            match self.block.last().copied() {
                Some((c, _)) if c > column => {
                    self.block.pop();
                }
                Some((c, k)) if c == column && k == kind => return Ok(()),
                // `key:` followed by `- item` at the key's own column: a sequence inside the mapping.
                Some((c, Kind::Mapping)) if c == column => break,
                // A key at the column of a sequence that was a mapping's value: the sequence ended.
                Some((c, Kind::Sequence)) if c == column => {
                    self.block.pop();
                }
                _ => break,
            }
        }
        self.block.push((column, kind));
        self.depth_ok(at)
    }

    fn line(&mut self, line: &[u8]) -> Result<(), usize> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let is_blank = line[indent..].iter().all(|&b| blank(b));
        match self.mode {
            Mode::BlockScalar { parent, indent: known } => {
                if is_blank {
                    return Ok(());
                }
                match known {
                    Some(n) if indent >= n => return Ok(()),
                    None if indent as isize > parent && indent >= 1 => {
                        self.mode = Mode::BlockScalar { parent, indent: Some(indent) };
                        return Ok(());
                    }
                    _ => self.mode = Mode::Block,
                }
            }
            Mode::Plain => {
                if is_blank {
                    return Ok(());
                }
                if indent as isize > self.top_column() {
                    return self.plain_continuation(line, indent);
                }
                self.mode = Mode::Block;
            }
            Mode::Quoted { double, flow } => {
                let Some(end) = quoted_end(line, 0, double) else { return Ok(()) };
                return self.after_quoted(line, end, flow);
            }
            Mode::Flow { token_start } => return self.flow_from(line, 0, token_start),
            Mode::Block => {}
        }
        if is_blank || line[indent] == b'#' {
            return Ok(());
        }
        // A directive, or the document marker that opens the document; its node may follow on the line.
        if indent == 0 && line[0] == b'%' {
            return Ok(());
        }
        let start = if indent == 0 && line.starts_with(b"---") && blank_after(line, 2) { 3 } else { indent };
        self.block_nodes(line, start)
    }

    /// A line that goes on with a plain scalar: text, unless it holds a key (an error for the
    /// parser, read as structure here) or a comment, which ends the scalar.
    fn plain_continuation(&mut self, line: &[u8], indent: usize) -> Result<(), usize> {
        match plain_end(line, indent) {
            PlainEnd::Key(_) => {
                self.mode = Mode::Block;
                self.block_nodes(line, indent)
            }
            PlainEnd::Comment => {
                self.mode = Mode::Block;
                Ok(())
            }
            PlainEnd::Line => Ok(()),
        }
    }

    /// The nodes of a block-context line from `p`: indicators, keys and the values that open
    /// flow collections, quoted, block or plain scalars.
    fn block_nodes(&mut self, line: &[u8], mut p: usize) -> Result<(), usize> {
        // The column at which a collection would open if this node turns out to be a key.
        let mut node_column = None;
        loop {
            while p < line.len() && blank(line[p]) {
                p += 1;
            }
            let Some(&c) = line.get(p) else { return Ok(()) };
            let column = *node_column.get_or_insert(p);
            match c {
                b'#' => return Ok(()),
                // `- ` opens a sequence entry, `? ` an explicit key and `: ` its value, of the
                // mapping the `?` opened.
                b'-' | b'?' | b':' if blank_after(line, p) => {
                    let kind = if c == b'-' { Kind::Sequence } else { Kind::Mapping };
                    self.block_level(p, kind, p)?;
                    p += 1;
                    node_column = None;
                }
                b'[' | b'{' => {
                    self.flow += 1;
                    self.depth_ok(p)?;
                    let Some(end) = self.flow(line, p + 1, true)? else { return Ok(()) };
                    p = end;
                    // A flow collection on one line may be a key.
                    if let Some(after) = key_indicator(line, p) {
                        self.block_level(column, Kind::Mapping, p)?;
                        p = after;
                    }
                    node_column = None;
                }
                b'"' | b'\'' => {
                    let double = c == b'"';
                    match quoted_end(line, p + 1, double) {
                        Some(end) => {
                            p = end;
                            if let Some(after) = key_indicator(line, p) {
                                self.block_level(column, Kind::Mapping, p)?;
                                p = after;
                                node_column = None;
                            }
                        }
                        None => {
                            self.mode = Mode::Quoted { double, flow: false };
                            return Ok(());
                        }
                    }
                }
                b'|' | b'>' => {
                    let explicit =
                        line[p + 1..].iter().take_while(|b| !blank(**b)).find(|b| b.is_ascii_digit()).map(|b| usize::from(b - b'0'));
                    let parent = self.top_column();
                    let indent = explicit.map(|d| (parent.max(0) as usize) + d);
                    self.mode = Mode::BlockScalar { parent, indent };
                    return Ok(());
                }
                // Anchors and tags belong to the node that follows; an alias is a whole node.
                b'&' | b'!' | b'*' => {
                    while p < line.len() && !blank(line[p]) {
                        p += 1;
                    }
                    if c == b'*' {
                        if let Some(after) = key_indicator(line, p) {
                            self.block_level(column, Kind::Mapping, p)?;
                            p = after;
                        }
                        node_column = None;
                    }
                }
                _ => match plain_end(line, p) {
                    PlainEnd::Key(after) => {
                        self.block_level(column, Kind::Mapping, p)?;
                        p = after;
                        node_column = None;
                    }
                    PlainEnd::Comment => return Ok(()),
                    PlainEnd::Line => {
                        self.mode = Mode::Plain;
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Inside flow collections from `p`: the position after the bracket that closes them all, back
    /// in block context, or `None` when they go on to the next line.
    fn flow(&mut self, line: &[u8], mut p: usize, mut token_start: bool) -> Result<Option<usize>, usize> {
        while p < line.len() {
            let c = line[p];
            match c {
                b' ' | b'\t' => {}
                b'#' if p == 0 || blank(line[p - 1]) => {
                    self.mode = Mode::Flow { token_start: true };
                    return Ok(None);
                }
                b'[' | b'{' => {
                    self.flow += 1;
                    self.depth_ok(p)?;
                    token_start = true;
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    token_start = true;
                    if self.flow == 0 {
                        self.mode = Mode::Block;
                        return Ok(Some(p + 1));
                    }
                }
                b',' => token_start = true,
                b'"' | b'\'' if token_start => match quoted_end(line, p + 1, c == b'"') {
                    Some(end) => {
                        p = end;
                        continue;
                    }
                    None => {
                        self.mode = Mode::Quoted { double: c == b'"', flow: true };
                        return Ok(None);
                    }
                },
                b'&' | b'!' | b'*' if token_start => {
                    while p + 1 < line.len() && !blank(line[p + 1]) && !b",[]{}".contains(&line[p + 1]) {
                        p += 1;
                    }
                }
                // A value indicator, or the end of a plain scalar before a blank.
                b':' if token_start || blank_after(line, p) => token_start = true,
                b'?' if token_start && blank_after(line, p) => {}
                _ => token_start = false,
            }
            p += 1;
        }
        self.mode = Mode::Flow { token_start };
        Ok(None)
    }

    /// The flow collections that go on from an earlier line, and what follows them on this one.
    fn flow_from(&mut self, line: &[u8], p: usize, token_start: bool) -> Result<(), usize> {
        match self.flow(line, p, token_start)? {
            Some(end) => self.block_nodes(line, end),
            None => Ok(()),
        }
    }

    fn after_quoted(&mut self, line: &[u8], end: usize, flow: bool) -> Result<(), usize> {
        if flow {
            self.mode = Mode::Flow { token_start: true };
            self.flow_from(line, end, true)
        } else {
            self.mode = Mode::Block;
            self.block_nodes(line, end)
        }
    }
}

/// The position after the quote that closes a scalar opened before `p`, or `None` when it goes on
/// to the next line.
fn quoted_end(line: &[u8], mut p: usize, double: bool) -> Option<usize> {
    while p < line.len() {
        match (line[p], double) {
            (b'\\', true) => p += 2,
            (b'"', true) => return Some(p + 1),
            (b'\'', false) if line.get(p + 1) == Some(&b'\'') => p += 2,
            (b'\'', false) => return Some(p + 1),
            _ => p += 1,
        }
    }
    None
}

/// After a node that ended at `p`: the position after `:` when a value indicator follows.
fn key_indicator(line: &[u8], mut p: usize) -> Option<usize> {
    while p < line.len() && blank(line[p]) {
        p += 1;
    }
    (line.get(p) == Some(&b':') && blank_after(line, p)).then_some(p + 1)
}

enum PlainEnd {
    /// A key: the position after its `:`.
    Key(usize),
    /// A comment ends the scalar.
    Comment,
    /// The line ends within the scalar.
    Line,
}

/// How a plain scalar of block context that starts at `p` ends on its line.
fn plain_end(line: &[u8], mut p: usize) -> PlainEnd {
    while p < line.len() {
        match line[p] {
            b':' if blank_after(line, p) => return PlainEnd::Key(p + 1),
            b'#' if p == 0 || blank(line[p - 1]) => return PlainEnd::Comment,
            _ => p += 1,
        }
    }
    PlainEnd::Line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest nesting `text` reaches, found by lowering the limit until it is refused.
    fn depth(text: &str) -> usize {
        (0..200).find(|&limit| check_depth(text, limit).is_ok()).expect("under 200 levels")
    }

    #[test]
    fn counts_collections_of_every_form() {
        assert_eq!(depth("a: 1\n"), 1);
        assert_eq!(depth("scalar\n"), 0);
        assert_eq!(depth("a:\n  b:\n    c: 1\n"), 3);
        assert_eq!(depth("a:\n- b\n- c: 1\n"), 3);
        assert_eq!(depth("- - - x\n"), 3);
        assert_eq!(depth("- a: [1, {b: [2]}]\n"), 5);
        assert_eq!(depth("a: [[[\n  ]]]\nb: 1\n"), 4);
        assert_eq!(depth("--- [[1]]\n"), 2);
        assert_eq!(depth("? - a\n: - b\n"), 2);
        assert_eq!(depth("[a]: {b: c}\n"), 2);
        assert_eq!(depth("&x a: !!seq [*y]\n"), 2);
    }

    #[test]
    fn nothing_opens_inside_scalars_or_comments() {
        assert_eq!(depth("a: \"[[[{{\"\nb: '[[ '' [['\n"), 1);
        assert_eq!(depth("a: \"[[[\n  [[[\\\" [[\"\n"), 1);
        assert_eq!(depth("a: |\n  [[[[\n  {{{{\nb: >2\n   - - - -\n"), 1);
        assert_eq!(depth("a: b[c{d\n  [[[[ more of b\n"), 1);
        assert_eq!(depth("a: 1 # [[[[\n# {{{{\n"), 1);
        assert_eq!(depth("a: [x # [[[\n  ]\n"), 2);
        assert_eq!(depth("a: [\"]]]\", '}}}', [b]]\n"), 3);
        assert_eq!(depth("a: [b:\"c, d]\n"), 2);
    }

    #[test]
    fn text_that_hides_brackets_from_a_naive_count_is_still_counted() {
        // In flow context a quote after a blank inside a plain scalar is text, not a quote: the
        // brackets after it open collections.
        let hidden = format!("a: [b \"{}\n", "[".repeat(100));
        assert!(check_depth(&hidden, 64).is_err());
        // A quoted closer does not close.
        let closers = format!("a: {}\"]]]]\"\n", "[".repeat(70));
        assert!(check_depth(&closers, 64).is_err());
        // A plain scalar's continuation ends where a line is no more indented than its collection.
        let after_plain = format!("a: foo\n  \"\nb: {}\nc: \"\n", "[".repeat(100));
        assert!(check_depth(&after_plain, 64).is_err());
        let after_literal = format!("a: |\n      text\n  b: {}\n", "[".repeat(100));
        assert!(check_depth(&after_literal, 64).is_err());
    }

    #[test]
    fn the_offset_is_where_the_limit_is_passed() {
        let text = format!("a: 1\nb: {}", "[".repeat(10));
        assert_eq!(check_depth(&text, 5), Err(TooDeep { offset: 5 + 3 + 4 }));
    }
}
