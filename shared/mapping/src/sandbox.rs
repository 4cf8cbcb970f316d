//! The compile-time half of the template bounds: before a template reaches
//! minijinja's compiler, its source is checked and rewritten here.
//!
//! * **Size.** A template may have [`MAX_TEMPLATE_BYTES`] and each tag
//!   [`MAX_TAG_TOKENS`] tokens, counted with minijinja's (iterative)
//!   tokenizer *before* parsing: the parser and code generator recurse once
//!   per operator of a chain, and `{{ 1+1+…+1 }}` a few thousand long
//!   overflows the stack, which aborts the process.
//! * **What exists.** minijinja resolves filters, tests and functions only
//!   when a template runs, so a typo would be saved and fail every run. The
//!   parsed template is walked (minijinja's `unstable_machinery` parser:
//!   the AST sees through strings and comments, which a text scan would
//!   not) and every filter, test and called function is checked against
//!   the environment ([`crate::template`]); so are literal names passed to
//!   `map`, `select`, `reject`, `selectattr` and `rejectattr`.
//! * **What cannot be bounded.** There is no template loader, so
//!   `include`, `import`, `from` and `extends` (and `block`, which only
//!   means something with `extends`) are refused. Macros (and call blocks),
//!   `{% set %}…{% endset %}` and `{% filter %}` blocks and recursive loops
//!   are refused too: minijinja renders their bodies into a buffer of its
//!   own, outside the output cap, so a loop inside one could fill memory.
//! * **Operators.** minijinja has no hook for operators, and `~`, `+` and
//!   `*` can build huge values in one instruction (`'x' * 10**8`, a string
//!   doubled per loop step, a lazy list of 10**15 items). Each chain
//!   `a ~ b ~ c` is rewritten as a call `__crmbridge_concat(a, b, c)` (same
//!   for `+` and `*`), the bounded functions of [`crate::bounded`]. This
//!   also stops minijinja from folding constant expressions such as
//!   `'x' * 100000000` while *compiling*. The value of every `{% set %}` and
//!   `{% with %}` assignment is wrapped in `__crmbridge_store(…)`, which
//!   charges what is kept and refuses values nested too deep.
//!
//! The rewrite edits the source text at positions taken from the AST's
//! spans and the token stream, so everything else (whitespace control,
//! strings, raw blocks, line numbers) stays exactly as written.

use std::collections::BTreeSet;

use minijinja::machinery::{self, Span, Token, ast};

use crate::bounded::{ADD_FN, CONCAT_FN, MUL_FN, STORE_FN, STORE_INTO_FN};
use crate::error::ValidationErrorKind as Kind;
use crate::limits::{MAX_TAG_TOKENS, MAX_TEMPLATE_BYTES};
use crate::template;

/// One reason a template is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) kind: Kind,
    pub(crate) message: String,
}

impl Problem {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Checks a template's source and returns the source to compile (with the
/// operators and assignments rewritten), or every problem found.
pub(crate) fn prepare(source: &str) -> Result<String, Vec<Problem>> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(vec![Problem::new(
            Kind::TemplateTooLarge,
            format!(
                "the template has {} bytes; at most {MAX_TEMPLATE_BYTES} are allowed",
                source.len()
            ),
        )]);
    }
    let tokens = tokenize(source)?;
    let parsed = machinery::parse(source, "template", Default::default(), Default::default())
        .map_err(|err| vec![Problem::new(Kind::TemplateSyntax, syntax_message(&err))])?;
    let mut walker = Walker {
        tokens: &tokens,
        problems: Vec::new(),
        edits: Vec::new(),
        bound: BTreeSet::new(),
        calls: Vec::new(),
    };
    walker.stmt(&parsed);
    walker.check_calls();
    if !walker.problems.is_empty() {
        return Err(walker.problems);
    }
    apply(source, walker.edits).map_err(|problem| vec![problem])
}

/// `template error: <what> (line N)`, as compile errors always read.
pub(crate) fn syntax_message(err: &minijinja::Error) -> String {
    let mut message = err.detail().unwrap_or("invalid syntax").to_owned();
    if let Some(line) = err.line() {
        message.push_str(&format!(" (line {line})"));
    }
    format!("template error: {message}")
}

/// The tokens the rewrite needs to find; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Tilde,
    Plus,
    Mul,
    Assign,
    ParenClose,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    start: usize,
    end: usize,
    kind: TokenKind,
}

/// The template's tokens, refusing a tag with too many. A lexing error is
/// left to the parser, which reports it with its line; the tokens before it
/// were counted, so the parser cannot recurse deeper than they allow.
fn tokenize(source: &str) -> Result<Vec<Tok>, Vec<Problem>> {
    let mut tokens = Vec::new();
    let mut in_tag = 0usize;
    for item in machinery::tokenize(source, false, Default::default(), Default::default()) {
        let Ok((token, span)) = item else {
            break;
        };
        let kind = match token {
            Token::VariableStart | Token::BlockStart => {
                in_tag = 0;
                TokenKind::Other
            }
            Token::Tilde => TokenKind::Tilde,
            Token::Plus => TokenKind::Plus,
            Token::Mul => TokenKind::Mul,
            Token::Assign => TokenKind::Assign,
            Token::ParenClose => TokenKind::ParenClose,
            _ => TokenKind::Other,
        };
        if !matches!(
            token,
            Token::VariableStart
                | Token::BlockStart
                | Token::VariableEnd
                | Token::BlockEnd
                | Token::TemplateData(_)
        ) {
            in_tag += 1;
            if in_tag > MAX_TAG_TOKENS {
                return Err(vec![Problem::new(
                    Kind::TemplateTooLarge,
                    format!(
                        "a {{{{ … }}}} or {{% … %}} tag may hold at most {MAX_TAG_TOKENS} tokens (line {}); split it up with {{% set %}}",
                        span.start_line
                    ),
                )]);
            }
        }
        tokens.push(Tok {
            start: span.start_offset as usize,
            end: span.end_offset as usize,
            kind,
        });
    }
    Ok(tokens)
}

/// The namespaces an assignment target writes into, as source text:
/// `ns` for `ns.x`, `ns.a` for `ns.a.b` (dotted targets are names only).
fn namespaces_assigned(target: &ast::Expr<'_>, out: &mut Vec<String>) {
    fn path(expr: &ast::Expr<'_>) -> Option<String> {
        match expr {
            ast::Expr::Var(var) => Some(var.id.to_owned()),
            ast::Expr::GetAttr(attr) => Some(format!("{}.{}", path(&attr.expr)?, attr.name)),
            _ => None,
        }
    }
    match target {
        ast::Expr::GetAttr(attr) => out.extend(path(&attr.expr)),
        ast::Expr::List(list) => {
            for item in &list.items {
                namespaces_assigned(item, out);
            }
        }
        _ => {}
    }
}

/// An edit of the source: at `at`, remove `remove` bytes and insert `text`.
/// At one offset closing parentheses go first, then a replaced operator,
/// then openings in walk order (outer calls before inner ones).
#[derive(Debug)]
struct Edit {
    at: usize,
    rank: u8,
    seq: usize,
    remove: usize,
    text: String,
}

const CLOSE: u8 = 0;
const REPLACE: u8 = 1;
const OPEN: u8 = 2;

fn apply(source: &str, mut edits: Vec<Edit>) -> Result<String, Problem> {
    edits.sort_by_key(|edit| (edit.at, edit.rank, edit.seq));
    let mut out = String::with_capacity(source.len() + edits.len() * 8);
    let mut pos = 0;
    for edit in edits {
        let kept = source
            .get(pos..edit.at)
            .filter(|_| edit.at >= pos)
            .ok_or_else(cannot_analyse)?;
        out.push_str(kept);
        out.push_str(&edit.text);
        pos = edit.at + edit.remove;
    }
    out.push_str(source.get(pos..).ok_or_else(cannot_analyse)?);
    Ok(out)
}

fn cannot_analyse() -> Problem {
    // Spans and tokens disagree: refuse rather than compile something else.
    Problem::new(
        Kind::TemplateSyntax,
        "template error: this template cannot be analysed; simplify its expressions",
    )
}

struct Walker<'t, 's> {
    tokens: &'t [Tok],
    problems: Vec<Problem>,
    edits: Vec<Edit>,
    /// Names assigned anywhere (set, for, with): calling one is not an
    /// unknown function (`{% set r = range %}{{ r(3) }}`).
    bound: BTreeSet<&'s str>,
    /// Functions called by name, with their line.
    calls: Vec<(&'s str, u16)>,
}

fn line(span: Span) -> u16 {
    span.start_line
}

impl<'s> Walker<'_, 's> {
    fn problem(&mut self, kind: Kind, message: String) {
        self.problems.push(Problem::new(kind, message));
    }

    fn unsupported(&mut self, span: Span, what: &str, why: &str) {
        self.problem(
            Kind::UnsupportedTag,
            format!(
                "{what} is not supported in field templates (line {}): {why}",
                line(span)
            ),
        );
    }

    fn edit(&mut self, at: usize, rank: u8, remove: usize, text: String) {
        let seq = self.edits.len();
        self.edits.push(Edit {
            at,
            rank,
            seq,
            remove,
            text,
        });
    }

    /// The first token at or after `offset`.
    fn token_from(&self, offset: usize) -> Option<(usize, &Tok)> {
        let index = self.tokens.partition_point(|tok| tok.start < offset);
        self.tokens.get(index).map(|tok| (index, tok))
    }

    fn stmts(&mut self, stmts: &[ast::Stmt<'s>]) {
        for stmt in stmts {
            self.stmt(stmt);
        }
    }

    fn stmt(&mut self, stmt: &ast::Stmt<'s>) {
        const NO_LOADER: &str = "there is no template loader, so a field template cannot include, import or extend another";
        const BUFFERED: &str = "its output is buffered outside the output limits";
        match stmt {
            ast::Stmt::Template(node) => self.stmts(&node.children),
            ast::Stmt::EmitExpr(node) => self.expr(&node.expr),
            ast::Stmt::EmitRaw(_) => {}
            ast::Stmt::ForLoop(node) => {
                if node.recursive {
                    self.unsupported(node.span(), "a recursive loop", BUFFERED);
                }
                self.bind(&node.target);
                self.expr(&node.iter);
                if let Some(filter) = &node.filter_expr {
                    self.expr(filter);
                }
                self.stmts(&node.body);
                self.stmts(&node.else_body);
            }
            ast::Stmt::IfCond(node) => {
                self.expr(&node.expr);
                self.stmts(&node.true_body);
                self.stmts(&node.false_body);
            }
            ast::Stmt::WithBlock(node) => {
                for (target, value) in &node.assignments {
                    self.bind(target);
                    self.store(target, value);
                }
                self.stmts(&node.body);
            }
            ast::Stmt::Set(node) => {
                self.bind(&node.target);
                self.store(&node.target, &node.expr);
            }
            ast::Stmt::SetBlock(node) => self.unsupported(
                node.span(),
                "{% set %}…{% endset %}",
                "its output is buffered outside the output limits; use {% set x = … %}",
            ),
            ast::Stmt::AutoEscape(node) => {
                self.expr(&node.enabled);
                self.stmts(&node.body);
            }
            ast::Stmt::FilterBlock(node) => self.unsupported(
                node.span(),
                "{% filter %}",
                "its output is buffered outside the output limits; apply the filter to an expression",
            ),
            ast::Stmt::Block(node) => self.unsupported(
                node.span(),
                "{% block %}",
                "there is no template inheritance",
            ),
            ast::Stmt::Include(node) => self.unsupported(node.span(), "{% include %}", NO_LOADER),
            ast::Stmt::Import(node) => self.unsupported(node.span(), "{% import %}", NO_LOADER),
            ast::Stmt::FromImport(node) => self.unsupported(node.span(), "{% from %}", NO_LOADER),
            ast::Stmt::Extends(node) => self.unsupported(node.span(), "{% extends %}", NO_LOADER),
            ast::Stmt::Macro(node) => self.unsupported(node.span(), "{% macro %}", BUFFERED),
            ast::Stmt::CallBlock(node) => self.unsupported(node.span(), "{% call %}", BUFFERED),
            ast::Stmt::Do(node) => self.call(&node.call),
            // Statements of minijinja features this crate does not enable
            // (loop controls); refused rather than left unchecked.
            #[allow(unreachable_patterns)]
            _ => self.problem(
                Kind::UnsupportedTag,
                "this statement is not supported in field templates".to_owned(),
            ),
        }
    }

    fn bind(&mut self, target: &ast::Expr<'s>) {
        match target {
            ast::Expr::Var(var) => {
                self.bound.insert(var.id);
            }
            ast::Expr::List(list) => {
                for item in &list.items {
                    self.bind(item);
                }
            }
            other => self.expr(other),
        }
    }

    /// `target = value` becomes `target = __crmbridge_store((value))`; the
    /// inner parentheses keep a tuple (`set a, b = 1, 2`) one argument.
    /// Assigning into namespaces (`ns.x = value`) becomes
    /// `ns.x = __crmbridge_store_into(ns, (value))`, which also refuses a
    /// value holding `ns`.
    fn store(&mut self, target: &ast::Expr<'s>, value: &ast::Expr<'s>) {
        let mut namespaces = Vec::new();
        namespaces_assigned(target, &mut namespaces);
        let open = if namespaces.is_empty() {
            format!("{STORE_FN}((")
        } else {
            format!("{STORE_INTO_FN}({}, (", namespaces.join(", "))
        };
        let assign = self
            .token_from(target.span().end_offset as usize)
            .and_then(|(index, _)| {
                self.tokens[index..]
                    .iter()
                    .find(|tok| tok.kind == TokenKind::Assign)
                    .copied()
            });
        match assign {
            Some(assign) if assign.end <= value.span().end_offset as usize => {
                self.edit(assign.end, OPEN, 0, open);
                self.edit(value.span().end_offset as usize, CLOSE, 0, "))".to_owned());
            }
            _ => self.problems.push(cannot_analyse()),
        }
        self.expr(value);
    }

    fn expr(&mut self, expr: &ast::Expr<'s>) {
        match expr {
            ast::Expr::Var(_) | ast::Expr::Const(_) => {}
            ast::Expr::Slice(node) => {
                self.expr(&node.expr);
                for part in [&node.start, &node.stop, &node.step].into_iter().flatten() {
                    self.expr(part);
                }
            }
            ast::Expr::UnaryOp(node) => self.expr(&node.expr),
            ast::Expr::BinOp(node) => match node.op {
                ast::BinOpKind::Add | ast::BinOpKind::Mul | ast::BinOpKind::Concat => {
                    self.chain(node)
                }
                _ => {
                    self.expr(&node.left);
                    self.expr(&node.right);
                }
            },
            ast::Expr::Compare(node) => {
                self.expr(&node.expr);
                for op in &node.ops {
                    self.expr(&op.expr);
                }
            }
            ast::Expr::IfExpr(node) => {
                self.expr(&node.test_expr);
                self.expr(&node.true_expr);
                if let Some(otherwise) = &node.false_expr {
                    self.expr(otherwise);
                }
            }
            ast::Expr::Filter(node) => {
                self.check_filter(node.name, node.span());
                self.check_named_arguments(node.name, &node.args, node.span());
                if let Some(input) = &node.expr {
                    self.expr(input);
                }
                self.args(&node.args);
            }
            ast::Expr::Test(node) => {
                self.check_test(node.name, node.span());
                self.expr(&node.expr);
                self.args(&node.args);
            }
            ast::Expr::GetAttr(node) => self.expr(&node.expr),
            ast::Expr::GetItem(node) => {
                self.expr(&node.expr);
                self.expr(&node.subscript_expr);
            }
            ast::Expr::Call(node) => self.call(node),
            ast::Expr::List(node) => {
                for item in &node.items {
                    self.expr(item);
                }
            }
            ast::Expr::Map(node) => {
                for item in node.keys.iter().chain(&node.values) {
                    self.expr(item);
                }
            }
        }
    }

    fn args(&mut self, args: &[ast::CallArg<'s>]) {
        for arg in args {
            match arg {
                ast::CallArg::Pos(expr)
                | ast::CallArg::Kwarg(_, expr)
                | ast::CallArg::PosSplat(expr)
                | ast::CallArg::KwargSplat(expr) => self.expr(expr),
            }
        }
    }

    fn call(&mut self, call: &ast::Spanned<ast::Call<'s>>) {
        match &call.expr {
            ast::Expr::Var(var) => self.calls.push((var.id, line(call.span()))),
            ast::Expr::GetAttr(attr) => {
                // The loop object's two methods are the only methods there
                // are: minijinja has none on strings, lists or maps (that
                // is its Python-compatibility add-on, not enabled).
                let loop_method = matches!(&attr.expr, ast::Expr::Var(var) if var.id == "loop")
                    && matches!(attr.name, "cycle" | "changed");
                if !loop_method {
                    self.problem(
                        Kind::UnknownFunction,
                        format!(
                            "'.{}()' calls a method (line {}): templates have no methods; use a filter, e.g. `| upper`",
                            attr.name,
                            line(call.span())
                        ),
                    );
                }
                self.expr(&attr.expr);
            }
            other => {
                self.problem(
                    Kind::UnknownFunction,
                    format!(
                        "only functions can be called (line {}): {}",
                        line(call.span()),
                        template::FUNCTIONS.join(", ")
                    ),
                );
                self.expr(other);
            }
        }
        self.args(&call.args);
    }

    fn check_calls(&mut self) {
        for (name, at) in std::mem::take(&mut self.calls) {
            if template::is_function(name) || self.bound.contains(name) {
                continue;
            }
            let message = match name {
                "loop" => format!(
                    "loop() only works in recursive loops, which field templates do not support (line {at})"
                ),
                "caller" | "super" => format!(
                    "{name}() needs macros or template inheritance, which field templates do not support (line {at})"
                ),
                _ => format!(
                    "unknown function '{name}' (line {at}); the functions are {}",
                    template::FUNCTIONS.join(", ")
                ),
            };
            self.problem(Kind::UnknownFunction, message);
        }
    }

    fn check_filter(&mut self, name: &str, span: Span) {
        if !template::is_filter(name) {
            self.problem(
                Kind::UnknownFilter,
                format!("unknown filter '{name}' (line {})", line(span)),
            );
        }
    }

    fn check_test(&mut self, name: &str, span: Span) {
        if !template::is_test(name) {
            self.problem(
                Kind::UnknownTest,
                format!("unknown test '{name}' (line {})", line(span)),
            );
        }
    }

    /// `map('upper')` names a filter, `select('odd')` a test, and so on:
    /// checked when the name is a literal.
    fn check_named_arguments(&mut self, filter: &str, args: &[ast::CallArg<'s>], span: Span) {
        let literal = |index: usize| {
            args.iter()
                .filter_map(|arg| match arg {
                    ast::CallArg::Pos(expr) => Some(expr),
                    _ => None,
                })
                .nth(index)
                .and_then(|expr| match expr {
                    ast::Expr::Const(constant) => constant.value.as_str().map(str::to_owned),
                    _ => None,
                })
        };
        let by_attribute = args
            .iter()
            .any(|arg| matches!(arg, ast::CallArg::Kwarg("attribute", _)));
        match filter {
            "map" if !by_attribute => {
                if let Some(name) = literal(0) {
                    self.check_filter(&name, span);
                }
            }
            "select" | "reject" => {
                if let Some(name) = literal(0) {
                    self.check_test(&name, span);
                }
            }
            "selectattr" | "rejectattr" => {
                if let Some(name) = literal(1) {
                    self.check_test(&name, span);
                }
            }
            _ => {}
        }
    }

    /// Rewrites `a ~ b ~ c` (a left-leaning chain of one operator, without
    /// parentheses of its own) as one call `f(a , b , c)`: one call per
    /// chain keeps long concatenations from nesting calls, which the parser
    /// allows only 150 levels of.
    fn chain(&mut self, node: &ast::Spanned<ast::BinOp<'s>>) {
        let (function, operator) = match node.op {
            ast::BinOpKind::Add => (ADD_FN, TokenKind::Plus),
            ast::BinOpKind::Mul => (MUL_FN, TokenKind::Mul),
            _ => (CONCAT_FN, TokenKind::Tilde),
        };
        let same_op = |op: &ast::BinOpKind| {
            matches!(
                (op, &node.op),
                (ast::BinOpKind::Add, ast::BinOpKind::Add)
                    | (ast::BinOpKind::Mul, ast::BinOpKind::Mul)
                    | (ast::BinOpKind::Concat, ast::BinOpKind::Concat)
            )
        };
        let mut rights = Vec::new();
        let mut current = node;
        let first = loop {
            rights.push(&current.right);
            match &current.left {
                // A left operand starting where its parent starts has no
                // parentheses of its own: `(a ~ b) ~ c` starts at `(`.
                ast::Expr::BinOp(left)
                    if same_op(&left.op)
                        && left.span().start_offset == current.span().start_offset =>
                {
                    current = left;
                }
                other => break other,
            }
        };
        rights.reverse();
        let span = node.span();
        self.edit(span.start_offset as usize, OPEN, 0, format!("{function}("));
        let mut previous_end = first.span().end_offset as usize;
        for right in &rights {
            self.replace_operator(previous_end, operator);
            previous_end = right.span().end_offset as usize;
        }
        self.edit(span.end_offset as usize, CLOSE, 0, ")".to_owned());
        self.expr(first);
        for right in rights {
            self.expr(right);
        }
    }

    /// Replaces the operator following an operand (after the closing
    /// parentheses of the operand, if any) with a comma.
    fn replace_operator(&mut self, after: usize, operator: TokenKind) {
        let found = self.token_from(after).and_then(|(index, _)| {
            self.tokens[index..]
                .iter()
                .find(|tok| tok.kind != TokenKind::ParenClose)
                .copied()
        });
        match found {
            Some(tok) if tok.kind == operator => {
                self.edit(tok.start, REPLACE, tok.end - tok.start, ",".to_owned());
            }
            _ => self.problems.push(cannot_analyse()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::{Environment, UndefinedBehavior, Value, context};

    fn ctx() -> Value {
        context! {
            a => "x", b => "y", c => "z", d => "w", n => 3, f => 1.5,
            l => vec![1, 2], items => vec![context! { n => "p" }, context! { n => "q" }],
        }
    }

    /// The rewritten template through our environment.
    fn ours(source: &str) -> Result<String, String> {
        let rewritten = prepare(source).map_err(|problems| format!("refused: {problems:?}"))?;
        let mut env = crate::template::environment();
        env.add_template_owned("t", rewritten)
            .map_err(|err| format!("compile: {err}"))?;
        let template = env.get_template("t").map_err(|err| err.to_string())?;
        crate::bounded::render_field(&template, &ctx()).map_err(|err| format!("{:?}", err.kind()))
    }

    /// The original template through a plain minijinja environment.
    fn theirs(source: &str) -> Result<String, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.render_str(source, ctx())
            .map_err(|err| format!("{:?}", err.kind()))
    }

    #[test]
    fn rewriting_keeps_what_templates_mean() {
        for source in [
            "{{ 1 + 2 * 3 }}",
            "{{ (1 + 2) * 3 }}",
            "{{ 2 * 3 ** 2 }}",
            "{{ -2 * 3 }}",
            "{{ 7 // 2 * 2 + 7 % 2 }}",
            "{{ 1 + 2 + 3 - 4 + 5 }}",
            "{{ 2 * 3 / 4 * 5 }}",
            "{{ f * 2 }}{{ 10 * 0.1 + 1 }}{{ n * f }}",
            "{{ 2 ** 64 * 2 }}{{ 2 ** 126 + 2 ** 126 }}",
            "{{ 'ab' * 3 }}{{ 3 * 'ab' }}{{ 'ab' * 0 }}",
            "{{ [1, 2] * 2 }}{{ 2 * [1] }}{{ l * n }}",
            "{{ [1] + [2, 3] }}{{ l + l }}{{ (l + [3])[2] }}",
            "{{ 'a' + 'b' }}{{ a + b }}",
            "{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ l }}",
            "{{ a ~ b }}{{ a~b~c }}{{ (a ~ b) ~ (c ~ d) }}{{ a ~ (b ~ c) }}",
            "{{ a ~ b | upper ~ c }}{{ a ~ b if c else d ~ a }}",
            "{{ n + 1 if n else 2 * 3 }}{{ [a ~ b, n * 2] }}{{ {'k': a ~ b} }}",
            "{{ (1) + (2) }}{{ ((1 + 2)) * ((3)) }}",
            "{{ a ~ 'x' is string }}{{ not a ~ b }}{{ a ~ b == 'xy' }}",
            "{{ (a == b) ~ c }}{{ a ~ (b == c) }}{{ a[0] ~ a[1:] }}",
            "{{ items | map(attribute='n') | join(',') ~ '!' }}",
            "{{- a ~ b -}}  {%- if a ~ b == 'xy' %}yes{% endif %}",
            "{% for i in [1, 2] + [3] %}{{ i * 2 }}{% endfor %}",
            "{% set x = a ~ b %}{{ x }}{% set y, z = 1, 2 %}{{ y + z }}{% set w=1+2 %}{{w}}",
            "{% with p = a ~ b, q = 2 * 3 %}{{ p }}{{ q }}{% endwith %}",
            "{% set ns = namespace(t=0) %}{% for i in range(5) %}{% set ns.t = ns.t + i %}{% endfor %}{{ ns.t }}",
            "{{ 'a' * 2 ~ 'b' * 2 }}{{ 'x' ~ missing | default('d') }}",
            "{{ 'x' ~ (1 if false) }}",
            "{{ missing ~ 'x' }}",
            "{{ 1 + 'a' }}",
            "{{ 'a' * 'b' }}",
            "{{ [1] * 'b' }}",
            "{{ none + 1 }}",
            "{{ 'a' * -1 }}",
            "{% raw %}{{ a ~ b }}{% endraw %}{{ a ~ b }}{# a ~ b #}",
            "{{ 'a ~ b' ~ \"+\" ~ '*' }}",
            "{{ a\n ~ b\n ~ c }}\n{{ n\n * 2 }}",
            "{{ l | sum + 1 }}{{ (l | first) * 2 }}{{ l[0] + l[1] * 2 }}",
            "{% if n * 2 > 5 and a ~ b != '' %}big{% else %}small{% endif %}",
            "{% for i in range(3) if i * 2 > 1 %}{{ loop.index * 10 }}{% endfor %}",
        ] {
            assert_eq!(ours(source), theirs(source), "{source}");
        }
    }

    #[test]
    fn filters_and_tests_are_checked_outside_strings_and_comments() {
        for source in [
            "{{ 'a | nosuch' ~ \"b is nosuch\" }}",
            "{# {{ x | nosuch }} #}{{ 1 }}",
            "{% raw %}{{ x | nosuch }}{% if x is nosuch %}{% endraw %}",
            "text | nosuch {{ 1 }} is nosuch",
        ] {
            assert!(prepare(source).is_ok(), "{source}");
        }
        for (source, kind) in [
            ("{{ x | nosuch }}", Kind::UnknownFilter),
            ("{{ x|nosuch(1) }}", Kind::UnknownFilter),
            ("{{ x | map('nosuch') }}", Kind::UnknownFilter),
            ("{% if x is nosuch %}{% endif %}", Kind::UnknownTest),
            ("{{ x | select('nosuch') }}", Kind::UnknownTest),
            ("{{ x | selectattr('a', 'nosuch') }}", Kind::UnknownTest),
            ("{{ nosuch(1) }}", Kind::UnknownFunction),
            ("{{ debug() }}", Kind::UnknownFunction),
            ("{{ x.upper() }}", Kind::UnknownFunction),
            ("{{ batch }}{{ [1] | batch(2) }}", Kind::UnknownFilter),
        ] {
            let problems = prepare(source).unwrap_err();
            assert_eq!(problems[0].kind, kind, "{source}: {problems:?}");
        }
        // Literal names that exist, and names bound in the template.
        for source in [
            "{{ [1] | map('string') | select('odd') | list }}",
            "{{ [{'a': 1}] | selectattr('a', 'odd') | map(attribute='nosuch') | list }}",
            "{% set r = range %}{{ r(3) | list }}",
            "{% for i in [1, 2] %}{{ loop.cycle('a', 'b') }}{{ loop.changed(i) }}{% endfor %}",
        ] {
            assert!(prepare(source).is_ok(), "{source}: {:?}", prepare(source));
        }
    }

    #[test]
    fn the_raw_environment_stops_recursion_at_its_limit() {
        // Macros are refused when compiling; were one to get through, the
        // recursion limit stops it before the stack overflows (this test
        // thread has the default 2 MiB stack).
        let mut env = crate::template::environment();
        env.add_template(
            "t",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        )
        .unwrap();
        let template = env.get_template("t").unwrap();
        let err = crate::bounded::render_field(&template, &ctx()).unwrap_err();
        assert_eq!(
            crate::bounded::limit_of(&err),
            Some(crate::limits::RenderLimit::Recursion),
            "{err:?}"
        );
    }
}
