//! crmbridge http.
