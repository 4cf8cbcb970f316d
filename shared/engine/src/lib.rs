//! crmbridge engine.
