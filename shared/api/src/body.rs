//! Admin request bodies: the nesting limit, the parsers, and errors that
//! name the field and the expected type but never the value sent.
//!
//! Everything here is synchronous and CPU-bound; the handlers run it on
//! tokio's blocking pool (see `parse_off_thread` in the crate root) so a
//! hostile body cannot stall the async workers that answer webhooks.

use crmbridge_engine::EngineError;
use serde::de::DeserializeOwned;

/// The deepest nesting (objects, arrays, YAML mappings and sequences) an
/// admin body may have. The deepest legitimate document (an automation with
/// a filter tree and nested step fields) is well under 20 levels. serde_yaml
/// (through libyaml) spends time quadratic in the depth on deeply nested
/// input, so the limit is checked by a linear pre-scan before any parser
/// runs.
pub const MAX_BODY_DEPTH: usize = 64;

fn too_deep() -> EngineError {
    EngineError::bad_request(
        "body",
        format!("nested deeper than {MAX_BODY_DEPTH} levels"),
    )
}

/// Refuses a body nested deeper than [`MAX_BODY_DEPTH`], by a linear scan
/// that parses nothing (cheap enough to run before anything else).
pub(crate) fn check_depth(body: &[u8], yaml: bool) -> Result<(), EngineError> {
    let too = if yaml {
        // Not UTF-8 is refused by the parser with its own message.
        std::str::from_utf8(body).is_ok_and(|text| yaml_depth_exceeds(text, MAX_BODY_DEPTH))
    } else {
        json_depth_exceeds(body, MAX_BODY_DEPTH)
    };
    if too { Err(too_deep()) } else { Ok(()) }
}

/// Parses a JSON body, naming the exact path of the first problem.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, EngineError> {
    if json_depth_exceeds(body, MAX_BODY_DEPTH) {
        return Err(too_deep());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        // Malformed JSON is the body's fault wherever the parser stopped;
        // a well-formed body names the value that was wrong.
        let malformed = matches!(
            err.inner().classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        field_error(&path, malformed, &err.into_inner().to_string())
    })
}

/// Parses a YAML body (an automation written by hand), like [`parse_json`].
pub(crate) fn parse_yaml<T: DeserializeOwned>(body: &[u8]) -> Result<T, EngineError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| EngineError::bad_request("body", "YAML must be UTF-8"))?;
    if yaml_depth_exceeds(text, MAX_BODY_DEPTH) {
        return Err(too_deep());
    }
    // serde_yaml hands events to the deserialiser before it reports a
    // syntax error further on, so malformed YAML could surface as a type
    // error of the first field. A first pass that only reads the document
    // makes malformed YAML the body's fault, like malformed JSON.
    if let Err(err) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        return Err(field_error(".", true, &err.to_string()));
    }
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|err| {
        let path = err.path().to_string();
        field_error(&path, false, &err.into_inner().to_string())
    })
}

/// The 400 for a body that did not deserialise: the field is the path of
/// the first problem, the message serde's without the value it quoted.
fn field_error(path: &str, malformed: bool, message: &str) -> EngineError {
    let message = redact_values(message);
    // serde reports a missing field at its parent: name the field itself.
    let missing = message
        .find("missing field `")
        .map(|at| &message[at + "missing field `".len()..])
        .and_then(|rest| rest.split('`').next());
    let field = match (malformed, missing) {
        (true, _) => "body".to_owned(),
        (false, Some(name)) if path == "." => name.to_owned(),
        (false, Some(name)) => format!("{path}.{name}"),
        (false, None) if path == "." => "body".to_owned(),
        (false, None) => path.to_owned(),
    };
    EngineError::bad_request(field, message)
}

/// serde quotes the offending value in its messages (`invalid type: string
/// "…", expected a map`, ``invalid value: integer `7` ``, ``unknown variant
/// `…` ``). A client may have put a secret exactly there (credentials of
/// the wrong shape), and these messages go into the answer and the log, so
/// the value is replaced by its kind: `invalid type: a string, expected a
/// map`. Field names (``unknown field `x` ``, ``missing field `x` ``) stay:
/// they are the client's keys or ours, and they say what to fix.
///
/// Everything between the marker and the last `, expected …` is dropped, so
/// a value that itself contains `, expected ` cannot smuggle text through.
pub(crate) fn redact_values(message: &str) -> String {
    const MARKERS: [&str; 3] = ["invalid type: ", "invalid value: ", "unknown variant "];
    let Some((at, marker)) = MARKERS
        .iter()
        .filter_map(|marker| message.find(marker).map(|at| (at, *marker)))
        .min_by_key(|(at, _)| *at)
    else {
        return message.to_owned();
    };
    let prefix = &message[..at];
    let rest = &message[at + marker.len()..];
    let tail = rest
        .rfind(", expected ")
        .or_else(|| rest.rfind(", there are no variants"))
        .map_or("", |i| &rest[i..]);
    if marker == "unknown variant " {
        return format!("{prefix}unknown variant{tail}");
    }
    format!("{prefix}{marker}{}{tail}", unexpected_kind(rest))
}

/// What serde's `Unexpected` was, without its value.
fn unexpected_kind(rest: &str) -> &'static str {
    const WITH_VALUE: [(&str, &str); 5] = [
        ("string ", "a string"),
        ("integer ", "an integer"),
        ("floating point ", "a floating point number"),
        ("boolean ", "a boolean"),
        ("character ", "a character"),
    ];
    // Kinds that carry no value, as serde and serde_json spell them.
    const BARE: [(&str, &str); 13] = [
        ("null", "null"),
        ("unit value", "null"),
        ("map", "a map"),
        ("sequence", "a sequence"),
        ("byte array", "a byte array"),
        ("Option value", "an optional value"),
        ("newtype struct", "a newtype struct"),
        ("enum", "an enum"),
        ("unit variant", "a unit variant"),
        ("newtype variant", "a newtype variant"),
        ("tuple variant", "a tuple variant"),
        ("struct variant", "a struct variant"),
        ("tagged value", "a tagged value"),
    ];
    for (start, kind) in WITH_VALUE {
        if rest.starts_with(start) {
            return kind;
        }
    }
    for (name, kind) in BARE {
        if rest
            .strip_prefix(name)
            .is_some_and(|after| after.is_empty() || after.starts_with(','))
        {
            return kind;
        }
    }
    "a value of another type"
}

/// Whether JSON nests objects and arrays deeper than `limit`. Exact for
/// valid JSON (brackets inside strings do not count); for invalid JSON the
/// parser fails anyway.
pub(crate) fn json_depth_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether a YAML document nests mappings and sequences deeper than
/// `limit`, found in one linear pass.
///
/// The scan follows libyaml's scanner (the tokenizer under serde_yaml)
/// closely enough to agree with it on where quoted, plain and block scalars
/// and comments begin and end: a quote inside a plain scalar (`don't`) or a
/// bracket inside a block scalar is text, not structure. Getting that wrong
/// in the permissive direction would let real nesting hide inside what the
/// scan took for a string, so where the scan and libyaml could disagree the
/// scan counts more, never less: flow collections (`[`, `{`), a flow
/// sequence entry that is a `key: value` pair (libyaml makes it a mapping),
/// block collections by the indentation libyaml rolls, and block sequences
/// written at their mapping's indentation. Input libyaml rejects may be
/// counted either way: libyaml stops at the first error.
pub(crate) fn yaml_depth_exceeds(text: &str, limit: usize) -> bool {
    let mut scan = YamlScan::new(text.as_bytes(), limit);
    scan.run();
    scan.exceeded
}

/// One open block collection: the column libyaml's scanner rolled its
/// indentation to, and whether a block sequence written at the same
/// indentation (an "indentless" sequence, a mapping value) is open in it.
struct BlockLevel {
    column: usize,
    mapping: bool,
    indentless: bool,
}

/// One open flow collection, and whether the current entry of a flow
/// sequence is a single `key: value` pair (one more level).
///
/// A pair is only known at its `:`, after its key was scanned; the key's
/// own nesting is then one level deeper than counted. So each level keeps
/// the deepest depth reached in its current entry (`entry_max`) and in its
/// earlier entries (`level_max`), and a late pair checks `entry_max + 1`.
struct FlowLevel {
    sequence: bool,
    pair: bool,
    entry_max: usize,
    level_max: usize,
}

/// A possible simple key (`key: value`) at flow level 0: where it starts,
/// and the deepest depth reached inside it (a flow collection used as a
/// key is one level deeper once its mapping opens).
#[derive(Clone, Copy)]
struct SimpleKey {
    column: usize,
    line: usize,
    index: usize,
    max: usize,
}

struct YamlScan<'a> {
    text: &'a [u8],
    /// Byte offset of the next character.
    at: usize,
    /// libyaml's mark: character index, line, column (in characters).
    index: usize,
    line: usize,
    column: usize,
    block: Vec<BlockLevel>,
    flow: Vec<FlowLevel>,
    /// Levels open: block levels, indentless sequences, flow levels and
    /// flow pairs. Kept as a running count so each check is O(1).
    depth: usize,
    key: Option<SimpleKey>,
    key_allowed: bool,
    limit: usize,
    exceeded: bool,
}

impl<'a> YamlScan<'a> {
    fn new(text: &'a [u8], limit: usize) -> Self {
        Self {
            text,
            at: 0,
            index: 0,
            line: 0,
            column: 0,
            block: Vec::new(),
            flow: Vec::new(),
            depth: 0,
            key: None,
            key_allowed: true,
            limit,
            exceeded: false,
        }
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.text.get(self.at + ahead).copied().unwrap_or(0)
    }

    fn at_end(&self) -> bool {
        self.at >= self.text.len()
    }

    /// The length in bytes of a line break at `ahead` (CR LF, CR, LF, NEL,
    /// LS, PS — libyaml's breaks), 0 if none.
    fn break_len(&self, ahead: usize) -> usize {
        match (self.peek(ahead), self.peek(ahead + 1), self.peek(ahead + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_blank(&self, ahead: usize) -> bool {
        matches!(self.peek(ahead), b' ' | b'\t')
    }

    /// Blank, break or end of input.
    fn is_blankz(&self, ahead: usize) -> bool {
        self.is_blank(ahead) || self.break_len(ahead) > 0 || self.at + ahead >= self.text.len()
    }

    fn is_breakz(&self) -> bool {
        self.break_len(0) > 0 || self.at_end()
    }

    /// Steps over one character (all its UTF-8 bytes) on the current line.
    fn skip(&mut self) {
        if self.at_end() {
            return;
        }
        self.at += 1;
        while self.at < self.text.len() && self.text[self.at] & 0xC0 == 0x80 {
            self.at += 1;
        }
        self.index += 1;
        self.column += 1;
    }

    fn skip_line_break(&mut self) {
        let len = self.break_len(0);
        if len == 0 {
            return;
        }
        self.index += if len == 2 && self.peek(0) == b'\r' {
            2
        } else {
            1
        };
        self.at += len;
        self.line += 1;
        self.column = 0;
    }

    fn document_indicator(&self) -> bool {
        self.column == 0
            && ((self.peek(0) == b'-' && self.peek(1) == b'-' && self.peek(2) == b'-')
                || (self.peek(0) == b'.' && self.peek(1) == b'.' && self.peek(2) == b'.'))
            && self.is_blankz(3)
    }

    /// libyaml's current block indentation (-1 outside any block collection).
    fn indent(&self) -> isize {
        self.block.last().map_or(-1, |level| level.column as isize)
    }

    fn deeper(&mut self, by: usize) {
        self.depth += by;
        self.reached(self.depth);
    }

    /// Records a depth reached in the innermost open flow entry, or in the
    /// simple key being scanned at flow level 0.
    fn reached(&mut self, depth: usize) {
        if depth > self.limit {
            self.exceeded = true;
        }
        if let Some(level) = self.flow.last_mut() {
            level.entry_max = level.entry_max.max(depth);
        } else if let Some(key) = self.key.as_mut() {
            key.max = key.max.max(depth);
        }
    }

    fn shallower(&mut self, by: usize) {
        self.depth = self.depth.saturating_sub(by);
    }

    fn pop_block(&mut self) {
        if let Some(level) = self.block.pop() {
            self.shallower(1 + usize::from(level.indentless));
        }
    }

    /// libyaml's unroll_indent: block collections deeper than the column end.
    fn unroll(&mut self, column: isize) {
        while self
            .block
            .last()
            .is_some_and(|level| level.column as isize > column)
        {
            self.pop_block();
        }
    }

    /// A block mapping key at `column` (libyaml's roll_indent for a key);
    /// `key_max` is the deepest depth reached inside the key, if any.
    fn roll_mapping(&mut self, column: usize, key_max: usize) {
        match self.block.last_mut() {
            Some(level) if level.column >= column => {
                // Another key of the mapping at this indentation: an
                // indentless sequence that was its value has ended.
                if level.indentless {
                    level.indentless = false;
                    self.shallower(1);
                }
            }
            _ => {
                self.block.push(BlockLevel {
                    column,
                    mapping: true,
                    indentless: false,
                });
                self.deeper(1);
                if key_max + 1 > self.limit {
                    self.exceeded = true;
                }
            }
        }
    }

    /// A block sequence entry (`- `) at `column`.
    fn block_entry(&mut self, column: usize) {
        match self.block.last_mut() {
            Some(level) if level.column >= column => {
                // At the mapping's own indentation, `- ` starts a sequence
                // that is the value of the last key: one more level.
                if level.mapping && !level.indentless {
                    level.indentless = true;
                    self.deeper(1);
                }
            }
            _ => {
                self.block.push(BlockLevel {
                    column,
                    mapping: false,
                    indentless: false,
                });
                self.deeper(1);
            }
        }
    }

    fn save_key(&mut self) {
        if self.flow.is_empty() && self.key_allowed {
            self.key = Some(SimpleKey {
                column: self.column,
                line: self.line,
                index: self.index,
                max: self.depth,
            });
        }
    }

    fn remove_key(&mut self) {
        if self.flow.is_empty() {
            self.key = None;
        }
    }

    /// A `key: value` pair (or `? key`) directly in a flow sequence is a
    /// one-pair mapping: one more level until the entry ends.
    fn flow_pair(&mut self) {
        if let Some(level) = self.flow.last_mut()
            && level.sequence
            && !level.pair
        {
            level.pair = true;
            // Everything in the key so far is one level deeper too.
            level.entry_max += 1;
            let retroactive = level.entry_max;
            self.deeper(1);
            self.reached(retroactive);
        }
    }

    /// A `,`: the entry (and any pair) ends.
    fn end_flow_entry(&mut self) {
        let pair = self.flow.last().is_some_and(|level| level.pair);
        if pair {
            self.shallower(1);
        }
        let depth = self.depth;
        if let Some(level) = self.flow.last_mut() {
            level.pair = false;
            level.level_max = level.level_max.max(level.entry_max);
            level.entry_max = depth;
        }
    }

    /// A `]` or `}`: the deepest point inside is reported to the parent
    /// entry (or the simple key), where a late pair may still deepen it.
    fn close_flow(&mut self) {
        let Some(level) = self.flow.pop() else {
            return;
        };
        self.shallower(1 + usize::from(level.pair));
        self.reached(level.level_max.max(level.entry_max));
    }

    /// libyaml's scan_to_next_token: spaces, comments and line breaks.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.text[self.at..].starts_with(&[0xEF, 0xBB, 0xBF]) {
                self.at += 3;
            }
            while self.peek(0) == b' '
                || ((!self.flow.is_empty() || !self.key_allowed) && self.peek(0) == b'\t')
            {
                self.skip();
            }
            if self.peek(0) == b'#' {
                while !self.is_breakz() {
                    self.skip();
                }
            }
            if self.break_len(0) == 0 {
                return;
            }
            self.skip_line_break();
            if self.flow.is_empty() {
                self.key_allowed = true;
            }
        }
    }

    fn run(&mut self) {
        while !self.exceeded {
            self.skip_to_next_token();
            if self.at_end() {
                return;
            }
            // libyaml forgets a possible simple key once it is on an earlier
            // line or more than 1024 characters back.
            if let Some(key) = self.key
                && (key.line < self.line || key.index + 1024 < self.index)
            {
                self.key = None;
            }
            if self.flow.is_empty() {
                self.unroll(self.column as isize);
            }
            let at_block = self.flow.is_empty();
            match self.peek(0) {
                b'%' if self.column == 0 => {
                    while !self.is_breakz() {
                        self.skip();
                    }
                }
                b'-' | b'.' if self.document_indicator() => {
                    self.unroll(-1);
                    while self.flow.pop().is_some() {}
                    self.depth = 0;
                    self.key = None;
                    self.key_allowed = false;
                    for _ in 0..3 {
                        self.skip();
                    }
                }
                open @ (b'[' | b'{') => {
                    self.save_key();
                    self.flow.push(FlowLevel {
                        sequence: open == b'[',
                        pair: false,
                        entry_max: 0,
                        level_max: 0,
                    });
                    self.deeper(1);
                    self.key_allowed = true;
                    self.skip();
                }
                b']' | b'}' => {
                    self.close_flow();
                    self.key_allowed = false;
                    self.skip();
                }
                b',' => {
                    self.end_flow_entry();
                    self.key_allowed = true;
                    self.skip();
                }
                b'-' if self.is_blankz(1) => {
                    if at_block {
                        self.block_entry(self.column);
                    }
                    self.remove_key();
                    self.key_allowed = true;
                    self.skip();
                }
                b'?' if !at_block || self.is_blankz(1) => {
                    if at_block {
                        self.roll_mapping(self.column, 0);
                    } else {
                        self.flow_pair();
                    }
                    self.remove_key();
                    self.key_allowed = at_block;
                    self.skip();
                }
                b':' if !at_block || self.is_blankz(1) => {
                    if at_block {
                        match self.key.take() {
                            Some(key) => {
                                self.roll_mapping(key.column, key.max);
                                self.key_allowed = false;
                            }
                            None => {
                                self.roll_mapping(self.column, 0);
                                self.key_allowed = true;
                            }
                        }
                    } else {
                        self.flow_pair();
                        self.key_allowed = false;
                    }
                    self.skip();
                }
                b'*' | b'&' => {
                    self.save_key();
                    self.skip();
                    while self.peek(0).is_ascii_alphanumeric()
                        || matches!(self.peek(0), b'_' | b'-')
                    {
                        self.skip();
                    }
                    self.key_allowed = false;
                }
                b'!' => {
                    self.save_key();
                    self.tag();
                    self.key_allowed = false;
                }
                b'|' | b'>' if at_block => {
                    self.remove_key();
                    self.block_scalar();
                    self.key_allowed = true;
                }
                b'\'' => {
                    self.save_key();
                    self.single_quoted();
                    self.key_allowed = false;
                }
                b'"' => {
                    self.save_key();
                    self.double_quoted();
                    self.key_allowed = false;
                }
                _ => {
                    // A plain scalar, or a character libyaml refuses (it
                    // stops there, so reading it as plain text is harmless).
                    self.save_key();
                    self.key_allowed = self.plain_scalar();
                }
            }
        }
    }

    fn tag(&mut self) {
        self.skip();
        if self.peek(0) == b'<' {
            // A verbatim tag may hold `,`, `[`, `]` and quotes up to its `>`.
            while !self.is_blankz(0) && self.peek(0) != b'>' {
                self.skip();
            }
        }
        // In a flow collection a `,` also ends the tag.
        while !self.is_blankz(0) && (self.flow.is_empty() || self.peek(0) != b',') {
            self.skip();
        }
    }

    fn single_quoted(&mut self) {
        self.skip();
        loop {
            if self.at_end() || self.document_indicator() {
                return;
            }
            match self.peek(0) {
                b'\'' if self.peek(1) == b'\'' => {
                    self.skip();
                    self.skip();
                }
                b'\'' => {
                    self.skip();
                    return;
                }
                _ if self.break_len(0) > 0 => self.skip_line_break(),
                _ => self.skip(),
            }
        }
    }

    fn double_quoted(&mut self) {
        self.skip();
        loop {
            if self.at_end() || self.document_indicator() {
                return;
            }
            match self.peek(0) {
                b'\\' => {
                    self.skip();
                    if self.break_len(0) > 0 {
                        self.skip_line_break();
                    } else {
                        self.skip();
                    }
                }
                b'"' => {
                    self.skip();
                    return;
                }
                _ if self.break_len(0) > 0 => self.skip_line_break(),
                _ => self.skip(),
            }
        }
    }

    /// libyaml's scan_plain_scalar. Returns whether the scalar ended after
    /// a line break (then a simple key may start the next token).
    fn plain_scalar(&mut self) -> bool {
        let indent = self.indent() + 1;
        let in_flow = !self.flow.is_empty();
        let mut after_break = false;
        loop {
            if self.document_indicator() || self.peek(0) == b'#' {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.peek(0);
                if in_flow
                    && c == b':'
                    && matches!(self.peek(1), b',' | b'?' | b'[' | b']' | b'{' | b'}')
                {
                    // libyaml: "found unexpected ':'", an error.
                    return after_break;
                }
                if (c == b':' && self.is_blankz(1))
                    || (in_flow && matches!(c, b',' | b'[' | b']' | b'{' | b'}'))
                {
                    break;
                }
                self.skip();
                after_break = false;
            }
            if !(self.is_blank(0) || self.break_len(0) > 0) {
                break;
            }
            while self.is_blank(0) || self.break_len(0) > 0 {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line_break();
                    after_break = true;
                }
            }
            if !in_flow && (self.column as isize) < indent {
                break;
            }
        }
        after_break
    }

    /// libyaml's scan_block_scalar: the header, then every line indented
    /// at least as far as the content is text.
    fn block_scalar(&mut self) {
        let parent = self.indent();
        self.skip();
        let mut increment = 0isize;
        for _ in 0..2 {
            match self.peek(0) {
                b'+' | b'-' => self.skip(),
                digit @ b'1'..=b'9' => {
                    increment = isize::from(digit - b'0');
                    self.skip();
                }
                _ => break,
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.peek(0) == b'#' {
            while !self.is_breakz() {
                self.skip();
            }
        }
        if !self.is_breakz() {
            // libyaml: "did not find expected comment or line break".
            return;
        }
        self.skip_line_break();
        let mut indent = match increment {
            0 => 0,
            n if parent >= 0 => parent + n,
            n => n,
        };
        if !self.block_scalar_breaks(&mut indent, parent) {
            return;
        }
        while self.column as isize == indent && !self.at_end() {
            while !self.is_breakz() {
                self.skip();
            }
            if self.at_end() {
                return;
            }
            self.skip_line_break();
            if !self.block_scalar_breaks(&mut indent, parent) {
                return;
            }
        }
    }

    /// libyaml's scan_block_scalar_breaks: empty lines, and the content's
    /// indentation when it is not given. False where libyaml fails.
    fn block_scalar_breaks(&mut self, indent: &mut isize, parent: isize) -> bool {
        let mut max_indent = 0isize;
        loop {
            while (*indent == 0 || (self.column as isize) < *indent) && self.peek(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column as isize);
            if (*indent == 0 || (self.column as isize) < *indent) && self.peek(0) == b'\t' {
                return false;
            }
            if self.break_len(0) == 0 {
                break;
            }
            self.skip_line_break();
        }
        if *indent == 0 {
            *indent = max_indent.max(parent + 1).max(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The depth of a parsed YAML value: what serde sees.
    fn value_depth(value: &serde_yaml::Value) -> usize {
        match value {
            serde_yaml::Value::Sequence(items) => {
                1 + items.iter().map(value_depth).max().unwrap_or(0)
            }
            serde_yaml::Value::Mapping(map) => {
                1 + map
                    .iter()
                    .map(|(k, v)| value_depth(k).max(value_depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            serde_yaml::Value::Tagged(tagged) => value_depth(&tagged.value),
            _ => 0,
        }
    }

    /// The smallest limit the scan accepts the text under.
    fn scanned_depth(text: &str) -> usize {
        (0..200)
            .find(|limit| !yaml_depth_exceeds(text, *limit))
            .unwrap()
    }

    /// Documents where a naive scan (quotes anywhere, brackets anywhere,
    /// indentation of every line) would count too little or too much.
    const TRICKY: &[&str] = &[
        "a: 1",
        "a: {b: [1, 2, {c: d}]}",
        "- - - - x",
        "a:\n  b:\n    c:\n      d: 1\n",
        "a:\n- b:\n  - c:\n    - d\n",
        "a:\n- 1\n- 2\nb: 3\n",
        "name: don't [stop\nnext: [[[[1]]]]\n",
        "name: x 'y\n  more 'text\nb: [[[[[[1]]]]]]\n",
        "text: |\n  it's [ a \"test\n  {{ x }}\nafter: [[[[1]]]]\n",
        "text: >-\n    deep\n      deeper [[[\n  \nnext: {a: {b: {c: 1}}}\n",
        "- |\n  a '\n- [[[1]]]\n",
        "k: !!str \"a #\" \nz: [[[[1]]]]\n",
        "k: !<tag:x,y'z> v\nz: [[[1]]]\n",
        "k: &anchor [[1]]\nz: *anchor\n",
        "k: \"multi\n  line ' [ \"\nz: [[[1]]]\n",
        "k: 'it''s [' \nz: [[1]]\n",
        "# a comment 'with a quote\nz: [[[1]]]\n",
        "k: v # it's a comment\nz: [[[1]]]\n",
        "[a: [b: [c: d]]]",
        "[[a, b]: c]",
        "{\"a\": {\"b\": [1, {\"c\": [2]}]}}",
        "? [a, [b]]\n: [[c]]\n",
        "--- |\n  text [[[ '\n---\nz: [[[1]]]\n",
        "a:\r\n  b:\r\n    - [1]\r\n",
        "top:\n  - name: x\n    fields:\n      a: '{{ event.data.phone | phone }}'\n      b: [1, 2]\n",
    ];

    #[test]
    fn the_scan_never_counts_less_than_the_parser_builds() {
        for text in TRICKY {
            let real = serde_yaml::Deserializer::from_str(text)
                .map(|doc| {
                    let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                        .unwrap_or_else(|err| panic!("{text:?}: {err}"));
                    value_depth(&value)
                })
                .max()
                .unwrap();
            let scanned = scanned_depth(text);
            assert!(
                scanned >= real,
                "{text:?}: the scan counted {scanned}, the document nests {real}"
            );
            // And it does not refuse ordinary documents for phantom depth.
            assert!(scanned <= real + 2, "{text:?}: {scanned} for {real}");
        }
    }

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Valid YAML with the pieces a scan can misread: quotes and brackets
    /// inside plain scalars, comments and block scalars; indentless
    /// sequences, compact `- - x`, flow pairs, complex keys, deeper
    /// indentation steps. Returns the text after a `key:` or `-` indicator.
    fn value(rng: &mut Rng, depth: usize, indent: usize, after_dash: bool) -> String {
        const PLAIN: &[&str] = &[
            "a", "x y", "don't", "it's [", "p{q", "r]s", "t#u", "v'w\"", "k:v", "-x", "a - b",
        ];
        const COMMENTS: &[&str] = &["", "", " # it's a [comment", " # \"{", " #'"];
        let comment = rng.pick(COMMENTS);
        let step = rng.below(3);
        let choice = if depth == 0 {
            rng.below(3)
        } else {
            rng.below(8)
        };
        match choice {
            0 => format!(" {}{comment}", rng.pick(PLAIN)),
            1 => format!(" {}{comment}", quoted(rng)),
            2 => {
                let pad = " ".repeat(indent + 1 + step);
                format!(" |\n{pad}it's [ \"text\n{pad}  # not a comment {{\n")
            }
            3 | 4 => format!(" {}{comment}", flow(rng, depth - 1, indent)),
            5 => format!("\n{}", block_map(rng, depth - 1, indent + 1 + step)),
            6 if !after_dash => {
                // A sequence as a mapping value, at the key's indentation or deeper.
                format!("\n{}", block_seq(rng, depth - 1, indent + step))
            }
            6 => format!("\n{}", block_seq(rng, depth - 1, indent + 1 + step)),
            _ if after_dash => {
                // Compact: `- - x` or `- k: v`, the nested block on this line.
                let nested = if rng.below(2) == 0 {
                    block_seq(rng, depth - 1, indent + 2)
                } else {
                    block_map(rng, depth - 1, indent + 2)
                };
                format!(" {}", &nested[indent + 2..])
            }
            _ => format!(" {}", rng.pick(PLAIN)),
        }
    }

    fn quoted(rng: &mut Rng) -> &'static str {
        rng.pick(&["'it''s [ {'", "\"a \\\" [ # '\"", "'#x'", "\"]}\""])
    }

    fn flow(rng: &mut Rng, depth: usize, indent: usize) -> String {
        const FLOW_PLAIN: &[&str] = &["a", "x y", "don't", "t#u", "v'w"];
        let scalar = |rng: &mut Rng| {
            if rng.below(3) == 0 {
                quoted(rng).to_owned()
            } else {
                rng.pick(FLOW_PLAIN).to_owned()
            }
        };
        let node = |rng: &mut Rng| {
            if depth == 0 {
                scalar(rng)
            } else {
                flow(rng, depth - 1, indent)
            }
        };
        let sequence = rng.below(2) == 0;
        let mut items = Vec::new();
        for i in 0..1 + rng.below(3) {
            let item = if rng.below(3) == 0 {
                scalar(rng)
            } else {
                node(rng)
            };
            // In a sequence, `key: value` is a one-pair mapping.
            items.push(if !sequence {
                format!("k{i}: {item}")
            } else if rng.below(3) == 0 {
                format!("{}: {item}", scalar(rng))
            } else {
                item
            });
        }
        let separator = if rng.below(4) == 0 {
            format!(",\n{}", " ".repeat(indent + 1))
        } else {
            ", ".to_owned()
        };
        if sequence {
            format!("[{}]", items.join(&separator))
        } else {
            format!("{{{}}}", items.join(&separator))
        }
    }

    fn block_map(rng: &mut Rng, depth: usize, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = String::new();
        for i in 0..1 + rng.below(3) {
            if i > 0 && rng.below(5) == 0 {
                out.push_str(&format!("{}# it's [ a comment\n", " ".repeat(rng.below(6))));
            }
            let line = if rng.below(6) == 0 {
                format!("{pad}? k{i}\n{pad}:{}", value(rng, depth, indent, false))
            } else {
                let key = if rng.below(4) == 0 {
                    format!("'k{i} #'")
                } else {
                    format!("k{i}")
                };
                format!("{pad}{key}:{}", value(rng, depth, indent, false))
            };
            out.push_str(&line);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    fn block_seq(rng: &mut Rng, depth: usize, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = String::new();
        for _ in 0..1 + rng.below(3) {
            out.push_str(&format!("{pad}-{}", value(rng, depth, indent, true)));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn the_scan_never_undercounts_generated_documents() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut parsed, mut deepest) = (0, 0);
        for _ in 0..20_000 {
            let depth = 1 + rng.below(6);
            let text = if rng.below(2) == 0 {
                block_map(&mut rng, depth, 0)
            } else {
                block_seq(&mut rng, depth, 0)
            };
            let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
                continue;
            };
            parsed += 1;
            let (real, scanned) = (value_depth(&value), scanned_depth(&text));
            deepest = deepest.max(real);
            assert!(scanned >= real, "{text}\nscanned {scanned} < real {real}");
            assert!(scanned <= real + 2, "{text}\nscanned {scanned} for {real}");
        }
        // The generator writes valid YAML, deep enough to mean something.
        assert!(parsed > 19_000, "only {parsed} documents parsed");
        assert!(deepest >= 8, "deepest {deepest}");
    }

    #[test]
    fn every_recipe_is_well_under_the_limit() {
        let recipes = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes"));
        let mut seen = 0;
        for entry in std::fs::read_dir(recipes).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let depth = scanned_depth(&text);
                assert!(depth < MAX_BODY_DEPTH / 2, "{}: {depth}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn hostile_nesting_is_refused_by_the_scan() {
        let n = 40_000;
        let cases = [
            format!("{}{}", "[".repeat(n), "]".repeat(n)),
            format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
            format!("{}x", "- ".repeat(n)),
            format!("- a:\n    {}{}", "[".repeat(n), "]".repeat(n)),
            // Real nesting after brackets that are text.
            format!("a: x{}\nb: {}", "[".repeat(n), "[".repeat(n)),
            (0..200)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>(),
            format!("{}1{}", "[a: ".repeat(n), "]".repeat(n)),
            // Real nesting after text a naive scan would read as a string.
            format!("a: don't\nb: {}{}", "[".repeat(n), "]".repeat(n)),
            format!("t: |\n  '\nb: {}{}", "[".repeat(n), "]".repeat(n)),
        ];
        for text in &cases {
            assert!(
                yaml_depth_exceeds(text, MAX_BODY_DEPTH),
                "not refused: {:?}…",
                &text[..text.len().min(60)]
            );
        }
        // Brackets in plain, quoted and block scalars are text, not nesting.
        for text in [
            format!("a: x{}", "[".repeat(n)),
            format!("a: '{}'", "[".repeat(n)),
            format!("a: \"{}\"", "{".repeat(n)),
            format!("a: |\n  {}\nb: 1\n", "[".repeat(n)),
            format!("# {}\na: 1\n", "[".repeat(n)),
        ] {
            assert!(
                !yaml_depth_exceeds(&text, MAX_BODY_DEPTH),
                "{:?}…",
                &text[..20]
            );
        }
        let exactly = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(!yaml_depth_exceeds(&exactly, 64));
        assert!(yaml_depth_exceeds(&format!("[{exactly}]"), 64));
    }

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(json_depth_exceeds(deep.as_bytes(), 64));
        assert!(!json_depth_exceeds(&deep.as_bytes()[1..deep.len() - 1], 64));
        let quoted = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert!(!json_depth_exceeds(quoted.as_bytes(), 64));
        let err = parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert_eq!(err.to_body()["error"]["field"], "body");
        assert_eq!(
            err.to_body()["error"]["message"],
            "nested deeper than 64 levels"
        );
    }

    #[test]
    fn values_are_redacted_from_serde_messages() {
        let cases = [
            (
                r#"invalid type: string "WRONGSHAPE-SECRET-3141", expected a map at line 1 column 60"#,
                "invalid type: a string, expected a map at line 1 column 60",
            ),
            (
                "invalid type: integer `31415926`, expected a map",
                "invalid type: an integer, expected a map",
            ),
            (
                "invalid type: floating point `3.14`, expected a string",
                "invalid type: a floating point number, expected a string",
            ),
            (
                "invalid value: boolean `true`, expected a string",
                "invalid value: a boolean, expected a string",
            ),
            (
                "invalid type: map, expected a string",
                "invalid type: a map, expected a string",
            ),
            (
                "invalid type: null, expected a map",
                "invalid type: null, expected a map",
            ),
            (
                "unknown variant `SECRET-ROLE`, expected one of `owner`, `admin`, `viewer`",
                "unknown variant, expected one of `owner`, `admin`, `viewer`",
            ),
            (
                "unknown variant `SECRET`, there are no variants",
                "unknown variant, there are no variants",
            ),
            (
                r#"steps: invalid type: string "x, expected y", expected a sequence at line 2 column 8"#,
                "steps: invalid type: a string, expected a sequence at line 2 column 8",
            ),
            (
                "unknown field `colour`, expected one of `app`, `name`",
                "unknown field `colour`, expected one of `app`, `name`",
            ),
            ("missing field `name`", "missing field `name`"),
            (
                "expected value at line 1 column 9",
                "expected value at line 1 column 9",
            ),
        ];
        for (message, want) in cases {
            assert_eq!(redact_values(message), want, "{message}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        credentials: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
    }

    #[test]
    fn parse_errors_name_the_field_and_not_the_value() {
        let secret = "HUNTER2-SECRET";
        let json_cases = [
            (format!(r#"{{"credentials": "{secret}"}}"#), "credentials"),
            (
                format!(r#"{{"credentials": {{"token": {{"deep": "{secret}"}}}}}}"#),
                "credentials.token",
            ),
            (r#"{"credentials": 31415926}"#.to_owned(), "credentials"),
            (
                format!(r#"{{"credentials": {{}}, "mode": "{secret}"}}"#),
                "mode",
            ),
        ];
        for (body, field) in &json_cases {
            let body_json = parse_json::<Sample>(body.as_bytes()).unwrap_err().to_body();
            let text = body_json.to_string();
            assert_eq!(body_json["error"]["field"], *field, "{text}");
            assert!(
                !text.contains(secret) && !text.contains("31415926"),
                "{text}"
            );
        }
        let malformed = parse_yaml::<Sample>(b"credentials: [unclosed").unwrap_err();
        assert_eq!(malformed.to_body()["error"]["field"], "body");
        let yaml_cases = [
            (format!("credentials: {secret}\n"), "credentials"),
            (
                format!("credentials:\n  token: [\"{secret}\"]\n"),
                "credentials.token",
            ),
            (format!("credentials: {{}}\nmode: {secret}\n"), "mode"),
        ];
        for (body, field) in &yaml_cases {
            let body_json = parse_yaml::<Sample>(body.as_bytes()).unwrap_err().to_body();
            let text = body_json.to_string();
            assert_eq!(body_json["error"]["field"], *field, "{text}");
            assert!(!text.contains(secret), "{text}");
        }
    }
}
