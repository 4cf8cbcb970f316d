//! The bounds every template works within, so that an automation (written
//! by a tenant, so not trusted) cannot make one run allocate without limit,
//! recurse until the stack overflows, or loop for ever.
//!
//! Two kinds of bound apply:
//!
//! * **When an automation is compiled** (on save, and when the engine loads
//!   it): a template's size and the size of each tag are capped, and the
//!   constructs that cannot be bounded are refused (macros, `{% set %}` and
//!   `{% filter %}` blocks, recursive loops, include/import/extends; see
//!   [`crate::template`]). Operators that can amplify a value (`~`, `+`,
//!   `*`) are compiled into calls of bounded functions.
//! * **When a template renders**: each field has an output cap, a fuel
//!   (instruction) cap and a work budget; each step has an output cap; no
//!   single operation may build a string or list beyond [`MAX_VALUE_BYTES`]
//!   / [`MAX_LIST_ITEMS`]. Hitting one is a [`crate::RenderError`] naming the
//!   template's path and the [`RenderLimit`] — the engine fails the run with
//!   that reason.
//!
//! The numbers are far above what a field mapping needs (a CRM field is a
//! name, a phone, a note of a few KiB) and far below what hurts a Lambda
//! with a few hundred MiB of memory.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Output of one rendered field (one template). 64 KiB is the largest text
/// field the CRMs we target accept (HubSpot's property values, amoCRM's and
/// MoySklad's long text fields stop there or below).
pub const MAX_FIELD_OUTPUT_BYTES: usize = 64 * 1024;

/// Output of all templates and paths of one step (or of one automation
/// filter) together: the request body a step can produce.
pub const MAX_STEP_OUTPUT_BYTES: usize = 1024 * 1024;

/// Template instructions one field may execute. A field that maps a few
/// values uses tens; looping over a few hundred line items a few thousand.
pub const FUEL_PER_FIELD: u64 = 100_000;

/// The largest string one operation (`~`, `+`, `*`, `join`, `replace`) may
/// build. Larger than the field output cap so that a value can be built and
/// then cut down (`| truncate`), small enough that one operation stays
/// cheap. minijinja's own cap on `'x' * n` is 100 MB, too much for us.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// The longest list one operation may build (`[x] * n`, `a + b`,
/// `range(n)`): range() and repetition are lazy in minijinja, so without
/// this `x in [0] * 10**15` or `([0] * 10**15) | join` runs for ever in a
/// single instruction.
pub const MAX_LIST_ITEMS: usize = 10_000;

/// Bytes one field may build and read through operators, filters and
/// `{% set %}` together. Fuel counts instructions, not their cost: without
/// this a loop could keep 100 000 copies of a 256 KiB value alive.
pub const WORK_BYTES_PER_FIELD: usize = 8 * 1024 * 1024;

/// How deeply a value a template stores or passes to a filter may nest;
/// deeper values would overflow the stack when printed, compared or
/// dropped. serde_json refuses documents nested deeper than 128, so event
/// data always fits.
pub const MAX_VALUE_DEPTH: usize = 128;

/// The largest template source (one field's text).
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;

/// Tokens in one `{{ … }}` or `{% … %}` tag. minijinja's parser and code
/// generator recurse once per operator of a chain (`1+1+1+…`), and a chain
/// of a few thousand overflows a 2 MiB thread stack (which aborts the
/// process, it cannot be caught); 256 tokens stay far below that.
pub const MAX_TAG_TOKENS: usize = 256;

/// minijinja's runtime recursion limit (frames of nested loops and `with`
/// blocks); its default of 500 assumes macros, which templates cannot use.
pub const RECURSION_LIMIT: usize = 100;

/// Which bound a render hit (carried by [`crate::RenderError::limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenderLimit {
    /// [`MAX_FIELD_OUTPUT_BYTES`].
    FieldOutput,
    /// [`MAX_STEP_OUTPUT_BYTES`].
    StepOutput,
    /// [`FUEL_PER_FIELD`].
    Fuel,
    /// [`MAX_VALUE_BYTES`].
    ValueSize,
    /// [`MAX_LIST_ITEMS`].
    ListLength,
    /// [`WORK_BYTES_PER_FIELD`].
    Work,
    /// [`MAX_VALUE_DEPTH`].
    Nesting,
    /// [`RECURSION_LIMIT`].
    Recursion,
}

impl RenderLimit {
    /// What the limit is, for the run log.
    pub fn description(self) -> String {
        match self {
            RenderLimit::FieldOutput => format!(
                "output limit reached: a field may render at most {MAX_FIELD_OUTPUT_BYTES} bytes"
            ),
            RenderLimit::StepOutput => format!(
                "output limit reached: the fields of a step may render at most {MAX_STEP_OUTPUT_BYTES} bytes together"
            ),
            RenderLimit::Fuel => format!(
                "work limit reached: a field may run at most {FUEL_PER_FIELD} template instructions"
            ),
            RenderLimit::ValueSize => format!(
                "value size limit reached: one operation may build at most {MAX_VALUE_BYTES} bytes"
            ),
            RenderLimit::ListLength => format!(
                "list length limit reached: one operation may build at most {MAX_LIST_ITEMS} items"
            ),
            RenderLimit::Work => format!(
                "work limit reached: a field may build and read at most {WORK_BYTES_PER_FIELD} bytes through operators, filters and set"
            ),
            RenderLimit::Nesting => format!(
                "nesting limit reached: values may nest at most {MAX_VALUE_DEPTH} levels deep"
            ),
            RenderLimit::Recursion => format!(
                "recursion limit reached: at most {RECURSION_LIMIT} nested loops and with blocks"
            ),
        }
    }
}

impl fmt::Display for RenderLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description())
    }
}
