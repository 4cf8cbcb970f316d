//! The runtime half of the template bounds (see [`crate::limits`]): the
//! bounded replacements of minijinja's amplifying operators and of
//! `range()`, the wrapper that charges every filter's input and output to
//! the field's work budget, and the capped output writer.
//!
//! minijinja has fuel (a cap on instructions) but no cap on what one
//! instruction costs: `'x' * 100000000` allocates 100 MB in one step,
//! `s ~ s` doubles a string per step, `[0] * 10**15` is a lazy list that
//! `| join` or `in` then walk for ever, and there is no hook for operators.
//! So [`crate::sandbox`] compiles `a ~ b`, `a + b` and `a * b` into calls of
//! [`CONCAT_FN`], [`ADD_FN`] and [`MUL_FN`] here, and wraps the value of
//! every `{% set %}` / `{% with %}` assignment in [`STORE_FN`]. Every
//! value a template builds is then bounded by [`MAX_VALUE_BYTES`] /
//! [`MAX_LIST_ITEMS`] per operation and by [`WORK_BYTES_PER_FIELD`] in
//! total, and nothing it stores can nest deeper than [`MAX_VALUE_DEPTH`].
//!
//! The budget of the field being rendered lives in thread-locals (like the
//! conversion notes in [`crate::template`]): rendering is synchronous and
//! minijinja gives functions no per-render state of their own. They are
//! `Cell`s, never borrowed across a call back into minijinja, because a
//! filter may run inside another (`map('upper')`).

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::OnceLock;

use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Expression, State, Template, UndefinedBehavior};

use crate::limits::{
    MAX_FIELD_OUTPUT_BYTES, MAX_LIST_ITEMS, MAX_VALUE_BYTES, MAX_VALUE_DEPTH, RenderLimit,
    WORK_BYTES_PER_FIELD,
};

/// What `a ~ b ~ …` compiles to.
pub(crate) const CONCAT_FN: &str = "__crmbridge_concat";
/// What `a + b + …` compiles to.
pub(crate) const ADD_FN: &str = "__crmbridge_add";
/// What `a * b * …` compiles to.
pub(crate) const MUL_FN: &str = "__crmbridge_mul";
/// What the value of `{% set x = … %}` and `{% with x = … %}` is wrapped in.
pub(crate) const STORE_FN: &str = "__crmbridge_store";
/// What the value of `{% set ns.x = … %}` is wrapped in (with `ns`).
pub(crate) const STORE_INTO_FN: &str = "__crmbridge_store_into";

/// What one value counts for besides its text: roughly the size of a
/// minijinja `Value`, so that lists of small items are not free.
const SLOT: usize = 24;

thread_local! {
    /// Work bytes the field being rendered may still spend.
    static WORK_LEFT: Cell<usize> = const { Cell::new(WORK_BYTES_PER_FIELD) };
    /// The first limit the field being rendered hit; the error minijinja
    /// finally reports may wrap ours, this says which bound it was.
    static LIMIT_HIT: Cell<Option<RenderLimit>> = const { Cell::new(None) };
}

/// Starts the budget of one field.
pub(crate) fn begin_field() {
    WORK_LEFT.set(WORK_BYTES_PER_FIELD);
    LIMIT_HIT.set(None);
}

/// Remembers the first bound hit during this field, for [`limit_of`].
fn note_limit(limit: RenderLimit) {
    if LIMIT_HIT.get().is_none() {
        LIMIT_HIT.set(Some(limit));
    }
}

/// The error for a bound that was hit.
pub(crate) fn exceeded(limit: RenderLimit) -> Error {
    note_limit(limit);
    Error::new(ErrorKind::InvalidOperation, limit.description())
}

/// Which bound (if any) made this render fail.
pub(crate) fn limit_of(err: &Error) -> Option<RenderLimit> {
    if err.kind() == ErrorKind::OutOfFuel {
        return Some(RenderLimit::Fuel);
    }
    if let Some(limit) = LIMIT_HIT.get() {
        return Some(limit);
    }
    // minijinja's own message; the only way to tell this bound apart.
    (err.detail() == Some("recursion limit exceeded")).then_some(RenderLimit::Recursion)
}

fn charge(bytes: usize) -> Result<(), Error> {
    let left = WORK_LEFT.get();
    if bytes > left {
        WORK_LEFT.set(0);
        return Err(exceeded(RenderLimit::Work));
    }
    WORK_LEFT.set(left - bytes);
    Ok(())
}

/// Charges what walking or copying `value` costs: its text plus a slot per
/// item, deeply. Fails on values nested deeper than [`MAX_VALUE_DEPTH`].
fn charge_value(value: &Value) -> Result<(), Error> {
    let size = measure(value, WORK_LEFT.get(), RenderLimit::Work).map_err(exceeded)?;
    charge(size)
}

/// The deep size of `value` (see [`charge_value`]), or `over` as soon as it
/// passes `cap`. Stopping early matters: a list holding itself twice, a
/// few levels deep, is small in memory but exponentially long to walk.
fn measure(value: &Value, cap: usize, over: RenderLimit) -> Result<usize, RenderLimit> {
    let mut walk = Walk {
        total: 0,
        cap,
        over,
        forbidden: &[],
    };
    walk.value(value, 0)?;
    Ok(walk.total)
}

/// A bounded walk through a value: its size, its depth, and whether it
/// holds one of the `forbidden` objects.
struct Walk<'a> {
    total: usize,
    cap: usize,
    over: RenderLimit,
    forbidden: &'a [Value],
}

impl Walk<'_> {
    fn add(&mut self, bytes: usize) -> Result<(), RenderLimit> {
        self.total = self.total.saturating_add(bytes);
        if self.total > self.cap {
            Err(self.over)
        } else {
            Ok(())
        }
    }

    fn value(&mut self, value: &Value, depth: usize) -> Result<(), RenderLimit> {
        if depth > MAX_VALUE_DEPTH {
            return Err(RenderLimit::Nesting);
        }
        // Holding the namespace it is stored into would make a cycle:
        // infinitely nested, and printing it would never end.
        if self.forbidden.iter().any(|forbidden| {
            value.as_object().is_some() && minijinja::tests::is_sameas(value, forbidden)
        }) {
            return Err(RenderLimit::Nesting);
        }
        match value.kind() {
            ValueKind::String | ValueKind::Bytes => {
                self.add(SLOT + value.as_bytes().map_or(0, <[u8]>::len))
            }
            ValueKind::Seq | ValueKind::Iterable => {
                self.add(SLOT)?;
                if let Ok(items) = value.try_iter() {
                    for item in items {
                        self.value(&item, depth + 1)?;
                    }
                }
                Ok(())
            }
            ValueKind::Map => {
                self.add(SLOT)?;
                if let Ok(keys) = value.try_iter() {
                    for key in keys {
                        self.value(&key, depth + 1)?;
                        let item = value.get_item(&key).unwrap_or_default();
                        self.value(&item, depth + 1)?;
                    }
                }
                Ok(())
            }
            _ => self.add(SLOT),
        }
    }
}

/// A string that refuses to grow past a cap (formatting into it fails).
struct CappedString {
    text: String,
    cap: usize,
    overflowed: bool,
}

impl CappedString {
    fn new(cap: usize) -> Self {
        Self {
            text: String::new(),
            cap,
            overflowed: false,
        }
    }
}

impl fmt::Write for CappedString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.text.len().saturating_add(s.len()) > self.cap {
            self.overflowed = true;
            return Err(fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// The operation minijinja itself would do, for the cases that cannot
/// amplify (numbers, errors): evaluating it in a plain environment keeps
/// the exact semantics and error messages without copying minijinja's
/// private arithmetic.
fn reference_op(which: RefOp, left: &Value, right: &Value) -> Result<Value, Error> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    static ADD: OnceLock<Option<Expression<'static, 'static>>> = OnceLock::new();
    static MUL: OnceLock<Option<Expression<'static, 'static>>> = OnceLock::new();
    static CONCAT: OnceLock<Option<Expression<'static, 'static>>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let mut env = Environment::empty();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env
    });
    let (cell, source) = match which {
        RefOp::Add => (&ADD, "l + r"),
        RefOp::Mul => (&MUL, "l * r"),
        RefOp::Concat => (&CONCAT, "l ~ r"),
    };
    // Constant sources: compiling them cannot fail, but no panic either.
    let expression = cell
        .get_or_init(|| env.compile_expression(source).ok())
        .as_ref()
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "operator unavailable"))?;
    expression.eval(Value::from_iter([
        ("l", left.clone()),
        ("r", right.clone()),
    ]))
}

#[derive(Clone, Copy)]
enum RefOp {
    Add,
    Mul,
    Concat,
}

fn is_sequence(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// Collects the items of `value`, at most [`MAX_LIST_ITEMS`] in `out`.
fn collect_items(value: &Value, out: &mut Vec<Value>) -> Result<(), Error> {
    for item in value.try_iter()? {
        if out.len() >= MAX_LIST_ITEMS {
            return Err(exceeded(RenderLimit::ListLength));
        }
        out.push(item);
    }
    Ok(())
}

/// A list built by `+` or `*`, charged deeply: its items are shared, not
/// copied, so `[big] * 10000` is cheap to build but 10000 × `big` to walk
/// (compare, search, print); what it costs to walk is what it costs.
fn finish_list(items: Vec<Value>) -> Result<Value, Error> {
    let list = Value::from(items);
    charge_value(&list)?;
    Ok(list)
}

/// `a ~ b ~ …`: the values' text joined, at most [`MAX_VALUE_BYTES`].
pub(crate) fn concat(values: Rest<Value>) -> Result<Value, Error> {
    let mut out = CappedString::new(MAX_VALUE_BYTES);
    for value in values.iter() {
        if value.is_undefined() {
            // minijinja refuses a missing value here but lets the silent
            // undefined of `x if c` (no else) through; ask it which this is.
            reference_op(RefOp::Concat, &Value::from(""), value)?;
            continue;
        }
        if write!(out, "{value}").is_err() {
            return Err(if out.overflowed {
                exceeded(RenderLimit::ValueSize)
            } else {
                Error::new(ErrorKind::InvalidOperation, "value cannot be formatted")
            });
        }
    }
    charge(out.text.len())?;
    Ok(Value::from(out.text))
}

/// `a + b + …`, left to right.
pub(crate) fn add(values: Rest<Value>) -> Result<Value, Error> {
    fold(values, add_pair)
}

/// `a * b * …`, left to right.
pub(crate) fn mul(values: Rest<Value>) -> Result<Value, Error> {
    fold(values, mul_pair)
}

fn fold(
    values: Rest<Value>,
    op: fn(&Value, &Value) -> Result<Value, Error>,
) -> Result<Value, Error> {
    let mut values = values.0.into_iter();
    let Some(mut acc) = values.next() else {
        return Err(Error::new(
            ErrorKind::MissingArgument,
            "an operator needs two values",
        ));
    };
    for value in values {
        acc = op(&acc, &value)?;
    }
    Ok(acc)
}

/// minijinja concatenates two sequences lazily (so `l = l + l` doubles a
/// list's length per step at no cost, until something walks it) and two
/// strings eagerly. Here both are eager and capped; the result of two
/// lists is a list (minijinja's is an iterable: it prints the same).
fn add_pair(left: &Value, right: &Value) -> Result<Value, Error> {
    if is_sequence(left) && is_sequence(right) {
        let mut items = Vec::new();
        collect_items(left, &mut items)?;
        collect_items(right, &mut items)?;
        return finish_list(items);
    }
    if let (Some(a), Some(b)) = (left.as_str(), right.as_str()) {
        let size = a.len().saturating_add(b.len());
        if size > MAX_VALUE_BYTES {
            return Err(exceeded(RenderLimit::ValueSize));
        }
        charge(size)?;
    }
    reference_op(RefOp::Add, left, right)
}

/// `'x' * n` and `[…] * n`, in minijinja's order (a string on either side
/// first, then a sequence on the left, then on the right), capped; numbers
/// and errors as minijinja does them.
fn mul_pair(left: &Value, right: &Value) -> Result<Value, Error> {
    if let Some((text, times)) = left
        .as_str()
        .map(|text| (text, right))
        .or_else(|| right.as_str().map(|text| (text, left)))
    {
        let Some(times) = times.as_usize() else {
            return reference_op(RefOp::Mul, left, right);
        };
        return match text.len().checked_mul(times) {
            Some(size) if size <= MAX_VALUE_BYTES => {
                charge(size)?;
                Ok(Value::from(text.repeat(times)))
            }
            _ => Err(exceeded(RenderLimit::ValueSize)),
        };
    }
    let repeated = if is_sequence(left) {
        Some((left, right))
    } else if is_sequence(right) {
        Some((right, left))
    } else {
        None
    };
    if let Some((sequence, times)) = repeated {
        let (Some(times), Some(len)) = (times.as_usize(), sequence.len()) else {
            // Not an integer, or an unsized iterable: minijinja's error.
            return reference_op(RefOp::Mul, left, right);
        };
        if len
            .checked_mul(times)
            .is_none_or(|total| total > MAX_LIST_ITEMS)
        {
            return Err(exceeded(RenderLimit::ListLength));
        }
        let mut items = Vec::new();
        for _ in 0..times {
            collect_items(sequence, &mut items)?;
        }
        return finish_list(items);
    }
    reference_op(RefOp::Mul, left, right)
}

/// The value of a `{% set %}` / `{% with %}` assignment, charged deeply:
/// assignments are how a value outlives an expression (`ns.l = [ns.l]`
/// in a loop nests a list once per iteration), so this is where depth and
/// accumulated size are checked.
pub(crate) fn store(value: Value) -> Result<Value, Error> {
    charge_value(&value)?;
    Ok(value)
}

/// The value of `{% set ns.attr = … %}`: like [`store`], and it must not
/// hold `ns` itself (`store_into(ns, value)`; one namespace per dotted
/// target). Namespaces are the only objects a template can change, so
/// this is the only way a template could make a value contain itself.
pub(crate) fn store_into(args: Rest<Value>) -> Result<Value, Error> {
    let Some((value, namespaces)) = args.0.split_last() else {
        return Err(Error::new(
            ErrorKind::MissingArgument,
            "store_into needs a value",
        ));
    };
    let mut walk = Walk {
        total: 0,
        cap: WORK_LEFT.get(),
        over: RenderLimit::Work,
        forbidden: namespaces,
    };
    walk.value(value, 0).map_err(exceeded)?;
    charge(walk.total)?;
    Ok(value.clone())
}

/// `range()` with at most [`MAX_LIST_ITEMS`] items (minijinja allows
/// 100 000; `x in range(…)` walks them all in one instruction).
pub(crate) fn range(
    lower: isize,
    upper: Option<isize>,
    step: Option<isize>,
) -> Result<Value, Error> {
    let (start, end) = match upper {
        Some(upper) => (lower as i128, upper as i128),
        None => (0, lower as i128),
    };
    let step_by = step.unwrap_or(1) as i128;
    let len = if step_by > 0 && end > start {
        (end - start + step_by - 1) / step_by
    } else if step_by < 0 && start > end {
        (start - end - step_by - 1) / -step_by
    } else {
        0
    };
    if len > MAX_LIST_ITEMS as i128 {
        return Err(exceeded(RenderLimit::ListLength));
    }
    minijinja::functions::range(lower, upper, step)
}

/// A pre-check a wrapped filter runs before the filter itself.
pub(crate) type PreCheck = fn(&[Value]) -> Result<(), Error>;

/// Wraps a filter so that its input and output are charged to the work
/// budget: the input before it runs (a filter may walk all of it, and
/// turning a value into text allocates its printed size), the output after
/// (what it built). Every filter's output is bounded by its input, so
/// charging after the fact overshoots by one bounded call at most; the
/// filters that can amplify (`replace`, `join`) check their size first.
pub(crate) fn charged_filter(
    filter: Value,
    pre_check: Option<PreCheck>,
) -> impl Fn(&State, Rest<Value>) -> Result<Value, Error> + Send + Sync + 'static {
    move |state: &State, args: Rest<Value>| {
        for arg in args.iter() {
            charge_value(arg)?;
        }
        if let Some(check) = pre_check {
            check(&args)?;
        }
        let output = filter.call(state, &args)?;
        charge_value(&output)?;
        Ok(output)
    }
}

fn text_of(value: Option<&Value>) -> String {
    match value {
        Some(value) => match value.as_str() {
            Some(text) => text.to_owned(),
            None => value.to_string(),
        },
        None => String::new(),
    }
}

/// `replace(from, to)` builds `len + n·(|to| − |from|)` bytes, `n` the
/// matches (every character boundary for an empty `from`): checked before
/// it runs, since `s | replace('', to)` multiplies.
pub(crate) fn replace_size(args: &[Value]) -> Result<(), Error> {
    let text = text_of(args.first());
    let from = text_of(args.get(1));
    let to = text_of(args.get(2));
    let matches = if from.is_empty() {
        text.chars().count() + 1
    } else {
        text.matches(from.as_str()).count()
    };
    let size = text
        .len()
        .saturating_sub(matches.saturating_mul(from.len()))
        .saturating_add(matches.saturating_mul(to.len()));
    if size > MAX_VALUE_BYTES {
        return Err(exceeded(RenderLimit::ValueSize));
    }
    Ok(())
}

/// Fails when `value` is clearly too big for a field, before the native
/// filter serialises it (serialising walks all of it, before the output cap
/// sees a byte). [`measure`] counts a slot per item where JSON spends a few
/// bytes, so the bar is set well above the field cap: this only stops the
/// huge; the output cap decides the rest.
pub(crate) fn check_field_size(value: &Value) -> Result<(), Error> {
    measure(
        value,
        MAX_FIELD_OUTPUT_BYTES.saturating_mul(SLOT),
        RenderLimit::FieldOutput,
    )
    .map(drop)
    .map_err(exceeded)
}

/// Appends to `out` unless it would pass [`MAX_VALUE_BYTES`] (for filters
/// that build text piece by piece, like `join`).
pub(crate) fn push_capped(out: &mut String, piece: &str) -> Result<(), Error> {
    if out.len().saturating_add(piece.len()) > MAX_VALUE_BYTES {
        return Err(exceeded(RenderLimit::ValueSize));
    }
    out.push_str(piece);
    Ok(())
}

/// Output that refuses to grow past a field's cap: minijinja stops
/// rendering at the first failed write.
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.bytes.len().saturating_add(data.len()) > MAX_FIELD_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("field output limit"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders one field's template within its bounds: a fresh work budget,
/// minijinja's fuel (set on the environment), output capped at
/// [`MAX_FIELD_OUTPUT_BYTES`]. On failure, [`limit_of`] tells whether a
/// bound was the reason.
pub(crate) fn render_field(template: &Template<'_, '_>, ctx: &Value) -> Result<String, Error> {
    begin_field();
    let mut out = CappedOutput {
        bytes: Vec::new(),
        overflowed: false,
    };
    let rendered = template.render_captured_to(ctx, &mut out).map(drop);
    if out.overflowed {
        // The write error minijinja reports does not say why it failed.
        note_limit(RenderLimit::FieldOutput);
    }
    rendered?;
    String::from_utf8(out.bytes)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "output is not UTF-8"))
}
